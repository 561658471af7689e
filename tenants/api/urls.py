from django.urls import path

from tenants.api import views

urlpatterns = [
    path("containers", views.ContainerCreateView.as_view(), name="api-containers"),
    path("leases", views.LeaseListView.as_view(), name="api-lease-list"),
    path("leases/<id:pk>", views.LeaseDetailView.as_view(), name="api-lease-detail"),
    path("me", views.WhoAmIView.as_view(), name="api-me"),
    path("tenancies/<str:name>", views.TenancyDetailView.as_view(), name="api-tenancy-detail"),
]
