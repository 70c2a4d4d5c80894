"""Fence and drain, the scaler's side: the pure plan, the drain keys' scripts and real ticks on real Redis (db 12).

The workers' side runs in real Celery workers in tests/test_safe_scale_in.py; here the worker's poll
is the same script the helper sends, called the way the helper calls it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence

import pytest
import redis
from conftest import redis_url_for
from waiting import wait_until

from celery_autoscaler.config import BrokerConfig, ScalerConfig, parse_config
from celery_autoscaler.drain import (
    MAX_CATCH_UP_S,
    START_GRACE_S,
    DrainError,
    DrainPlan,
    DrainStatus,
    RedisDrainer,
    drainer_for,
    plan,
)
from celery_autoscaler.drain_keys import DRAIN_TTL_MS, FRESH_MS, POLL_SCRIPT, WORKERS_TTL_MS, drain_key, workers_key
from celery_autoscaler.ecs import ServiceStatus
from celery_autoscaler.probe.redis import RedisProbe
from celery_autoscaler.state import InMemoryStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import PoolOutcome, run_tick

DB = 12
NOW = 1_800_000_000.0
pytestmark = pytest.mark.redis_db(DB)


def test_a_pool_without_the_helper_scales_in_as_before() -> None:
    assert plan(3, 5, 5, DrainStatus(workers=0), NOW) == DrainPlan(desired=3, open=None)
    assert plan(3, 5, 5, None, NOW) == DrainPlan(desired=3, open=None)


def test_a_lowering_first_opens_slots_and_keeps_every_running_worker() -> None:
    first = plan(2, 5, 5, DrainStatus(workers=5), NOW)
    assert (first.desired, first.open, first.asked, first.lowering) == (5, 3, 3, False)
    # Two drained, one still finishing what it held: lower by the two, no slot for the third.
    status = DrainStatus(workers=5, active=True, open=0, draining=1, drained=2)
    second = plan(2, 5, 5, status, NOW)
    assert (second.desired, second.open, second.asked, second.drained, second.lowering) == (3, 0, 3, 2, True)


def test_pending_tasks_go_without_a_drain() -> None:
    # Ten asked for, three running: ECS stops pending tasks first, so down to what runs at once.
    lowered = plan(2, 10, 3, DrainStatus(workers=3), NOW)
    assert (lowered.desired, lowered.open) == (3, 1)


def test_a_lowering_waits_a_while_for_workers_still_starting() -> None:
    # Four running, three polling: the fourth is starting, unprotected, and ECS could stop it instead.
    status = DrainStatus(workers=3, active=True, drained=1, since=NOW)
    assert plan(2, 4, 4, status, NOW + 10).desired == 4
    assert plan(2, 4, 4, status, NOW + START_GRACE_S).desired == 3, "not for ever (a worker without the helper)"
    assert plan(2, 6, 4, status, NOW + 10).desired == 4, "pending tasks still go at once"


def test_the_drain_ends_once_the_count_no_longer_lowers_and_ecs_caught_up() -> None:
    active = DrainStatus(workers=3, active=True, drained=1, lowered_at=NOW)
    assert plan(3, 3, 4, active, NOW + 5).open == 0, "ECS still stopping the drained worker: the drain stays"
    assert plan(3, 3, 3, active, NOW + 5).open is None
    assert plan(3, 3, 4, active, NOW + MAX_CATCH_UP_S).open is None, "a drain has a deadline"
    assert plan(4, 3, 3, DrainStatus(workers=3), NOW).open is None, "scale-out: no drain"


def test_redis_gets_the_redis_drainer_and_sqs_none() -> None:
    broker = BrokerConfig()
    assert isinstance(drainer_for(broker, redis_url_for(DB)), RedisDrainer)
    assert drainer_for(broker, "sqs://") is None  # RabbitMQ's: tests/test_drain_rabbitmq.py


class Worker:
    """One worker's polls, exactly as celery_autoscaler.worker_drain sends them."""

    def __init__(self, client: redis.Redis, hostname: str, prefix: str = "", pool: str = "default") -> None:
        self.client = client
        self.hostname = hostname
        self.keys = [drain_key(prefix, pool), workers_key(prefix, pool)]
        self.script = client.register_script(POLL_SCRIPT)

    def poll(self, what: str) -> tuple[int, str]:
        exists, state = self.script(keys=self.keys, args=[self.hostname, what, WORKERS_TTL_MS])
        return int(exists), state.decode() if isinstance(state, bytes) else str(state)


def test_workers_claim_slots_atomically_and_the_scaler_counts_them(redis_db: redis.Redis) -> None:
    drainer = RedisDrainer(BrokerConfig(key_prefix="p:"), url=redis_url_for(DB))
    a, b, c = (Worker(redis_db, f"{name}@host", prefix="p:") for name in "abc")
    assert drainer.status(["default", "other"]) == {"default": DrainStatus(workers=0), "other": DrainStatus(workers=0)}
    assert [w.poll("look") for w in (a, b, c)] == [(0, "")] * 3
    assert drainer.status(["default"])["default"] == DrainStatus(workers=3)

    drainer.apply("default", DrainPlan(desired=3, open=2), NOW)
    assert 0 < redis_db.pttl("p:_celery_autoscaler.drain.default") <= DRAIN_TTL_MS
    assert [w.poll("claim") for w in (a, b, c)] == [(1, "draining"), (1, "draining"), (1, "")]
    assert a.poll("claim") == (1, "draining"), "a second claim by the same worker takes no slot"
    assert a.poll("drained") == (1, "drained")
    status = drainer.status(["default"])["default"]
    assert (status.workers, status.active, status.open, status.draining, status.drained) == (3, True, 0, 1, 1)

    drainer.apply("default", DrainPlan(desired=2, open=0, lowering=True), NOW)
    assert drainer.status(["default"])["default"].lowered_at == NOW
    drainer.apply("default", DrainPlan(desired=2, open=None), NOW)
    assert a.poll("drained") == (0, ""), "an ended drain is gone for every worker"
    assert not redis_db.exists("p:_celery_autoscaler.drain.default")


