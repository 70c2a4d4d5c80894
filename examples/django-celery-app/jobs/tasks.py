"""Two kinds of short jobs, each recording once per run that it ran, for the demo's checks.

A record is ``HSETNX demo:done <id> {...}`` plus ``HINCRBY demo:runs <id> 1``: the first says when
and where the task started, the second counts runs, so a task that ran twice shows up as runs=2.
Each worker also records when it was ready to consume (``demo:ready``, by hostname): ``make
calibrate`` measures the workers' boot time from it.
"""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import worker_ready
from django.conf import settings

DONE_KEY = "demo:done"
RUNS_KEY = "demo:runs"
READY_KEY = "demo:ready"


@cache
def _results() -> redis.Redis:
    """One client per worker process, created on first use (never at import: prefork forks after)."""
    return redis.Redis.from_url(settings.DEMO_RESULTS_URL)


def _run(task: Task, duration: float, enqueued_at: float | None) -> None:
    started = time.time()
    time.sleep(duration)
    record: dict[str, Any] = {
        "queue": (task.request.delivery_info or {}).get("routing_key"),
        "enqueued_at": enqueued_at,
        "started_at": started,
        "finished_at": time.time(),
        "worker": task.request.hostname,
    }
    pipe = _results().pipeline()
    pipe.hsetnx(DONE_KEY, task.request.id, json.dumps(record))
    pipe.hincrby(RUNS_KEY, task.request.id, 1)
    pipe.execute()


@shared_task(bind=True)
def send_email(self: Task, duration: float = 0.1, enqueued_at: float | None = None) -> None:
    """A short job on the default queue (think: a transactional e-mail)."""
    _run(self, duration, enqueued_at)


@shared_task(bind=True)
def build_report(self: Task, duration: float = 1.0, enqueued_at: float | None = None) -> None:
    """A longer job routed to the reports queue, served by its own pool."""
    _run(self, duration, enqueued_at)


@worker_ready.connect
def _record_ready(sender: Any = None, **_: Any) -> None:
    """The moment this worker starts consuming, under its hostname (the demo names each worker by its ECS task)."""
    _results().hset(READY_KEY, sender.hostname, json.dumps(time.time()))
