from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, register_converter
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from console.api_docs import RedocView, redoc_bundle_view
from console.converters import IdConverter

register_converter(IdConverter, "id")  # before the API's URL modules, which use it, are included


class FaviconView(RedirectView):
    """The console's icon for pages that name none (the API's JSON in a browser, Swagger UI, Redoc):
    browsers ask for /favicon.ico there, and a 404 would show in their consoles."""

    permanent = True

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("console/favicon.svg")


urlpatterns = [
    path("", include("console.ui.urls")),
    path("favicon.ico", FaviconView.as_view()),
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("tenants.api.urls")),
    path("api/v1/", include("console.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", RedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("api/redoc/redoc.standalone.js", redoc_bundle_view, name="api-redoc-bundle"),
]
