# Shape of the scaler submodule for services it did not create, planned and "applied" against a
# mocked AWS provider. The root module's own tests (tests/module.tftest.hcl) call it through the root;
# the real apply against an AWS emulator is tests/test_terraform_apply.py (examples/existing-services).

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012", arn = "arn:aws:iam::123456789012:user/test" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws", dns_suffix = "amazonaws.com" }
  }
  mock_data "aws_region" {
    defaults = { id = "eu-west-1", name = "eu-west-1" }
  }
  mock_resource "aws_security_group" {
    defaults = { id = "sg-0123456789abcdef0" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_sqs_queue" {
    defaults = { arn = "arn:aws:sqs:eu-west-1:123456789012:shop-scaler-dlq" }
  }
  mock_resource "aws_lambda_function" {
    defaults = { arn = "arn:aws:lambda:eu-west-1:123456789012:function:shop-scaler" }
  }
}

variables {
  name       = "shop"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  cluster    = "platform"
  pools = {
    default = {
      service     = "shop-workers"
      queues      = ["celery", "emails"]
      concurrency = 4
      scaling     = { min_workers = 1, max_workers = 20 }
    }
    reports = {
      service = "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-reports"
      queues  = ["reports"]
      scaling = { target_latency_s = 30 }
    }
  }
  broker = {
    url_secret_arn    = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf"
    security_group_id = "sg-0123456789abcdef1"
  }
}

run "iam_is_scoped_to_exactly_the_given_services" {
  command = apply

  assert {
    condition = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s.Resource if s.Sid == "ScaleOwnServices"][0] == [
      "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-workers",
      "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-reports",
    ]
    error_message = "The scaler may describe/update exactly the pools' services, given by name (in the cluster) or ARN."
  }

  assert {
    condition     = output.service_arns == { default = "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-workers", reports = "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-reports" }
    error_message = "service_arns names the services the policy allows, by pool."
  }

  assert {
    condition     = alltrue([for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : !contains(s.Resource, "*") || can(s.Condition)])
    error_message = "A scaler statement on Resource '*' must carry a condition that scopes it."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s.Condition if s.Sid == "ListOwnClusterTasks"][0] == { ArnEquals = { "ecs:cluster" = "arn:aws:ecs:eu-west-1:123456789012:cluster/platform" } }
    error_message = "ecs:ListTasks is limited to the given cluster."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s.Resource if s.Sid == "ReadTaskProtection"][0] == ["arn:aws:ecs:eu-west-1:123456789012:task/platform/*"]
    error_message = "Task protection is read on the given cluster's tasks only."
  }

  assert {
    condition = toset(flatten(jsondecode(aws_iam_role_policy.this[0].policy).Statement[*].Action)) == toset([
      "ecs:DescribeServices", "ecs:UpdateService", "ecs:ListTasks", "ecs:GetTaskProtection",
      "dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
      "secretsmanager:GetSecretValue", "logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage",
    ])
    error_message = "The scaler's inline policy grants exactly what it calls (metrics go out as EMF log lines)."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s.Resource if s.Sid == "StateTable"][0] == ["arn:aws:dynamodb:eu-west-1:123456789012:table/shop-scaler-state"]
    error_message = "DynamoDB access is limited to the state table."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s.Resource if s.Sid == "BrokerUrl"][0] == ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf"]
    error_message = "The scaler reads only the broker secret."
  }

  assert {
    condition = alltrue([for r in [aws_iam_role.this[0], aws_iam_role.scheduler[0]] :
    jsondecode(r.assume_role_policy).Statement[0].Condition.StringEquals["aws:SourceAccount"] == "123456789012"])
    error_message = "Every assume-role policy carries an aws:SourceAccount condition."
  }

  assert {
    condition     = jsondecode(aws_iam_role_policy.scheduler[0].policy).Statement[0].Resource == ["arn:aws:lambda:eu-west-1:123456789012:function:shop-scaler", "arn:aws:lambda:eu-west-1:123456789012:function:shop-scaler:*"]
    error_message = "The schedule's role may invoke only the scaler."
  }
}

