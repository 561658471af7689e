from django.urls import path

from console.ui import views

urlpatterns = [
    path("", views.fleet_overview, name="fleet-overview"),
    path("healthz", views.healthz, name="healthz"),
]
