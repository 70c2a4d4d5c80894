"""moto-backed AWS for the scaler's tests: an ECS cluster with services and the state table.

Everything goes through real boto3 clients against moto's in-process ``mock_aws``; nothing in the
scaler is stubbed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "eu-west-1"
CLUSTER = "celery"
ENDPOINT_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_ECS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_CLOUDWATCH",
)


def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region, and no endpoint override leaking in from the shell."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in (*ENDPOINT_VARS, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def client(service: str, endpoint_url: str | None = None) -> Any:
    """A boto3 client for moto: in-process (``mock_aws``) without ``endpoint_url``, else a moto server."""
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_services(
    names: Sequence[str], desired: int = 0, cluster: str = CLUSTER, endpoint_url: str | None = None
) -> Any:
    """Create the cluster, one bridge-mode task definition and a service per name; return the ECS client."""
    ecs = client("ecs", endpoint_url)
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family="worker",
        containerDefinitions=[{"name": "worker", "image": "worker:latest", "memory": 512}],
    )
    for name in names:
        ecs.create_service(cluster=cluster, serviceName=name, taskDefinition="worker", desiredCount=desired)
    return ecs


def desired_count(ecs: Any, service: str = "worker-default", cluster: str = CLUSTER) -> int:
    """The service's desired count as ECS reports it."""
    return int(ecs.describe_services(cluster=cluster, services=[service])["services"][0]["desiredCount"])


def create_state_table(name: str = "celery-autoscaler-state", endpoint_url: str | None = None) -> str:
    """The table the Terraform module creates: hash key ``pool`` (S), on-demand."""
    client("dynamodb", endpoint_url).create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pool", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pool", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` call the real client makes (observes only)."""
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    client.meta.events.register(f"provide-client-params.{client.meta.service_model.service_name}.{operation}", record)
    return calls


def free_port() -> int:
    """A loopback port nobody listens on once this returns (also used as a closed broker port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """moto as a server on loopback, for code in another process or reached through AWS_ENDPOINT_URL*."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def metric_data_from_emf(document: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The PutMetricData call CloudWatch makes of one EMF document: (namespace, metric data)."""
    directive = document["_aws"]["CloudWatchMetrics"][0]
    dimensions = [{"Name": name, "Value": document[name]} for name in directive["Dimensions"][0]]
    data = [
        {
            "MetricName": metric["Name"],
            "Unit": metric["Unit"],
            "Value": float(document[metric["Name"]]),
            "Dimensions": dimensions,
            "Timestamp": document["_aws"]["Timestamp"] / 1000,
        }
        for metric in directive["Metrics"]
    ]
    return directive["Namespace"], data
