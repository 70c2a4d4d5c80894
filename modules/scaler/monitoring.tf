locals {
  # The scaler's EMF metrics: namespace scaler.metrics_namespace, per-pool metrics with dimension Pool.
  metrics_namespace = var.scaler.metrics_namespace
  alarms_enabled    = var.create && var.monitoring.alarms
  pool_names        = sort(keys(var.pools))
  below_pools       = 6 + length(var.pools) * 6

  # Logs Insights over the scaler's JSON lines (one per pool per tick); the query files are tested
  # against the lines real ticks write (tests/test_dashboard_queries.py).
  queries = {
    actions = "SOURCE '${local.log_group_name}' | ${trimspace(file("${path.module}/queries/scaling_actions.logsinsights"))}"
    holds   = "SOURCE '${local.log_group_name}' | ${trimspace(file("${path.module}/queries/holds_and_errors.logsinsights"))}"
  }

  oncall_widgets = [
    {
      type   = "metric"
      x      = 0
      y      = local.below_pools
      width  = 8
      height = 6
      properties = {
        title   = "Estimated cost per pool per hour (USD)"
        region  = local.region
        stat    = "Sum"
        period  = 3600
        view    = "timeSeries"
        metrics = [for pool in local.pool_names : [local.metrics_namespace, "EstimatedCostUSD", "Pool", pool]]
      }
    },
    {
      type   = "metric"
      x      = 8
      y      = local.below_pools
      width  = 8
      height = 6
      properties = {
        title   = "Estimated cost per pool per day (USD)"
        region  = local.region
        stat    = "Sum"
        period  = 86400
        view    = "bar"
        metrics = [for pool in local.pool_names : [local.metrics_namespace, "EstimatedCostUSD", "Pool", pool]]
      }
    },
    {
      type   = "metric"
      x      = 16
      y      = local.below_pools
      width  = 8
      height = 6
      properties = {
        title   = "Pinned at max_workers, broker unreadable, paused (1 = every tick of the minute)"
        region  = local.region
        stat    = "Minimum"
        period  = 60
        view    = "timeSeries"
        metrics = [for pair in setproduct(local.pool_names, ["PinnedAtMax", "BrokerUnreadable", "Paused"]) : [local.metrics_namespace, pair[1], "Pool", pair[0]]]
      }
    },
    {
      type   = "log"
      x      = 0
      y      = local.below_pools + 6
      width  = 24
      height = 8
      properties = {
        title  = "Latest scaling actions: time, pool, from -> to workers, reason"
        region = local.region
        view   = "table"
        query  = local.queries.actions
      }
    },
    {
      type   = "log"
      x      = 0
      y      = local.below_pools + 14
      width  = 24
      height = 8
      properties = {
        title  = "Latest holds, pauses and errors"
        region = local.region
        view   = "table"
        query  = local.queries.holds
      }
    },
  ]

  pool_widgets = flatten([for i, pool in sort(keys(var.pools)) : [
    {
      type   = "metric"
      x      = 0
      y      = 6 + i * 6
      width  = 8
      height = 6
      properties = {
        title   = "${pool}: queue depth and in-flight"
        region  = local.region
        stat    = "Maximum"
        period  = 60
        view    = "timeSeries"
        metrics = [[local.metrics_namespace, "QueueDepth", "Pool", pool], [local.metrics_namespace, "InFlight", "Pool", pool]]
      }
    },
    {
      type   = "metric"
      x      = 8
      y      = 6 + i * 6
      width  = 8
      height = 6
      properties = {
        title   = "${pool}: oldest task age (s)"
        region  = local.region
        stat    = "Maximum"
        period  = 60
        view    = "timeSeries"
        metrics = [[local.metrics_namespace, "OldestTaskAgeSeconds", "Pool", pool]]
      }
    },
    {
      type   = "metric"
      x      = 16
      y      = 6 + i * 6
      width  = 8
      height = 6
      properties = {
        title   = "${pool}: desired and running workers"
        region  = local.region
        stat    = "Maximum"
        period  = 60
        view    = "timeSeries"
        metrics = [[local.metrics_namespace, "DesiredCount", "Pool", pool], [local.metrics_namespace, "RunningCount", "Pool", pool]]
      }
    },
  ]])

  scaler_widgets = [
    {
      type   = "metric"
      x      = 0
      y      = 0
      width  = 8
      height = 6
      properties = {
        title  = "Scaler: invocations, errors, throttles"
        region = local.region
        stat   = "Sum"
        period = 60
        view   = "timeSeries"
        metrics = [
          ["AWS/Lambda", "Invocations", "FunctionName", local.scaler_name],
          ["AWS/Lambda", "Errors", "FunctionName", local.scaler_name],
          ["AWS/Lambda", "Throttles", "FunctionName", local.scaler_name],
        ]
      }
    },
    {
      type   = "metric"
      x      = 8
      y      = 0
      width  = 8
      height = 6
      properties = {
        title   = "Scaler: errors per pool (broker or ECS unreachable)"
        region  = local.region
        stat    = "Sum"
        period  = 60
        view    = "timeSeries"
        metrics = [for pool in sort(keys(var.pools)) : [local.metrics_namespace, "ScalerErrors", "Pool", pool]]
      }
    },
    {
      type   = "metric"
      x      = 16
      y      = 0
      width  = 8
      height = 6
      properties = {
        title   = "Scaler: scaling actions per pool"
        region  = local.region
        stat    = "Sum"
        period  = 60
        view    = "timeSeries"
        metrics = [for pool in sort(keys(var.pools)) : [local.metrics_namespace, "ScalingActions", "Pool", pool]]
      }
    },
  ]
}

