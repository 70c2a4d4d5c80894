"""AWS faults against the real tick: ECS and DynamoDB on moto (in-process), a real Redis (db 2), the real RedisProbe.

Faults are injected at botocore's event hooks on the scaler's own clients (made as the Lambda makes
them: bounded standard retries, connect/read timeouts), so botocore's retries and the scaler's
error handling both run for real. Two pools: ``a`` has a burst waiting on ``qa`` (it must scale out
to 10), ``b`` has an empty ``qb`` at 2 workers (reading it correctly scales it in to 1; holding keeps
2). Every case asserts:
- no pool lowers its count on data it could not read, and unaffected pools still act;
- the reason is in the pool's log line and in a metric (the Telemetry stream, parsed as strict JSON);
- nothing in Redis changed (every key's type and DUMP, before and after);
- neither the Redis password nor the AWS secret key appears in any output.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
from celery_apps import publish
from conftest import REDIS_HOST, REDIS_PORT, redis_url_for
from fault_checks import snapshot, strict_json
from moto import mock_aws
from moto_aws import (
    CLUSTER,
    answer_sends,
    atomic_conditional_writes,
    aws_env,
    botocore_sleeps,
    count_calls,
    create_services,
    create_state_table,
    desired_count,
    leave_unprocessed,
    raise_on_send,
    refuse_calls,
)
from redis_acl import documented_acl_rules

from celery_autoscaler.aws import MAX_ATTEMPTS, Backoff
from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.ecs import EcsActuator
from celery_autoscaler.policy import PoolState
from celery_autoscaler.probe import probe_for
from celery_autoscaler.state import DynamoStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import CLOCK_SKEW_S, Fault, TickResult, run_tick

DB = 2  # this file's own db of the tests' Redis
TABLE = "celery-autoscaler-state"
SECRET = "Aws-Fault-Suite-s3cret-2b7e"
AWS_SECRET = "aws-fault-suite-secret-key-9d41"
USER = "aws_fault_scaler"
START = {"a": 0, "b": 2}
"""Desired counts before the tick. ``a`` has nothing starting, so its burst scales it out at once (a
pool whose asked-for workers are still starting waits for them); ``b``'s queue is empty, so it scales in."""
BURST = 20
FILLERS = tuple(f"f{i}" for i in range(1, 10))
"""Nine more pools between ``a`` and ``b``, so ``b``'s service is in the second DescribeServices batch."""
pytestmark = pytest.mark.redis_db(DB)


def make_config(*, fillers: bool = False) -> ScalerConfig:
    pool = {"concurrency": 1, "max_workers": 10, "scale_in_window_s": 30, "idle_window_s": 120}
    pools = {"a": {"service": "worker-a", "queues": ["qa"], **pool}}
    if fillers:
        pools |= {name: {"service": f"worker-{name}", "queues": [f"q{name}"], **pool} for name in FILLERS}
    pools["b"] = {"service": "worker-b", "queues": ["qb"], **pool}
    return parse_config(
        {
            "broker": {"url": user_url(), "socket_timeout_s": 2, "unacked_scan_interval_s": 0},
            "cluster": CLUSTER,
            "state_table": TABLE,
            "metrics_namespace": "AwsFaults",
            "pools": pools,
        }
    )


def user_url() -> str:
    return f"redis://{USER}:{SECRET}@{REDIS_HOST}:{REDIS_PORT}/{DB}"


@dataclass
class Observed:
    """One tick's outputs: the result, each pool's log line and pool metrics, everything written, ECS after,
    and the pools the scaler called UpdateService for (whether or not the call succeeded)."""

    result: TickResult
    logs: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    text: str
    desired: dict[str, int]
    update_calls: set[str]


class Scaler:
    """One invocation's clients, made as the Lambda makes them (lazily, with the scaler's botocore config).

    The store's backoff records its waits in ``waits`` instead of sleeping.
    """

    def __init__(self, waits: list[float]) -> None:
        self.actuator = EcsActuator(CLUSTER)
        self.store = DynamoStateStore(TABLE, backoff=Backoff(sleep=waits.append))
        self.updates = count_calls(self.actuator.client, "UpdateService")

    @property
    def ecs(self) -> Any:
        return self.actuator.client

    @property
    def dynamodb(self) -> Any:
        return self.store.client


