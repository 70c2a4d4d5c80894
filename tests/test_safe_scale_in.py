"""What scale-in does to tasks: real prefork workers on real Redis, stopped the way ECS stops them.

ECS scale-in sends SIGTERM to the container's main process, waits ``stopTimeout``, then SIGKILLs
every process in it. The first test SIGTERMs workers in the middle of tasks 50 times under a
continuous load (each stopped worker replaced, like scale-in followed by scale-out) and checks that
every task ran to completion, none lost, and only a rare task cut by a SIGTERM twice. The second
shows what each shutdown setting does to a task longer than stopTimeout that is SIGKILLed: the
numbers the README's "Safe scale-in" quotes.
"""

from __future__ import annotations

import collections
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from apps.worker_keys import AT_SIGTERM, DONE, QUEUE, READY, STARTED
from apps.workers import WorkerProcess
from celery import Celery
from conftest import redis_url_for
from waiting import wait_until

from celery_autoscaler import worker as helper

DB = 7
pytestmark = pytest.mark.redis_db(DB)
BROKER = redis_url_for(DB)
CYCLES = 50
WORKERS = 3  # in rotation: each replacement has two cycles to start before it is stopped in turn
STOP_TIMEOUT_S = 10.0  # the simulated ECS stopTimeout of the SIGKILL variants (slack for a busy machine)
# Warm shutdown (ECS's SIGTERM, no REMAP_SIGTERM) with one message per process, early or late acks.
WARM = {"SAFE_BROKER_URL": BROKER, "CELERY_WORKER_PREFETCH_MULTIPLIER": "1"}


@pytest.fixture
def producer() -> Iterator[Celery]:
    """A plain producer process's app (like a web process): the helper installed, no worker."""
    app = Celery("load", broker=BROKER, set_as_current=False)
    app.conf.task_default_queue = QUEUE
    helper.install(app)
    yield app
    helper.uninstall(app)


class Load(threading.Thread):
    """Publishes tasks of 0.1-0.5 s at a steady rate until stopped; remembers every id it sent."""

    def __init__(self, app: Celery, per_second: float) -> None:
        super().__init__(name="load", daemon=True)
        self.app = app
        self.interval = 1.0 / per_second
        self.sent: list[str] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(DB)
        try:
            while not self.stopping.wait(self.interval):  # pacing the load, not waiting on a worker
                result = self.app.send_task("apps.worker_app.work", args=[rng.uniform(0.1, 0.5)], queue=QUEUE)
                self.sent.append(result.id)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def _ready(r: redis.Redis, worker: WorkerProcess) -> bool:
    assert not worker.exited(), f"{worker.name} exited early:\n{worker.log()}"
    return bool(r.sismember(READY, worker.hostname))


def _busy(r: redis.Redis, worker: WorkerProcess) -> bool:
    assert not worker.exited(), f"{worker.name} exited early:\n{worker.log()}"
    return int(r.get(f"busy:{worker.hostname}") or 0) > 0


def _counts(r: redis.Redis, field: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(field).items()}


