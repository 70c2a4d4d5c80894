"""What scale-in does to tasks: real prefork workers on real Redis, stopped the way ECS stops them.

ECS scale-in sends SIGTERM to the container's main process, waits ``stopTimeout``, then SIGKILLs
every process in it. The first test SIGTERMs workers in the middle of tasks 50 times under a
continuous load (each stopped worker replaced, like scale-in followed by scale-out) and checks that
every task ran to completion, none lost, and only a rare task cut by a SIGTERM twice. The second
shows what each shutdown setting does to a task longer than stopTimeout that is SIGKILLed: the
numbers docs/safe-scale-in.md quotes. The third scales a pool in and out again and again
through the real scaler tick and fence and drain, with the demo's task runner playing ECS, on tasks
longer than the stop timeout: nothing may be killed (docs/safe-scale-in.md). The last runs it on a
private RabbitMQ node (the tasks still record their runs in Redis).
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from apps.worker_keys import AT_SIGTERM, DONE, QUEUE, READY, STARTED
from apps.workers import ROOT, TESTS_DIR, WorkerProcess
from brokers import RabbitBroker, create_vhost
from celery import Celery
from conftest import redis_url_for
from demo.events import EventLog, read_events
from demo.runner import Container, TaskRunner
from waiting import wait_until

from celery_autoscaler import worker as helper
from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.drain import drainer_for
from celery_autoscaler.ecs import ServiceStatus
from celery_autoscaler.probe import probe_for
from celery_autoscaler.state import InMemoryStateStore
from celery_autoscaler.tick import PoolOutcome, run_tick

DB = 7
pytestmark = pytest.mark.redis_db(DB)
BROKER = redis_url_for(DB)
CYCLES = 50
WORKERS = 3  # in rotation: each replacement has two cycles to start before it is stopped in turn
STOP_TIMEOUT_S = 10.0  # the simulated ECS stopTimeout of the SIGKILL variants (slack for a busy machine)
# Warm shutdown (ECS's SIGTERM, no REMAP_SIGTERM) with one message per process, early or late acks.
WARM = {"SAFE_BROKER_URL": BROKER, "CELERY_WORKER_PREFETCH_MULTIPLIER": "1"}


@contextmanager
def producer_on(broker_url: str) -> Iterator[Celery]:
    """A plain producer process's app (like a web process): the helper installed, no worker."""
    app = Celery("load", broker=broker_url, set_as_current=False)
    app.conf.task_default_queue = QUEUE
    helper.install(app)
    try:
        yield app
    finally:
        helper.uninstall(app)


@pytest.fixture
def producer() -> Iterator[Celery]:
    with producer_on(BROKER) as app:
        yield app


class Load(threading.Thread):
    """Publishes tasks of ``seconds`` (0.1-0.5 s) at a steady rate until stopped; remembers every id it sent."""

    def __init__(self, app: Celery, per_second: float, seconds: tuple[float, float] = (0.1, 0.5)) -> None:
        super().__init__(name="load", daemon=True)
        self.app = app
        self.seconds = seconds
        self.interval = 1.0 / per_second
        self.sent: list[str] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(DB)
        try:
            while not self.stopping.wait(self.interval):  # pacing the load, not waiting on a worker
                result = self.app.send_task("apps.worker_app.work", args=[rng.uniform(*self.seconds)], queue=QUEUE)
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