@dataclass
class Rig:
    ecs: Any
    client: redis.Redis
    caplog: pytest.LogCaptureFixture
    botocore_waits: list[float]
    waits: list[float] = field(default_factory=list)
    scaler: Scaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = Scaler(self.waits)

    def tick(
        self, *, config: ScalerConfig | None = None, now: float | None = None, scaler: Scaler | None = None
    ) -> Observed:
        """One real tick of ``scaler`` (the rig's by default); checks Redis and the secrets on the way out."""
        config = config or make_config()
        scaler = scaler or self.scaler
        stream = io.StringIO()
        assert config.broker.url is not None
        probe = probe_for(config.broker, config.broker.url)
        before = snapshot(self.client)
        self.caplog.clear()
        with self.caplog.at_level(logging.WARNING):
            try:
                result = run_tick(
                    config,
                    probe,
                    scaler.actuator,
                    scaler.store,
                    time.time() if now is None else now,
                    telemetry=Telemetry(config.metrics_namespace, stream=stream),
                )
            finally:
                probe.close()
        assert snapshot(self.client) == before, "the probe changed Redis"
        lines = [strict_json(line) for line in stream.getvalue().splitlines()]
        logs = {line["pool"]: line for line in lines if "_aws" not in line}
        metrics = {
            d["Pool"]: d for d in lines if "_aws" in d and d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Pool"]]
        }
        text = stream.getvalue() + self.caplog.text + repr(result)
        for secret in (SECRET, AWS_SECRET):
            assert secret not in text, "a secret reached the output"
        desired = {pool: desired_count(self.ecs, f"worker-{pool}") for pool in ("a", "b")}
        update_calls = {call["service"].removeprefix("worker-") for call in scaler.updates}
        return Observed(result, logs, metrics, text, desired, update_calls)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture) -> Iterator[Rig]:
    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    botocore_waits = botocore_sleeps(monkeypatch)
    user, _, rules = documented_acl_rules()
    assert user != USER
    redis_db.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{SECRET}", *rules)
    publish(redis_url_for(DB), BURST, "qa")
    with mock_aws():
        ecs = create_services(["worker-a", "worker-b", *(f"worker-{name}" for name in FILLERS)], desired=START["b"])
        ecs.update_service(cluster=CLUSTER, service="worker-a", desiredCount=START["a"])
        create_state_table(TABLE)
        seed = DynamoStateStore(TABLE)
        for pool in ("a", "b", *FILLERS):
            seed.save(pool, PoolState())  # an item per pool (version 1), as after a first tick
        try:
            yield Rig(ecs, redis_db, caplog, botocore_waits)
        finally:
            redis_db.execute_command("ACL", "DELUSER", USER)


def assert_acted(seen: Observed, pool: str) -> None:
    """An unaffected pool decided on its data: out to 10 for the burst on ``a``, in to 1 for empty ``b``."""
    line = seen.logs[pool]
    assert seen.desired[pool] == {"a": 10, "b": START["b"] - 1}[pool], line
    assert line["acted"] is True
    assert line["error"] is None
    assert line["faults"] == []
    assert seen.metrics[pool]["ScalerErrors"] == 0


def assert_held(seen: Observed, pool: str, fault: Fault, why: str) -> None:
    """A pool that could not read (or write) what it needed kept its count, said why, and counted it."""
    line = seen.logs[pool]
    assert seen.desired[pool] == START[pool], line
    assert line["acted"] is False
    assert line["level"] == "ERROR"
    assert why in (line["error"] or ""), line["error"]
    assert fault in line["faults"]
    assert seen.metrics[pool]["ScalerErrors"] == 1
    if fault.metric is not None:
        assert seen.metrics[pool][fault.metric] == 1


# --- one AWS call failing -------------------------------------------------------------------------

Inject = Callable[[Scaler], object]
for_a: Callable[[dict[str, Any]], bool] = lambda params: params.get("service") == "worker-a"  # noqa: E731
for_b_item: Callable[[dict[str, Any]], bool] = lambda params: params["Item"]["pool"]["S"] == "b"  # noqa: E731

