"""The scaler's AWS calls that LocalStack's free edition emulates on the host: STS, Secrets Manager, CloudWatch.

LocalStack runs from its own venv (Python >= 3.13), started once for this file on a free loopback
port and killed at the end. ECS and DynamoDB are not in the free edition offline, so the handler
reaches them on a moto server, each service through its own standard ``AWS_ENDPOINT_URL_*``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
from celery_apps import publish
from conftest import redis_url_for
from localstack import LocalStack, NoPythonError, ensure_venv, start
from localstack_client.session import Session
from moto_aws import (
    CLUSTER,
    ENDPOINT_VARS,
    REGION,
    create_services,
    create_state_table,
    desired_count,
    metric_data_from_emf,
    moto_server,
)

from celery_autoscaler.config import parse_config
from celery_autoscaler.ecs import EcsActuator
from celery_autoscaler.handler import CONFIG_ENV, lambda_handler, runtime
from celery_autoscaler.probe.redis import RedisProbe
from celery_autoscaler.state import InMemoryStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import run_tick

DB = 5
BROKER = redis_url_for(DB)
pytestmark = [pytest.mark.localstack, pytest.mark.redis_db(DB)]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    try:
        python = ensure_venv()
    except NoPythonError as exc:
        pytest.skip(f"LocalStack tier needs Python >= 3.13: {exc}")
    running = start(python)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def localstack_session(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Session:
    """localstack_client, pointed at our LocalStack by LOCALSTACK_HOST (its own convention)."""
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALSTACK_HOST", stack.host)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return Session(region_name=REGION)


def test_sts_caller_identity(localstack_session: Session) -> None:
    identity = localstack_session.client("sts").get_caller_identity()
    assert identity["Account"] == "000000000000"
    assert identity["Arn"].startswith("arn:aws:")


def create_ecs_and_table(url: str) -> Any:
    requests.post(f"{url}/moto-api/reset", timeout=30).raise_for_status()  # shared by this file's tests
    create_state_table(endpoint_url=url)
    return create_services(["worker-default"], endpoint_url=url)


@dataclass
class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.mark.usefixtures("redis_db")
def test_handler_reads_the_broker_url_from_secrets_manager(
    stack: LocalStack, localstack_session: Session, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = json.dumps({"url": redis_url_for(DB)})
    arn = localstack_session.client("secretsmanager").create_secret(Name="celery/broker-url", SecretString=value)["ARN"]
    ecs = create_ecs_and_table(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", stack.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECS", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    doc = {
        "broker": {"url_secret_arn": arn},
        "cluster": CLUSTER,
        "state_table": "celery-autoscaler-state",
        "ticks_per_invocation": 1,
        "pools": {"default": {"service": "worker-default", "queues": ["celery"], "concurrency": 2}},
    }
    monkeypatch.setenv(CONFIG_ENV, json.dumps(doc))
    publish(BROKER, 5)
    runtime.cache_clear()
    try:
        answer = lambda_handler({}, Context())
    finally:
        runtime.cache_clear()
    assert answer["errors"] == 0
    assert answer["pools"]["default"]["desired"] == 3
    assert desired_count(ecs) == 3


def test_emf_metrics_of_a_real_tick_are_valid_cloudwatch_metrics(
    localstack_session: Session, moto_url: str, redis_db: redis.Redis
) -> None:
    """Put what CloudWatch would extract from our EMF lines, then read QueueDepth back with GetMetricData."""
    ecs = create_ecs_and_table(moto_url)
    namespace = f"Test/Autoscaler/{int(time.time())}"
    config = parse_config(
        {
            "broker": {"url": redis_url_for(DB)},
            "cluster": CLUSTER,
            "metrics_namespace": namespace,
            "pools": {"default": {"service": "worker-default", "queues": ["celery"]}},
        }
    )
    redis_db.lpush("celery", *[json.dumps({"headers": {"x_published_at": time.time()}})] * 7)
    stream = io.StringIO()
    assert config.broker.url is not None
    probe = RedisProbe(config.broker, url=config.broker.url)
    run_tick(
        config,
        probe,
        EcsActuator(CLUSTER, client=ecs),
        InMemoryStateStore(),
        time.time(),
        dry_run=True,
        telemetry=Telemetry(namespace, stream=stream),
    )
    probe.close()
    cloudwatch = localstack_session.client("cloudwatch")
    docs = [json.loads(line) for line in stream.getvalue().splitlines() if '"_aws"' in line]
    for doc in docs:
        doc_namespace, data = metric_data_from_emf(doc)
        cloudwatch.put_metric_data(Namespace=doc_namespace, MetricData=data)
    now = time.time()
    result = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "depth",
                "MetricStat": {
                    "Metric": {
                        "Namespace": namespace,
                        "MetricName": "QueueDepth",
                        "Dimensions": [{"Name": "Pool", "Value": "default"}, {"Name": "Queue", "Value": "celery"}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
        ],
        StartTime=now - 600,
        EndTime=now + 600,
    )
    assert result["MetricDataResults"][0]["Values"] == [7.0]
    names = {m["MetricName"] for m in cloudwatch.list_metrics(Namespace=namespace)["Metrics"]}
    assert {"QueueDepth", "DesiredCount", "RunningCount", "ScalingActions", "ScalerErrors"} <= names
