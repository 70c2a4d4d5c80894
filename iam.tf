locals {
  kms_key_arns     = compact([var.kms_key_arn, var.broker.url_secret_kms_key_arn])
  service_role_arn = "arn:${local.partition}:iam::aws:policy/service-role"

  # Secrets the workers' containers read: the broker URL plus each pool's and beat's own.
  container_secret_arns = distinct(concat(
    local.broker_is_sqs ? [] : [local.broker_secret_arn],
    flatten([for p in var.worker_pools : values(p.secrets)]),
    var.beat.enabled ? values(var.beat.secrets) : [],
  ))
  # A Secrets Manager valueFrom may end in ":json-key:stage:version"; IAM wants the secret's ARN.
  container_secretsmanager_arns = distinct([for a in local.container_secret_arns : join(":", slice(split(":", a), 0, 7)) if strcontains(a, ":secretsmanager:")])
  container_ssm_arns            = [for a in local.container_secret_arns : a if strcontains(a, ":ssm:")]

  # Trust policy of the execution role: only this account's ECS tasks may assume it.
  assume_role_policy = { for service in ["ecs-tasks"] : service => jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "${service}.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  }) }

  # Known at plan (the broker secret's ARN may not be): whether the containers read any secret at all.
  containers_read_secrets = !local.broker_is_sqs || length(flatten([for p in var.worker_pools : values(p.secrets)])) > 0 || (var.beat.enabled && length(var.beat.secrets) > 0)
  task_execution_statements = concat(
    length(local.container_secretsmanager_arns) > 0 ? [{
      Sid      = "ContainerSecrets"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = local.container_secretsmanager_arns
    }] : [],
    length(local.container_ssm_arns) > 0 ? [{
      Sid      = "ContainerParameters"
      Effect   = "Allow"
      Action   = ["ssm:GetParameters"]
      Resource = local.container_ssm_arns
    }] : [],
    length(local.kms_key_arns) > 0 ? [{
      Sid      = "DecryptSecrets"
      Effect   = "Allow"
      Action   = ["kms:Decrypt"]
      Resource = local.kms_key_arns
    }] : [],
  )

  task_protection_enabled = anytrue([for p in var.worker_pools : p.scale_in_protection])

  task_role_statements = concat(
    # Exactly what kombu's SQS transport calls with predefined queues: send, receive, delete (ack),
    # change visibility (release, backoff) and read attributes (the redrive policy on reject).
    local.broker_is_sqs ? [{
      Sid      = "CeleryQueues"
      Effect   = "Allow"
      Action   = ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:SendMessage"]
      Resource = local.sqs_queue_arns
    }] : [],
    local.broker_is_sqs && var.kms_key_arn != null ? [{
      Sid      = "CeleryQueuesKey"
      Effect   = "Allow"
      Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource = [var.kms_key_arn]
    }] : [],
    local.task_protection_enabled ? [{
      Sid      = "ScaleInProtection"
      Effect   = "Allow"
      Action   = ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
      Resource = [local.task_arn_pattern]
    }] : [],
    var.enable_execute_command ? [{
      Sid      = "EcsExec"
      Effect   = "Allow"
      Action   = ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"]
      Resource = ["*"]
    }] : [],
    [for s in var.task_role_policy_statements : merge(
      { Effect = s.effect, Action = s.actions, Resource = s.resources },
      s.sid != null ? { Sid = s.sid } : {},
      length(s.conditions) > 0 ? { Condition = {
        for test in distinct([for c in s.conditions : c.test]) : test => merge([for c in s.conditions : { (c.variable) = c.values } if c.test == test]...)
      } } : {},
    )],
  )
}

################################################################################
# Task execution role (ECS agent: pull the image, write logs, read the secrets)
################################################################################

resource "aws_iam_role" "task_execution" {
  name                 = "${var.name}-task-execution"
  description          = "ECS task execution role of the Celery workers of ${var.name}"
  permissions_boundary = var.iam_permissions_boundary
  assume_role_policy   = local.assume_role_policy["ecs-tasks"]

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "task_execution" {
  role       = aws_iam_role.task_execution.name
  policy_arn = "${local.service_role_arn}/AmazonECSTaskExecutionRolePolicy"
}

# Nothing to read on SQS without container secrets (no broker URL secret): then no policy at all.
resource "aws_iam_role_policy" "task_execution" {
  count = local.containers_read_secrets ? 1 : 0

  name   = "secrets"
  role   = aws_iam_role.task_execution.name
  policy = jsonencode({ Version = "2012-10-17", Statement = local.task_execution_statements })
}

moved {
  from = aws_iam_role_policy.task_execution
  to   = aws_iam_role_policy.task_execution[0]
}

################################################################################
# Task role (the Celery workers themselves)
################################################################################

resource "aws_iam_role" "task" {
  name                 = "${var.name}-task"
  description          = "ECS task role of the Celery workers of ${var.name}"
  permissions_boundary = var.iam_permissions_boundary
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  })

  tags = local.tags
}

resource "aws_iam_role_policy" "task" {
  count = length(local.task_role_statements) > 0 ? 1 : 0

  name   = "workers"
  role   = aws_iam_role.task.name
  policy = jsonencode({ Version = "2012-10-17", Statement = local.task_role_statements })
}
