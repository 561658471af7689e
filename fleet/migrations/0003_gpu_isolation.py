# Gpu.isolated / Gpu.isolation_reason: what the agent's inventory says of each GPU's isolation.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('fleet', '0002_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='gpu',
            name='isolated',
            field=models.BooleanField(default=True, help_text="VFIO can hand this GPU, and only it, to a VM (its agent says); else never offered"),
        ),
        migrations.AddField(
            model_name='gpu',
            name='isolation_reason',
            field=models.TextField(blank=True, help_text='Why the GPU is not isolated, as its agent reports'),
        ),
    ]