CALL_FAULTS: dict[str, tuple[Inject, dict[str, tuple[Fault, str]]]] = {
    "BatchGetItem throttled on every attempt": (
        lambda s: answer_sends(s.dynamodb, "BatchGetItem", "ProvisionedThroughputExceededException"),
        {p: (Fault.STATE, "ProvisionedThroughputExceededException") for p in "ab"},
    ),
    "BatchGetItem AccessDenied": (
        lambda s: refuse_calls(s.dynamodb, "BatchGetItem", "AccessDeniedException"),
        {p: (Fault.STATE, "AccessDeniedException") for p in "ab"},
    ),
    "BatchGetItem read timeout": (
        lambda s: raise_on_send(s.dynamodb, "BatchGetItem", lambda: ReadTimeoutError(endpoint_url="x"), applied=True),
        {p: (Fault.STATE, "Read timeout") for p in "ab"},
    ),
    "b's key left unprocessed on every read": (
        lambda s: leave_unprocessed(s.dynamodb, ["b"]),
        {"b": (Fault.STATE, "left the item unprocessed after 4 BatchGetItem calls")},
    ),
    "PutItem AccessDenied for b": (
        lambda s: refuse_calls(s.dynamodb, "PutItem", "AccessDeniedException", when=for_b_item),
        {"b": (Fault.STATE, "writing pool 'b' to state table")},
    ),
    "PutItem throttled for b": (
        lambda s: refuse_calls(s.dynamodb, "PutItem", "ProvisionedThroughputExceededException", when=for_b_item),
        {"b": (Fault.STATE, "ProvisionedThroughputExceededException")},
    ),
    "DescribeServices throttled on every attempt": (
        lambda s: answer_sends(s.ecs, "DescribeServices", "ThrottlingException"),
        {p: (Fault.ECS, "ThrottlingException") for p in "ab"},
    ),
    "DescribeServices AccessDenied": (
        lambda s: refuse_calls(s.ecs, "DescribeServices", "AccessDeniedException"),
        {p: (Fault.ECS, "AccessDeniedException") for p in "ab"},
    ),
    "DescribeServices read timeout": (
        lambda s: raise_on_send(s.ecs, "DescribeServices", lambda: ReadTimeoutError(endpoint_url="x"), applied=True),
        {p: (Fault.ECS, "Read timeout") for p in "ab"},
    ),
    "DescribeServices connect timeout": (
        lambda s: raise_on_send(
            s.ecs, "DescribeServices", lambda: ConnectTimeoutError(endpoint_url="x"), applied=False
        ),
        {p: (Fault.ECS, "Connect timeout") for p in "ab"},
    ),
    "UpdateService for a: connect timeout": (
        lambda s: raise_on_send(
            s.ecs, "UpdateService", lambda: ConnectTimeoutError(endpoint_url="x"), applied=False, when=for_a
        ),
        {"a": (Fault.ECS, "Connect timeout")},
    ),
    "UpdateService for a throttled": (
        lambda s: refuse_calls(s.ecs, "UpdateService", "ThrottlingException", when=for_a),
        {"a": (Fault.ECS, "ThrottlingException")},
    ),
    "UpdateService for a AccessDenied": (
        lambda s: refuse_calls(s.ecs, "UpdateService", "AccessDeniedException", when=for_a),
        {"a": (Fault.ECS, "AccessDeniedException")},
    ),
}


@pytest.mark.parametrize("fault", list(CALL_FAULTS))
def test_a_failing_aws_call_holds_only_the_pools_it_concerns(rig: Rig, fault: str) -> None:
    inject, held = CALL_FAULTS[fault]
    hits = inject(rig.scaler)

    seen = rig.tick()

    assert hits, "the fault was injected"
    for pool in ("a", "b"):
        if pool in held:
            assert_held(seen, pool, *held[pool])
        else:
            assert_acted(seen, pool)


@pytest.mark.parametrize(
    ("operation", "retried"),
    [("BatchGetItem", "ProvisionedThroughputExceededException"), ("DescribeServices", "ThrottlingException")],
)
def test_throttled_reads_are_retried_a_bounded_number_of_times(rig: Rig, operation: str, retried: str) -> None:
    client = rig.scaler.dynamodb if operation == "BatchGetItem" else rig.scaler.ecs
    once = answer_sends(client, operation, retried, times=1)
    calls = count_calls(client, operation)

    seen = rig.tick()

    assert len(once) == 1
    assert len(calls) == 1, "one API call: botocore retried the throttled attempt inside it"
    assert len(rig.botocore_waits) == 1
    assert 0 <= rig.botocore_waits[0] <= 1, "standard mode: full jitter, at most 1 s before the first retry"
    assert_acted(seen, "a")
    assert_acted(seen, "b")


