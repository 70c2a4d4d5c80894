"""Acting on ECS: read each pool's service counts in batches, set a desired count only on change.

The boto3 client is created on first use, so importing this module (or building an
``EcsActuator`` in a test) costs nothing; boto3 itself honours ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_ECS``, which is how the scaler runs against moto or any other emulator.
A DescribeServices batch that fails (after botocore's bounded retries) marks only its own services
unreadable, so one throttled or refused batch never holds the pools of the other batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from celery_autoscaler.aws import client_config

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

DESCRIBE_BATCH = 10
"""DescribeServices accepts at most 10 services per call."""

PROTECTION_BATCH = 10
"""GetTaskProtection accepts at most 10 tasks per call."""

MISSING = "MISSING"
"""DescribeServices' failure reason for a service that does not exist (other reasons are kept as given)."""


class EcsError(Exception):
    """ECS refused or could not answer; the message names the service and the cluster."""


UNREAD = "UNREAD"
"""The status of a service whose DescribeServices call failed (``error`` says why)."""


@dataclass(frozen=True)
class ServiceStatus:
    """One ECS service's counts as DescribeServices reported them; ``status`` is its failure reason if it failed.

    ``error`` is set when the service could not be described at all (its batch failed): its counts
    are unknown and its pool is not acted on.
    """

    service: str
    desired: int
    running: int
    pending: int
    status: str
    error: str | None = None


class Actuator(Protocol):
    """What ``tick`` needs from ECS; the demo supplies its own (running counts from its task runner)."""

    def describe(self, services: Sequence[str]) -> dict[str, ServiceStatus]:
        """Every requested service, MISSING and unread (``error``) ones too; :class:`EcsError` if ECS cannot answer."""
        ...

    def set_desired(self, service: str, count: int) -> None:
        """Set the service's desired count; raise :class:`EcsError` on refusal."""
        ...


@runtime_checkable
class ProtectionReader(Protocol):
    """An actuator that can also count scale-in-protected tasks (reported in the log, never decided on)."""

    def protected_tasks(self, service: str) -> int | None:
        """Number of the service's tasks with scale-in protection, or ``None`` if it cannot be known."""
        ...


def require_active(status: ServiceStatus | None, service: str, cluster: str) -> ServiceStatus:
    """Return ``status`` if the service can be scaled; else raise an :class:`EcsError` that says why."""
    if status is not None and status.error is not None:
        raise EcsError(status.error)
    if status is None or status.status == MISSING:
        raise EcsError(f"ECS service {service!r} not found in cluster {cluster!r}")
    if status.status == "INACTIVE":
        raise EcsError(f"ECS service {service!r} in cluster {cluster!r} is INACTIVE (deleted); not scaling it")
    if status.status == "DRAINING":
        raise EcsError(f"ECS service {service!r} in cluster {cluster!r} is DRAINING (being deleted); not scaling it")
    if status.status != "ACTIVE":
        raise EcsError(f"ECS service {service!r} in cluster {cluster!r} reports {status.status}; not scaling it")
    return status


class EcsActuator:
    """The real ECS: DescribeServices in batches of 10, UpdateService for one service at a time."""

    def __init__(self, cluster: str, client: ECSClient | None = None) -> None:
        self.cluster = cluster
        self._client = client

    @property
    def client(self) -> ECSClient:
        if self._client is None:
            import boto3

            self._client = boto3.client("ecs", config=client_config())
        return self._client

    def describe(self, services: Sequence[str]) -> dict[str, ServiceStatus]:
        from botocore.exceptions import BotoCoreError, ClientError

        result: dict[str, ServiceStatus] = {}
        unique = list(dict.fromkeys(services))
        for start in range(0, len(unique), DESCRIBE_BATCH):
            batch = unique[start : start + DESCRIBE_BATCH]
            try:
                response = self.client.describe_services(cluster=self.cluster, services=batch)
            except (ClientError, BotoCoreError) as exc:
                error = f"DescribeServices failed for cluster {self.cluster!r} ({', '.join(batch)}): {exc}"
                result.update({name: ServiceStatus(name, 0, 0, 0, UNREAD, error) for name in batch})
                continue
            for item in response.get("services", []):
                name = item.get("serviceName", "")
                result[name] = ServiceStatus(
                    service=name,
                    desired=item.get("desiredCount", 0),
                    running=item.get("runningCount", 0),
                    pending=item.get("pendingCount", 0),
                    status=item.get("status", ""),
                )
            for failure in response.get("failures", []):
                name = failure.get("arn", "").rsplit("/", 1)[-1]
                if name in batch and name not in result:
                    result[name] = ServiceStatus(name, 0, 0, 0, failure.get("reason") or MISSING)
        for name in unique:
            result.setdefault(name, ServiceStatus(name, 0, 0, 0, MISSING))
        return result

    def set_desired(self, service: str, count: int) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.update_service(cluster=self.cluster, service=service, desiredCount=count)
        except (ClientError, BotoCoreError) as exc:
            raise EcsError(
                f"UpdateService desiredCount={count} failed for ECS service {service!r} "
                f"in cluster {self.cluster!r}: {exc}"
            ) from exc

    def protected_tasks(self, service: str) -> int | None:
        """Count protected tasks via ListTasks + GetTaskProtection; ``None`` when either call fails."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            arns: list[str] = []
            for page in self.client.get_paginator("list_tasks").paginate(cluster=self.cluster, serviceName=service):
                arns.extend(page.get("taskArns", []))
            protected = 0
            for start in range(0, len(arns), PROTECTION_BATCH):
                batch = arns[start : start + PROTECTION_BATCH]
                response = self.client.get_task_protection(cluster=self.cluster, tasks=batch)
                protected += sum(1 for task in response.get("protectedTasks", []) if task.get("protectionEnabled"))
            return protected
        except (ClientError, BotoCoreError, NotImplementedError):
            return None