run "cluster_by_arn_and_extra_statements" {
  command = plan

  variables {
    cluster = "arn:aws:ecs:eu-west-1:123456789012:cluster/platform"
    policy_statements = [{
      sid        = "QueueDepth"
      actions    = ["sqs:GetQueueAttributes"]
      resources  = ["arn:aws:sqs:eu-west-1:123456789012:celery"]
      conditions = [{ test = "StringEquals", variable = "aws:ResourceAccount", values = ["123456789012"] }]
    }]
    broker = {
      url_secret_arn         = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf"
      url_secret_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/broker"
      management_url         = "https://mq.example.com"
      extra_config           = { future_setting = "x" }
    }
  }

  assert {
    condition     = output.config.cluster == "platform" && output.service_arns.default == "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-workers"
    error_message = "A cluster ARN gives the config its name and the services their ARNs."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s if s.Sid == "QueueDepth"] == [{ Sid = "QueueDepth", Effect = "Allow", Action = ["sqs:GetQueueAttributes"], Resource = ["arn:aws:sqs:eu-west-1:123456789012:celery"], Condition = { StringEquals = { "aws:ResourceAccount" = ["123456789012"] } } }]
    error_message = "policy_statements are added to the scaler's policy as given."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.this[0].policy).Statement : s.Resource if s.Sid == "Decrypt"][0] == ["arn:aws:kms:eu-west-1:123456789012:key/broker"]
    error_message = "The broker secret's own KMS key may be used to decrypt it."
  }

  assert {
    condition     = output.config.broker.management_url == "https://mq.example.com" && output.config.broker.future_setting == "x" && output.config.broker.region == "eu-west-1"
    error_message = "management_url and broker.extra_config keys reach the config's broker section; region is the scaler's."
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.broker[0].cidr_ipv4 == "0.0.0.0/0" && aws_vpc_security_group_egress_rule.broker[0].from_port == 6379
    error_message = "Without the broker's security group, the scaler may reach the broker's port anywhere."
  }
}

run "sqs_needs_no_secret_and_no_broker_port" {
  command = plan

  variables {
    broker = { type = "sqs", queue_name_prefix = "prod." }
    policy_statements = [
      { sid = "MeasureQueues", actions = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], resources = ["arn:aws:sqs:eu-west-1:123456789012:prod-celery"] },
    ]
  }

  assert {
    condition     = output.config.broker.url == "sqs://" && !can(output.config.broker.url_secret_arn) && output.config.broker.queue_name_prefix == "prod."
    error_message = "On SQS the scaler reads sqs:// (no secret) with the transport's prefix."
  }

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.broker) == 0 && length(aws_vpc_security_group_egress_rule.https) == 1
    error_message = "SQS is an AWS API on 443: no broker port rule."
  }

  assert {
    condition     = [for s in jsondecode(output.policy_json).Statement : s.Sid if contains(["BrokerUrl", "MeasureQueues"], s.Sid)] == ["MeasureQueues"]
    error_message = "No secret to read on SQS; the queue statements come from policy_statements."
  }
}

