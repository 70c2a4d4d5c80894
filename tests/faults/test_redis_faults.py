"""Redis faults against the real tick: a real Redis (db 11), the real RedisProbe, ECS and DynamoDB on moto.

Two pools: ``a`` has a burst waiting on ``qa`` (it must scale out), ``b`` has an empty ``qb`` at 2 workers
(it would scale in to 1 if its queue read as empty). Each fault is injected, one tick runs, and every
case asserts:
- no pool lowers its count on data it could not read, and unaffected pools still act;
- the reason is in the pool's log line and in a metric (the Telemetry stream, parsed as strict JSON);
- nothing in Redis changed (every key's type and DUMP, before and after);
- the Redis password appears in no output (telemetry, log records, the tick's result).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from conftest import REDIS_HOST, REDIS_PORT
from fault_checks import snapshot, strict_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto_aws import CLUSTER, aws_env, create_services, create_state_table, desired_count
from redis_acl import documented_acl_rules

from celery_autoscaler.cli import main
from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.counters import stats_key
from celery_autoscaler.ecs import EcsActuator
from celery_autoscaler.probe import probe_for
from celery_autoscaler.probe.redis import MAX_PLAUSIBLE_AGE_S
from celery_autoscaler.state import DynamoStateStore, InMemoryStateStore, StateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import TickResult, run_tick

DB = 11
SEP = "\x06\x16"
SECRET = "Fault-Suite-s3cret-7f3a"
WRONG = "Wrong-Pa55word-91c2"
USER = "fault_scaler"
START = 2
BURST = 20
pytestmark = pytest.mark.redis_db(DB)


def set_user(client: redis.Redis, *, keys: tuple[str, ...] | None = None, drop: tuple[str, ...] = ()) -> None:
    """The scaler's ACL user: the docs' rules with this suite's password, other key patterns, or commands dropped."""
    _, _, rules = documented_acl_rules()
    if keys is not None:  # key patterns (~ and Redis 7's %R~, %RW~) replaced
        rules = [f"~{k}" for k in keys] + [r for r in rules if not r.startswith(("~", "%"))]
    rules = [r for r in rules if r not in drop]
    client.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{SECRET}", *rules)


def closed_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(url: str) -> ScalerConfig:
    pool = {"concurrency": 1, "max_workers": 10, "scale_in_window_s": 1, "idle_window_s": 1}
    return parse_config(
        {
            "broker": {"url": url, "socket_timeout_s": 0.5, "unacked_scan_interval_s": 0},
            "cluster": CLUSTER,
            "state_table": "celery-autoscaler-state",
            "metrics_namespace": "Faults",
            "pools": {
                "a": {"service": "worker-a", "queues": ["qa"], **pool},
                "b": {"service": "worker-b", "queues": ["qb"], **pool},
            },
        }
    )


def user_url(password: str = SECRET, port: int | None = None) -> str:
    return f"redis://{USER}:{password}@{REDIS_HOST}:{port or REDIS_PORT}/{DB}"


@dataclass
class Observed:
    """One tick's outputs: the result, each pool's log line and pool metrics, and everything written."""

    result: TickResult
    logs: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    text: str
    desired: dict[str, int]


@dataclass
class Rig:
    ecs: Any
    client: redis.Redis
    caplog: pytest.LogCaptureFixture

    def reset(self) -> None:
        """Both services at START workers, the burst on qa (stamped now), qb empty."""
        for service in ("worker-a", "worker-b"):
            self.ecs.update_service(cluster=CLUSTER, service=service, desiredCount=START)
        message = json.dumps({"headers": {"id": "burst", "x_published_at": time.time()}, "body": ""})
        self.client.delete("qa")
        self.client.rpush("qa", *[message] * BURST)

    def tick(self, url: str, store: StateStore | None = None, inject: Callable[[], object] = lambda: None) -> Observed:
        """One real tick; ``inject`` runs after the 'before' snapshot, just before the tick."""
        config = make_config(url)
        stream = io.StringIO()
        probe = probe_for(config.broker, url)
        before = snapshot(self.client)
        inject()
        self.caplog.clear()
        with self.caplog.at_level(logging.WARNING):
            try:
                result = run_tick(
                    config,
                    probe,
                    EcsActuator(CLUSTER, client=self.ecs),
                    store or DynamoStateStore("celery-autoscaler-state"),
                    time.time(),
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
        for secret in (SECRET, WRONG):
            assert secret not in text, "a password reached the output"
        desired = {pool: desired_count(self.ecs, f"worker-{pool}") for pool in ("a", "b")}
        return Observed(result, logs, metrics, text, desired)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture) -> Iterator[Rig]:
    aws_env(monkeypatch)
    set_user(redis_db)
    with mock_aws():
        ecs = create_services(["worker-a", "worker-b"], desired=START)
        create_state_table()
        made = Rig(ecs, redis_db, caplog)
        made.reset()
        try:
            yield made
        finally:
            redis_db.execute_command("ACL", "DELUSER", USER)


