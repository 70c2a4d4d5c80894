"""moto-backed AWS for the scaler's tests: an ECS cluster with services and the state table.

Everything goes through real boto3 clients against moto's in-process ``mock_aws``; nothing in the
scaler is stubbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import boto3
import pytest

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


def create_services(names: Sequence[str], desired: int = 0, cluster: str = CLUSTER) -> Any:
    """Create the cluster, one bridge-mode task definition and a service per name; return the ECS client."""
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family="worker",
        containerDefinitions=[{"name": "worker", "image": "worker:latest", "memory": 512}],
    )
    for name in names:
        ecs.create_service(cluster=cluster, serviceName=name, taskDefinition="worker", desiredCount=desired)
    return ecs


def create_state_table(name: str = "celery-autoscaler-state") -> str:
    """The table the Terraform module creates: hash key ``pool`` (S), on-demand."""
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
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
