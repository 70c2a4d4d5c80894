data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  ################################################################################
  # General
  ################################################################################

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.id
  tags       = merge(var.tags, { "celery-ecs-autoscaler" = var.name })

  # Valid Fargate memory (MiB) for each cpu value; used by the cpu/memory validations.
  fargate_memory = {
    "256"   = [512, 1024, 2048]
    "512"   = range(1024, 4097, 1024)
    "1024"  = range(2048, 8193, 1024)
    "2048"  = range(4096, 16385, 1024)
    "4096"  = range(8192, 30721, 1024)
    "8192"  = range(16384, 61441, 4096)
    "16384" = range(32768, 122881, 8192)
  }

  ################################################################################
  # Cluster
  ################################################################################

  cluster_name = var.create_cluster ? var.name : element(split("/", var.cluster_arn), 1)
  cluster_arn  = var.create_cluster ? aws_ecs_cluster.this[0].arn : var.cluster_arn

  ################################################################################
  # Workers
  ################################################################################

  # Names, not read back, so the scaler's IAM policy (modules/scaler) is exact at plan time.
  pool_services    = { for pool, _ in var.worker_pools : pool => "${var.name}-${pool}" }
  task_arn_pattern = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${local.cluster_name}/*"
  beat_service     = "${var.name}-beat"
  worker_log_group = "/ecs/${var.name}"

  ################################################################################
  # Broker
  ################################################################################

  create_redis      = var.broker.create && var.broker.type == "redis"
  create_rabbitmq   = var.broker.create && var.broker.type == "rabbitmq"
  create_broker     = local.create_redis || local.create_rabbitmq # a broker host (SQS has none), and its URL secret
  broker_secret_arn = local.create_broker ? aws_secretsmanager_secret.broker[0].arn : var.broker.url_secret_arn
  # RabbitMQ: the scaler reads the management API (HTTPS on 443 on Amazon MQ), the workers AMQPS.
  rabbitmq_management_url = local.create_rabbitmq ? aws_mq_broker.broker[0].instances[0].console_url : var.broker.management_url
  # The port the scaler opens to the broker: Redis's, or the RabbitMQ management API's.
  scaler_broker_port = (
    var.broker.type == "redis" ? var.broker.port :
    local.create_rabbitmq ? 443 :
    var.broker.management_url == null ? 15672 :
    try(tonumber(regex("^https?://[^/:]+:([0-9]+)", var.broker.management_url)[0]), startswith(var.broker.management_url, "https://") ? 443 : 80)
  )

  ################################################################################
  # Schedules (worker_pools.NAME.scaling.schedules; modules/scaler validates its pools the same way)
  ################################################################################

  # A 5-field cron expression as the scaler parses it (lambda/celery_autoscaler/schedules.py); the scaler
  # also rejects ranges that run backwards. tests/test_config.py checks this pattern against the parser.
  cron_values = {
    minute = "[0-5]?[0-9]"
    hour   = "[01]?[0-9]|2[0-3]"
    day    = "0?[1-9]|[12][0-9]|3[01]"
    month  = "0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
    week   = "[0-7]|sun|mon|tue|wed|thu|fri|sat"
  }
  cron_fields  = [for f in ["minute", "hour", "day", "month", "week"] : format("(\\*|(%[1]s)(-(%[1]s))?)(/[1-9][0-9]*)?(,(\\*|(%[1]s)(-(%[1]s))?)(/[1-9][0-9]*)?)*", local.cron_values[f])]
  cron_pattern = "(?i)^\\s*${join("\\s+", local.cron_fields)}\\s*$"
}

################################################################################
# Cluster
################################################################################

resource "aws_ecs_cluster" "this" {
  count = var.create_cluster ? 1 : 0

  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }

  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  count = var.create_cluster ? 1 : 0

  cluster_name       = aws_ecs_cluster.this[0].name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}