POOL, SERVICE = "default", "worker-default"
DRAIN_CYCLES = {"warm": 6, "soft": 3}
RABBITMQ_DRAIN_CYCLES = 4
REDIS_SCALER_BROKER = {"url": BROKER, "unacked_scan_interval_s": 0}
DRAIN_HIGH, DRAIN_LOW = 5, 2  # workers per phase: each cycle is 3 scale-ins
DRAIN_TASKS_PER_PHASE = 4  # sent before each scale-in, so that it happens while other workers run tasks
DRAIN_STOP_TIMEOUT_S = 5.0  # shorter than every task, so any task a stopped worker holds is killed
DRAIN_TASK_S = (6.0, 9.0)
SHUTDOWN = {
    "warm": {},
    "soft": {"REMAP_SIGTERM": "SIGQUIT", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1"},
}


class RunnerEcs:
    """One ECS service as the demo's task runner reads it and as the scaler's tick acts on it."""

    def __init__(self) -> None:
        self.desired = 0
        self.runner: TaskRunner | None = None

    def describe_services(self, cluster: str, services: list[str]) -> dict[str, Any]:
        """What the runner polls (the boto3 call's shape)."""
        return {"services": [{"serviceName": s, "desiredCount": self.desired} for s in services]}

    def describe(self, services: Sequence[str]) -> dict[str, ServiceStatus]:
        assert self.runner is not None
        view = self.runner.snapshot()[POOL]
        return {s: ServiceStatus(s, self.desired, view.running, view.pending, "ACTIVE") for s in services}

    def set_desired(self, service: str, count: int) -> None:
        self.desired = count


def pool_config(count: int, broker: Mapping[str, Any]) -> ScalerConfig:
    """The scaler's config, the pool pinned to ``count`` workers (min = max): the real policy says ``count``."""
    pool = {"service": SERVICE, "queues": [QUEUE], "concurrency": 2, "min_workers": count, "max_workers": max(1, count)}
    return parse_config({"broker": dict(broker), "cluster": "c", "pools": {POOL: pool}})


class Scaler(threading.Thread):
    """The scaler's real tick (probe, policy, fence and drain) every ``interval_s`` against the runner.

    ``broker`` is the config's broker section; the probe and drainer come from the handler's factories.
    """

    def __init__(self, ecs: RunnerEcs, broker: Mapping[str, Any], interval_s: float = 2.0) -> None:
        super().__init__(name="scaler", daemon=True)
        self.ecs = ecs
        self.broker = broker
        self.interval_s = interval_s
        self.target = 0
        self.outcomes: list[PoolOutcome] = []
        self.stopping = threading.Event()
        config = pool_config(0, broker)
        assert config.broker.url is not None
        self.probe = probe_for(config.broker, config.broker.url)
        drainer = drainer_for(config.broker, config.broker.url)
        assert drainer is not None
        self.drainer = drainer
        self.store = InMemoryStateStore()

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):  # the tick's schedule, not a wait on a result
            config = pool_config(self.target, self.broker)
            result = run_tick(config, self.probe, self.ecs, self.store, time.time(), drainer=self.drainer)
            self.outcomes.extend(result.outcomes)