run "lambda_schedule_and_state" {
  command = apply

  assert {
    condition = (
      aws_lambda_function.this[0].function_name == "shop-scaler" &&
      aws_lambda_function.this[0].runtime == "python3.12" &&
      aws_lambda_function.this[0].architectures == tolist(["arm64"]) &&
      aws_lambda_function.this[0].handler == "celery_autoscaler.handler.lambda_handler" &&
      aws_lambda_function.this[0].reserved_concurrent_executions == 1 &&
      aws_lambda_function.this[0].timeout == 70
    )
    error_message = "The scaler Lambda: <name>-scaler, python3.12 on arm64, the package's handler, one concurrent invocation, 70 s."
  }

  assert {
    condition     = aws_lambda_function.this[0].source_code_hash == filebase64sha256("${path.module}/../../lambda/dist/celery-autoscaler-lambda.zip")
    error_message = "By default the Lambda is deployed from the repository's committed zip, redeployed when its bytes change."
  }

  assert {
    condition     = aws_lambda_function.this[0].environment[0].variables.CELERY_AUTOSCALER_CONFIG == jsonencode(output.config)
    error_message = "The Lambda's CELERY_AUTOSCALER_CONFIG is the config output."
  }

  assert {
    condition     = length(aws_lambda_function.this[0].vpc_config[0].subnet_ids) == 2 && aws_lambda_function.this[0].dead_letter_config[0].target_arn == aws_sqs_queue.dlq[0].arn
    error_message = "The Lambda runs in the given subnets and sends failed invocations to the dead-letter queue."
  }

  assert {
    condition     = aws_lambda_function.this[0].tracing_config[0].mode == "PassThrough" && length(aws_iam_role_policy_attachment.xray) == 0
    error_message = "Tracing is PassThrough by default, without X-Ray permissions."
  }

  assert {
    condition     = aws_sqs_queue.dlq[0].sqs_managed_sse_enabled
    error_message = "The dead-letter queue is encrypted."
  }

  assert {
    condition = (
      aws_scheduler_schedule.this[0].schedule_expression == "rate(1 minute)" &&
      aws_scheduler_schedule.this[0].target[0].arn == aws_lambda_function.this[0].arn &&
      aws_scheduler_schedule.this[0].target[0].retry_policy[0].maximum_retry_attempts == 0
    )
    error_message = "EventBridge Scheduler invokes the scaler every minute without retries."
  }

  assert {
    condition = (
      aws_dynamodb_table.state[0].name == "shop-scaler-state" &&
      aws_dynamodb_table.state[0].billing_mode == "PAY_PER_REQUEST" &&
      aws_dynamodb_table.state[0].hash_key == "pool" &&
      one(aws_dynamodb_table.state[0].attribute).type == "S" &&
      aws_dynamodb_table.state[0].point_in_time_recovery[0].enabled &&
      aws_dynamodb_table.state[0].server_side_encryption[0].enabled
    )
    error_message = "The state table: on demand, hash key pool (S), point-in-time recovery and encryption on."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this[0].name == "/aws/lambda/shop-scaler" && aws_cloudwatch_log_group.this[0].retention_in_days == 30
    error_message = "The Lambda's log group keeps logs for log_retention_days."
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.broker[0].referenced_security_group_id == "sg-0123456789abcdef1" && aws_vpc_security_group_egress_rule.broker[0].cidr_ipv4 == null
    error_message = "With the broker's security group given, the scaler reaches only that group on the broker's port."
  }

  assert {
    condition     = aws_lambda_function.this[0].tags["celery-ecs-autoscaler"] == "shop" && aws_dynamodb_table.state[0].tags["celery-ecs-autoscaler"] == "shop"
    error_message = "Resources carry the module's tag."
  }
}

run "config_matches_the_python_schema" {
  command = plan

  assert {
    condition     = toset(keys(output.config)) == toset(["broker", "cluster", "pools", "state_table", "tick_interval_s", "ticks_per_invocation", "dry_run", "metrics_namespace", "prices"])
    error_message = "Top-level keys of the config are exactly config.py's."
  }

  assert {
    condition     = toset(keys(output.config.broker)) == toset(["url_secret_arn", "key_prefix", "priority_sep", "publish_time_header", "unacked_scan_interval_s", "unacked_scan_cap", "socket_timeout_s", "region", "queue_name_prefix", "management_url"])
    error_message = "Broker keys of the config are config.py's (url_secret_arn, never url)."
  }

  assert {
    condition = alltrue([for p in output.config.pools : toset(keys(p)) == toset([
      "service", "queues", "concurrency", "min_workers", "max_workers", "target_utilisation", "target_backlog_per_worker",
      "target_latency_s", "max_scale_out_step", "max_scale_in_percent", "scale_in_window_s", "idle_window_s", "stale_after_s", "fallback_count",
      "wait_target_s", "drain_time_s", "scale_in_tolerance", "start_delay_s",
      "learned_prewarm", "prewarm_confidence", "prewarm_margin_s", "prewarm_max_misses", "schedules",
      "cpu", "memory", "architecture", "spot_weight",
    ])])
    error_message = "Pool keys of the config are config.py's."
  }

  assert {
    condition = (
      output.config.pools.reports.target_latency_s == 30 && output.config.pools.reports.concurrency == 2 &&
      output.config.pools.default.service == "shop-workers" && output.config.pools.default.min_workers == 1 &&
      output.config.pools.reports.service == "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-reports" &&
      output.config.cluster == "platform" && output.config.state_table == "shop-scaler-state"
    )
    error_message = "Pool settings reach the config under the scaler's names; a service keeps the form it was given in."
  }
}

