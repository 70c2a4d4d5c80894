"""docs/deployer-policy.json allows what `terraform apply` and `destroy` of the module call.

Every resource and data source type the root module and modules/scaler declare must be listed in
``NEEDS`` with the API actions the aws provider calls to create, read, update, tag and delete it, and
the policy must allow each of those actions. A new resource type fails here until it is mapped and
the policy covers it.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "docs" / "deployer-policy.json"
MODULES = (ROOT, ROOT / "modules" / "scaler")

_SG = ["ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup", "ec2:DescribeSecurityGroups", "ec2:CreateTags"]
_SG_RULE = ["ec2:DescribeSecurityGroupRules", "ec2:ModifySecurityGroupRules", "ec2:CreateTags"]
_ROLE = ["iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:TagRole", "iam:ListRolePolicies"]
_ROLE += ["iam:ListAttachedRolePolicies", "iam:ListInstanceProfilesForRole", "iam:UpdateAssumeRolePolicy"]
NEEDS: dict[str, list[str]] = {
    "data.aws_caller_identity": ["sts:GetCallerIdentity"],
    "data.aws_partition": [],
    "data.aws_region": [],
    "data.aws_secretsmanager_random_password": ["secretsmanager:GetRandomPassword"],
    "aws_cloudwatch_dashboard": ["cloudwatch:PutDashboard", "cloudwatch:GetDashboard", "cloudwatch:DeleteDashboards"],
    "aws_cloudwatch_log_group": [
        "logs:CreateLogGroup",
        "logs:DeleteLogGroup",
        "logs:DescribeLogGroups",
        "logs:PutRetentionPolicy",
        "logs:TagResource",
        "logs:ListTagsForResource",
    ],
    "aws_cloudwatch_metric_alarm": [
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:DescribeAlarms",
        "cloudwatch:DeleteAlarms",
        "cloudwatch:TagResource",
        "cloudwatch:ListTagsForResource",
    ],
    "aws_dynamodb_table": [
        "dynamodb:CreateTable",
        "dynamodb:DeleteTable",
        "dynamodb:DescribeTable",
        "dynamodb:UpdateContinuousBackups",
        "dynamodb:DescribeContinuousBackups",
        "dynamodb:DescribeTimeToLive",
        "dynamodb:TagResource",
        "dynamodb:ListTagsOfResource",
    ],
    "aws_ecs_cluster": ["ecs:CreateCluster", "ecs:DeleteCluster", "ecs:DescribeClusters", "ecs:TagResource"],
    "aws_ecs_cluster_capacity_providers": ["ecs:PutClusterCapacityProviders", "ecs:DescribeClusters"],
    "aws_ecs_service": [
        "ecs:CreateService",
        "ecs:DeleteService",
        "ecs:DescribeServices",
        "ecs:UpdateService",
        "iam:PassRole",
        "iam:CreateServiceLinkedRole",
    ],
    "aws_ecs_task_definition": [
        "ecs:RegisterTaskDefinition",
        "ecs:DeregisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "iam:PassRole",
    ],
    "aws_elasticache_replication_group": [
        "elasticache:CreateReplicationGroup",
        "elasticache:DeleteReplicationGroup",
        "elasticache:DescribeReplicationGroups",
        "elasticache:ModifyReplicationGroup",
        "elasticache:DescribeCacheClusters",
        "elasticache:AddTagsToResource",
        "elasticache:ListTagsForResource",
    ],
    "aws_elasticache_subnet_group": [
        "elasticache:CreateCacheSubnetGroup",
        "elasticache:DeleteCacheSubnetGroup",
        "elasticache:DescribeCacheSubnetGroups",
        "elasticache:ModifyCacheSubnetGroup",
    ],
    "aws_iam_role": _ROLE,
    "aws_iam_role_policy": ["iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy"],
    "aws_iam_role_policy_attachment": ["iam:AttachRolePolicy", "iam:DetachRolePolicy"],
    "aws_lambda_function": [
        "lambda:CreateFunction",
        "lambda:DeleteFunction",
        "lambda:GetFunction",
        "lambda:UpdateFunctionCode",
        "lambda:UpdateFunctionConfiguration",
        "lambda:PutFunctionConcurrency",
        "lambda:GetFunctionCodeSigningConfig",
        "lambda:ListVersionsByFunction",
        "lambda:TagResource",
        "iam:PassRole",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeVpcs",
    ],
    "aws_lambda_function_event_invoke_config": [
        "lambda:PutFunctionEventInvokeConfig",
        "lambda:GetFunctionEventInvokeConfig",
        "lambda:DeleteFunctionEventInvokeConfig",
    ],
    "aws_mq_broker": [
        "mq:CreateBroker",
        "mq:DeleteBroker",
        "mq:DescribeBroker",
        "mq:UpdateBroker",
        "mq:DescribeUser",
        "mq:CreateTags",
        "iam:CreateServiceLinkedRole",
    ],
    "aws_scheduler_schedule": [
        "scheduler:CreateSchedule",
        "scheduler:DeleteSchedule",
        "scheduler:GetSchedule",
        "scheduler:UpdateSchedule",
        "iam:PassRole",
    ],
    "aws_secretsmanager_secret": [
        "secretsmanager:CreateSecret",
        "secretsmanager:DeleteSecret",
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetResourcePolicy",
        "secretsmanager:TagResource",
    ],
    "aws_secretsmanager_secret_version": ["secretsmanager:PutSecretValue", "secretsmanager:GetSecretValue"],
    "aws_security_group": [*_SG, "ec2:RevokeSecurityGroupEgress"],
    "aws_sqs_queue": [
        "sqs:CreateQueue",
        "sqs:DeleteQueue",
        "sqs:GetQueueAttributes",
        "sqs:SetQueueAttributes",
        "sqs:TagQueue",
        "sqs:ListQueueTags",
    ],
    "aws_vpc_endpoint": [
        "ec2:CreateVpcEndpoint",
        "ec2:DeleteVpcEndpoints",
        "ec2:DescribeVpcEndpoints",
        "ec2:ModifyVpcEndpoint",
        "ec2:DescribePrefixLists",
        "ec2:CreateTags",
    ],
    "aws_vpc_security_group_egress_rule": [
        *_SG_RULE,
        "ec2:AuthorizeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupEgress",
    ],
    "aws_vpc_security_group_ingress_rule": [
        *_SG_RULE,
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
    ],
}


def declared_types() -> set[str]:
    """Every ``resource`` and ``data`` type in the modules' .tf files."""
    found: set[str] = set()
    for module in MODULES:
        for tf in module.glob("*.tf"):
            for kind, type_ in re.findall(r'^(resource|data) "([a-z0-9_]+)"', tf.read_text(), re.MULTILINE):
                found.add(type_ if kind == "resource" else f"data.{type_}")
    return found


