"""Real Celery for tests: a producer's messages, and a worker that is ready before the test goes on."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from apps.workers import WorkerProcess
from celery import Celery
from waiting import wait_until


def publish(broker_url: str, count: int, queue: str = "celery", priority: int | None = None) -> None:
    """Send ``count`` ``tasks.work`` messages as a real producer does (no worker needs to know the task)."""
    app = Celery("producer", broker=broker_url)
    try:
        for i in range(count):
            app.send_task("tasks.work", args=(i,), queue=queue, priority=priority)
    finally:
        app.close()


@contextmanager
def celery_worker(
    app: str, queues: Sequence[str], *, concurrency: int = 1, env: Mapping[str, str] | None = None
) -> Iterator[WorkerProcess]:
    """Start ``celery -A app worker -Q queues`` and yield it once ready; stopped (warm, then killed) on exit.

    ``app`` is a module importable from ``tests/`` (``apps.probe_app``); ``env`` is added to the
    environment. The log lives in a temporary directory removed with the worker.
    """
    with (
        tempfile.TemporaryDirectory(prefix="celery-worker-") as log_dir,
        WorkerProcess(
            f"test-{uuid.uuid4().hex[:8]}", env or {}, Path(log_dir), concurrency, app=app, queues=queues
        ) as worker,
    ):
        wait_until(worker.is_ready, timeout=120, what=f"worker {worker.hostname} to be ready")
        yield worker