run "monitoring" {
  command = plan

  assert {
    condition     = toset(keys(aws_cloudwatch_metric_alarm.oldest_task_age)) == toset(["default", "reports"]) && aws_cloudwatch_metric_alarm.oldest_task_age["default"].threshold == 900
    error_message = "One oldest-task-age alarm per pool."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.oldest_task_age["reports"].alarm_name == "shop-reports-oldest-task-age" && aws_cloudwatch_metric_alarm.pool_errors["default"].alarm_name == "shop-workers-scaler-errors"
    error_message = "Per-pool alarms are named after the pool's service (its name, also when given as an ARN)."
  }

  assert {
    condition     = length(jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets) == 3 + 3 * 2 + 5 && aws_cloudwatch_dashboard.this[0].dashboard_name == "shop"
    error_message = "The dashboard has the scaler's widgets, three per pool, cost per hour and per day, pinned/unreadable/paused and two log tables."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.lambda_errors[0].dimensions.FunctionName == "shop-scaler" && aws_cloudwatch_metric_alarm.pool_errors["reports"].namespace == "CeleryAutoscaler" && aws_cloudwatch_metric_alarm.pool_errors["reports"].dimensions.Pool == "reports"
    error_message = "The scaler's alarms watch its function and its metrics namespace."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.dead_letters[0].dimensions.QueueName == "shop-scaler-dlq"
    error_message = "The dead-letter alarm watches the scaler's dead-letter queue."
  }
}

run "options_off_and_overrides" {
  command = plan

  variables {
    monitoring = { dashboard = false, alarms = false }
    scaler = {
      s3_bucket    = "artifacts"
      s3_key       = "celery-autoscaler.zip"
      dry_run      = true
      tracing_mode = "Active"
    }
  }

  assert {
    condition     = length(aws_cloudwatch_dashboard.this) == 0 && length(aws_cloudwatch_metric_alarm.oldest_task_age) == 0 && length(aws_cloudwatch_metric_alarm.lambda_errors) == 0
    error_message = "Dashboard and alarms can be switched off."
  }

  assert {
    condition     = aws_lambda_function.this[0].s3_bucket == "artifacts" && aws_lambda_function.this[0].filename == null && output.config.dry_run
    error_message = "The package can come from S3; dry_run reaches the config."
  }

  assert {
    condition     = aws_lambda_function.this[0].tracing_config[0].mode == "Active" && length(aws_iam_role_policy_attachment.xray) == 1
    error_message = "Active tracing attaches the X-Ray write policy."
  }
}

run "create_false_creates_nothing_but_computes_the_config" {
  command = plan

  variables {
    create = false
  }

  assert {
    condition     = length(aws_lambda_function.this) == 0 && length(aws_dynamodb_table.state) == 0 && length(aws_security_group.this) == 0 && length(aws_cloudwatch_metric_alarm.pool_errors) == 0 && length(aws_cloudwatch_dashboard.this) == 0
    error_message = "create = false creates no resource."
  }

  assert {
    condition     = output.function_name == null && output.security_group_id == null && output.config.cluster == "platform"
    error_message = "Outputs of resources are null; the config is still computed."
  }
}

run "config_too_large_for_the_lambda_environment" {
  command = plan

  variables {
    pools = { for i in range(30) : "pool-${i}" => {
      service = "service-${i}"
      queues  = ["a-rather-long-queue-name-for-pool-${i}-number-one", "a-rather-long-queue-name-for-pool-${i}-number-two"]
    } }
  }

  expect_failures = [aws_lambda_function.this]
}

