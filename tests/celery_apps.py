"""Real Celery for tests: producer messages, and worker subprocesses always stopped (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from waiting import wait_until

TESTS_DIR = Path(__file__).resolve().parent


def publish(broker_url: str, count: int, queue: str = "celery", priority: int | None = None) -> None:
    """Send ``count`` ``tasks.work`` messages as a real producer does (no worker needs to know the task)."""
    app = Celery("producer", broker=broker_url)
    try:
        for i in range(count):
            app.send_task("tasks.work", args=(i,), queue=queue, priority=priority)
    finally:
        app.close()


@dataclass
class Worker:
    """A running worker: its process, node name (``-n``) and the file its output goes to."""

    process: subprocess.Popen[bytes]
    name: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        """Celery logs ``<name> ready.`` once the consumer is subscribed to its queues."""
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.process.returncode}")
        return f"{self.name} ready." in self.log()


@contextmanager
def celery_worker(
    app: str,
    queues: Sequence[str],
    *,
    concurrency: int = 1,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 120.0,
    stop_timeout: float = 60.0,
) -> Iterator[Worker]:
    """Start ``celery -A app worker`` (prefork, no heartbeat/gossip/mingle) and yield it once ready.

    ``app`` is a module importable from ``tests/`` (``apps.probe_app``); ``env`` is added to the
    environment. On exit the worker gets SIGTERM (warm shutdown: running tasks finish, reserved ones
    go back to the queue); if it is still alive after ``stop_timeout`` its process group is killed.
    """
    name = f"test-{uuid.uuid4().hex[:8]}@tests"
    log_dir = Path(tempfile.mkdtemp(prefix="celery-worker-"))
    log_path = log_dir / "worker.log"
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), full_env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "-n",
        name,
        "-l",
        "INFO",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        *extra_args,
    ]
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(process, name, log_path)
    try:
        try:
            wait_until(worker.is_ready, timeout=ready_timeout, what=f"worker {worker.name} to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends with:\n{worker.log()[-4000:]}") from None
        yield worker
    finally:
        _stop(process, stop_timeout)
        log_path.unlink(missing_ok=True)
        log_dir.rmdir()


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Warm shutdown first; the worker's own process group is killed only if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait()
