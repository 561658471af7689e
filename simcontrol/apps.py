from django.apps import AppConfig


class SimcontrolConfig(AppConfig):
    name = "simcontrol"
    verbose_name = "Simulator controls"
    default_auto_field = "django.db.models.BigAutoField"
