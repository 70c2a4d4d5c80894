"""EcsActuator against moto's ECS: batching, MISSING/INACTIVE/DRAINING errors, UpdateService."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.utils import generate_instance_identity_document
from moto.ecs import ecs_backends
from moto_aws import (
    CLUSTER,
    REGION,
    answer_sends,
    aws_env,
    botocore_sleeps,
    count_calls,
    create_services,
    raise_on_send,
)

from celery_autoscaler.aws import CONNECT_TIMEOUT_S, MAX_ATTEMPTS, READ_TIMEOUT_S
from celery_autoscaler.ecs import MISSING, UNREAD, EcsActuator, EcsError, ServiceStatus, require_active


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    aws_env(monkeypatch)
    with mock_aws():
        yield


@pytest.mark.usefixtures("aws")
def test_describe_batches_of_ten_for_25_services() -> None:
    names = [f"pool-{i:02d}" for i in range(25)]
    ecs = create_services(names, desired=2)
    calls = count_calls(ecs, "DescribeServices")
    statuses = EcsActuator(CLUSTER, client=ecs).describe(names)
    assert [len(call["services"]) for call in calls] == [10, 10, 5]
    assert set(statuses) == set(names)
    assert statuses["pool-07"] == ServiceStatus("pool-07", desired=2, running=0, pending=2, status="ACTIVE")


@pytest.mark.usefixtures("aws")
def test_client_is_created_lazily_from_the_environment() -> None:
    create_services(["default"], desired=1)
    actuator = EcsActuator(CLUSTER)
    assert actuator._client is None
    assert actuator.describe(["default"])["default"].desired == 1


@pytest.mark.usefixtures("aws")
def test_missing_service_is_reported_and_named() -> None:
    ecs = create_services(["default"])
    statuses = EcsActuator(CLUSTER, client=ecs).describe(["default", "ghost"])
    assert statuses["ghost"].status == MISSING
    assert require_active(statuses["default"], "default", CLUSTER).status == "ACTIVE"
    with pytest.raises(EcsError, match=r"'ghost' not found in cluster 'celery'"):
        require_active(statuses["ghost"], "ghost", CLUSTER)


@pytest.mark.usefixtures("aws")
def test_inactive_service_is_refused() -> None:
    ecs = create_services(["default", "gone"])
    ecs.delete_service(cluster=CLUSTER, service="gone", force=True)
    status = EcsActuator(CLUSTER, client=ecs).describe(["gone"])["gone"]
    assert status.status == "INACTIVE"
    with pytest.raises(EcsError, match=r"'gone' in cluster 'celery' is INACTIVE"):
        require_active(status, "gone", CLUSTER)


@pytest.mark.usefixtures("aws")
def test_draining_service_is_refused() -> None:
    ecs = create_services(["leaving"])
    # moto never reports DRAINING by itself; set the status ECS reports while a service is being deleted.
    ecs_backends[DEFAULT_ACCOUNT_ID][REGION].services[f"{CLUSTER}:leaving"].status = "DRAINING"
    status = EcsActuator(CLUSTER, client=ecs).describe(["leaving"])["leaving"]
    with pytest.raises(EcsError, match=r"'leaving' in cluster 'celery' is DRAINING"):
        require_active(status, "leaving", CLUSTER)


@pytest.mark.usefixtures("aws")
def test_missing_cluster_leaves_every_service_unread_naming_it() -> None:
    create_services(["default"])
    status = EcsActuator("nope").describe(["default"])["default"]
    assert status.status == UNREAD
    with pytest.raises(EcsError, match=r"DescribeServices failed for cluster 'nope' \(default\).*ClusterNotFound"):
        require_active(status, "default", "nope")


@pytest.mark.usefixtures("aws")
def test_a_failing_batch_leaves_only_its_own_services_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = botocore_sleeps(monkeypatch)
    names = [f"pool-{i:02d}" for i in range(25)]
    create_services(names, desired=2)
    actuator = EcsActuator(CLUSTER)  # the Lambda's own client: bounded standard retries
    throttled = answer_sends(
        actuator.client, "DescribeServices", "ThrottlingException", when=lambda p: "pool-12" in p["services"]
    )
    statuses = actuator.describe(names)
    assert len(throttled) == MAX_ATTEMPTS, "botocore retried the throttled batch, a bounded number of times"
    assert len(sleeps) == MAX_ATTEMPTS - 1
    unread = {name for name, status in statuses.items() if status.error is not None}
    assert unread == set(names[10:20])
    assert "ThrottlingException" in (statuses["pool-12"].error or "")
    assert all(
        statuses[name].desired == 2 and statuses[name].status == "ACTIVE" for name in names if name not in unread
    )


@pytest.mark.usefixtures("aws")
def test_a_read_timeout_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    botocore_sleeps(monkeypatch)
    create_services(["default"], desired=1)
    actuator = EcsActuator(CLUSTER)
    timeouts = raise_on_send(
        actuator.client, "DescribeServices", lambda: ReadTimeoutError(endpoint_url="https://ecs"), applied=True
    )
    status = actuator.describe(["default"])["default"]
    assert len(timeouts) == MAX_ATTEMPTS
    assert status.error is not None
    assert "Read timeout" in status.error
    with pytest.raises(EcsError, match="Read timeout"):
        require_active(status, "default", CLUSTER)


@pytest.mark.usefixtures("aws")
def test_clients_are_made_with_the_scalers_timeouts_and_retries() -> None:
    config = EcsActuator(CLUSTER).client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    assert config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}


@pytest.mark.usefixtures("aws")
def test_set_desired_updates_the_service() -> None:
    ecs = create_services(["default"])
    actuator = EcsActuator(CLUSTER, client=ecs)
    actuator.set_desired("default", 7)
    assert actuator.describe(["default"])["default"].desired == 7


@pytest.mark.usefixtures("aws")
def test_set_desired_on_missing_service_names_service_and_cluster() -> None:
    create_services(["default"])
    with pytest.raises(EcsError, match=r"'ghost' in cluster 'celery'"):
        EcsActuator(CLUSTER).set_desired("ghost", 1)


@pytest.mark.usefixtures("aws")
def test_protected_tasks_counts_nothing_without_tasks() -> None:
    ecs = create_services(["default"], desired=1)
    assert EcsActuator(CLUSTER, client=ecs).protected_tasks("default") == 0


@pytest.mark.usefixtures("aws")
def test_protected_tasks_is_none_when_ecs_cannot_tell() -> None:
    # A real task exists, but moto implements no GetTaskProtection: unknown, and that must not raise.
    ecs = create_services(["default"], desired=1)
    ec2 = boto3.client("ec2", region_name=REGION)
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
    document = generate_instance_identity_document(
        boto3.resource("ec2", region_name=REGION).Instance(instance["InstanceId"])
    )
    ecs.register_container_instance(cluster=CLUSTER, instanceIdentityDocument=json.dumps(document))
    ecs.run_task(cluster=CLUSTER, taskDefinition="worker", count=1)
    assert ecs.list_tasks(cluster=CLUSTER)["taskArns"]
    assert EcsActuator(CLUSTER, client=ecs).protected_tasks("default") is None


def test_a_service_absent_from_the_answer_counts_as_missing() -> None:
    with pytest.raises(EcsError, match="'x' not found in cluster 'c'"):
        require_active(None, "x", "c")


def test_any_status_but_active_is_refused() -> None:
    with pytest.raises(EcsError, match="'x' in cluster 'c' reports ACCESS_DENIED"):
        require_active(ServiceStatus("x", 0, 0, 0, "ACCESS_DENIED"), "x", "c")
