"""One endpoint that enqueues a job, to show the web process publishing tasks."""

from django.urls import path
from jobs.views import enqueue

urlpatterns = [path("enqueue/", enqueue)]