def test_a_key_unprocessed_once_is_read_again_after_a_jittered_wait(rig: Rig) -> None:
    rewrites = leave_unprocessed(rig.scaler.dynamodb, ["b"], times=1)
    calls = count_calls(rig.scaler.dynamodb, "BatchGetItem")

    seen = rig.tick()

    assert rewrites == [1]
    assert len(calls) == 2
    assert len(rig.waits) == 1
    assert 0 <= rig.waits[0] < 0.1
    assert_acted(seen, "a")
    assert_acted(seen, "b")


def test_a_throttled_describe_batch_holds_only_its_own_services(rig: Rig) -> None:
    throttled = answer_sends(
        rig.scaler.ecs, "DescribeServices", "ThrottlingException", when=lambda p: "worker-b" in p["services"]
    )

    seen = rig.tick(config=make_config(fillers=True))

    assert len(throttled) == MAX_ATTEMPTS
    assert throttled[0]["services"] == ["worker-b"], "the 11th service is alone in the second batch"
    assert_acted(seen, "a")
    assert_held(seen, "b", Fault.ECS, "ThrottlingException")
    assert all(seen.logs[name]["error"] is None for name in FILLERS)


def test_a_read_timeout_on_update_may_have_applied_and_the_next_tick_sees_it(rig: Rig) -> None:
    """The update reached ECS but its answer was lost: reported as an error, never repeated or undone."""
    raise_on_send(rig.scaler.ecs, "UpdateService", lambda: ReadTimeoutError(endpoint_url="x"), applied=True, when=for_a)

    seen = rig.tick()

    assert "Read timeout" in seen.logs["a"]["error"]
    assert seen.logs["a"]["faults"] == ["ecs"]
    assert seen.metrics["a"]["EcsErrors"] == 1
    assert seen.desired["a"] == 10, "moto applied it before the answer was lost"
    assert_acted(seen, "b")
    rig.scaler.updates.clear()
    again = rig.tick(now=time.time() + 5)
    assert again.logs["a"]["reason"].startswith("steady")
    assert "a" not in again.update_calls


# --- ECS services ---------------------------------------------------------------------------------


def test_a_missing_service_among_healthy_ones_is_not_acted_on(rig: Rig) -> None:
    config = make_config()
    config = replace(config, pools=(config.pools[0], replace(config.pools[1], service="worker-ghost")))

    seen = rig.tick(config=config)

    assert_acted(seen, "a")
    line = seen.logs["b"]
    assert "'worker-ghost' not found in cluster 'celery'" in line["error"]
    assert line["faults"] == ["ecs"]
    assert seen.metrics["b"]["EcsErrors"] == 1
    assert seen.update_calls == {"a"}


def test_an_inactive_service_among_healthy_ones_is_not_acted_on(rig: Rig) -> None:
    rig.ecs.delete_service(cluster=CLUSTER, service="worker-b", force=True)

    seen = rig.tick()

    assert_acted(seen, "a")
    line = seen.logs["b"]
    assert "'worker-b' in cluster 'celery' is INACTIVE" in line["error"]
    assert line["faults"] == ["ecs"]
    assert seen.metrics["b"]["EcsErrors"] == 1
    assert "b" not in seen.update_calls


# --- corrupt state items --------------------------------------------------------------------------

GOOD = '{"recommendations":[],"idle_since":null,"last_action_at":null,"last_desired":null,"consecutive_failures":0}'
CORRUPT_ITEMS: dict[str, dict[str, Any]] = {
    "not JSON": {"version": {"N": "3"}, "state": {"S": "{truncated"}},
    "a field missing": {"version": {"N": "3"}, "state": {"S": '{"recommendations":[]}'}},
    "a field of the wrong type": {
        "version": {"N": "3"},
        "state": {"S": GOOD.replace('"idle_since":null', '"idle_since":"x"')},
    },
    "nested 100k deep": {"version": {"N": "3"}, "state": {"S": "[" * 100_000}},
    "version not a number": {"version": {"S": "three"}, "state": {"S": GOOD}},
    "no version": {"state": {"S": GOOD}},
}


