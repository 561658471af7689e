# Indexes for the events page (console/events.py): one per filter, ending in `id`, for keyset pages.

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('console', '0002_roles'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='auditevent',
            name='console_aud_target__dc5692_idx',
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='correlation_id',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='verb',
            field=models.CharField(max_length=100),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['target_type', 'target_id', 'id'], name='audit_target_id'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['verb', 'id'], name='audit_verb_id'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['verb'], name='audit_verb_prefix', opclasses=['varchar_pattern_ops']),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['correlation_id', 'id'], name='audit_correlation_id'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['actor_text', 'id'], name='audit_actor_id'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['source', 'id'], name='audit_source_id'),
        ),
    ]
