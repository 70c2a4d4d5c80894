"""The Celery app the safe scale-in tests run in real worker processes, configured by environment.

Every task records in Redis when it starts and when it completes (per task id), so a test can count
exactly how many times each task ran, whatever happened to the worker in between.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from apps.worker_keys import AT_SIGTERM, DONE, PUBLISHED_AT, QUEUE, READY, STARTED
from brokers import redis_url_for
from celery import Celery, Task, signals
from celery.worker import state as worker_state

from celery_autoscaler import worker as autoscaler_worker

BROKER_URL = os.environ.get("SAFE_BROKER_URL") or redis_url_for(6)
SIGNALS_URL = os.environ.get("SAFE_SIGNALS_URL") or BROKER_URL
"""Where the tasks record their runs: the broker itself when it is Redis, else a Redis of its own."""


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw else None


app = Celery("worker_app", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_time_limit=_env_float("SAFE_TIME_LIMIT_S"),
    # kombu scans for messages past their visibility timeout on every 10th 10 s sweep (about 100 s
    # apart); every sweep here, so a redelivery a test waits for never hangs on one missed scan.
    broker_transport_options={
        "visibility_timeout": _env_float("SAFE_VISIBILITY_TIMEOUT_S") or 3600.0,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
# The helper under test, with short protection windows so a test sees renewals in seconds. It also
# applies CELERY_TASK_ACKS_LATE, CELERY_WORKER_PREFETCH_MULTIPLIER and CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT
# from the environment, exactly as the Terraform module passes them to a pool.
SETTINGS = autoscaler_worker.install(
    app,
    protection_minutes=int(os.environ.get("SAFE_PROTECTION_MINUTES", "60")),
    renew_before_s=_env_float("SAFE_RENEW_BEFORE_S") or 300.0,
    release_after_idle_s=_env_float("SAFE_RELEASE_AFTER_IDLE_S") or 10.0,
    poll_interval_s=_env_float("SAFE_POLL_S") or 1.0,
    agent_timeout_s=_env_float("SAFE_AGENT_TIMEOUT_S") or 2.0,
)

_client: redis.Redis | None = None


def store() -> redis.Redis:
    """One client per process, made after fork so prefork children never share a socket."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(SIGNALS_URL)
    return _client


@app.task(bind=True)
def work(self: Task, duration: float) -> str:
    """A task of known length that counts its starts and completions."""
    task_id = self.request.id
    host = self.request.hostname
    store().hincrby(STARTED, task_id, 1)
    store().incr(f"busy:{host}")
    try:
        time.sleep(duration)
    finally:
        store().decr(f"busy:{host}")
    store().hincrby(DONE, task_id, 1)
    return task_id


@app.task(bind=True)
def block(self: Task, key: str) -> str:
    """Run until the test pushes to ``key``: a task exactly as long as the test needs, without a fixed sleep."""
    store().hincrby(STARTED, self.request.id, 1)
    while store().blpop([key], timeout=1) is None:
        pass
    store().hincrby(DONE, self.request.id, 1)
    return self.request.id


@app.task
def fail() -> None:
    """A task that fails: the worker helper counts it as finished like any other."""
    raise RuntimeError("this task always fails")


@app.task(bind=True, max_retries=1)
def retry_once(self: Task) -> None:
    """Record the publish-time header of each run; the retry is a new publish with a new time."""
    store().rpush(PUBLISHED_AT, repr(self.request.get(SETTINGS.publish_time_header)))
    if self.request.retries == 0:
        raise self.retry(countdown=0)


@signals.worker_ready.connect
def _mark_ready(sender: Any = None, **_: Any) -> None:
    store().sadd(READY, sender.hostname)


@signals.worker_shutting_down.connect
def _mark_shutdown(sender: Any = None, **_: Any) -> None:
    # A fresh client: this runs inside a signal handler, maybe while the shared one is mid-call.
    client = redis.Redis.from_url(SIGNALS_URL)
    client.rpush(AT_SIGTERM, f"{sender}:{len(worker_state.active_requests)}")
    client.close()
