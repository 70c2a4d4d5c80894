data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.id
  tags       = merge(var.tags, { "celery-ecs-autoscaler" = var.name })

  # The cluster and every service by name and ARN, built from the inputs (not read back) so the IAM
  # policy is exact at plan time. A service ARN may be the long form (service/CLUSTER/NAME) or the old one.
  cluster_name      = element(split("/", var.cluster), length(split("/", var.cluster)) - 1)
  cluster_arn       = startswith(var.cluster, "arn:") ? var.cluster : "arn:${local.partition}:ecs:${local.region}:${local.account_id}:cluster/${local.cluster_name}"
  pool_services     = { for pool, p in var.pools : pool => element(split("/", p.service), length(split("/", p.service)) - 1) }
  pool_service_arns = { for pool, p in var.pools : pool => startswith(p.service, "arn:") ? p.service : "${replace(local.cluster_arn, ":cluster/", ":service/")}/${p.service}" }
  task_arn_pattern  = "${replace(local.cluster_arn, ":cluster/", ":task/")}/*"

  scaler_name      = "${var.name}-scaler"
  state_table_name = "${var.name}-scaler-state"
  dlq_name         = "${var.name}-scaler-dlq"
  log_group_name   = "/aws/lambda/${local.scaler_name}"
  package_path     = var.scaler.s3_bucket == null ? coalesce(var.scaler.package_path, "${path.module}/../../lambda/dist/celery-autoscaler-lambda.zip") : null

  # A 5-field cron expression as the scaler parses it (lambda/celery_autoscaler/schedules.py), the
  # root module's pattern (tests/test_terraform_static.py keeps the two equal).
  cron_values = {
    minute = "[0-5]?[0-9]"
    hour   = "[01]?[0-9]|2[0-3]"
    day    = "0?[1-9]|[12][0-9]|3[01]"
    month  = "0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
    week   = "[0-7]|sun|mon|tue|wed|thu|fri|sat"
  }
  cron_fields  = [for f in ["minute", "hour", "day", "month", "week"] : format("(\\*|(%[1]s)(-(%[1]s))?)(/[1-9][0-9]*)?(,(\\*|(%[1]s)(-(%[1]s))?)(/[1-9][0-9]*)?)*", local.cron_values[f])]
  cron_pattern = "(?i)^\\s*${join("\\s+", local.cron_fields)}\\s*$"

  # The scaler's configuration document: the schema of lambda/celery_autoscaler/config.py, key for key.
  # It holds the broker secret's ARN, never a URL with a password (SQS's "sqs://" holds none).
  config = {
    broker = merge(var.broker.extra_config, var.broker.type == "sqs" ? { url = "sqs://" } : { url_secret_arn = var.broker.url_secret_arn }, {
      key_prefix              = var.broker.key_prefix
      priority_sep            = var.broker.priority_sep
      publish_time_header     = var.broker.publish_time_header
      unacked_scan_interval_s = var.broker.unacked_scan_interval_s
      unacked_scan_cap        = var.broker.unacked_scan_cap
      socket_timeout_s        = var.broker.socket_timeout_s
      region                  = local.region
      queue_name_prefix       = var.broker.queue_name_prefix
      management_url          = var.broker.management_url
    })
    cluster = local.cluster_name
    # A pool's scaling settings carry the scaler's names, so they pass through as they are.
    pools = { for pool, p in var.pools : pool => merge(p.scaling, {
      service      = p.service
      queues       = p.queues
      concurrency  = p.concurrency
      cpu          = p.cpu
      memory       = p.memory
      architecture = p.architecture
      spot_weight  = p.spot_weight
    }) }
    state_table          = local.state_table_name
    tick_interval_s      = var.scaler.tick_interval_s
    ticks_per_invocation = var.scaler.ticks_per_invocation
    dry_run              = var.scaler.dry_run
    metrics_namespace    = var.scaler.metrics_namespace
    prices               = var.prices
  }
}

################################################################################
# State table (one item per pool: last decision, windows, last seen counts)
################################################################################