run "oncall_alarms_take_their_thresholds_from_variables" {
  command = plan

  variables {
    monitoring = { scaler_silent_alarm_s = 600, broker_unreadable_alarm_s = 120, pinned_at_max_alarm_s = 1800 }
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.scaler_silent[0].treat_missing_data == "breaching"
    error_message = "A silent scaler writes no metric at all: missing data must be breaching."
  }

  assert {
    condition = (aws_cloudwatch_metric_alarm.scaler_silent[0].metric_name == "Ticks" && aws_cloudwatch_metric_alarm.scaler_silent[0].comparison_operator == "LessThanThreshold"
    && aws_cloudwatch_metric_alarm.scaler_silent[0].threshold == 1 && aws_cloudwatch_metric_alarm.scaler_silent[0].period == 60)
    error_message = "The silent alarm fires on fewer than 1 tick a minute."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.scaler_silent[0].evaluation_periods == 10 && aws_cloudwatch_metric_alarm.scaler_silent[0].datapoints_to_alarm == 10
    error_message = "monitoring.scaler_silent_alarm_s = 600 is 10 one-minute periods, all of them."
  }

  assert {
    condition = alltrue([for pool in ["default", "reports"] : (aws_cloudwatch_metric_alarm.broker_unreadable[pool].evaluation_periods == 2
      && aws_cloudwatch_metric_alarm.broker_unreadable[pool].datapoints_to_alarm == 2 && aws_cloudwatch_metric_alarm.broker_unreadable[pool].statistic == "Minimum"
    && aws_cloudwatch_metric_alarm.broker_unreadable[pool].treat_missing_data == "notBreaching" && aws_cloudwatch_metric_alarm.broker_unreadable[pool].dimensions.Pool == pool)])
    error_message = "Broker unreadable: per pool, every tick of 2 consecutive minutes (the silent alarm covers missing data)."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.pinned_at_max["reports"].evaluation_periods == 30 && aws_cloudwatch_metric_alarm.pinned_at_max["reports"].metric_name == "PinnedAtMax"
    error_message = "monitoring.pinned_at_max_alarm_s = 1800 is 30 one-minute periods."
  }

  assert {
    condition     = strcontains(aws_cloudwatch_metric_alarm.pinned_at_max["default"].alarm_description, "max_workers (20)") && strcontains(aws_cloudwatch_metric_alarm.pinned_at_max["default"].alarm_description, "celery-autoscaler pause default --count N")
    error_message = "The pinned-at-max alarm says the pool's max and what to do."
  }

  assert {
    condition     = alltrue([for a in [aws_cloudwatch_metric_alarm.scaler_silent[0], aws_cloudwatch_metric_alarm.broker_unreadable["default"], aws_cloudwatch_metric_alarm.pinned_at_max["default"]] : strcontains(a.alarm_description, "docs/operations.md")])
    error_message = "Every new alarm points at the on-call page."
  }
}

run "oncall_alarm_defaults" {
  command = plan

  assert {
    condition = (aws_cloudwatch_metric_alarm.scaler_silent[0].evaluation_periods == 5 && aws_cloudwatch_metric_alarm.broker_unreadable["default"].evaluation_periods == 3
    && aws_cloudwatch_metric_alarm.pinned_at_max["default"].evaluation_periods == 15)
    error_message = "Defaults: silent 5 minutes, broker unreadable 3 minutes, pinned at max 15 minutes."
  }
}

run "dashboard_shows_decisions_and_cost" {
  command = plan

  assert {
    condition = [for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.query if w.type == "log"] == [
      "SOURCE '/aws/lambda/shop-scaler' | ${trimspace(file("queries/scaling_actions.logsinsights"))}",
      "SOURCE '/aws/lambda/shop-scaler' | ${trimspace(file("queries/holds_and_errors.logsinsights"))}",
    ]
    error_message = "Two Logs Insights tables over the scaler's log group, with the tested query files' text."
  }

  assert {
    condition     = strcontains(jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets[length(jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets) - 2].properties.query, "measurements.current_desired as from_workers, decision.desired as to_workers, reason")
    error_message = "The actions table has time, pool, from -> to and the reason."
  }

  assert {
    condition = toset([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.period if w.type == "metric" && strcontains(w.properties.title, "Estimated cost")]) == toset([3600, 86400]) && alltrue([
      for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : length(w.properties.metrics) == 2 && w.properties.stat == "Sum"
    if w.type == "metric" && strcontains(w.properties.title, "Estimated cost")])
    error_message = "Cost per pool summed per hour and per day, one line per pool."
  }
}

run "config_carries_task_sizes_and_prices" {
  command = plan

  variables {
    pools = {
      default = { service = "shop-workers", queues = ["celery"], cpu = 1024, memory = 2048, architecture = "ARM64", spot_weight = 50 }
    }
    prices = { arm64_vcpu_hour_usd = 0.03 }
  }

  assert {
    condition     = output.config.pools.default.cpu == 1024 && output.config.pools.default.memory == 2048 && output.config.pools.default.architecture == "ARM64" && output.config.pools.default.spot_weight == 50
    error_message = "The task size reaches the scaler's config under its names."
  }

  assert {
    condition     = output.config.prices.arm64_vcpu_hour_usd == 0.03 && output.config.prices.x86_64_vcpu_hour_usd == 0.04048 && output.config.prices.spot_discount_percent == 70
    error_message = "Prices reach the config, defaults filled in."
  }
}