def assert_acted_normally(seen: Observed, pool: str) -> None:
    """An unaffected pool decided on its data: out to the burst for ``a``, the first step in for empty ``b``."""
    expected = {"a": 10, "b": START - 1}[pool]
    assert seen.desired[pool] == expected, seen.logs[pool]["reason"]
    assert seen.logs[pool]["reason"].split(":")[0] == {"a": "scale out", "b": "wait idle"}[pool]
    assert seen.metrics[pool]["UnreadableQueues"] == 0


def assert_held(seen: Observed, pool: str, why: str, metric: str) -> None:
    """A pool that could not read its data kept its count and said why, in the log line and a metric."""
    line = seen.logs[pool]
    assert seen.desired[pool] == START, line["reason"]
    assert line["reason"].startswith("hold:"), line["reason"]
    assert why in line["reason"] or why in (line["error"] or ""), line
    assert seen.metrics[pool][metric] >= 1


# --- the broker as a whole -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "url", "why"),
    [
        ("refused", lambda: user_url(port=closed_port()), "broker unreadable"),
        ("paused", user_url, "broker unreadable"),
        ("wrong password", lambda: user_url(WRONG), "broker unreadable"),
        ("unacked of the wrong type", user_url, "'unacked'"),
        ("ACL denies the unacked hash", user_url, "'unacked'"),
    ],
)
def test_the_broker_unreadable_holds_every_pool(rig: Rig, fault: str, url: Callable[[], str], why: str) -> None:
    pauser = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)

    def inject() -> None:
        if fault == "paused":  # longer than the probe's socket timeout, from another connection
            pauser.execute_command("CLIENT", "PAUSE", 1500, "ALL")

    if fault == "unacked of the wrong type":
        rig.client.set("unacked", "a string where kombu keeps a hash")
    elif fault == "ACL denies the unacked hash":
        set_user(rig.client, keys=("q*", "_kombu.*", "_celery_autoscaler.*"))

    seen = rig.tick(url(), inject=inject)
    pauser.close()

    assert seen.result.broker_error is not None
    for pool in ("a", "b"):
        assert_held(seen, pool, why, "ScalerErrors")
        assert seen.logs[pool]["error"].startswith("broker unavailable")


# --- one queue -----------------------------------------------------------------------------------

QUEUE_FAULTS: dict[str, tuple[Callable[[Rig], None], str]] = {
    "a string sharing b's queue name": (lambda r: r.client.set("qb", "stray"), "WRONGTYPE"),
    "a hash sharing b's priority sub-list": (lambda r: r.client.hset(f"qb{SEP}9", "f", "v"), "WRONGTYPE"),
    "a set sharing b's queue name": (lambda r: r.client.sadd("qb", "member"), "WRONGTYPE"),
    "an ACL denying b's keys": (lambda r: set_user(r.client, keys=("qa*", "unacked", "_kombu.*")), "NoPermission"),
}


@pytest.mark.parametrize("fault", list(QUEUE_FAULTS))
def test_one_unreadable_queue_holds_only_its_pool(rig: Rig, fault: str) -> None:
    inject, why = QUEUE_FAULTS[fault]
    inject(rig)

    seen = rig.tick(user_url())

    assert seen.result.broker_error is None
    assert_acted_normally(seen, "a")
    assert_held(seen, "b", why, "UnreadableQueues")
    assert "'qb'" in seen.logs["b"]["reason"]
    assert why in seen.logs["b"]["unreadable_queues"]["qb"]
    assert seen.logs["b"]["measurements"]["queues"]["qb"]["error"] is not None


# --- faults that lose only optional readings -----------------------------------------------------

OPTIONAL_FAULTS: dict[str, tuple[Callable[[Rig], None], str]] = {
    "a's counter key of the wrong type": (lambda r: r.client.set(stats_key("", "qa"), "x"), "counters"),
    "a binding set of the wrong type": (lambda r: r.client.set("_kombu.binding.qb", "x"), "binding set"),
    "an ACL without SCAN and HMGET": (lambda r: set_user(r.client, drop=("+scan", "+hmget")), "cannot"),
}


