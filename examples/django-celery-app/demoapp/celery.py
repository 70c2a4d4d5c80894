"""The Celery app: configured from Django settings, with the autoscaler's worker helper installed.

The helper stamps each message with its publish time (so the scaler can measure queue age) and,
on ECS, protects a busy worker from scale-in until it is idle again.
"""

import os

from celery import Celery

from celery_autoscaler.worker import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demoapp.settings")

app = Celery("demoapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Our jobs last about a second, so a worker idle for 3 s has nothing left worth protecting.
worker_settings = install(app, release_after_idle_s=3.0)