def allowed(action: str, statements: list[dict[str, object]]) -> bool:
    """Whether an Allow statement's Action (exact or a wildcard pattern) names ``action``."""
    for statement in statements:
        actions = statement["Action"]
        patterns = [actions] if isinstance(actions, str) else list(actions)  # type: ignore[call-overload]
        if statement["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action, p) for p in patterns):
            return True
    return False


def test_every_resource_type_the_module_declares_is_mapped_to_its_actions() -> None:
    types = declared_types()
    assert "aws_lambda_function" in types
    assert "aws_ecs_service" in types
    assert types - NEEDS.keys() == set(), "map these types' API actions in NEEDS and allow them in the policy"


def test_the_deployer_policy_allows_every_mapped_action() -> None:
    statements = json.loads(POLICY.read_text())["Statement"]
    missing = {
        type_: [a for a in actions if not allowed(a, statements)]
        for type_, actions in NEEDS.items()
        if any(not allowed(a, statements) for a in actions)
    }
    assert missing == {}


def test_the_policy_check_catches_an_action_it_lacks() -> None:
    statements = [{"Effect": "Allow", "Action": ["ecs:Describe*"]}, {"Effect": "Deny", "Action": "ecs:CreateService"}]
    assert allowed("ecs:DescribeServices", statements)
    assert not allowed("ecs:CreateService", statements)