def test_a_worker_that_stops_polling_counts_for_nothing(redis_db: redis.Redis) -> None:
    drainer = RedisDrainer(BrokerConfig(), url=redis_url_for(DB))
    gone, alive = Worker(redis_db, "gone@host"), Worker(redis_db, "alive@host")
    drainer.apply("default", DrainPlan(desired=2, open=2), NOW)
    assert gone.poll("claim") == (1, "draining")
    assert gone.poll("drained") == (1, "drained")
    assert alive.poll("claim") == (1, "draining")

    def forgotten() -> bool:
        alive.poll("drained")
        status = drainer.status(["default"])["default"]
        return (status.workers, status.drained, status.draining) == (1, 1, 0)

    wait_until(forgotten, timeout=FRESH_MS / 1000 + 30, what="the silent worker forgotten")
    assert sorted(redis_db.hkeys("_celery_autoscaler.drain.default")) == [b"open", b"since", b"worker:alive@host"]
    assert alive.poll("leave") == (1, "")
    assert drainer.status(["default"])["default"] == DrainStatus(workers=0, active=True, since=NOW)


def test_unreadable_drain_keys_raise_a_drain_error(redis_db: redis.Redis) -> None:
    redis_db.set("_celery_autoscaler.drain.default", "not a hash")
    drainer = RedisDrainer(BrokerConfig(), url=redis_url_for(DB))
    with pytest.raises(DrainError, match="reading the drain keys failed"):
        drainer.status(["default"])
    with pytest.raises(DrainError, match="pool 'default'"):
        drainer.apply("default", DrainPlan(desired=1, open=1), NOW)


class Service:
    """One ECS service's counts, as the tick's actuator sees and sets them."""

    def __init__(self, desired: int) -> None:
        self.desired = self.running = desired

    def describe(self, services: Sequence[str]) -> dict[str, ServiceStatus]:
        return {s: ServiceStatus(s, self.desired, self.running, 0, "ACTIVE") for s in services}

    def set_desired(self, service: str, count: int) -> None:
        self.desired = count


def pinned(count: int) -> ScalerConfig:
    """The pool pinned to ``count`` workers (min = max), so the real policy decides ``count``."""
    pool = {"service": "svc", "queues": ["q"], "min_workers": count, "max_workers": count}
    return parse_config({"broker": {"url": redis_url_for(DB)}, "cluster": "c", "pools": {"default": pool}})


def test_a_tick_asks_then_lowers_by_the_drained_and_says_so(redis_db: redis.Redis) -> None:
    service, store, stream = Service(5), InMemoryStateStore(), io.StringIO()
    config = pinned(3)
    probe = RedisProbe(config.broker, url=redis_url_for(DB))
    drainer = RedisDrainer(config.broker, url=redis_url_for(DB))
    workers = [Worker(redis_db, f"w{i}@host") for i in range(5)]

    def tick(config: ScalerConfig = config) -> PoolOutcome:
        telemetry = Telemetry("Test", stream=stream)
        return run_tick(config, probe, service, store, time.time(), telemetry=telemetry, drainer=drainer).outcomes[0]

    for w in workers:
        w.poll("look")
    first = tick()
    assert first.decision is not None
    assert first.decision.desired == 3, "the policy's decision is unchanged; the tick turns it into a drain"
    assert (service.desired, first.drained()) == (5, {"asked": 2, "drained": 0, "set": 5})
    assert [w.poll("claim")[1] for w in workers] == ["draining", "draining", "", "", ""]
    for w in workers[:2]:
        w.poll("drained")
    second = tick()
    assert (service.desired, second.drained(), second.acted) == (3, {"asked": 2, "drained": 2, "set": 3}, True)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    logged = [line["drain"] for line in lines if line.get("message") == "pool tick"]
    assert logged == [{"asked": 2, "drained": 0, "set": 5}, {"asked": 2, "drained": 2, "set": 3}]
    metrics = [(line["DrainedWorkers"], line["DesiredCount"]) for line in lines if "DrainedWorkers" in line]
    assert metrics == [(0, 5), (2, 3)]

    service.running = 3  # ECS stopped the two drained workers; they left the drain at SIGTERM
    for w in workers[:2]:
        w.poll("leave")
    third = tick()
    assert third.drained() is None
    assert not redis_db.exists("_celery_autoscaler.drain.default"), "over: the others may release protection"

    # The helper's workers gone (none polled within FRESH_MS): a lowering is set at once, as before.
    redis_db.delete("_celery_autoscaler.workers.default")
    fourth = tick(pinned(1))
    assert (service.desired, fourth.drained()) == (1, None)
