locals {
  broker_is_sqs = var.broker.type == "sqs"

  # Celery queue -> the SQS queue kombu uses for it (Channel.canonical_queue_name: the prefix, then "."
  # -> "-" and other punctuation but "-" and "_" -> "_", a ".fifo" suffix kept). Queue names and the
  # prefix hold letters, digits and _.:@- only (validated), so ":" and "@" are all the rest.
  sqs_queue_names = local.broker_is_sqs ? { for q in flatten([for p in var.worker_pools : p.queues]) : q => (
    endswith("${var.broker.queue_name_prefix}${q}", ".fifo")
    ? "${replace(replace(trimsuffix("${var.broker.queue_name_prefix}${q}", ".fifo"), ".", "-"), "/[:@]/", "_")}.fifo"
    : replace(replace("${var.broker.queue_name_prefix}${q}", ".", "-"), "/[:@]/", "_")
  ) } : {}
  sqs_dead_letter_names = var.broker.dead_letter_queue ? { for q, name in local.sqs_queue_names : q => (
    endswith(name, ".fifo") ? "${trimsuffix(name, ".fifo")}-dlq.fifo" : "${name}-dlq"
  ) } : {}
  # Built from names, so the IAM policies are exact at plan time (and right for existing queues too).
  sqs_queue_arns = [for name in values(local.sqs_queue_names) : "arn:${local.partition}:sqs:${local.region}:${local.account_id}:${name}"]
  sqs_queue_urls = { for q, name in local.sqs_queue_names : q => (
    var.broker.create ? aws_sqs_queue.celery[q].url : "https://sqs.${local.region}.${data.aws_partition.current.dns_suffix}/${local.account_id}/${name}"
  ) }

  # What the workers' and beat's Celery apps need to use exactly these queues: kombu's SQS transport
  # options (celery_autoscaler.worker.install applies CELERY_BROKER_TRANSPORT_OPTIONS). With
  # predefined_queues kombu neither lists nor creates queues, so the task role needs no such rights.
  sqs_transport_options = {
    region             = local.region
    queue_name_prefix  = var.broker.queue_name_prefix
    visibility_timeout = var.broker.visibility_timeout_s
    predefined_queues  = { for q, name in local.sqs_queue_names : name => { url = local.sqs_queue_urls[q] } }
  }
  broker_environment = local.broker_is_sqs ? {
    CELERY_BROKER_URL               = "sqs://"
    CELERY_BROKER_TRANSPORT_OPTIONS = jsonencode(local.sqs_transport_options)
  } : {}
}

################################################################################
# Broker: Redis
################################################################################

# A fresh value on every plan: the replication group ignores auth_token changes and Amazon MQ ignores
# user changes of a RabbitMQ broker once it exists, so only the first value (stored in their state) is
# ever used, and the secret below is built from that stored value.
data "aws_secretsmanager_random_password" "broker" {
  count = (local.create_redis && nonsensitive(var.broker_auth_token == null)) || local.create_rabbitmq ? 1 : 0

  password_length     = 64
  exclude_punctuation = true
}

resource "aws_elasticache_subnet_group" "broker" {
  count = local.create_redis ? 1 : 0

  name        = "${var.name}-broker"
  description = "Celery broker subnets of ${var.name}"
  subnet_ids  = var.subnet_ids

  tags = local.tags
}

resource "aws_elasticache_replication_group" "broker" {
  #checkov:skip=CKV2_AWS_50:Failover is opt-in (broker.num_cache_clusters >= 2 enables it and Multi-AZ); one node is the low-cost default.
  count = local.create_redis ? 1 : 0

  replication_group_id       = var.name
  description                = "Celery broker of ${var.name}"
  engine                     = "redis"
  engine_version             = var.broker.engine_version
  node_type                  = var.broker.node_type
  num_cache_clusters         = var.broker.num_cache_clusters
  port                       = var.broker.port
  parameter_group_name       = var.broker.parameter_group_name
  subnet_group_name          = aws_elasticache_subnet_group.broker[0].name
  security_group_ids         = [aws_security_group.broker[0].id]
  automatic_failover_enabled = var.broker.num_cache_clusters > 1
  multi_az_enabled           = var.broker.num_cache_clusters > 1
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  auth_token                 = var.broker_auth_token != null ? var.broker_auth_token : one(data.aws_secretsmanager_random_password.broker[*].random_password)
  auto_minor_version_upgrade = true
  snapshot_retention_limit   = var.broker.snapshot_retention_limit
  maintenance_window         = var.broker.maintenance_window
  apply_immediately          = var.broker.apply_immediately

  tags = local.tags

  lifecycle {
    ignore_changes = [auth_token]
  }
}