@pytest.mark.parametrize("shutdown", ["warm", "soft"])
def test_fence_and_drain_scales_in_under_load_without_killing_long_tasks(
    shutdown: str, producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    """Scale-in after scale-in under load, every task longer than the stop timeout: 0 killed, 0 lost.

    Without the handshake, a worker ECS stops takes a task in the moment between its protection
    release and the SIGTERM, and that task is killed at the stop timeout (the simulator's 3-38 a day).
    """
    run_fence_and_drain(f"Redis, {shutdown} shutdown", DRAIN_CYCLES[shutdown], SHUTDOWN[shutdown],
                        REDIS_SCALER_BROKER, producer, redis_db, tmp_path)  # fmt: skip


def test_fence_and_drain_on_rabbitmq_scales_in_under_load_without_killing_long_tasks(
    rabbitmq: RabbitBroker, redis_db: redis.Redis, tmp_path: Path
) -> None:
    """The same on RabbitMQ (warm shutdown, fewer cycles): the drain queues instead of the drain keys."""
    vhost = create_vhost(rabbitmq, f"safe-{uuid.uuid4().hex[:8]}")
    broker = {"url": vhost.amqp_url, "management_url": rabbitmq.management_url}
    try:
        with producer_on(vhost.amqp_url) as producer:
            run_fence_and_drain(
                "RabbitMQ, warm shutdown", RABBITMQ_DRAIN_CYCLES, {}, broker, producer, redis_db, tmp_path
            )
    finally:
        rabbitmq.management_request("DELETE", f"/api/vhosts/{vhost.path}")


def run_fence_and_drain(
    label: str,
    cycles: int,
    shutdown_env: Mapping[str, str],
    broker: Mapping[str, Any],
    producer: Celery,
    redis_db: redis.Redis,
    tmp_path: Path,
) -> None:
    """Cycle the pool DRAIN_HIGH -> DRAIN_LOW -> DRAIN_HIGH ``cycles`` times under load; check and print the counts.

    The workers' broker is ``broker["url"]``; their tasks record their runs in this file's Redis db.
    """
    env = {
        **WARM,
        **shutdown_env,
        "SAFE_BROKER_URL": str(broker["url"]),
        "SAFE_SIGNALS_URL": BROKER,
        "CELERY_TASK_ACKS_LATE": "true",
        "CELERY_AUTOSCALER_POOL": POOL,
        "CELERY_AUTOSCALER_STOP_TIMEOUT": str(DRAIN_STOP_TIMEOUT_S),
        "SAFE_RELEASE_AFTER_IDLE_S": "1",
        "SAFE_VISIBILITY_TIMEOUT_S": "60",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT / "lambda")]),
    }
    command = (sys.executable, "-m", "celery", "-A", "apps.worker_app", "worker", "-P", "prefork", "-c", "2")
    command += ("-l", "INFO", "-Q", QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat")
    ecs = RunnerEcs()
    events = EventLog(tmp_path / "events.jsonl")
    runner = TaskRunner(
        ecs,
        "c",
        {POOL: SERVICE},
        {POOL: Container(command, env, DRAIN_STOP_TIMEOUT_S)},
        events,
        tmp_path / "workers",
        start_delay_s=1.0,
    )
    ecs.runner = runner
    scaler = Scaler(ecs, broker)
    load = Load(producer, per_second=0.4, seconds=DRAIN_TASK_S)
    started_at = time.monotonic()
    phases: list[str] = []

    observer = drainer_for(pool_config(0, broker).broker, str(broker["url"]))  # the scaler's is its thread's
    assert observer is not None

    def settled(count: int) -> bool:
        view = runner.snapshot()[POOL]
        helpers = observer.status([POOL])[POOL].workers
        return ecs.desired == count and view.running == count and view.stopping == 0 and helpers == count

    try:
        runner.start()
        scaler.start()
        scaler.target = DRAIN_HIGH
        wait_until(lambda: settled(DRAIN_HIGH), timeout=180, what=f"{DRAIN_HIGH} workers up")
        load.start()
        for cycle in range(cycles):
            for count in (DRAIN_LOW, DRAIN_HIGH):
                began = time.monotonic()
                scaler.target = count
                wait_until(lambda c=count: settled(c), timeout=180, what=f"cycle {cycle}: {count} workers")
                phases.append(f"  cycle {cycle}: {count} workers after {time.monotonic() - began:.0f} s")
                if count == DRAIN_HIGH:
                    sent_before = len(load.sent)
                    wait_until(
                        lambda n=sent_before: len(load.sent) >= n + DRAIN_TASKS_PER_PHASE,
                        timeout=60,
                        what="more tasks sent",
                    )
        load.stopping.set()
        load.join(timeout=30)
        assert load.error is None, load.error
        sent = set(load.sent)
        wait_until(lambda: sent <= set(_counts(redis_db, DONE)), timeout=300, what="every sent task completed")
    finally:
        load.stopping.set()
        scaler.stopping.set()
        scaler.join(timeout=60)
        runner.stop()
        events.close()
    elapsed = time.monotonic() - started_at

    happened = read_events(tmp_path / "events.jsonl")
    killed = [e for e in happened if e["kind"] == "task_killed"]
    exits = [e for e in happened if e["kind"] == "task_exited"]
    scale_ins = [e for e in happened if e["kind"] == "task_stopping" and not e.get("at_exit")]
    drains = [o.drain for o in scaler.outcomes if o.drain is not None and o.drain.drains]
    busy_at_lowering = [
        o.measurements.load.in_flight
        for o in scaler.outcomes
        if o.drain is not None and o.drain.lowering and o.measurements and o.measurements.load
    ]
    done, starts = _counts(redis_db, DONE), _counts(redis_db, STARTED)
    lost = sum(1 for task_id in sent if task_id not in done)
    reruns = sum(1 for task_id in sent if starts.get(task_id, 0) > 1)
    at_sigterm = [entry.decode().rsplit(":", 1) for entry in redis_db.lrange(AT_SIGTERM, 0, -1)]
    running_at_sigterm = sum(int(count) for _, count in at_sigterm)
    # A task is killed if its worker was running it when the SIGTERM came and was SIGKILLed after.
    sigkilled = {e["task"] for e in killed}
    tasks_killed = sum(int(count) for host, count in at_sigterm if host.split("@")[0] in sigkilled)
    codes = collections.Counter(e["code"] for e in exits)
    print(
        f"\nfence and drain, {label}, stop timeout {DRAIN_STOP_TIMEOUT_S:g} s, tasks of "
        f"{DRAIN_TASK_S[0]:g}-{DRAIN_TASK_S[1]:g} s: {len(scale_ins)} scale-ins in {cycles} cycles "
        f"({DRAIN_HIGH} -> {DRAIN_LOW} -> {DRAIN_HIGH}) in {elapsed:.0f} s; {len(sent)} tasks sent, "
        f"{tasks_killed} tasks killed, {lost} lost, {reruns} re-run; {running_at_sigterm} tasks running at a "
        f"SIGTERM (the runner's own stop at the end included); {len(killed)} workers SIGKILLed; "
        f"most drained at once {max((d.drained for d in drains), default=0)}; tasks in flight at the "
        f"{len(busy_at_lowering)} lowering ticks {sum(x or 0 for x in busy_at_lowering)} (most "
        f"{max((x or 0 for x in busy_at_lowering), default=0)}); worker exit codes {codes}"
    )
    for line in phases:
        print(line)
    assert len(scale_ins) >= cycles * (DRAIN_HIGH - DRAIN_LOW)
    assert tasks_killed == 0, "a scale-in SIGKILLed a worker that was running a task"
    assert runner.errors == []
    assert killed == []
    assert set(codes) == {0}
    assert lost == 0
    assert set(done) == sent
    assert reruns <= running_at_sigterm, "only a task cut by a shutdown may run twice (Celery's ack race)"
    assert all(count == 1 for count in done.values()), "no task completed twice"
