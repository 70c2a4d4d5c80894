"""A moto server on loopback that a real ``terraform apply`` of the module can run against.

Plain moto 5.2.5 has gaps that break an apply/plan/destroy cycle of this module (each one measured
with terraform and the aws provider 5.100). Each gap is filled by one small patch below, applied only
in this launcher's process, only for the pinned moto version, with the reason next to it. The module
itself never changes for the emulator: if a patch is needed, the gap is moto's.

Run as a script (``python tests/emulator.py --port 0``): prints ``READY http://127.0.0.1:PORT`` once it
answers and serves until SIGTERM/SIGINT. Import it for :func:`provider_override` (the Terraform
provider settings that point every service at the emulator) and :class:`EmulatorProcess` (start and
stop that script from a test or the demo).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

MOTO_VERSION = "5.2.5"
REGION = "us-east-1"

# Every AWS service the module and its examples call; each gets an ``endpoints`` entry in the override.
SERVICES = (
    "applicationautoscaling",
    "cloudwatch",
    "dynamodb",
    "ec2",
    "ecs",
    "elasticache",
    "events",
    "iam",
    "kms",
    "lambda",
    "logs",
    "mq",
    "s3",
    "scheduler",
    "secretsmanager",
    "sns",
    "sqs",
    "ssm",
    "sts",
)


def provider_override(endpoint: str, region: str = REGION) -> str:
    """Terraform for a ``*_override.tf`` file: the aws provider talks only to ``endpoint``.

    ``max_retries = 2`` makes an API the emulator lacks fail in seconds instead of ten minutes. The
    account ID is requested (moto's STS answers): without it the provider cannot tell that a security
    group reference is in its own account and reads it back as ``account/sg-...``, a diff every plan.
    """
    endpoints = "\n".join(f'      {service} = "{endpoint}"' for service in SERVICES)
    return f"""# Written by tests/emulator.py: point the aws provider at the local moto server.
provider "aws" {{
  region                      = "{region}"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  max_retries                 = 2
  endpoints {{
{endpoints}
  }}
}}
"""


# --------------------------------------------------------------------------------------------------
# Patches for moto 5.2.5. Each one: what real AWS does, what moto does instead, what breaks.
# --------------------------------------------------------------------------------------------------


def _patch_elasticache() -> None:
    """Replication groups behave like AWS for the provider's create/read/delete cycle.

    - CreateReplicationGroup: moto ignores NumCacheClusters (always one member) and creates no member
      cache clusters, so the provider's read (DescribeCacheClusters on ``<id>-001``) fails with
      CacheClusterNotFound. We create the members as cache clusters carrying the group's settings.
    - DeleteReplicationGroup: moto leaves the group "deleting" forever and the provider waits 45 min.
      We answer "deleting" once and forget the group and its members, as AWS does minutes later.
    - DeleteCacheSubnetGroup: not implemented (HTTP 500). Implemented with AWS's in-use check.
    """
    from moto.core.responses import EmptyResult
    from moto.elasticache.exceptions import CacheSubnetGroupNotFound, ElastiCacheException
    from moto.elasticache.models import ElastiCacheBackend
    from moto.elasticache.responses import ElastiCacheResponse

    original_create = ElastiCacheBackend.create_replication_group
    original_delete = ElastiCacheBackend.delete_replication_group

    def create_replication_group(self: ElastiCacheBackend, **kwargs: Any) -> Any:
        wanted = kwargs.get("num_cache_clusters")
        if kwargs.get("cluster_mode") != "enabled" and wanted and not kwargs.get("replicas_per_node_group"):
            kwargs["replicas_per_node_group"] = wanted - 1  # moto sizes members from this field only
        group = original_create(self, **kwargs)
        azs = kwargs.get("preferred_cache_cluster_azs") or []
        for index, member in enumerate(group.member_clusters):
            cluster = self.create_cache_cluster(
                cache_cluster_id=member,
                replication_group_id=group.replication_group_id,
                az_mode="single-az",
                preferred_availability_zone=azs[index] if index < len(azs) else f"{self.region_name}a",
                num_cache_nodes=1,
                cache_node_type=group.cache_node_type,
                engine=group.engine,
                engine_version=kwargs.get("engine_version"),
                cache_parameter_group_name=kwargs.get("cache_parameter_group_name"),
                cache_subnet_group_name=kwargs.get("cache_subnet_group_name"),
                transit_encryption_enabled=group.transit_encryption_enabled,
                network_type=group.network_type,
                ip_discovery=group.ip_discovery,
                snapshot_name=None,
                preferred_maintenance_window=kwargs.get("preferred_maintenance_window"),
                port=group.port,
                notification_topic_arn=kwargs.get("notification_topic_arn"),
                auto_minor_version_upgrade=kwargs.get("auto_minor_version_upgrade"),
                snapshot_retention_limit=group.snapshot_retention_limit,
                snapshot_window=group.snapshot_window,
                auth_token=kwargs.get("auth_token"),
                outpost_mode=None,
                preferred_outpost_arn=None,
                preferred_availability_zones=[],
                cache_security_group_names=kwargs.get("cache_security_group_names") or [],
                security_group_ids=kwargs.get("security_group_ids") or [],
                tags=[],
                snapshot_arns=[],
                preferred_outpost_arns=[],
                log_delivery_configurations=[],
                cache_node_ids_to_remove=[],
                cache_node_ids_to_reboot=[],
            )
            cluster.at_rest_encryption_enabled = group.at_rest_encryption_enabled
            # The provider reads the group's security groups from its first member, in AWS's shape.
            cluster.security_groups = [
                {"SecurityGroupId": sg, "Status": "active"} for sg in kwargs.get("security_group_ids") or []
            ]
        return group

    def delete_replication_group(
        self: ElastiCacheBackend, replication_group_id: str, retain_primary_cluster: bool | None
    ) -> Any:
        group = original_delete(self, replication_group_id, retain_primary_cluster)
        self.replication_groups.pop(replication_group_id, None)
        for cluster_id in [c for c, v in self.cache_clusters.items() if v.replication_group_id == replication_group_id]:
            del self.cache_clusters[cluster_id]
        return group

    def delete_cache_subnet_group(self: ElastiCacheResponse) -> EmptyResult:
        name = self._get_param("CacheSubnetGroupName")
        backend = self.elasticache_backend
        if name not in backend.cache_subnet_groups:
            raise CacheSubnetGroupNotFound(name)
        users = [g for g in backend.replication_groups.values() if g.cache_subnet_group_name == name]
        users += [c for c in backend.cache_clusters.values() if c.cache_subnet_group_name == name]
        if users:
            raise ElastiCacheException("CacheSubnetGroupInUse", f"Cache subnet group {name} is currently in use.")
        del backend.cache_subnet_groups[name]
        return EmptyResult()

    ElastiCacheBackend.create_replication_group = create_replication_group  # type: ignore[method-assign]
    ElastiCacheBackend.delete_replication_group = delete_replication_group  # type: ignore[method-assign]
    ElastiCacheResponse.delete_cache_subnet_group = delete_cache_subnet_group  # type: ignore[attr-defined]


def _patch_ecs() -> None:
    """CreateService echoes what it was given, like AWS.

    moto drops these request fields on create, so the provider reads back defaults and plans a change
    (a replacement for the capacity provider strategy) on every plan. With a capacity provider
    strategy AWS reports no launch type; moto reports "EC2", another forced replacement.
    (UpdateService already stores every field it receives.)
    """
    from botocore import xform_name
    from moto.ecs.responses import EC2ContainerServiceResponse

    dropped = (
        "availabilityZoneRebalancing",
        "capacityProviderStrategy",
        "deploymentConfiguration",
        "enableECSManagedTags",
        "enableExecuteCommand",
        "healthCheckGracePeriodSeconds",
        "placementConstraints",
        "placementStrategy",
    )
    original = EC2ContainerServiceResponse.create_service

    def create_service(self: EC2ContainerServiceResponse) -> Any:
        result = original(self)
        service = result.result["service"]
        for field in dropped:
            value = self._get_param(field)
            if value is not None:
                setattr(service, xform_name(field), value)
        if self._get_param("capacityProviderStrategy") and not self._get_param("launchType"):
            service.launch_type = None
        return result

    EC2ContainerServiceResponse.create_service = create_service  # type: ignore[method-assign]


def _patch_lambda() -> None:
    """Functions echo DeadLetterConfig and LoggingConfig like AWS.

    moto drops both on create and update, so the provider sees the dead-letter target and the log
    settings vanish and plans a change every time. AWS always returns LoggingConfig (Text format and
    the /aws/lambda/<name> group unless set).
    """
    from moto.awslambda.models import LambdaFunction

    original_init = LambdaFunction.__init__
    original_config = LambdaFunction.get_configuration
    original_update = LambdaFunction.update_configuration

    def init(self: LambdaFunction, account_id: str, spec: dict[str, Any], region: str, version: Any = 1) -> None:
        original_init(self, account_id, spec, region, version)
        self.emulator_dead_letter = spec.get("DeadLetterConfig") or {}
        self.emulator_logging = spec.get("LoggingConfig") or {}

    def get_configuration(self: LambdaFunction, on_create: bool = False) -> dict[str, Any]:
        config = original_config(self, on_create)
        if getattr(self, "emulator_dead_letter", {}).get("TargetArn"):
            config["DeadLetterConfig"] = self.emulator_dead_letter
        config["LoggingConfig"] = {
            "LogFormat": "Text",
            "LogGroup": f"/aws/lambda/{self.function_name}",
            **getattr(self, "emulator_logging", {}),
        }
        return config

    def update_configuration(self: LambdaFunction, config_updates: dict[str, Any]) -> dict[str, Any]:
        if "DeadLetterConfig" in config_updates:
            self.emulator_dead_letter = config_updates["DeadLetterConfig"] or {}
        if "LoggingConfig" in config_updates:
            self.emulator_logging = config_updates["LoggingConfig"] or {}
        if "TracingConfig" in config_updates:
            self.tracing_config = config_updates["TracingConfig"]
        return original_update(self, config_updates)

    LambdaFunction.__init__ = init  # type: ignore[method-assign]
    LambdaFunction.get_configuration = get_configuration  # type: ignore[method-assign]
    LambdaFunction.update_configuration = update_configuration  # type: ignore[method-assign]


def _patch_ec2() -> None:
    """Security group rules that reference another group report their description, like AWS.

    moto keeps the description of a rule with a source group but DescribeSecurityGroupRules only
    reports descriptions of CIDR rules, so every ``aws_vpc_security_group_ingress_rule`` with a
    ``referenced_security_group_id`` and a description shows a change on every plan.
    """
    from moto.ec2.models.security_groups import SecurityGroupRule

    def description(self: SecurityGroupRule) -> str | None:
        return self.ip_range.get("Description") or self.source_group.get("Description")

    SecurityGroupRule.description = property(description)  # type: ignore[assignment,method-assign]


def _patch_sqs() -> None:
    """GetQueueAttributes returns a queue's RedrivePolicy as compact JSON, like AWS.

    moto renders it with ``json.dumps`` defaults (``", "`` and ``": "``), so the provider sees the
    ``redrive_policy`` of every queue with a dead-letter queue change (whitespace only) on every plan.
    """
    import json

    from moto.sqs.models import Queue

    original = Queue.attributes

    def attributes(self: Queue) -> dict[str, Any]:
        result: dict[str, Any] = original.fget(self)  # type: ignore[attr-defined]
        if self.redrive_policy:
            result["RedrivePolicy"] = json.dumps(self.redrive_policy, separators=(",", ":"))
        return result

    Queue.attributes = property(attributes)  # type: ignore[assignment,method-assign]


_patched = False


def apply_patches() -> None:
    """Fill moto 5.2.5's gaps in this process (idempotent). Refuses any other moto version."""
    global _patched
    if _patched:
        return
    # AWS-managed policies (AmazonECSTaskExecutionRolePolicy, ...) exist in moto only with this set,
    # and it is read when the IAM backend is first built, so set it before importing moto.
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    import moto

    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"tests/emulator.py patches moto {MOTO_VERSION}, found {moto.__version__}: re-check them")
    _patch_ec2()
    _patch_elasticache()
    _patch_ecs()
    _patch_lambda()
    _patch_sqs()
    _patched = True


def serve(host: str, port: int) -> None:
    """Serve moto with the patches until SIGTERM or SIGINT; print the readiness line first."""
    apply_patches()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY http://{bound_host}:{bound_port}", flush=True)
    stop.wait()
    server.stop()


class EmulatorProcess:
    """Run this script in a child process (patches stay out of the caller's moto) and stop it again."""

    def __init__(self, log_path: Path | None = None, python: str = sys.executable) -> None:
        self.log_path = log_path
        self.python = python
        self.endpoint = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> str:
        """Start the server on a free loopback port; return its endpoint URL once it answers."""
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [self.python, str(Path(__file__).resolve()), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self._process.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        line = ready[0] if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"moto emulator did not start within {timeout:.0f} s (got {line!r})")
        self.endpoint = line.split()[1]
        return self.endpoint

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; only our own child."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="moto server with the module's patches, on loopback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the READY line)")
    parser.add_argument("--print-override", action="store_true", help="print provider_override() for the port")
    args = parser.parse_args(argv)
    if args.print_override:
        print(provider_override(f"http://{args.host}:{args.port}"))
        return 0
    serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
