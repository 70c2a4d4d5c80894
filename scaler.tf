################################################################################
# Scaler: the same submodule users call for services of their own (modules/scaler)
################################################################################

module "scaler" {
  source = "./modules/scaler"

  create                   = var.scaler.enabled
  name                     = var.name
  tags                     = var.tags
  kms_key_arn              = var.kms_key_arn
  iam_permissions_boundary = var.iam_permissions_boundary
  vpc_id                   = var.vpc_id
  subnet_ids               = var.subnet_ids

  cluster = local.cluster_name
  pools = { for pool, p in var.worker_pools : pool => {
    service                 = local.pool_services[pool]
    queues                  = p.queues
    concurrency             = p.concurrency
    oldest_task_age_alarm_s = p.oldest_task_age_alarm_s
    scaling                 = p.scaling
    cpu                     = p.cpu
    memory                  = p.memory
    architecture            = p.architecture
    spot_weight             = p.spot_weight
  } }

  broker = {
    type                    = var.broker.type
    url_secret_arn          = local.broker_is_sqs ? null : local.broker_secret_arn
    url_secret_kms_key_arn  = var.broker.url_secret_kms_key_arn
    port                    = local.scaler_broker_port
    security_group_id       = local.create_broker ? aws_security_group.broker[0].id : null
    key_prefix              = var.broker.key_prefix
    priority_sep            = var.broker.priority_sep
    publish_time_header     = var.broker.publish_time_header
    unacked_scan_interval_s = var.broker.unacked_scan_interval_s
    unacked_scan_cap        = var.broker.unacked_scan_cap
    socket_timeout_s        = var.broker.socket_timeout_s
    queue_name_prefix       = var.broker.queue_name_prefix
    management_url          = local.rabbitmq_management_url
  }

  scaler = {
    # Resolved here, relative to this module, so the path in state does not change with the layout.
    package_path         = var.scaler.s3_bucket == null ? coalesce(var.scaler.package_path, "${path.module}/lambda/dist/celery-autoscaler-lambda.zip") : null
    s3_bucket            = var.scaler.s3_bucket
    s3_key               = var.scaler.s3_key
    s3_object_version    = var.scaler.s3_object_version
    memory_size          = var.scaler.memory_size
    timeout              = var.scaler.timeout
    schedule_expression  = var.scaler.schedule_expression
    tick_interval_s      = var.scaler.tick_interval_s
    ticks_per_invocation = var.scaler.ticks_per_invocation
    dry_run              = var.scaler.dry_run
    metrics_namespace    = var.scaler.metrics_namespace
    tracing_mode         = var.scaler.tracing_mode
  }

  # SQS: the scaler reads the queues' attributes and their oldest message's age (a CloudWatch metric;
  # GetMetricData has no resource-level permissions).
  policy_statements = local.broker_is_sqs ? [
    { sid = "MeasureQueues", actions = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], resources = local.sqs_queue_arns },
    { sid = "QueueAges", actions = ["cloudwatch:GetMetricData"], resources = ["*"] },
  ] : []

  log_retention_days = var.log_retention_days
  monitoring         = var.monitoring
  prices             = var.prices
}

################################################################################
# Moved into modules/scaler in 0.2.0: existing state is kept, nothing is replaced
################################################################################

moved {
  from = aws_dynamodb_table.scaler_state
  to   = module.scaler.aws_dynamodb_table.state
}

moved {
  from = aws_sqs_queue.scaler_dlq
  to   = module.scaler.aws_sqs_queue.dlq
}

moved {
  from = aws_lambda_function.scaler
  to   = module.scaler.aws_lambda_function.this
}

moved {
  from = aws_lambda_function_event_invoke_config.scaler
  to   = module.scaler.aws_lambda_function_event_invoke_config.this
}

moved {
  from = aws_scheduler_schedule.scaler
  to   = module.scaler.aws_scheduler_schedule.this
}

moved {
  from = aws_iam_role.scaler
  to   = module.scaler.aws_iam_role.this
}

moved {
  from = aws_iam_role_policy_attachment.scaler_vpc
  to   = module.scaler.aws_iam_role_policy_attachment.vpc
}

moved {
  from = aws_iam_role_policy_attachment.scaler_xray
  to   = module.scaler.aws_iam_role_policy_attachment.xray
}

moved {
  from = aws_iam_role_policy.scaler
  to   = module.scaler.aws_iam_role_policy.this
}

moved {
  from = aws_iam_role.scheduler
  to   = module.scaler.aws_iam_role.scheduler
}

moved {
  from = aws_iam_role_policy.scheduler
  to   = module.scaler.aws_iam_role_policy.scheduler
}

moved {
  from = aws_security_group.scaler
  to   = module.scaler.aws_security_group.this
}

moved {
  from = aws_vpc_security_group_egress_rule.scaler_https
  to   = module.scaler.aws_vpc_security_group_egress_rule.https
}

moved {
  from = aws_vpc_security_group_egress_rule.scaler_broker
  to   = module.scaler.aws_vpc_security_group_egress_rule.broker
}

moved {
  from = aws_cloudwatch_log_group.scaler
  to   = module.scaler.aws_cloudwatch_log_group.this
}

moved {
  from = aws_cloudwatch_dashboard.this
  to   = module.scaler.aws_cloudwatch_dashboard.this
}

moved {
  from = aws_cloudwatch_metric_alarm.scaler_lambda_errors
  to   = module.scaler.aws_cloudwatch_metric_alarm.lambda_errors
}

moved {
  from = aws_cloudwatch_metric_alarm.scaler_errors
  to   = module.scaler.aws_cloudwatch_metric_alarm.pool_errors
}

moved {
  from = aws_cloudwatch_metric_alarm.scaler_dead_letters
  to   = module.scaler.aws_cloudwatch_metric_alarm.dead_letters
}

moved {
  from = aws_cloudwatch_metric_alarm.oldest_task_age
  to   = module.scaler.aws_cloudwatch_metric_alarm.oldest_task_age
}
