"""The Lambda handler in-process: real Redis (db 5) or RabbitMQ, moto ECS/DynamoDB/Secrets Manager, real stdout."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import boto3
import pytest
import redis
from brokers import RabbitBroker
from celery_apps import publish
from conftest import redis_url_for
from moto import mock_aws
from moto_aws import (
    CLUSTER,
    REGION,
    aws_env,
    botocore_sleeps,
    create_services,
    create_state_table,
    desired_count,
    error_response,
)
from waiting import wait_until

from celery_autoscaler import handler
from celery_autoscaler.aws import MAX_ATTEMPTS
from celery_autoscaler.config import ConfigError
from celery_autoscaler.drain import FOLLOW_UP_S
from celery_autoscaler.handler import CONFIG_ENV, lambda_handler, run_invocation, runtime
from celery_autoscaler.tick import PoolOutcome, TickResult

DB = 5
BROKER = redis_url_for(DB)
pytestmark = pytest.mark.redis_db(DB)


def config_doc(**top: Any) -> dict[str, Any]:
    return {
        "broker": {"url": redis_url_for(DB)},
        "cluster": CLUSTER,
        "state_table": "celery-autoscaler-state",
        "tick_interval_s": 0.05,
        "ticks_per_invocation": 2,
        "pools": {"default": {"service": "worker-default", "queues": ["celery"], "concurrency": 2}},
        **top,
    }


@dataclass
class Context:
    """The part of the Lambda context object the handler uses."""

    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, redis_db: redis.Redis) -> Iterator[Any]:
    aws_env(monkeypatch)
    runtime.cache_clear()
    with mock_aws():
        ecs = create_services(["worker-default"])
        create_state_table()
        yield ecs
    runtime.cache_clear()


def stdout_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_handler_runs_its_ticks_and_scales(
    aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc()))
    publish(BROKER, 7)
    answer = lambda_handler({}, Context())
    assert answer["ticks"] == 2
    assert answer["actions"] == 1
    assert answer["errors"] == 0
    assert answer["pools"]["default"]["desired"] == 4
    assert answer["dry_run"] is False
    assert desired_count(aws) == 4
    lines = stdout_lines(capsys)
    assert [line["pool"] for line in lines if line.get("message") == "pool tick"] == ["default", "default"]
    assert sum(1 for line in lines if "_aws" in line) == 6  # per pool, per queue and Ticks, twice
    assert [line["Ticks"] for line in lines if "Ticks" in line] == [1, 1], "one Ticks per completed tick"


def test_dry_run_event_decides_without_updating(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc(ticks_per_invocation=1)))
    publish(BROKER, 3)
    answer = lambda_handler({"dry_run": True}, Context())
    assert answer["dry_run"] is True
    assert answer["pools"]["default"]["desired"] == 2
    assert answer["actions"] == 0
    assert desired_count(aws) == 0


def test_config_dry_run_also_holds_back(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc(ticks_per_invocation=1, dry_run=True)))
    publish(BROKER, 3)
    assert lambda_handler(None, Context())["actions"] == 0
    assert desired_count(aws) == 0


@pytest.mark.usefixtures("aws")
def test_config_is_parsed_once_per_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc(ticks_per_invocation=1)))
    first = runtime()
    monkeypatch.setenv(CONFIG_ENV, "{not json")
    assert lambda_handler({}, Context())["ticks"] == 1
    assert runtime() is first


@pytest.mark.usefixtures("aws")
def test_bad_config_fails_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = config_doc()
    doc["pools"]["default"]["max_workers"] = 0
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    with pytest.raises(ConfigError) as failure:
        lambda_handler({}, Context())
    assert failure.value.field == "pools.default.max_workers"


@pytest.mark.usefixtures("aws")
def test_missing_config_and_missing_state_table_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ConfigError) as failure:
        lambda_handler({}, Context())
    assert failure.value.field == CONFIG_ENV
    doc = config_doc()
    del doc["state_table"]
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    with pytest.raises(ConfigError) as failure:
        lambda_handler({}, Context())
    assert failure.value.field == "state_table"


@pytest.mark.parametrize("stored", ["plain", "json"])
def test_broker_url_is_read_once_from_secrets_manager(aws: Any, monkeypatch: pytest.MonkeyPatch, stored: str) -> None:
    secrets = boto3.client("secretsmanager", region_name=REGION)
    url = redis_url_for(DB)
    value = url if stored == "plain" else json.dumps({"url": url, "note": "written by terraform"})
    arn = secrets.create_secret(Name="celery/broker", SecretString=value)["ARN"]
    doc = config_doc(ticks_per_invocation=1)
    doc["broker"] = {"url_secret_arn": arn}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    publish(BROKER, 5)
    assert lambda_handler({}, Context())["pools"]["default"]["desired"] == 3
    secrets.put_secret_value(SecretId=arn, SecretString="redis://127.0.0.1:1/0")
    assert lambda_handler({}, Context())["errors"] == 0, "the warm container keeps the URL it read"
    assert desired_count(aws) == 3


def test_rabbitmq_through_the_url_secret_and_the_management_api(
    aws: Any, monkeypatch: pytest.MonkeyPatch, rabbitmq: RabbitBroker
) -> None:
    queue = f"handler-{uuid.uuid4().hex[:8]}"  # the session's node is shared: a queue of this test's own
    publish(rabbitmq.amqp_url, 5, queue=queue)
    path = f"/api/queues/%2F/{queue}"
    try:
        wait_until(lambda: cast(dict[str, Any], rabbitmq.management_get(path)).get("messages_ready") == 5)
        secrets = boto3.client("secretsmanager", region_name=REGION)
        arn = secrets.create_secret(Name="celery/rabbitmq", SecretString=rabbitmq.amqp_url)["ARN"]
        pool = {"service": "worker-default", "queues": [queue], "concurrency": 2}
        doc = config_doc(ticks_per_invocation=1, pools={"default": pool})
        doc["broker"] = {"url_secret_arn": arn, "management_url": rabbitmq.management_url}
        monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
        assert lambda_handler({}, Context())["pools"]["default"]["desired"] == 3
        assert desired_count(aws) == 3
    finally:
        rabbitmq.management_request("DELETE", path)


@pytest.mark.usefixtures("aws")
def test_unusable_secret_names_the_field_without_leaking_it(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.create_secret(Name="celery/broker", SecretString="kafka://user:hunter2@rabbit//")["ARN"]
    doc = config_doc()
    doc["broker"] = {"url_secret_arn": arn}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    with pytest.raises(ConfigError) as failure:
        lambda_handler({}, Context())
    assert failure.value.field == "broker.url_secret_arn"
    assert "hunter2" not in str(failure.value)
    runtime.cache_clear()
    doc["broker"] = {"url_secret_arn": arn.replace("celery/broker", "celery/absent")}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    with pytest.raises(ConfigError, match="ResourceNotFoundException"):
        lambda_handler({}, Context())


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("redis://:hunter2@redis.internal:70000/0", "port must be a number from 1 to 65535"),
        ("rediss://:hunter2@redis.internal:6379/db1", "db must be a whole number"),
        ('{"url": "redis://:hunter2@:6379/0"}', "has no host"),
        ("redis://:hunter2 @redis.internal:6379/0", "must be a URL without whitespace"),
    ],
)
def test_bad_url_in_the_secret_fails_cold_start_naming_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, problem: str
) -> None:
    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.create_secret(Name="celery/broker", SecretString=value)["ARN"]
    doc = config_doc()
    doc["broker"] = {"url_secret_arn": arn}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    with pytest.raises(ConfigError) as failure:
        runtime()
    assert failure.value.field == "broker.url_secret_arn"
    assert f"secret {arn} does not hold a valid broker URL: {problem}" in failure.value.message
    assert "hunter2" not in str(failure.value) + "".join(capsys.readouterr())


@dataclass
class FakeTime:
    """A clock that only moves when the handler sleeps or a tick takes time: no real waiting."""

    now: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.usefixtures("aws")
def test_ticks_are_spaced_and_stop_before_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc(ticks_per_invocation=4, tick_interval_s=15)))
    fake = FakeTime()
    deadline = 40.0
    started: list[float] = []
    real_run_tick = handler.run_tick

    def timed_run_tick(*args: Any, **kwargs: Any) -> Any:
        started.append(fake.now)
        fake.now += 2.0  # this tick takes 2 s
        return real_run_tick(*args, **kwargs)

    monkeypatch.setattr(handler, "run_tick", timed_run_tick)
    answer = run_invocation(
        runtime(), {}, lambda: int((deadline - fake.now) * 1000), clock=lambda: fake.now, sleep=fake.sleep
    )
    # Ticks at 0, 15, 30; one at 45 would end after the 40 s deadline.
    assert started == [0.0, 15.0, 30.0]
    assert answer["ticks"] == 3


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize(("deadline", "expected"), [(70.0, [50.0]), (52.0, [])])
def test_a_tick_that_asks_workers_to_drain_gets_a_follow_up_for_those_pools(
    monkeypatch: pytest.MonkeyPatch, deadline: float, expected: list[float]
) -> None:
    """Seconds after a tick that left workers to drain, one more tick for that pool lowers by those that drained."""
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc(ticks_per_invocation=4, tick_interval_s=15)))
    fake = FakeTime()
    calls: list[tuple[float, tuple[str, ...] | None]] = []

    def draining_run_tick(*args: Any, follow_up: tuple[str, ...] | None = None, **kwargs: Any) -> TickResult:
        calls.append((fake.now, follow_up))
        fake.now += 2.0  # every tick takes 2 s
        regular = follow_up is None
        pending = 2 if regular and len(calls) in (1, 5) else 0  # the first and the last regular tick ask to drain
        outcome = PoolOutcome("default", "worker-default", None, None, acted=False, drain_pending=pending)
        return TickResult(outcomes=(outcome,), now=fake.now)

    monkeypatch.setattr(handler, "run_tick", draining_run_tick)
    answer = run_invocation(
        runtime(), {}, lambda: int((deadline - fake.now) * 1000), clock=lambda: fake.now, sleep=fake.sleep
    )
    # The follow-ups run 3 s after their tick ended and are not among the 4 ticks; the one after the
    # last tick (at 50 s, ending at 52 s) only when it fits the time left with SAFETY_MARGIN_S to spare.
    assert calls == [
        (0.0, None),
        (2.0 + FOLLOW_UP_S, ("default",)),
        (15.0, None),
        (30.0, None),
        (45.0, None),
        *[(at, ("default",)) for at in expected],
    ]
    assert (answer["ticks"], answer["follow_ups"]) == (5 + len(expected), 1 + len(expected))


def test_a_failed_tick_is_logged_and_the_remaining_ticks_still_run(
    aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(config_doc()))
    publish(BROKER, 7)
    real_run_tick = handler.run_tick
    calls: list[int] = []

    def first_tick_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("telemetry stream closed")
        return real_run_tick(*args, **kwargs)

    monkeypatch.setattr(handler, "run_tick", first_tick_fails)
    answer = lambda_handler({}, Context())
    assert answer["ticks"] == 2
    assert answer["actions"] == 1, "the second tick still ran and scaled"
    assert answer["errors"] == 1
    assert answer["failures"] == [
        {"tick": 0, "pool": None, "faults": ["bug"], "error": "tick failed: RuntimeError: telemetry stream closed"}
    ]
    assert desired_count(aws) == 4
    lines = stdout_lines(capsys)
    failed = next(line for line in lines if line.get("message") == "tick failed")
    assert failed["level"] == "ERROR"
    assert "Traceback (most recent call last)" in failed["exception"]
    bug_metric = next(line for line in lines if "_aws" in line and "ScalerBugs" in line)
    assert bug_metric["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]


def test_the_summary_names_every_pool_that_failed_on_every_tick(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = config_doc()
    doc["pools"]["gone"] = {"service": "worker-gone", "queues": ["gone"]}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    publish(BROKER, 3)
    answer = lambda_handler({}, Context())
    assert answer["errors"] == 2
    assert [(f["tick"], f["pool"], f["faults"]) for f in answer["failures"]] == [
        (0, "gone", ["ecs"]),
        (1, "gone", ["ecs"]),
    ]
    assert "'worker-gone' not found in cluster 'celery'" in answer["failures"][0]["error"]
    assert answer["pools"]["default"]["desired"] == 2
    assert desired_count(aws) == 2


@pytest.mark.usefixtures("aws")
def test_a_throttled_secret_read_at_cold_start_is_retried_then_names_the_field_never_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits = botocore_sleeps(monkeypatch)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.create_secret(Name="celery/broker", SecretString="redis://:hunter2@127.0.0.1:6379/0")["ARN"]
    doc = config_doc()
    doc["broker"] = {"url_secret_arn": arn}
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    # The scaler makes its Secrets Manager client from boto3's default session: inject there, before it exists.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    boto3.setup_default_session()
    attempts: list[str] = []

    def throttle(request: Any, **_: Any) -> Any:
        attempts.append(request.url)
        return error_response("ThrottlingException")

    boto3.DEFAULT_SESSION.events.register_first("before-send.secrets-manager.GetSecretValue", throttle)
    with pytest.raises(ConfigError) as failure:
        lambda_handler({}, Context())
    assert failure.value.field == "broker.url_secret_arn"
    assert "ThrottlingException" in str(failure.value)
    assert "hunter2" not in str(failure.value)
    assert len(attempts) == MAX_ATTEMPTS, "bounded standard retries, as configured for every scaler client"
    assert len(waits) == MAX_ATTEMPTS - 1
