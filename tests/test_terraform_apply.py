"""The examples apply for real (against the moto emulator on loopback), re-plan clean and destroy clean.

For each example: copy the module and the example to a temp dir, add a ``zz_emulator_override.tf``
pointing the aws provider at a fresh emulator (tests/emulator.py; the module itself is untouched),
then ``init``, ``apply``, check that the Lambda runs the committed zip and that the scaler
configuration the module deployed is accepted by ``celery_autoscaler.config.parse_config``, move
every pool's desired count as the scaler would, then ``plan -detailed-exitcode`` (must say: no
changes, so no drift and desired_count really ignored), ``destroy``, and list every kind of resource
in the emulator: nothing may be left. Times and resource counts are printed, not asserted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from emulator import REGION, EmulatorProcess, provider_override

from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.probe import probe_for
from celery_autoscaler.probe.rabbitmq import RabbitMQProbe
from celery_autoscaler.probe.sqs import sqs_queue_name

ROOT = Path(__file__).resolve().parent.parent
# The AWS examples; examples/local is applied by make demo.
EXAMPLES = ("complete", "existing-redis", "existing-services", "minimal", "rabbitmq", "sqs")
LAMBDA_ZIP = ROOT / "lambda" / "dist" / "celery-autoscaler-lambda.zip"  # what the module deploys by default
COPY_IGNORE = shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "terraform.tfstate*", "*_override.tf")

pytestmark = [pytest.mark.terraform, pytest.mark.slow]


def terraform(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run terraform non-interactively; on failure show its output (the reason is in there)."""
    env = {
        **os.environ,
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    env.pop("AWS_PROFILE", None)
    result = subprocess.run(
        ["terraform", *args, "-no-color"], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"terraform {args[0]} failed ({result.returncode}):\n{result.stdout[-6000:]}{result.stderr}"
        )
    return result


def module_files() -> list[Path]:
    """What the module is made of: the root's and modules/*/ .tf files and the files they read (queries)."""
    return [*ROOT.glob("*.tf"), *ROOT.glob("modules/*/*.tf"), *ROOT.glob("modules/*/queries/*")]


def prepare(example: Path, tmp_path: Path, endpoint: str) -> Path:
    """Copy the module (``module_files``, the Lambda zip) and the example (``source = "../../"``)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for tf in module_files():
        (repo / tf.parent.relative_to(ROOT)).mkdir(parents=True, exist_ok=True)
        shutil.copy2(tf, repo / tf.relative_to(ROOT))
    (repo / "lambda" / "dist").mkdir(parents=True)
    shutil.copy2(LAMBDA_ZIP, repo / "lambda" / "dist")
    workdir = repo / "examples" / example.name
    shutil.copytree(example, workdir, ignore=COPY_IGNORE)
    (workdir / "zz_emulator_override.tf").write_text(provider_override(endpoint))
    return workdir


def aws(endpoint: str, service: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test"
    )


def inventory(endpoint: str) -> dict[str, list[str]]:
    """Everything the module or an example could create, as found in the emulator (most defaults left out)."""
    ec2, ecs, iam = aws(endpoint, "ec2"), aws(endpoint, "ecs"), aws(endpoint, "iam")
    elasticache, scheduler = aws(endpoint, "elasticache"), aws(endpoint, "scheduler")
    clusters = [
        c["clusterArn"]
        for c in ecs.describe_clusters(clusters=ecs.list_clusters()["clusterArns"] or ["none"])["clusters"]
        if c["status"] == "ACTIVE"
    ]
    found = {
        "vpcs": [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if not v["IsDefault"]],
        "subnets": [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if not s["DefaultForAz"]],
        "security_groups": [
            g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"
        ],
        # Deleted endpoints and NAT gateways stay listed as "deleted" for a while, in AWS as in moto.
        "vpc_endpoints": [
            e["VpcEndpointId"] for e in ec2.describe_vpc_endpoints()["VpcEndpoints"] if e["State"].lower() != "deleted"
        ],
        "internet_gateways": [g["InternetGatewayId"] for g in ec2.describe_internet_gateways()["InternetGateways"]],
        "nat_gateways": [
            g["NatGatewayId"]
            for g in ec2.describe_nat_gateways()["NatGateways"]
            if g["State"] not in ("deleted", "deleting")
        ],
        "elastic_ips": [a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]],
        "route_tables": [
            t["RouteTableId"]
            for t in ec2.describe_route_tables()["RouteTables"]
            if not any(a.get("Main") for a in t.get("Associations", []))
        ],
        "ecs_clusters": clusters,
        "ecs_services": [s for c in clusters for s in ecs.list_services(cluster=c)["serviceArns"]],
        "task_definitions": ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"],
        "lambda_functions": [f["FunctionName"] for f in aws(endpoint, "lambda").list_functions()["Functions"]],
        "dynamodb_tables": aws(endpoint, "dynamodb").list_tables()["TableNames"],
        "iam_roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
        "iam_policies": [p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]],
        "secrets": [s["Name"] for s in aws(endpoint, "secretsmanager").list_secrets()["SecretList"]],
        "sqs_queues": aws(endpoint, "sqs").list_queues().get("QueueUrls", []),
        "sns_topics": [t["TopicArn"] for t in aws(endpoint, "sns").list_topics()["Topics"]],
        "log_groups": [g["logGroupName"] for g in aws(endpoint, "logs").describe_log_groups()["logGroups"]],
        "replication_groups": [
            g["ReplicationGroupId"] for g in elasticache.describe_replication_groups()["ReplicationGroups"]
        ],
        "cache_clusters": [c["CacheClusterId"] for c in elasticache.describe_cache_clusters()["CacheClusters"]],
        "cache_subnet_groups": [
            g["CacheSubnetGroupName"] for g in elasticache.describe_cache_subnet_groups()["CacheSubnetGroups"]
        ],
        "mq_brokers": [b["BrokerId"] for b in aws(endpoint, "mq").list_brokers()["BrokerSummaries"]],
        "schedules": [s["Name"] for s in scheduler.list_schedules()["Schedules"]],
        "schedule_groups": [
            g["Name"] for g in scheduler.list_schedule_groups()["ScheduleGroups"] if g["Name"] != "default"
        ],
        "event_rules": [r["Name"] for r in aws(endpoint, "events").list_rules()["Rules"]],
        "alarms": [a["AlarmName"] for a in aws(endpoint, "cloudwatch").describe_alarms()["MetricAlarms"]],
        "dashboards": [d["DashboardName"] for d in aws(endpoint, "cloudwatch").list_dashboards()["DashboardEntries"]],
        "ssm_parameters": [p["Name"] for p in aws(endpoint, "ssm").describe_parameters()["Parameters"]],
        "scalable_targets": [
            t["ResourceId"]
            for t in aws(endpoint, "application-autoscaling").describe_scalable_targets(ServiceNamespace="ecs")[
                "ScalableTargets"
            ]
        ],
    }
    kms = aws(endpoint, "kms")
    # AWS managed keys (alias/aws/dynamodb, ...) appear on a service's first use and are nobody's to delete.
    aws_managed = {
        a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"] if a["AliasName"].startswith("alias/aws/")
    }
    keys = [kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"] for k in kms.list_keys()["Keys"]]
    found["kms_keys"] = [
        k["KeyId"]
        for k in keys
        if k["KeyId"] not in aws_managed and k["KeyState"] not in ("PendingDeletion", "Disabled")
    ]
    return {kind: names for kind, names in found.items() if names}


def new_since(baseline: dict[str, list[str]], now: dict[str, list[str]]) -> dict[str, list[str]]:
    """What ``now`` holds beyond ``baseline``, per kind."""
    new = {kind: sorted(set(names) - set(baseline.get(kind, []))) for kind, names in now.items()}
    return {kind: names for kind, names in new.items() if names}


def deployed_function(endpoint: str, function_name: str) -> tuple[str, dict[str, Any]]:
    """The Lambda's code hash and the configuration document it really received, read back from the emulator."""
    function = aws(endpoint, "lambda").get_function_configuration(FunctionName=function_name)
    config: dict[str, Any] = json.loads(function["Environment"]["Variables"]["CELERY_AUTOSCALER_CONFIG"])
    return function["CodeSha256"], config


def check_sqs_queues(config: ScalerConfig, urls: list[str]) -> None:
    """The module made each pool queue's SQS queue under the name the scaler (and kombu) will look for."""
    names = {url.rsplit("/", 1)[1] for url in urls}
    expected = {sqs_queue_name(q, config.broker.queue_name_prefix) for q in config.queues}
    assert expected <= names, f"SQS queues {sorted(names)} lack {sorted(expected - names)}"


def check_rabbitmq_secret(endpoint: str, config: ScalerConfig) -> None:
    """A module-made Amazon MQ broker: the secret is its amqps:// URL and the scaler reads its console's API."""
    assert config.broker.url_secret_arn is not None
    secret = aws(endpoint, "secretsmanager").get_secret_value(SecretId=config.broker.url_secret_arn)["SecretString"]
    broker = aws(endpoint, "mq").describe_broker(
        BrokerId=aws(endpoint, "mq").list_brokers()["BrokerSummaries"][0]["BrokerId"]
    )
    host = urlsplit(broker["BrokerInstances"][0]["Endpoints"][0]).netloc
    parts = urlsplit(secret)
    assert (parts.scheme, f"{parts.hostname}:{parts.port}", parts.path) == ("amqps", host, "//")
    assert parts.username == "celery"  # the broker's own user
    assert parts.password, "and its generated password"
    assert config.broker.management_url == broker["BrokerInstances"][0]["ConsoleURL"]
    assert isinstance(probe_for(config.broker, secret), RabbitMQProbe)


def apply_plan_destroy(example: Path, tmp_path: Path, endpoint: str) -> dict[str, Any]:
    """The whole cycle for one example; returns what was measured (for printing)."""
    baseline = inventory(endpoint)  # what a fresh emulator already holds (the default VPC's parts)
    workdir = prepare(example, tmp_path, endpoint)
    terraform(workdir, "init", "-input=false")  # providers: TF_CLI_CONFIG_FILE (conftest, as make sets it)

    started = time.monotonic()
    terraform(workdir, "apply", "-auto-approve", "-input=false")
    apply_s = time.monotonic() - started
    state = terraform(workdir, "state", "list").stdout.split()
    managed = [address for address in state if not re.search(r"(^|\.)data\.", address.split("[")[0])]
    created = new_since(baseline, inventory(endpoint))

    outputs = json.loads(terraform(workdir, "output", "-json").stdout)
    functions = created.get("lambda_functions", [])
    assert len(functions) == 1, functions
    code_sha256, deployed = deployed_function(endpoint, functions[0])
    assert code_sha256 == base64.b64encode(hashlib.sha256(LAMBDA_ZIP.read_bytes()).digest()).decode()
    config = parse_config(deployed)
    if "scaler_config" in outputs:
        assert parse_config(outputs["scaler_config"]["value"]) == config
    if config.broker.url == "sqs://":
        check_sqs_queues(config, created.get("sqs_queues", []))
    if "mq_brokers" in created:
        check_rabbitmq_secret(endpoint, config)

    # Do what the scaler does (set each pool's desired count): Terraform must not want it back.
    ecs = aws(endpoint, "ecs")
    for pool in config.pools:
        ecs.update_service(cluster=config.cluster, service=pool.service, desiredCount=pool.max_workers)
    plan = terraform(workdir, "plan", "-detailed-exitcode", "-input=false", check=False)
    assert plan.returncode == 0, f"a second plan must show no changes:\n{plan.stdout[-8000:]}{plan.stderr}"

    started = time.monotonic()
    terraform(workdir, "destroy", "-auto-approve", "-input=false")
    destroy_s = time.monotonic() - started
    left = new_since(baseline, inventory(endpoint))
    assert left == {}, f"destroy left resources in the emulator: {left}"
    return {
        "apply_s": apply_s,
        "destroy_s": destroy_s,
        "resources": len(managed),
        "pools": [pool.name for pool in config.pools],
        "kinds": {kind: len(names) for kind, names in created.items()},
    }


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_applies_replans_clean_and_destroys_clean(name: str, tmp_path: Path) -> None:
    example = ROOT / "examples" / name
    assert (example / "main.tf").is_file(), f"examples/{name} is missing"
    with EmulatorProcess(log_path=tmp_path / "emulator.log") as emulator:
        result = apply_plan_destroy(example, tmp_path, emulator.endpoint)
    print(
        f"examples/{name}: {result['resources']} resources, apply {result['apply_s']:.0f} s, "
        f"destroy {result['destroy_s']:.0f} s, pools {result['pools']}, in the emulator {result['kinds']}"
    )


# The last commit whose root module held the scaler's resources itself (before modules/scaler).
ROOT_SCALER_LAYOUT = "0dd8df77d4653a55a20e6e61bcff86ac1ddb3648"


NEW_IN_THIS_RELEASE = {
    f"module.celery.module.scaler.aws_cloudwatch_metric_alarm.{alarm}"
    for alarm in ('broker_unreadable["default"]', 'pinned_at_max["default"]', "scaler_silent[0]")
}
"""The on-call alarms 0.2.0 adds to examples/minimal: the only resources an upgrade may create."""


def test_upgrade_to_the_scaler_submodule_moves_state_and_replaces_nothing(tmp_path: Path) -> None:
    """examples/minimal applied with the old layout, then planned with this checkout: every scaler
    resource is moved into module.scaler (the ``moved`` blocks), none is destroyed or created."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ROOT_SCALER_LAYOUT], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    with EmulatorProcess(log_path=tmp_path / "emulator.log") as emulator:
        workdir = old / "examples" / "minimal"
        (workdir / "zz_emulator_override.tf").write_text(provider_override(emulator.endpoint))
        terraform(workdir, "init", "-input=false")
        terraform(workdir, "apply", "-auto-approve", "-input=false")
        before = terraform(workdir, "state", "list").stdout.split()
        assert "module.celery.aws_lambda_function.scaler[0]" in before

        # The same working directory and state, with this checkout's module files.
        for tf in [*old.glob("*.tf")]:
            tf.unlink()
        for tf in module_files():
            (old / tf.parent.relative_to(ROOT)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(tf, old / tf.relative_to(ROOT))
        shutil.copy2(LAMBDA_ZIP, old / "lambda" / "dist")
        terraform(workdir, "init", "-input=false")
        terraform(workdir, "plan", "-input=false", "-out=upgrade.tfplan")
        plan = json.loads(terraform(workdir, "show", "-json", "upgrade.tfplan").stdout)
        changes = plan.get("resource_changes", [])
        moved = {c["previous_address"]: c["address"] for c in changes if c.get("previous_address")}
        destroyed = [c["address"] for c in changes if "delete" in c["change"]["actions"]]
        created = {c["address"] for c in changes if c["change"]["actions"] == ["create"]}
        updated = [c["address"] for c in changes if "update" in c["change"]["actions"]]
        print(f"upgrade: {len(moved)} moved into module.scaler; created: {created}; updated: {updated}")
        assert not destroyed, f"the upgrade would destroy or replace: {destroyed}"
        assert created == NEW_IN_THIS_RELEASE, created ^ NEW_IN_THIS_RELEASE
        assert (
            moved["module.celery.aws_lambda_function.scaler[0]"]
            == "module.celery.module.scaler.aws_lambda_function.this[0]"
        )
        # Every address the old layout had and the new one lacks was moved, not dropped.
        gone = {a for a in before if not re.search(r"(^|\.)data\.", a)} - {c["address"] for c in changes}
        assert gone == set(moved), gone ^ set(moved)
        into_scaler = [a for a in moved.values() if a.startswith("module.celery.module.scaler.")]
        assert len(into_scaler) == 19, moved  # examples/minimal: one pool, tracing PassThrough
        # and the execution role's policy, now created only when a container reads a secret
        assert moved["module.celery.aws_iam_role_policy.task_execution"].endswith("task_execution[0]")
        terraform(workdir, "destroy", "-auto-approve", "-input=false")
