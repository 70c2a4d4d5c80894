# One expect_failures run per validation rule of modules/scaler/variables.tf: each run changes ONE
# input of a valid base configuration (checked by the first run) so the failure is that rule's.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { id = "eu-west-1", name = "eu-west-1" }
  }
}

variables {
  name       = "shop"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0"]
  cluster    = "platform"
  pools      = { default = { service = "shop-workers", queues = ["celery"] } }
  broker     = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf" }
}

run "base_config_is_valid" {
  command = plan
}

run "name_format" {
  command = plan

  variables {
    name = "Shop_Prod"
  }

  expect_failures = [var.name]
}

run "kms_key_arn_format" {
  command = plan

  variables {
    kms_key_arn = "alias/shop"
  }

  expect_failures = [var.kms_key_arn]
}

run "iam_permissions_boundary_format" {
  command = plan

  variables {
    iam_permissions_boundary = "boundary"
  }

  expect_failures = [var.iam_permissions_boundary]
}

run "vpc_id_format" {
  command = plan

  variables {
    vpc_id = "vpc_main"
  }

  expect_failures = [var.vpc_id]
}

run "subnet_ids_repeated" {
  command = plan

  variables {
    subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef0"]
  }

  expect_failures = [var.subnet_ids]
}

run "subnet_ids_format" {
  command = plan

  variables {
    subnet_ids = ["private-a"]
  }

  expect_failures = [var.subnet_ids]
}

run "cluster_format" {
  command = plan

  variables {
    cluster = "arn:aws:ecs:eu-west-1:123456789012:service/platform/x"
  }

  expect_failures = [var.cluster]
}

run "pools_empty" {
  command = plan

  variables {
    pools = {}
  }

  expect_failures = [var.pools]
}

run "pool_name_format" {
  command = plan

  variables {
    pools = { Default = { service = "shop-workers", queues = ["celery"] } }
  }

  expect_failures = [var.pools]
}

run "pool_service_format" {
  command = plan

  variables {
    pools = { default = { service = "arn:aws:lambda:eu-west-1:123456789012:function:x", queues = ["celery"] } }
  }

  expect_failures = [var.pools]
}

run "pool_services_repeated" {
  command = plan

  variables {
    pools = { a = { service = "shop-workers", queues = ["a"] }, b = { service = "arn:aws:ecs:eu-west-1:123456789012:service/platform/shop-workers", queues = ["b"] } }
  }

  expect_failures = [var.pools]
}

run "pool_queues_empty" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = [] } }
  }

  expect_failures = [var.pools]
}

run "pool_queue_name_format" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery queue"] } }
  }

  expect_failures = [var.pools]
}

run "pool_queues_repeated" {
  command = plan

  variables {
    pools = { a = { service = "a", queues = ["celery"] }, b = { service = "b", queues = ["celery"] } }
  }

  expect_failures = [var.pools]
}

run "pool_concurrency" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], concurrency = 0 } }
  }

  expect_failures = [var.pools]
}

run "scaling_min_workers" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { min_workers = -1 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_max_workers" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 0 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_max_below_min" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { min_workers = 5, max_workers = 2 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_target_backlog_per_worker" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { target_backlog_per_worker = 0 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_target_latency_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { target_latency_s = -1 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_target_utilisation" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { target_utilisation = 1.5 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_max_scale_out_step" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_scale_out_step = 0.5 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_max_scale_in_percent" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_scale_in_percent = 0 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_windows" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { idle_window_s = -1 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_stale_after_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { stale_after_s = 0 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_fallback_count" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 5, fallback_count = 6 } } }
  }

  expect_failures = [var.pools]
}

run "pool_oldest_task_age_alarm_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], oldest_task_age_alarm_s = 0 } }
  }

  expect_failures = [var.pools]
}

run "broker_url_secret_arn_format" {
  command = plan

  variables {
    broker = { url_secret_arn = "shop-broker-url" }
  }

  expect_failures = [var.broker]
}

run "broker_kms_key_format" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", url_secret_kms_key_arn = "alias/x" }
  }

  expect_failures = [var.broker]
}

run "broker_port" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", port = 70000 }
  }

  expect_failures = [var.broker]
}

run "broker_security_group_format" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", security_group_id = "redis" }
  }

  expect_failures = [var.broker]
}

run "broker_priority_sep_empty" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", priority_sep = "" }
  }

  expect_failures = [var.broker]
}

run "broker_unacked_scan_cap" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", unacked_scan_cap = -1 }
  }

  expect_failures = [var.broker]
}

run "broker_socket_timeout_s" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", socket_timeout_s = 0 }
  }

  expect_failures = [var.broker]
}