@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "late-ack"])
def test_fifty_sigterms_in_the_middle_of_tasks_lose_nothing(
    acks_late: bool, producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    """Warm shutdown loses nothing, with early or late acks; a rare task cut by a SIGTERM runs twice.

    A task that a worker receives just as the SIGTERM arrives sometimes runs to the end but its ack
    (early or late) never reaches Redis before the worker exits, which restores the message, so
    another worker runs it again (celery/celery#3802). The test allows such re-runs only for tasks that
    were running when a SIGTERM arrived, at most once each, and prints how many there were.
    """
    env = {**WARM, "CELERY_TASK_ACKS_LATE": str(acks_late).lower()}
    started_at = time.monotonic()
    load = Load(producer, per_second=8)
    workers: collections.deque[WorkerProcess] = collections.deque()
    stopped: list[WorkerProcess] = []
    exit_codes: list[int] = []
    try:
        workers.extend(WorkerProcess(f"w{i}", env, tmp_path) for i in range(WORKERS))
        for w in workers:
            wait_until(lambda w=w: _ready(redis_db, w), timeout=120, what=f"{w.name} ready")
        load.start()
        for cycle in range(CYCLES):
            victim = workers.popleft()
            wait_until(lambda v=victim: _busy(redis_db, v), timeout=120, what=f"{victim.name} running a task")
            victim.sigterm()  # scale-in; like ECS, do not wait for it before the next one
            stopped.append(victim)
            workers.append(WorkerProcess(f"w{cycle + WORKERS}", env, tmp_path))  # scale-out
        for victim in stopped:
            wait_until(victim.exited, timeout=120, what=f"{victim.name} warm shutdown")
            exit_codes.append(victim.proc.returncode)
        load.stopping.set()
        load.join(timeout=30)
        assert load.error is None, load.error
        sent = set(load.sent)
        wait_until(
            lambda: len(sent - set(_counts(redis_db, DONE))) == 0,
            timeout=180,
            what="every sent task completed (else some were lost)",
        )
    finally:
        load.stopping.set()
        for w in [*workers, *stopped]:
            w.stop()
    elapsed = time.monotonic() - started_at

    done, starts = _counts(redis_db, DONE), _counts(redis_db, STARTED)
    running_at_sigterm = sum(int(entry.rsplit(b":", 1)[1]) for entry in redis_db.lrange(AT_SIGTERM, 0, -1))
    once = sum(1 for task_id in sent if done.get(task_id) == 1 and starts.get(task_id) == 1)
    lost = sum(1 for task_id in sent if task_id not in done)
    duplicated = sum(1 for task_id in sent if done.get(task_id, 0) > 1 or starts.get(task_id, 0) > 1)
    print(
        f"\nacks_late={acks_late}: {CYCLES} SIGTERM scale-ins under load in {elapsed:.0f} s: {len(sent)} tasks "
        f"sent, {once} completed exactly once, {lost} lost, {duplicated} duplicated; {running_at_sigterm} tasks "
        f"were running when SIGTERM arrived; worker exit codes {collections.Counter(exit_codes)}"
    )
    assert len(exit_codes) == CYCLES
    assert set(exit_codes) == {0}
    # Each SIGTERM follows a "task running" marker by milliseconds; a rare one may land just after a task ended.
    assert running_at_sigterm >= 0.8 * CYCLES, "SIGTERMs should hit workers with tasks in progress"
    assert set(done) == sent, "completions of tasks nobody sent"
    assert lost == 0
    assert duplicated <= running_at_sigterm, "only a task cut by a shutdown may run twice"
    assert all(done[task_id] <= 2 for task_id in sent)
    assert once + duplicated == len(sent)
    assert redis_db.llen(QUEUE) == 0
    assert redis_db.hlen("unacked") == 0


# (label, worker environment, what the settings are documented to do to the SIGKILLed task)
VARIANTS = [
    ("warm shutdown, acks_late=False", {"CELERY_TASK_ACKS_LATE": "false"}, "lost"),
    (
        "REMAP_SIGTERM=SIGQUIT + soft shutdown 1 s, acks_late=True",
        {"CELERY_TASK_ACKS_LATE": "true", "REMAP_SIGTERM": "SIGQUIT", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1"},
        "requeued at shutdown, runs twice",
    ),
    (
        "warm shutdown, acks_late=True, visibility_timeout 2 s",
        {"CELERY_TASK_ACKS_LATE": "true", "SAFE_VISIBILITY_TIMEOUT_S": "2"},
        "redelivered after visibility_timeout, runs twice",
    ),
]


@pytest.mark.parametrize(
    ("label", "env", "expected"), VARIANTS, ids=["warm-early-ack", "soft-late-ack", "warm-late-ack"]
)
def test_sigkill_after_stop_timeout_of_a_task_longer_than_it(
    label: str, env: dict[str, str], expected: str, producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    env = {**env, "SAFE_BROKER_URL": BROKER, "CELERY_WORKER_PREFETCH_MULTIPLIER": "1"}
    release_key = f"release-{uuid.uuid4().hex}"
    first = WorkerProcess("first", env, tmp_path)
    second: WorkerProcess | None = None
    try:
        wait_until(lambda: _ready(redis_db, first), timeout=120, what="first worker ready")
        task_id = producer.send_task("apps.worker_app.block", args=[release_key], queue=QUEUE).id
        wait_until(lambda: int(redis_db.hget(STARTED, task_id) or 0) == 1, timeout=60, what="task running")

        # ECS: SIGTERM, then SIGKILL of the whole container if it is still there after stopTimeout.
        first.sigterm()
        try:
            first.proc.wait(timeout=STOP_TIMEOUT_S)
            sigkilled = False
        except subprocess.TimeoutExpired:
            first.sigkill()
            sigkilled = True
        waiting, unacked = redis_db.llen(QUEUE), redis_db.hlen("unacked")

        if expected == "lost":
            # Acked before it ran, its process killed: nothing in Redis can bring it back.
            assert sigkilled
            assert (waiting, unacked) == (0, 0)
        else:
            if expected.startswith("requeued"):
                assert (waiting, unacked) == (1, 0), "soft shutdown should put the cut task back in the queue"
            else:
                assert sigkilled
                assert (waiting, unacked) == (0, 1), "a killed late-ack task stays in unacked"
                # A consumer restores unacked messages at start once they are older than visibility_timeout.
                wait_until(
                    lambda: time.time() - redis_db.zrange("unacked_index", 0, 0, withscores=True)[0][1] > 3,
                    timeout=60,
                    what="the unacked message older than visibility_timeout",
                )
            redis_db.rpush(release_key, "go")
            second = WorkerProcess("second", env, tmp_path)
            wait_until(lambda: int(redis_db.hget(DONE, task_id) or 0) >= 1, timeout=120, what="task re-run")
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()
    starts, completions = int(redis_db.hget(STARTED, task_id) or 0), int(redis_db.hget(DONE, task_id) or 0)
    print(
        f"\n{label}: SIGKILL after {STOP_TIMEOUT_S:.0f} s {'sent' if sigkilled else 'not needed (exited)'}; "
        f"task started {starts}x, completed {completions}x ({expected})"
    )
    if expected == "lost":
        assert (starts, completions) == (1, 0)
    else:
        assert (starts, completions) == (2, 1)
