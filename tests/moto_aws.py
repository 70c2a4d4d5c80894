"""moto-backed AWS for the scaler's tests: an ECS cluster with services and the state table.

Everything goes through real boto3 clients against moto's in-process ``mock_aws``; nothing in the
scaler is stubbed.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.core.botocore_stubber import MockRawResponse
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


# Fault injection at botocore's event hooks: the real client, moto behind it, one fault in between.
# ``when`` sees the call's JSON parameters (ECS and DynamoDB speak JSON) and picks the calls to hit;
# ``times`` bounds how many are hit (None: all). Each returns the parameters of the calls it hit.

Match = Callable[[dict[str, Any]], bool]


@dataclass
class _Hits:
    """Which calls a fault hits: those ``when`` picks, at most ``times`` of them; ``calls`` records each."""

    when: Match | None
    times: int | None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def take(self, body: bytes | str | None) -> bool:
        params = json.loads(body or "{}")
        if (self.times is not None and len(self.calls) >= self.times) or (self.when and not self.when(params)):
            return False
        self.calls.append(params)
        return True


def error_response(code: str, status: int = 400, message: str = "injected fault") -> AWSResponse:
    """An AWS JSON-protocol error answer, as the service sends it."""
    body = json.dumps({"__type": code, "message": message})
    headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "fault"}
    return AWSResponse("https://fault.invalid/", status, headers, MockRawResponse(body))  # type: ignore[arg-type]


def answer_sends(
    client: Any, operation: str, code: str, *, when: Match | None = None, times: int | None = None
) -> list[dict[str, Any]]:
    """Answer HTTP attempts of ``operation`` with the error ``code`` (botocore's retries see every attempt).

    For reads only: moto still receives the request (its answer is discarded), so a write would apply.
    """
    hits = _Hits(when, times)

    def answer(request: Any, **_: Any) -> AWSResponse | None:
        return error_response(code) if hits.take(request.body) else None

    client.meta.events.register_first(f"before-send.{_service(client)}.{operation}", answer)
    return hits.calls


def raise_on_send(
    client: Any,
    operation: str,
    error: Callable[[], Exception],
    *,
    applied: bool,
    when: Match | None = None,
    times: int | None = None,
) -> list[dict[str, Any]]:
    """Raise ``error()`` at HTTP attempts of ``operation``: a connect timeout (``applied=False``: moto never
    sees the request) or a read timeout (``applied=True``: moto applied it, the answer is lost)."""
    hits = _Hits(when, times)
    event = f"before-send.{_service(client)}.{operation}"

    def fail(request: Any, event_name: str, **_: Any) -> None:
        if event_name == event and hits.take(request.body):
            raise error()

    # Handlers of the plain "before-send" event run in order of registration, after the more specific
    # ones; moto's is registered there when the client is made, so first = before moto, last = after.
    register = client.meta.events.register_last if applied else client.meta.events.register_first
    register("before-send", fail)
    return hits.calls


def refuse_calls(
    client: Any, operation: str, code: str, *, when: Match | None = None, times: int | None = None
) -> list[dict[str, Any]]:
    """Refuse whole calls of ``operation`` with the error ``code`` before they are sent (no retry; moto
    never sees them): a write that must not apply, or a refusal botocore would not retry anyway."""
    hits = _Hits(when, times)

    def refuse(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not hits.take(params.get("body")):
            return None
        parsed = {"Error": {"Code": code, "Message": "injected fault"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
        return error_response(code), parsed

    client.meta.events.register_first(f"before-call.{_service(client)}.{operation}", refuse)
    return hits.calls


def _service(client: Any) -> str:
    return str(client.meta.service_model.service_id.hyphenize())


def leave_unprocessed(client: Any, pools: Sequence[str], *, times: int | None = None) -> list[int]:
    """Make BatchGetItem answer ``pools``' keys as UnprocessedKeys (as DynamoDB does when throttled),
    rewriting moto's parsed answer ``times`` times (None: always); returns each rewrite's key count."""
    rewrites: list[int] = []

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        if times is not None and len(rewrites) >= times:
            return
        moved = 0
        for table, items in parsed.get("Responses", {}).items():
            keep = [item for item in items if item["pool"]["S"] not in pools]
            unprocessed = [{"pool": item["pool"]} for item in items if item["pool"]["S"] in pools]
            parsed["Responses"][table] = keep
            if unprocessed:
                entry = parsed.setdefault("UnprocessedKeys", {}).setdefault(table, {"ConsistentRead": True})
                entry.setdefault("Keys", []).extend(unprocessed)
                moved += len(unprocessed)
        rewrites.append(moved)

    client.meta.events.register("after-call.dynamodb.BatchGetItem", rewrite)
    return rewrites


def botocore_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the waits botocore's retries would sleep, without sleeping (the tests never wait)."""
    import types

    import botocore.endpoint

    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=sleeps.append))
    return sleeps


def atomic_conditional_writes(client: Any, lock: Any) -> None:
    """Hold ``lock`` across each PutItem call of ``client``, as DynamoDB applies a conditional write atomically.

    moto checks a condition and then writes without a lock, so two threads could both pass the check;
    DynamoDB never lets that happen. Share one lock between the clients of concurrent invocations.
    """
    events = client.meta.events
    events.register("before-call.dynamodb.PutItem", lambda **_: lock.acquire() and None)
    events.register("after-call.dynamodb.PutItem", lambda **_: lock.release())
    events.register("after-call-error.dynamodb.PutItem", lambda **_: lock.release())