# Amazon MQ for RabbitMQ. Its security groups cannot be changed after creation, so it gets the
# module's own group (network.tf), whose id never changes; the rules are separate resources.
resource "aws_mq_broker" "broker" {
  #checkov:skip=CKV_AWS_48:General logs follow broker.rabbitmq.general_log, on by default (checkov cannot read the optional attribute's default).
  #checkov:skip=CKV_AWS_208:broker.rabbitmq.engine_version is validated in variables.tf (3.13 or 4.x, the versions Amazon MQ creates).
  count = local.create_rabbitmq ? 1 : 0

  broker_name                = var.name
  engine_type                = "RabbitMQ"
  engine_version             = var.broker.rabbitmq.engine_version
  host_instance_type         = var.broker.rabbitmq.host_instance_type
  deployment_mode            = var.broker.rabbitmq.deployment_mode
  publicly_accessible        = false
  subnet_ids                 = var.broker.rabbitmq.deployment_mode == "SINGLE_INSTANCE" ? [var.subnet_ids[0]] : var.subnet_ids
  security_groups            = [aws_security_group.broker[0].id]
  auto_minor_version_upgrade = true # Amazon MQ requires it from RabbitMQ 3.13 on
  apply_immediately          = var.broker.apply_immediately

  encryption_options {
    kms_key_id        = var.kms_key_arn
    use_aws_owned_key = var.kms_key_arn == null
  }

  logs {
    general = var.broker.rabbitmq.general_log
  }

  user {
    username = var.broker.rabbitmq.username
    password = one(data.aws_secretsmanager_random_password.broker[*].random_password)
  }

  tags = local.tags
}

resource "aws_secretsmanager_secret" "broker" {
  #checkov:skip=CKV2_AWS_57:The secret mirrors the broker's own credential (Redis AUTH token, RabbitMQ user); rotation happens on the broker, not through a Secrets Manager rotation Lambda.
  count = local.create_broker ? 1 : 0

  name_prefix             = "${var.name}-broker-url-"
  description             = local.create_redis ? "Celery broker URL (rediss://:TOKEN@HOST:PORT/DB) of ${var.name}" : "Celery broker URL (amqps://USER:PASSWORD@HOST:5671//) of ${var.name}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.broker.secret_recovery_window_days

  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "broker" {
  count = local.create_broker ? 1 : 0

  secret_id = aws_secretsmanager_secret.broker[0].id
  secret_string = (
    local.create_redis
    ? "rediss://:${urlencode(aws_elasticache_replication_group.broker[0].auth_token)}@${aws_elasticache_replication_group.broker[0].primary_endpoint_address}:${var.broker.port}/${var.broker.db}"
    # The broker's first (and only) user, as stored at creation; its endpoint is amqps://HOST:5671.
    : "amqps://${urlencode(one(aws_mq_broker.broker[0].user).username)}:${urlencode(one(aws_mq_broker.broker[0].user).password)}@${regex("^amqps://([^/]+)", aws_mq_broker.broker[0].instances[0].endpoints[0])[0]}//"
  )
}

################################################################################
# Broker: SQS
################################################################################

resource "aws_sqs_queue" "celery" {
  for_each = var.broker.create ? local.sqs_queue_names : {}

  name                       = each.value
  fifo_queue                 = endswith(each.value, ".fifo")
  visibility_timeout_seconds = var.broker.visibility_timeout_s
  message_retention_seconds  = var.broker.message_retention_s
  kms_master_key_id          = var.kms_key_arn
  sqs_managed_sse_enabled    = var.kms_key_arn == null ? true : null
  redrive_policy = var.broker.dead_letter_queue ? jsonencode({
    deadLetterTargetArn = aws_sqs_queue.celery_dead_letter[each.key].arn
    maxReceiveCount     = var.broker.max_receive_count
  }) : null

  tags = merge(local.tags, { "celery-ecs-autoscaler:queue" = each.key })
}

# Messages received max_receive_count times without being deleted (a task that kills its worker, or
# outlives the visibility timeout each time) land here instead of circulating forever.
resource "aws_sqs_queue" "celery_dead_letter" {
  for_each = var.broker.create ? local.sqs_dead_letter_names : {}

  name                      = each.value
  fifo_queue                = endswith(each.value, ".fifo")
  message_retention_seconds = 1209600
  kms_master_key_id         = var.kms_key_arn
  sqs_managed_sse_enabled   = var.kms_key_arn == null ? true : null

  tags = merge(local.tags, { "celery-ecs-autoscaler:queue" = each.key })
}
