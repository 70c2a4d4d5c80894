"""The scaler's documented Redis users (docs/measurements.md) through fence and drain, on real Redis (db 1).

Each user is made by redis-cli from the docs' line as written. The drain-capable user runs a whole
drain cycle through real ticks and must be refused nothing and send every command it allows (INFO
commandstats, counted only while the scaler works: the workers' polls, as the worker's own user,
happen in between); real Celery workers then drain for a scaler connected as that user. With the
read-only user a tick says the drain failed and scales in as it did before fence and drain.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from apps.worker_keys import QUEUE
from apps.workers import WorkerProcess
from conftest import redis_url_for
from redis_acl import (
    HANDSHAKE,
    allowed_commands,
    command_calls,
    documented_acl_rules,
    documented_user,
    refused,
    seed_every_read,
    sent_between,
)
from test_drain import Service, Worker
from waiting import wait_until

from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.drain import RedisDrainer
from celery_autoscaler.drain_keys import drain_key
from celery_autoscaler.probe.redis import RedisProbe
from celery_autoscaler.state import InMemoryStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import PoolOutcome, run_tick

DB = 1
POOL = "default"
pytestmark = pytest.mark.redis_db(DB)


def pinned(count: int) -> ScalerConfig:
    """The pool pinned to ``count`` workers (min = max), so the real policy decides ``count``."""
    pool = {"service": "svc", "queues": [QUEUE], "min_workers": count, "max_workers": count}
    return parse_config({"broker": {"url": redis_url_for(DB)}, "cluster": "c", "pools": {POOL: pool}})


def ticker(url: str, service: Service, stream: io.StringIO | None = None) -> Callable[[], PoolOutcome]:
    """Real ticks of the pool pinned to 1 worker, probe and drainer connected as ``url``'s user."""
    config, store = pinned(1), InMemoryStateStore()
    probe, drainer = RedisProbe(config.broker, url=url), RedisDrainer(config.broker, url=url)

    def tick() -> PoolOutcome:
        telemetry = Telemetry("Test", stream=stream) if stream is not None else None
        result = run_tick(config, probe, service, store, time.time(), telemetry=telemetry, drainer=drainer)
        return result.outcomes[0]

    return tick


def test_a_drain_cycle_as_the_documented_user_sends_exactly_what_it_allows(redis_db: redis.Redis) -> None:
    seed_every_read(redis_db, redis_url_for(DB), QUEUE, time.time())
    user, _, rules = documented_acl_rules()
    service = Service(2)
    workers = [Worker(redis_db, f"w{i}@host") for i in range(2)]  # the worker's own (unrestricted) user
    states = ["look", "look"]
    sent: Counter[str] = Counter()
    key = drain_key("", POOL)
    redis_db.script_flush()  # as after a restart or failover: the first tick loads the drain script
    redis_db.acl_log_reset()

    with documented_user(redis_db) as url:
        tick = ticker(url, service)

        def measured_tick() -> PoolOutcome:
            for worker, state in zip(workers, states, strict=True):
                worker.poll(state)
            before = command_calls(redis_db)
            outcome = tick()
            sent.update(sent_between(before, command_calls(redis_db)))
            return outcome

        first = measured_tick()
        assert (service.desired, first.drained(), first.error) == (2, {"asked": 1, "drained": 0, "set": 2}, None)
        assert [w.poll("claim")[1] for w in workers] == ["draining", ""]
        states[0] = "drained"
        redis_db.hset(key, "worker:gone@host", "drained:1")  # a worker that died mid-drain: forgotten

        second = measured_tick()
        assert (service.desired, second.drained(), second.error) == (1, {"asked": 1, "drained": 1, "set": 1}, None)
        assert not redis_db.hexists(key, "worker:gone@host")

        service.running, states[0] = 1, "leave"  # ECS stopped the drained worker, which left at SIGTERM
        third = measured_tick()
        assert (third.drained(), third.error, redis_db.exists(key)) == (None, None, 0), "the drain is over"
        denied = refused(redis_db, user)

    print("\ncommands a drain cycle (3 ticks) sent as the documented user:")
    for name, calls in sorted(sent.items()):
        print(f"  {name:18} {calls}")
    assert denied == [], "sent but refused"
    assert allowed_commands(rules) - set(sent) == set(), "allowed but never sent"
    assert set(sent) - allowed_commands(rules) <= HANDSHAKE, "sent but not allowed"


def test_real_workers_drain_for_a_scaler_with_the_documented_user(redis_db: redis.Redis, tmp_path: Path) -> None:
    """Two real workers on the broker's own user, the scaler as the documented one: one drains and goes."""
    user, _, _ = documented_acl_rules()
    env = {"SAFE_BROKER_URL": redis_url_for(DB), "CELERY_AUTOSCALER_POOL": POOL, "SAFE_RELEASE_AFTER_IDLE_S": "1"}
    service = Service(2)
    key = drain_key("", POOL)
    redis_db.acl_log_reset()

    with (
        documented_user(redis_db) as url,
        WorkerProcess("acl-a", env, tmp_path, concurrency=1) as a,
        WorkerProcess("acl-b", env, tmp_path, concurrency=1) as b,
    ):
        tick, drainer = ticker(url, service), RedisDrainer(pinned(1).broker, url=url)
        wait_until(lambda: drainer.status([POOL])[POOL].workers == 2, timeout=120, what="both workers polling")
        first = tick()
        assert (service.desired, first.drained(), first.error) == (2, {"asked": 1, "drained": 0, "set": 2}, None)
        wait_until(lambda: drainer.status([POOL])[POOL].drained == 1, timeout=60, what="a worker drained")
        (host,) = [f.decode().removeprefix("worker:") for f, v in redis_db.hgetall(key).items() if b"drained" in v]
        gone = a if host == a.hostname else b

        second = tick()
        assert (service.desired, second.drained(), second.error) == (1, {"asked": 1, "drained": 1, "set": 1}, None)
        gone.sigterm()  # what ECS does to the drained worker
        assert gone.proc.wait(timeout=60) == 0
        service.running = 1
        third = tick()
        assert (third.drained(), third.error, redis_db.exists(key)) == (None, None, 0), "the drain is over"
        assert drainer.status([POOL])[POOL].workers == 1
        denied = refused(redis_db, user)

    assert denied == []
    assert "claimed a drain slot" in gone.log()
    assert "drained (holds nothing" in gone.log()


def test_with_the_read_only_user_a_tick_reports_the_drain_problem_and_scales_in_as_before(
    redis_db: redis.Redis,
) -> None:
    service, stream = Service(2), io.StringIO()
    for i in range(2):
        Worker(redis_db, f"w{i}@host").poll("look")  # workers running the helper: a drain would be used

    with documented_user(redis_db, read_only=True) as url:
        outcome = ticker(url, service, stream)()

    assert (service.desired, outcome.acted, outcome.drained()) == (1, True, None), "lowered at once, no drain"
    assert not redis_db.exists(drain_key("", POOL))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [line for line in lines if line.get("message") == "pool tick"]
    assert (line["level"], line["faults"]) == ("ERROR", ["broker"])
    assert line["error"].startswith("reading the drain keys failed: NoPermissionError: ")
    assert line["error"].endswith(": scaling in without fence and drain")
    (metrics,) = [line for line in lines if "ScalerErrors" in line]
    assert (metrics["ScalerErrors"], metrics["BrokerErrors"], metrics["DesiredCount"]) == (1, 1, 1)
