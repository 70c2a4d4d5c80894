"""EcsActuator against moto's ECS: batching, MISSING/INACTIVE/DRAINING errors, UpdateService."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.utils import generate_instance_identity_document
from moto.ecs import ecs_backends
from moto_aws import CLUSTER, REGION, aws_env, count_calls, create_services

from celery_autoscaler.ecs import MISSING, EcsActuator, EcsError, ServiceStatus, require_active


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
def test_missing_cluster_raises_ecs_error_naming_it() -> None:
    create_services(["default"])
    with pytest.raises(EcsError, match=r"cluster 'nope'"):
        EcsActuator("nope").describe(["default"])


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