@pytest.mark.parametrize("case", list(CORRUPT_ITEMS))
def test_a_corrupt_state_item_holds_its_pool_and_heals(rig: Rig, case: str) -> None:
    rig.scaler.dynamodb.put_item(TableName=TABLE, Item={"pool": {"S": "b"}, **CORRUPT_ITEMS[case]})
    now = time.time()

    seen = rig.tick(now=now)

    assert_acted(seen, "a")
    assert_held(seen, "b", Fault.STATE, "state unreadable (state item")
    assert "state reset to the current count" in seen.logs["b"]["error"]
    healed = rig.scaler.store.load(["b"])["b"]
    assert isinstance(healed, PoolState)
    assert healed.recommendations == ((now, START["b"]),)
    # One task waits on qb (nothing waiting would be a burst's end, which drops at once): a fresh state
    # would scale b in now; the seeded window keeps 2 for 30 s.
    publish(redis_url_for(DB), 1, "qb")
    later = rig.tick(now=now + 10)
    assert later.logs["b"]["error"] is None
    assert later.logs["b"]["reason"].startswith("steady")
    assert later.desired["b"] == START["b"]


def test_a_state_item_stamped_by_a_clock_an_hour_ahead_is_not_trusted(rig: Rig) -> None:
    now = time.time()
    current = rig.scaler.store.load(["b"])["b"]
    assert isinstance(current, PoolState)
    rig.scaler.store.save("b", replace(current, recommendations=((now + 3600, START["b"]),), last_desired=START["b"]))

    seen = rig.tick(now=now)

    assert_acted(seen, "a")
    assert_held(seen, "b", Fault.CLOCK, "state untrusted (it holds a timestamp 3600 s ahead")
    healed = rig.scaler.store.load(["b"])["b"]
    assert isinstance(healed, PoolState)
    assert healed.recommendations == ((now, START["b"]),), "reset to now, not stuck until the clock catches up"


# --- clock skew between the tick and the broker reading ----------------------------------------------


@pytest.mark.parametrize(("offset", "side"), [(3600.0, "behind"), (-3600.0, "ahead of")])
def test_a_reading_far_from_the_ticks_clock_holds_every_pool(rig: Rig, offset: float, side: str) -> None:
    seen = rig.tick(now=time.time() + offset)

    assert seen.result.broker_error is not None
    assert f"s {side} the tick's clock (allowed {CLOCK_SKEW_S:g} s)" in seen.result.broker_error
    for pool in ("a", "b"):
        assert_held(seen, pool, Fault.CLOCK, "broker reading stamped")
        assert seen.logs[pool]["reason"].startswith("hold: broker unreadable")


# --- two invocations at once ----------------------------------------------------------------------


def test_two_invocations_at_once_act_on_each_pool_exactly_once(rig: Rig) -> None:
    both_loaded = threading.Barrier(2, timeout=60)
    writes = threading.Lock()
    scalers = [Scaler(rig.waits), Scaler(rig.waits)]
    for scaler in scalers:
        scaler.dynamodb.meta.events.register("after-call.dynamodb.BatchGetItem", lambda **_: both_loaded.wait())
        atomic_conditional_writes(scaler.dynamodb, writes)
    seen: list[Observed] = []
    now = time.time()
    threads = [threading.Thread(target=lambda s=s: seen.append(rig.tick(scaler=s, now=now))) for s in scalers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(seen) == 2
    for pool in ("a", "b"):
        acted = [s for s in seen if s.logs[pool]["acted"]]
        stood_back = [s for s in seen if s.logs[pool]["conflict"]]
        assert (len(acted), len(stood_back)) == (1, 1), pool
        assert stood_back[0].logs[pool]["error"] is None, "standing back is expected, not an error"
        assert sum(pool in s.update_calls for s in seen) == 1
    assert {pool: desired_count(rig.ecs, f"worker-{pool}") for pool in ("a", "b")} == {"a": 10, "b": START["b"] - 1}
    states = rig.scaler.store.load(["a", "b"])
    assert all(isinstance(state, PoolState) and state.version == 2 for state in states.values())