@pytest.mark.parametrize("fault", list(OPTIONAL_FAULTS))
def test_a_fault_in_optional_readings_changes_no_decision(rig: Rig, fault: str) -> None:
    inject, warning = OPTIONAL_FAULTS[fault]
    inject(rig)

    seen = rig.tick(user_url())

    assert_acted_normally(seen, "a")
    assert_acted_normally(seen, "b")  # its queue was read: scaling in is right
    assert warning in seen.text


def test_an_undeclared_queue_is_said_out_loud_every_tick(rig: Rig) -> None:
    for _ in range(2):
        seen = rig.tick(user_url())
        assert [seen.metrics[p]["UndeclaredQueues"] for p in ("a", "b")] == [1, 1]
        assert seen.logs["b"]["measurements"]["queues"]["qb"]["declared"] is False
        assert f"'qb' was never declared by a Celery app (db {DB}, key prefix '')" in seen.text


# --- poison messages -----------------------------------------------------------------------------

_odd_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from(["NaN", "-inf", "inf", "1e999", "0", "-1", "9999-12-31T23:59:59-23:59", "0001-01-01", ""]),
)
_json = st.recursive(
    st.none() | st.booleans() | _odd_numbers | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_header_values = _odd_numbers | _json
_headers = st.fixed_dictionaries(
    {}, optional={"id": _json | st.text(max_size=8), "x_published_at": _header_values, "eta": _header_values}
)
_message = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=50_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(min_value=1, max_value=50_000).map(lambda depth: b'{"headers":' * depth),
    _json.map(lambda value: json.dumps(value).encode()),
    _headers.map(lambda headers: json.dumps({"headers": headers, "body": ""}).encode()),
)
_unacked_entry = st.one_of(
    _message,
    st.tuples(_headers, st.text(max_size=5), st.sampled_from(["qb", "qa", ""])).map(
        lambda t: json.dumps([{"headers": t[0]}, t[1], t[2]]).encode()
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tails=st.lists(st.tuples(st.sampled_from(["", f"{SEP}3", f"{SEP}9"]), _message), min_size=1, max_size=4),
    entries=st.lists(_unacked_entry, max_size=3),
)
def test_poison_messages_never_fail_the_tick(rig: Rig, tails: list[tuple[str, bytes]], entries: list[bytes]) -> None:
    rig.reset()
    for key in [k for k in rig.client.scan_iter() if k not in {b"qa"}]:
        rig.client.delete(key)
    for suffix, raw in tails:
        rig.client.lpush(f"qb{suffix}", raw)
    for i, raw in enumerate(entries):
        rig.client.hset("unacked", f"tag-{i}", raw)

    seen = rig.tick(user_url(), store=InMemoryStateStore())

    assert seen.result.broker_error is None
    assert seen.desired["a"] == 10
    queue = seen.logs["b"]["measurements"]["queues"]["qb"]
    assert queue["waiting"] == len(tails)  # every poison message still counts as waiting
    assert queue["error"] is None
    age = queue["oldest_age_s"]
    assert age is None or 0 <= age <= MAX_PLAUSIBLE_AGE_S, "an age from a stamp the probe should not believe"
    assert not seen.logs["b"]["reason"].startswith("hold:")
    assert seen.desired["b"] >= 1  # demand is at least the poison messages it cannot read


def test_measure_reports_faults_as_valid_json(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.client.set("qb", "stray")
    rig.client.rpush("qa", json.dumps({"headers": {"id": "t-inf", "x_published_at": "-inf"}}))  # the oldest
    before = snapshot(rig.client)

    code = main(["measure", "--broker-url", user_url(), "--queue", "qa", "--queue", "qb", "--json"])

    out, err = capsys.readouterr()
    assert code == 1  # a queue could not be read
    body = strict_json(out)
    qa, qb = body["queues"]["qa"], body["queues"]["qb"]
    assert (qa["waiting"], qa["oldest_age_s"], qa["error"], qa["declared"]) == (BURST + 1, None, None, False)
    assert "WRONGTYPE" in qb["error"]
    assert f"queue 'qa' was never declared by a Celery app (db {DB}, key prefix '')" in rig.caplog.text
    assert "queue 'qb' unreadable" in err
    assert SECRET not in out + err + rig.caplog.text
    assert snapshot(rig.client) == before