################################################################################
# Logs
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Retention is the user's choice (log_retention_days, default 30 days); the state table holds what must last.
  count = var.create ? 1 : 0

  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = local.tags
}

################################################################################
# Dashboard
################################################################################

resource "aws_cloudwatch_dashboard" "this" {
  count = var.create && var.monitoring.dashboard ? 1 : 0

  dashboard_name = var.name
  dashboard_body = jsonencode({ widgets = concat(local.scaler_widgets, local.pool_widgets, local.oncall_widgets) })
}

################################################################################
# Alarms
################################################################################

resource "aws_cloudwatch_metric_alarm" "lambda_errors" {
  count = local.alarms_enabled ? 1 : 0

  alarm_name          = "${local.scaler_name}-lambda-errors"
  alarm_description   = "The Celery autoscaler Lambda of ${var.name} failed: pools are not being scaled."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = local.scaler_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "pool_errors" {
  for_each = local.alarms_enabled ? var.pools : {}

  alarm_name          = "${local.pool_services[each.key]}-scaler-errors"
  alarm_description   = "The Celery autoscaler of ${var.name} could not measure or scale pool ${each.key} (broker or ECS unreachable) in 3 of the last 5 minutes."
  namespace           = local.metrics_namespace
  metric_name         = "ScalerErrors"
  dimensions          = { Pool = each.key }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  count = local.alarms_enabled ? 1 : 0

  alarm_name          = "${local.scaler_name}-dead-letters"
  alarm_description   = "Scheduled invocations of the Celery autoscaler of ${var.name} failed or could not be delivered."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = local.dlq_name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "oldest_task_age" {
  for_each = local.alarms_enabled ? var.pools : {}

  alarm_name          = "${local.pool_services[each.key]}-oldest-task-age"
  alarm_description   = "The oldest waiting task of pool ${each.key} of ${var.name} has waited too long for 3 minutes."
  namespace           = local.metrics_namespace
  metric_name         = "OldestTaskAgeSeconds"
  dimensions          = { Pool = each.key }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = coalesce(each.value.oldest_task_age_alarm_s, var.monitoring.oldest_task_age_alarm_s)
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "scaler_silent" {
  count = local.alarms_enabled ? 1 : 0

  alarm_name          = "${local.scaler_name}-silent"
  alarm_description   = "The Celery autoscaler of ${var.name} completed no tick for ${var.monitoring.scaler_silent_alarm_s / 60} minutes (no Ticks metric; missing data counts as breaching): no pool is being scaled. Check that the Lambda ${local.scaler_name} exists, its schedule is enabled and it does not fail (its Errors, its log group); set counts by hand meanwhile. See docs/operations.md."
  namespace           = local.metrics_namespace
  metric_name         = "Ticks"
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = var.monitoring.scaler_silent_alarm_s / 60
  datapoints_to_alarm = var.monitoring.scaler_silent_alarm_s / 60
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "broker_unreadable" {
  for_each = local.alarms_enabled ? var.pools : {}

  alarm_name          = "${local.pool_services[each.key]}-broker-unreadable"
  alarm_description   = "The Celery autoscaler of ${var.name} could not read pool ${each.key}'s queues on any tick for ${var.monitoring.broker_unreadable_alarm_s / 60} consecutive minutes: it holds the pool's count (never scales in) but cannot scale out. Check the broker is up and reachable from the scaler (subnets, security group, secret); the dashboard's holds table shows the error. See docs/operations.md."
  namespace           = local.metrics_namespace
  metric_name         = "BrokerUnreadable"
  dimensions          = { Pool = each.key }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = var.monitoring.broker_unreadable_alarm_s / 60
  datapoints_to_alarm = var.monitoring.broker_unreadable_alarm_s / 60
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "pinned_at_max" {
  for_each = local.alarms_enabled ? var.pools : {}

  alarm_name          = "${local.pool_services[each.key]}-pinned-at-max"
  alarm_description   = "Pool ${each.key} of ${var.name} has been at max_workers (${each.value.scaling.max_workers}) while its load asked for more on every tick for ${var.monitoring.pinned_at_max_alarm_s / 60} minutes: its backlog grows. Raise its max_workers, or pause it at a higher count for now (celery-autoscaler pause ${each.key} --count N). See docs/operations.md."
  namespace           = local.metrics_namespace
  metric_name         = "PinnedAtMax"
  dimensions          = { Pool = each.key }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = var.monitoring.pinned_at_max_alarm_s / 60
  datapoints_to_alarm = var.monitoring.pinned_at_max_alarm_s / 60
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.monitoring.alarm_actions
  ok_actions          = var.monitoring.alarm_actions

  tags = local.tags
}