run "broker_extra_config_repeats_a_key" {
  command = plan

  variables {
    broker = { url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf", extra_config = { key_prefix = "x" } }
  }

  expect_failures = [var.broker]
}

run "scaler_s3_bucket_without_key" {
  command = plan

  variables {
    scaler = { s3_bucket = "artifacts" }
  }

  expect_failures = [var.scaler]
}

run "scaler_package_and_s3" {
  command = plan

  variables {
    scaler = { package_path = "x.zip", s3_bucket = "artifacts", s3_key = "x.zip" }
  }

  expect_failures = [var.scaler]
}

run "scaler_package_not_a_zip" {
  command = plan

  variables {
    scaler = { package_path = "x.tar.gz" }
  }

  expect_failures = [var.scaler]
}

run "scaler_memory_size" {
  command = plan

  variables {
    scaler = { memory_size = 64 }
  }

  expect_failures = [var.scaler]
}

run "scaler_timeout" {
  command = plan

  variables {
    scaler = { timeout = 901 }
  }

  expect_failures = [var.scaler]
}

run "scaler_schedule_expression" {
  command = plan

  variables {
    scaler = { schedule_expression = "every minute" }
  }

  expect_failures = [var.scaler]
}

run "scaler_ticks_per_invocation" {
  command = plan

  variables {
    scaler = { ticks_per_invocation = 0 }
  }

  expect_failures = [var.scaler]
}

run "scaler_ticks_do_not_fit_the_timeout" {
  command = plan

  variables {
    scaler = { tick_interval_s = 30, ticks_per_invocation = 4, timeout = 60 }
  }

  expect_failures = [var.scaler]
}

run "scaler_metrics_namespace" {
  command = plan

  variables {
    scaler = { metrics_namespace = "AWS/Lambda" }
  }

  expect_failures = [var.scaler]
}

run "scaler_tracing_mode" {
  command = plan

  variables {
    scaler = { tracing_mode = "On" }
  }

  expect_failures = [var.scaler]
}

run "policy_statement_without_resources" {
  command = plan

  variables {
    policy_statements = [{ actions = ["sqs:GetQueueAttributes"], resources = [] }]
  }

  expect_failures = [var.policy_statements]
}

run "policy_statement_sid_format" {
  command = plan

  variables {
    policy_statements = [{ sid = "queue-depth", actions = ["sqs:GetQueueAttributes"], resources = ["*"] }]
  }

  expect_failures = [var.policy_statements]
}

run "log_retention_days" {
  command = plan

  variables {
    log_retention_days = 10
  }

  expect_failures = [var.log_retention_days]
}

run "monitoring_alarm_actions" {
  command = plan

  variables {
    monitoring = { alarm_actions = ["ops-topic"] }
  }

  expect_failures = [var.monitoring]
}

run "monitoring_oldest_task_age_alarm_s" {
  command = plan

  variables {
    monitoring = { oldest_task_age_alarm_s = 0 }
  }

  expect_failures = [var.monitoring]
}

run "schedule_cron_format" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 5, schedules = [{ cron = "0 9 * *", min_workers = 2, duration_s = 3600 }] } } }
  }

  expect_failures = [var.pools]
}

run "schedule_time_zone_known" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 5, schedules = [{ cron = "0 9 * * mon-fri", time_zone = "Europe/Atlantis", min_workers = 2, duration_s = 3600 }] } } }
  }

  expect_failures = [var.pools]
}

run "schedule_lead_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 5, schedules = [{ cron = "0 9 * * *", lead_s = -60, min_workers = 2, duration_s = 3600 }] } } }
  }

  expect_failures = [var.pools]
}

run "schedule_duration_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 5, schedules = [{ cron = "0 9 * * *", min_workers = 2, duration_s = 0 }] } } }
  }

  expect_failures = [var.pools]
}

run "schedule_min_workers_above_max" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { max_workers = 5, schedules = [{ cron = "0 9 * * *", min_workers = 6, duration_s = 3600 }] } } }
  }

  expect_failures = [var.pools]
}

run "broker_type_known" {
  command = plan

  variables {
    broker = { type = "kafka", url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-broker-url-AbCdEf" }
  }

  expect_failures = [var.broker]
}

run "broker_url_secret_required_unless_sqs" {
  command = plan

  variables {
    broker = { type = "redis" }
  }

  expect_failures = [var.broker]
}

run "scaling_wait_target_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { wait_target_s = 0 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_drain_time_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { drain_time_s = 0 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_scale_in_tolerance" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { scale_in_tolerance = 1 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_start_delay_s" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { start_delay_s = -1 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_prewarm" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { prewarm_confidence = 1 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_scale_in_window_s_bound" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], scaling = { scale_in_window_s = 3601 } } }
  }

  expect_failures = [var.pools]
}

run "scaling_scale_in_window_s_in_ticks" {
  command = plan

  variables {
    pools  = { default = { service = "shop-workers", queues = ["celery"], scaling = { scale_in_window_s = 3600 } } }
    scaler = { tick_interval_s = 0.5, ticks_per_invocation = 4 }
  }

  expect_failures = [var.pools]
}

run "pools_cpu_memory" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], memory = 0 } }
  }

  expect_failures = [var.pools]
}

run "pools_architecture" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], architecture = "arm64" } }
  }

  expect_failures = [var.pools]
}

run "pools_spot_weight" {
  command = plan

  variables {
    pools = { default = { service = "shop-workers", queues = ["celery"], spot_weight = 150 } }
  }

  expect_failures = [var.pools]
}

run "monitoring_oncall_alarm_s_whole_minutes" {
  command = plan

  variables {
    monitoring = { broker_unreadable_alarm_s = 90 }
  }

  expect_failures = [var.monitoring]
}

run "monitoring_oncall_alarm_s_at_most_a_day" {
  command = plan

  variables {
    monitoring = { pinned_at_max_alarm_s = 86460 }
  }

  expect_failures = [var.monitoring]
}

run "prices_not_negative" {
  command = plan

  variables {
    prices = { x86_64_gb_hour_usd = -0.1 }
  }

  expect_failures = [var.prices]
}
