from django.urls import path

from console.api import views

urlpatterns = [
    path("servers", views.ServerListView.as_view(), name="api-servers"),
    path("servers/<id:pk>", views.ServerDetailView.as_view(), name="api-server-detail"),
    path("gpus", views.GpuListView.as_view(), name="api-gpus"),
    path("gpus/<id:pk>", views.GpuDetailView.as_view(), name="api-gpu-detail"),
    path("partitions", views.PartitionListView.as_view(), name="api-partitions"),
    path("allocations", views.AllocationListView.as_view(), name="api-allocations"),
    path("events", views.EventListView.as_view(), name="api-events"),
    path("operations", views.OperationListView.as_view(), name="api-operations"),
    path("operations/<id:pk>", views.OperationDetailView.as_view(), name="api-operation-detail"),
    *(path(f"{kind}s/<id:pk>/{action}/", view.as_view(), name=f"api-{kind}-{action}")
      for kind, action, view in views.action_views()),
]