resource "aws_dynamodb_table" "state" {
  count = var.create ? 1 : 0

  name         = local.state_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pool"

  attribute {
    name = "pool"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = local.tags
}

################################################################################
# Dead letters (invocations that failed or could not be delivered)
################################################################################

resource "aws_sqs_queue" "dlq" {
  count = var.create ? 1 : 0

  name                      = local.dlq_name
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = var.kms_key_arn == null ? true : null
  kms_master_key_id         = var.kms_key_arn

  tags = local.tags
}

################################################################################
# Lambda
################################################################################

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_50:tracing_config is always set from scaler.tracing_mode (PassThrough by default, Active optional); checkov cannot resolve an optional() default.
  #checkov:skip=CKV_AWS_272:The package is pinned by source_code_hash of a reproducible build; code signing needs a Signer profile the user owns.
  count = var.create ? 1 : 0

  function_name     = local.scaler_name
  description       = "Celery autoscaler of ${var.name}: sets each worker pool's desired count from its queues"
  role              = aws_iam_role.this[0].arn
  runtime           = "python3.12"
  architectures     = ["arm64"]
  handler           = "celery_autoscaler.handler.lambda_handler"
  filename          = local.package_path
  source_code_hash  = local.package_path != null ? filebase64sha256(local.package_path) : null
  s3_bucket         = var.scaler.s3_bucket
  s3_key            = var.scaler.s3_key
  s3_object_version = var.scaler.s3_object_version
  memory_size       = var.scaler.memory_size
  timeout           = var.scaler.timeout
  kms_key_arn       = var.kms_key_arn

  # One invocation at a time: two ticks racing on the same pools would fight over desired counts.
  reserved_concurrent_executions = 1

  environment {
    variables = {
      CELERY_AUTOSCALER_CONFIG = jsonencode(local.config)
    }
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.this[0].id]
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.dlq[0].arn
  }

  tracing_config {
    mode = var.scaler.tracing_mode
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = length(jsonencode(local.config)) <= 4000
      error_message = "The scaler configuration exceeds Lambda's 4 KB environment limit; use fewer pools/queues or shorter names."
    }
  }

  depends_on = [
    aws_cloudwatch_log_group.this,
    aws_iam_role_policy.this,
    aws_iam_role_policy_attachment.vpc,
  ]
}

# A failed tick is not retried: the next scheduled invocation measures afresh.
resource "aws_lambda_function_event_invoke_config" "this" {
  count = var.create ? 1 : 0

  function_name                = aws_lambda_function.this[0].function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}

################################################################################
# Schedule
################################################################################

resource "aws_scheduler_schedule" "this" {
  count = var.create ? 1 : 0

  name                = local.scaler_name
  description         = "Runs the Celery autoscaler of ${var.name}"
  schedule_expression = var.scaler.schedule_expression
  state               = "ENABLED"
  kms_key_arn         = var.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.this[0].arn
    role_arn = aws_iam_role.scheduler[0].arn
    input    = jsonencode({ source = "schedule" })

    retry_policy {
      maximum_retry_attempts       = 0
      maximum_event_age_in_seconds = 60
    }

    dead_letter_config {
      arn = aws_sqs_queue.dlq[0].arn
    }
  }
}

################################################################################
# Security group (AWS APIs on 443, the broker on its port)
################################################################################

resource "aws_security_group" "this" {
  count = var.create ? 1 : 0

  name        = local.scaler_name
  description = "Scaler Lambda of ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = local.scaler_name })
}

resource "aws_vpc_security_group_egress_rule" "https" {
  count = var.create ? 1 : 0

  security_group_id = aws_security_group.this[0].id
  description       = "AWS APIs (ECS, DynamoDB, Secrets Manager, CloudWatch) through NAT or VPC endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

# SQS is an AWS API on 443 (the rule above): no broker host to reach.
resource "aws_vpc_security_group_egress_rule" "broker" {
  count = var.create && var.broker.type != "sqs" ? 1 : 0

  security_group_id            = aws_security_group.this[0].id
  description                  = var.broker.type == "redis" ? "Redis broker" : "RabbitMQ management API"
  ip_protocol                  = "tcp"
  from_port                    = var.broker.port
  to_port                      = var.broker.port
  referenced_security_group_id = var.broker.security_group_id
  # Without the broker's security group its address is unknown here: allow its port anywhere.
  cidr_ipv4 = var.broker.security_group_id == null ? "0.0.0.0/0" : null

  tags = local.tags
}
