"""Fence and drain, the scaler's side: the pure plan, the drain keys' scripts and real ticks on real Redis (db 12).

The workers' side runs in real Celery workers in tests/test_safe_scale_in.py; here the worker's poll
is the same script the helper sends, called the way the helper calls it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from conftest import redis_url_for
from waiting import wait_until

from celery_autoscaler.config import BrokerConfig, ScalerConfig, parse_config
from celery_autoscaler.drain import (
    FOLLOW_UP_S,
    MAX_CATCH_UP_S,
    START_GRACE_S,
    DrainError,
    DrainPlan,
    DrainStatus,
    RedisDrainer,
    Tick,
    TickSchedule,
    drainer_for,
    plan,
)
from celery_autoscaler.drain_keys import DRAIN_TTL_MS, FRESH_MS, POLL_SCRIPT, WORKERS_TTL_MS, drain_key, workers_key
from celery_autoscaler.ecs import ServiceStatus
from celery_autoscaler.probe.redis import RedisProbe
from celery_autoscaler.state import InMemoryStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import PoolOutcome, TickResult, run_tick

DB = 12
NOW = 1_800_000_000.0
pytestmark = pytest.mark.redis_db(DB)


def test_a_pool_without_the_helper_scales_in_as_before() -> None:
    assert plan(3, 5, 5, DrainStatus(workers=0), NOW) == DrainPlan(desired=3, open=None)
    assert plan(3, 5, 5, None, NOW) == DrainPlan(desired=3, open=None)


def test_a_lowering_first_opens_slots_and_keeps_every_running_worker() -> None:
    first = plan(2, 5, 5, DrainStatus(workers=5), NOW)
    assert (first.desired, first.open, first.asked, first.lowering, first.pending) == (5, 3, 3, False, 3)
    # Two drained, one still finishing what it held: lower by the two, no slot for the third.
    status = DrainStatus(workers=5, active=True, open=0, draining=1, drained=2)
    second = plan(2, 5, 5, status, NOW)
    assert (second.desired, second.open, second.asked, second.drained, second.lowering) == (3, 0, 3, 2, True)
    assert second.pending == 1, "the one still finishing: a follow-up tick can lower by it"
    assert plan(2, 2, 2, DrainStatus(workers=2), NOW).pending == 0, "nothing to drain"
    catching_up = DrainStatus(workers=3, active=True, drained=1, lowered_at=NOW)
    assert plan(3, 3, 4, catching_up, NOW).pending == 0, "only ECS left to act: no follow-up"


def test_a_regular_tick_that_leaves_workers_to_drain_gets_one_follow_up_for_those_pools() -> None:
    schedule = TickSchedule(100.0, 15.0, ticks=2)
    first = schedule.next()
    assert first == Tick(100.0)
    schedule.ran(first, 101.0, ("a",))
    follow_up = schedule.next(longest_s=1.0)
    assert follow_up == Tick(101.0 + FOLLOW_UP_S, ("a",))
    schedule.ran(follow_up, 105.0, ("a",))
    assert schedule.next(1.0) == Tick(115.0), "a follow-up gets no follow-up of its own"
    schedule.ran(Tick(115.0), 116.0, ("a", "b"))
    last = schedule.next(1.0)
    assert last == Tick(116.0 + FOLLOW_UP_S, ("a", "b")), "after the last regular tick too; not one of the ticks"
    schedule.ran(last, 120.0)
    assert schedule.next(1.0) is None
    quiet = TickSchedule(0.0, 15.0, ticks=2)
    quiet.ran(Tick(0.0), 1.0)
    assert quiet.next() == Tick(15.0), "nothing left to drain: no follow-up"


def test_a_follow_up_never_delays_the_next_regular_tick() -> None:
    schedule = TickSchedule(0.0, 15.0, ticks=4)
    schedule.ran(schedule.next() or Tick(0.0), 11.0, ("a",))
    assert schedule.next(longest_s=1.0) == Tick(14.0, ("a",))
    assert schedule.next(longest_s=1.5) == Tick(15.0), "it would end after the regular tick: the regular one does it"
    endless = TickSchedule(0.0, 15.0)
    for _ in range(1000):
        endless.ran(endless.next() or Tick(0.0), 0.0)
    assert endless.next() == Tick(15_000.0), "without ticks (the demo) the schedule has no end"


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


def pinned(count: int, **others: dict[str, Any]) -> ScalerConfig:
    """The pool pinned to ``count`` workers (min = max), so the real policy decides ``count``; and ``others``."""
    pool = {"service": "svc", "queues": ["q"], "min_workers": count, "max_workers": count}
    pools = {**others, "default": pool}
    return parse_config({"broker": {"url": redis_url_for(DB)}, "cluster": "c", "pools": pools})


def test_a_tick_asks_then_lowers_by_the_drained_and_says_so(redis_db: redis.Redis) -> None:
    service, store, stream = Service(5), InMemoryStateStore(), io.StringIO()
    config = pinned(3)
    probe = RedisProbe(config.broker, url=redis_url_for(DB))
    drainer = RedisDrainer(config.broker, url=redis_url_for(DB))
    workers = [Worker(redis_db, f"w{i}@host") for i in range(5)]

    def ticked(config: ScalerConfig = config, follow_up: tuple[str, ...] | None = None) -> TickResult:
        telemetry = Telemetry("Test", stream=stream)
        now = time.time()
        return run_tick(config, probe, service, store, now, telemetry=telemetry, drainer=drainer, follow_up=follow_up)

    def tick(config: ScalerConfig = config) -> PoolOutcome:
        return ticked(config).outcomes[0]

    for w in workers:
        w.poll("look")
    asked = ticked()
    first = asked.outcomes[0]
    assert first.decision is not None
    assert first.decision.desired == 3, "the policy's decision is unchanged; the tick turns it into a drain"
    assert (service.desired, first.drained()) == (5, {"asked": 2, "drained": 0, "set": 5})
    assert (asked.draining, first.drain_pending) == (("default",), 2), "a follow-up tick is due for the pool"
    assert [w.poll("claim")[1] for w in workers] == ["draining", "draining", "", "", ""]
    for w in workers[:2]:
        w.poll("drained")
    # The follow-up, seconds later: for the draining pool only, a tick like any other, but no WorkerSeconds.
    followed = ticked(pinned(3, other={"service": "svc2", "queues": ["q2"]}), follow_up=("default",))
    assert [o.pool for o in followed.outcomes] == ["default"]
    second = followed.outcomes[0]
    assert (service.desired, second.drained(), second.acted) == (3, {"asked": 2, "drained": 2, "set": 3}, True)
    assert (second.follow_up, second.worker_seconds, first.worker_seconds is not None) == (True, None, True)
    assert followed.draining == (), "every worker asked has drained"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    logged = [(line["drain"], line["follow_up"]) for line in lines if line.get("message") == "pool tick"]
    assert logged == [({"asked": 2, "drained": 0, "set": 5}, False), ({"asked": 2, "drained": 2, "set": 3}, True)]
    metrics = [(m["DrainedWorkers"], m["DesiredCount"], "WorkerSeconds" in m) for m in lines if "DrainedWorkers" in m]
    assert metrics == [(0, 5, True), (2, 3, False)]

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
