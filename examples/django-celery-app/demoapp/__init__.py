"""A minimal Django project whose Celery workers the autoscaler scales."""

from demoapp.celery import app as celery_app

__all__ = ("celery_app",)
