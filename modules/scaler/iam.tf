locals {
  # ARNs built from names so every policy below is exact at plan time.
  log_group_arn    = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"
  dlq_arn          = "arn:${local.partition}:sqs:${local.region}:${local.account_id}:${local.dlq_name}"
  state_table_arn  = "arn:${local.partition}:dynamodb:${local.region}:${local.account_id}:table/${local.state_table_name}"
  function_arn     = "arn:${local.partition}:lambda:${local.region}:${local.account_id}:function:${local.scaler_name}"
  kms_key_arns     = compact([var.kms_key_arn, var.broker.url_secret_kms_key_arn])
  service_role_arn = "arn:${local.partition}:iam::aws:policy/service-role"

  # Trust policies: only this account's Lambda and Scheduler may assume the roles.
  assume_role_policy = { for service in ["lambda", "scheduler"] : service => jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "${service}.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  }) }

  extra_statements = [for s in var.policy_statements : merge(
    { Effect = s.effect, Action = s.actions, Resource = s.resources },
    s.sid != null ? { Sid = s.sid } : {},
    length(s.conditions) > 0 ? { Condition = {
      for test in distinct([for c in s.conditions : c.test]) : test => merge([for c in s.conditions : { (c.variable) = c.values } if c.test == test]...)
    } } : {},
  )]
}

################################################################################
# Scaler role (the Lambda)
################################################################################

resource "aws_iam_role" "this" {
  count = var.create ? 1 : 0

  name                 = local.scaler_name
  description          = "Celery autoscaler Lambda of ${var.name}"
  permissions_boundary = var.iam_permissions_boundary
  assume_role_policy   = local.assume_role_policy["lambda"]

  tags = local.tags
}

# ENI management for the VPC-attached Lambda (ec2:*NetworkInterface* cannot be scoped further).
resource "aws_iam_role_policy_attachment" "vpc" {
  count = var.create ? 1 : 0

  role       = aws_iam_role.this[0].name
  policy_arn = "${local.service_role_arn}/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_iam_role_policy_attachment" "xray" {
  count = var.create && var.scaler.tracing_mode == "Active" ? 1 : 0

  role       = aws_iam_role.this[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

resource "aws_iam_role_policy" "this" {
  count = var.create ? 1 : 0

  name = "scaler"
  role = aws_iam_role.this[0].name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "ScaleOwnServices"
          Effect   = "Allow"
          Action   = ["ecs:DescribeServices", "ecs:UpdateService"]
          Resource = values(local.pool_service_arns)
        },
        {
          Sid       = "ListOwnClusterTasks"
          Effect    = "Allow"
          Action    = ["ecs:ListTasks"]
          Resource  = ["*"]
          Condition = { ArnEquals = { "ecs:cluster" = local.cluster_arn } }
        },
        {
          Sid      = "ReadTaskProtection"
          Effect   = "Allow"
          Action   = ["ecs:GetTaskProtection"]
          Resource = [local.task_arn_pattern]
        },
        {
          Sid      = "StateTable"
          Effect   = "Allow"
          Action   = ["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
          Resource = [local.state_table_arn]
        },
        {
          # Its log lines carry the metrics too (CloudWatch embedded metric format): no PutMetricData.
          Sid      = "Logs"
          Effect   = "Allow"
          Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
          Resource = ["${local.log_group_arn}:*"]
        },
        {
          Sid      = "DeadLetters"
          Effect   = "Allow"
          Action   = ["sqs:SendMessage"]
          Resource = [local.dlq_arn]
        },
      ],
      var.broker.url_secret_arn != null ? [{
        Sid      = "BrokerUrl"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [var.broker.url_secret_arn]
      }] : [],
      local.extra_statements,
      length(local.kms_key_arns) > 0 ? [{
        Sid      = "Decrypt"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = local.kms_key_arns
      }] : [],
    )
  })
}

################################################################################
# Scheduler role (EventBridge Scheduler invokes the Lambda every minute)
################################################################################

resource "aws_iam_role" "scheduler" {
  count = var.create ? 1 : 0

  name                 = "${var.name}-scaler-schedule"
  description          = "EventBridge Scheduler role that invokes the Celery autoscaler of ${var.name}"
  permissions_boundary = var.iam_permissions_boundary
  assume_role_policy   = local.assume_role_policy["scheduler"]

  tags = local.tags
}

resource "aws_iam_role_policy" "scheduler" {
  count = var.create ? 1 : 0

  name = "invoke-scaler"
  role = aws_iam_role.scheduler[0].name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "InvokeScaler"
          Effect   = "Allow"
          Action   = ["lambda:InvokeFunction"]
          Resource = [local.function_arn, "${local.function_arn}:*"]
        },
        {
          Sid      = "DeadLetters"
          Effect   = "Allow"
          Action   = ["sqs:SendMessage"]
          Resource = [local.dlq_arn]
        },
      ],
      var.kms_key_arn != null ? [{
        Sid      = "EncryptDeadLetters"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = [var.kms_key_arn]
      }] : [],
    )
  })
}
