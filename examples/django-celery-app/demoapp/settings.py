"""Settings for the demo project; everything a deployment changes comes from the environment.

On ECS the module passes the broker URL (from Secrets Manager) and the recommended Celery settings
as environment variables; locally the demo's task runner does the same.
"""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = ["jobs"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "demoapp.urls"
WSGI_APPLICATION = "demoapp.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Where tasks record that they ran; the same Redis unless told otherwise.
DEMO_RESULTS_URL = os.environ.get("DEMO_RESULTS_URL", CELERY_BROKER_URL)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"jobs.tasks.build_report": {"queue": "reports"}}
CELERY_TASK_IGNORE_RESULT = True
# The module sets these two for safe scale-in (a stopped worker holds at most its running tasks).
CELERY_WORKER_PREFETCH_MULTIPLIER = int(os.environ.get("CELERY_WORKER_PREFETCH_MULTIPLIER", "1"))
CELERY_TASK_ACKS_LATE = os.environ.get("CELERY_TASK_ACKS_LATE", "true").lower() in {"1", "true", "yes"}
# Every job lasts seconds: a hard limit well below ECS's stop timeout (120 s) means a stopping
# worker never gets SIGKILLed mid-task, and Redis never redelivers a task that is still running.
CELERY_TASK_SOFT_TIME_LIMIT = 50
CELERY_TASK_TIME_LIMIT = 60
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Redis priorities 0..9 as real sub-lists (the scaler sums them); 0 is the most urgent.
CELERY_BROKER_TRANSPORT_OPTIONS = {"priority_steps": list(range(10)), "queue_order_strategy": "priority"}
CELERY_TASK_DEFAULT_PRIORITY = 5
