"""Each patch of tests/emulator.py does what its docstring claims, checked with boto3 in seconds.

The terraform apply tests need all of them at once and take minutes; when one of these fails, the
gap it names is the reason, not the module.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from emulator import REGION, EmulatorProcess


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with EmulatorProcess() as emulator:
        yield emulator.endpoint


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test"
    )


def test_replication_group_has_its_member_clusters_and_deletes(endpoint: str) -> None:
    ec = client(endpoint, "elasticache")
    ec.create_cache_subnet_group(
        CacheSubnetGroupName="emu-sub", CacheSubnetGroupDescription="t", SubnetIds=["subnet-12345678"]
    )
    ec.create_replication_group(
        ReplicationGroupId="emu-rg",
        ReplicationGroupDescription="t",
        NumCacheClusters=2,
        CacheNodeType="cache.t4g.micro",
        Engine="redis",
        EngineVersion="7.1",
        CacheSubnetGroupName="emu-sub",
        SecurityGroupIds=["sg-12345678"],
    )
    group = ec.describe_replication_groups(ReplicationGroupId="emu-rg")["ReplicationGroups"][0]
    assert group["MemberClusters"] == ["emu-rg-001", "emu-rg-002"]
    member = ec.describe_cache_clusters(CacheClusterId="emu-rg-001")["CacheClusters"][0]
    assert member["ReplicationGroupId"] == "emu-rg"
    assert member["EngineVersion"] == "7.1"
    assert member["SecurityGroups"] == [{"SecurityGroupId": "sg-12345678", "Status": "active"}]

    with pytest.raises(ec.exceptions.ClientError, match="CacheSubnetGroupInUse"):
        ec.delete_cache_subnet_group(CacheSubnetGroupName="emu-sub")
    assert ec.delete_replication_group(ReplicationGroupId="emu-rg")["ReplicationGroup"]["Status"] == "deleting"
    with pytest.raises(ec.exceptions.ReplicationGroupNotFoundFault):
        ec.describe_replication_groups(ReplicationGroupId="emu-rg")
    assert ec.describe_cache_clusters()["CacheClusters"] == []
    ec.delete_cache_subnet_group(CacheSubnetGroupName="emu-sub")
    assert ec.describe_cache_subnet_groups()["CacheSubnetGroups"] == []


def test_ecs_service_echoes_what_create_was_given(endpoint: str) -> None:
    ecs = client(endpoint, "ecs")
    ecs.create_cluster(clusterName="emu")
    ecs.register_task_definition(family="emu", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
    strategy = [{"capacityProvider": "FARGATE_SPOT", "weight": 3, "base": 0}]
    ecs.create_service(
        cluster="emu",
        serviceName="emu",
        taskDefinition="emu",
        desiredCount=0,
        capacityProviderStrategy=strategy,
        availabilityZoneRebalancing="DISABLED",
        enableECSManagedTags=True,
    )
    service = ecs.describe_services(cluster="emu", services=["emu"])["services"][0]
    assert service["capacityProviderStrategy"] == strategy
    assert service["availabilityZoneRebalancing"] == "DISABLED"
    assert service["enableECSManagedTags"] is True
    assert "launchType" not in service


def test_lambda_echoes_dead_letter_and_logging_config(endpoint: str) -> None:
    iam, lam = client(endpoint, "iam"), client(endpoint, "lambda")
    role = iam.create_role(RoleName="emu-fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return None\n")
    dlq = "arn:aws:sqs:us-east-1:123456789012:emu-dlq"
    lam.create_function(
        FunctionName="emu-fn",
        Runtime="python3.12",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
        DeadLetterConfig={"TargetArn": dlq},
        LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "INFO"},
    )
    config = lam.get_function_configuration(FunctionName="emu-fn")
    assert config["DeadLetterConfig"] == {"TargetArn": dlq}
    assert config["LoggingConfig"] == {
        "LogFormat": "JSON",
        "ApplicationLogLevel": "INFO",
        "LogGroup": "/aws/lambda/emu-fn",
    }
    lam.update_function_configuration(FunctionName="emu-fn", LoggingConfig={"LogFormat": "Text"})
    assert lam.get_function_configuration(FunctionName="emu-fn")["LoggingConfig"]["LogFormat"] == "Text"


def test_aws_managed_policies_exist(endpoint: str) -> None:
    arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
    assert client(endpoint, "iam").get_policy(PolicyArn=arn)["Policy"]["Arn"] == arn


def test_security_group_rule_with_a_source_group_reports_its_description(endpoint: str) -> None:
    ec2 = client(endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    redis = ec2.create_security_group(GroupName="emu-redis", Description="t", VpcId=vpc)["GroupId"]
    workers = ec2.create_security_group(GroupName="emu-workers", Description="t", VpcId=vpc)["GroupId"]
    pair = {"GroupId": workers, "Description": "Redis from the workers"}
    permission = {"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "UserIdGroupPairs": [pair]}
    rule_id = ec2.authorize_security_group_ingress(GroupId=redis, IpPermissions=[permission])["SecurityGroupRules"][0][
        "SecurityGroupRuleId"
    ]
    rule = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rule_id])["SecurityGroupRules"][0]
    assert rule["Description"] == "Redis from the workers"
    assert rule["ReferencedGroupInfo"]["GroupId"] == workers


def test_sqs_redrive_policy_reads_back_compact(endpoint: str) -> None:
    sqs = client(endpoint, "sqs")
    dlq = sqs.create_queue(QueueName="emu-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = f'{{"deadLetterTargetArn":"{arn}","maxReceiveCount":5}}'  # what jsonencode() writes, and AWS returns
    queue = sqs.create_queue(QueueName="emu-q", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])["Attributes"] == {
        "RedrivePolicy": policy
    }
