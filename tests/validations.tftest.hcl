# One expect_failures run per validation rule: each run changes ONE input of a valid base
# configuration (checked by the first run) so the failure is that rule's.
# Every `validation` block in variables.tf has at least one run here.

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
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "GeneratedToken0123456789abcdef" }
  }
}

variables {
  name         = "celery"
  vpc_id       = "vpc-0123456789abcdef0"
  subnet_ids   = ["subnet-0123456789abcdef0"]
  celery_app   = "proj.celery"
  worker_pools = { default = { image = "app:1", queues = ["celery"] } }
}

run "base_config_is_valid" {
  command = plan
}

run "name_format" {
  command = plan

  variables {
    name = "Celery_Prod"
  }

  expect_failures = [var.name]
}

run "name_double_hyphen" {
  command = plan

  variables {
    name = "celery--prod"
  }

  expect_failures = [var.name]
}

run "kms_key_arn_format" {
  command = plan

  variables {
    kms_key_arn = "alias/celery"
  }

  expect_failures = [var.kms_key_arn]
}

run "vpc_id_format" {
  command = plan

  variables {
    vpc_id = "vpc_main"
  }

  expect_failures = [var.vpc_id]
}

run "subnet_ids_empty" {
  command = plan

  variables {
    subnet_ids = []
  }

  expect_failures = [var.subnet_ids]
}

run "subnet_ids_format" {
  command = plan

  variables {
    subnet_ids = ["10.0.1.0/24"]
  }

  expect_failures = [var.subnet_ids]
}

run "subnet_ids_repeated" {
  command = plan

  variables {
    subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef0"]
  }

  expect_failures = [var.subnet_ids]
}

run "vpc_endpoints_unknown_service" {
  command = plan

  variables {
    vpc_endpoints = { services = ["ecs", "ec2"] }
  }

  expect_failures = [var.vpc_endpoints]
}

run "vpc_endpoints_gateway_without_route_tables" {
  command = plan

  variables {
    vpc_endpoints = { enabled = true }
  }

  expect_failures = [var.vpc_endpoints]
}

run "cluster_arn_format" {
  command = plan

  variables {
    create_cluster = false
    cluster_arn    = "celery-cluster"
  }

  expect_failures = [var.cluster_arn]
}

run "cluster_arn_required" {
  command = plan

  variables {
    create_cluster = false
  }

  expect_failures = [var.cluster_arn]
}

run "celery_app_format" {
  command = plan

  variables {
    celery_app = "proj celery"
  }

  expect_failures = [var.celery_app]
}

run "pools_empty" {
  command = plan

  variables {
    worker_pools = {}
  }

  expect_failures = [var.worker_pools]
}

run "pool_name_format" {
  command = plan

  variables {
    worker_pools = { "Default Pool" = { image = "app:1", queues = ["celery"] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_name_beat_reserved" {
  command = plan

  variables {
    worker_pools = { beat = { image = "app:1", queues = ["celery"] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_image_empty" {
  command = plan

  variables {
    worker_pools = { default = { image = " ", queues = ["celery"] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_command_empty" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], command = [] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_command_needs_celery_app" {
  command = plan

  variables {
    celery_app   = null
    worker_pools = { default = { image = "app:1", queues = ["celery"] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_fargate_cpu_memory_pair" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], cpu = 256, memory = 4096 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_fargate_cpu_unknown" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], cpu = 300, memory = 512 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_architecture" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], architecture = "arm64" } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_queues_empty" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = [] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_queue_name_empty" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = [""] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_queue_name_characters" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["my queue"] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_queue_repeated_in_pool" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery", "celery"] } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_queue_shared_by_pools" {
  command = plan

  variables {
    worker_pools = {
      a = { image = "app:1", queues = ["celery"] }
      b = { image = "app:1", queues = ["emails", "celery"] }
    }
  }

  expect_failures = [var.worker_pools]
}

run "pool_concurrency_zero" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], concurrency = 0 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_concurrency_fraction" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], concurrency = 1.5 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_min_negative" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { min_workers = -1 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_max_zero" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { min_workers = 0, max_workers = 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_min_above_max" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { min_workers = 5, max_workers = 4 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_target_backlog_not_positive" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { target_backlog_per_worker = 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_target_latency_not_positive" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { target_latency_s = -5 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_target_utilisation_above_one" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { target_utilisation = 1.5 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_stop_timeout_above_fargate_max" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], stop_timeout = 121 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_shutdown_mode" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], shutdown = "cold" } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_soft_shutdown_needs_time" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], shutdown = "soft", stop_timeout = 10 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_spot_weight_above_100" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], spot_weight = 150 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_environment_name" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], environment = { "MY-VAR" = "1" } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_broker_url_in_environment" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], environment = { CELERY_BROKER_URL = "redis://localhost:6379/0" } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_name_in_environment_and_secrets" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], environment = { TOKEN = "x" }, secrets = { TOKEN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf" } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_secret_not_an_arn" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], secrets = { TOKEN = "my-secret" } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_max_scale_out_step_zero" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { max_scale_out_step = 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_max_scale_in_percent_zero" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { max_scale_in_percent = 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_window_negative" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { idle_window_s = -1 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_stale_after_zero" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { stale_after_s = 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_fallback_outside_bounds" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { min_workers = 1, max_workers = 4, fallback_count = 5 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_wait_target_not_positive" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { wait_target_s = 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_drain_time_not_positive" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { drain_time_s = -5 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_scale_in_tolerance_not_below_one" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { scale_in_tolerance = 1 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_start_delay_negative" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { start_delay_s = -1 } } }
  }

  expect_failures = [var.worker_pools]
}

run "schedule_bad_cron" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 25 * * *", min_workers = 2, duration_s = 600 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "schedule_unknown_time_zone" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 9 * * mon-fri", time_zone = "Europe/Berlinn", min_workers = 2, duration_s = 600 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "schedule_negative_lead" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 * * * *", lead_s = -60, min_workers = 2, duration_s = 600 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "schedule_window_ends_before_it_starts" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 9 * * *", min_workers = 2, duration_s = 0 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "schedule_min_above_max_workers" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 9 * * *", min_workers = 11, duration_s = 600 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "prewarm_confidence_below_two" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { prewarm_confidence = 1 } } }
  }

  expect_failures = [var.worker_pools]
}

run "schedules_valid_in_named_zones" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [
      { name = "business-hours", cron = "0 9 * * MON-FRI", time_zone = "Europe/Berlin", min_workers = 4, duration_s = 28800 },
      { cron = "*/30 1-5,22 1,15 jan-mar,10 0,7", time_zone = "America/New_York", min_workers = 1, lead_s = 90, duration_s = 120 },
    ] } } }
  }

  assert {
    condition     = length(output.scaler_config.pools["default"].schedules) == 2 && output.scaler_config.pools["default"].schedules[0].time_zone == "Europe/Berlin"
    error_message = "Schedules pass through to the scaler's config."
  }
}

run "pool_age_alarm_not_positive" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], oldest_task_age_alarm_s = 0 } }
  }

  expect_failures = [var.worker_pools]
}

run "log_retention_days" {
  command = plan

  variables {
    log_retention_days = 10
  }

  expect_failures = [var.log_retention_days]
}

run "beat_fargate_cpu_memory_pair" {
  command = plan

  variables {
    beat = { enabled = true, cpu = 512, memory = 512 }
  }

  expect_failures = [var.beat]
}

run "beat_architecture" {
  command = plan

  variables {
    beat = { enabled = true, architecture = "amd64" }
  }

  expect_failures = [var.beat]
}

run "beat_command_empty" {
  command = plan

  variables {
    beat = { enabled = true, command = [] }
  }

  expect_failures = [var.beat]
}

run "beat_command_needs_celery_app" {
  command = plan

  variables {
    celery_app   = null
    beat         = { enabled = true }
    worker_pools = { default = { image = "app:1", queues = ["celery"], command = ["celery", "worker"] } }
  }

  expect_failures = [var.beat]
}

run "beat_broker_url_in_environment" {
  command = plan

  variables {
    beat = { enabled = true, environment = { CELERY_BROKER_URL = "redis://x" } }
  }

  expect_failures = [var.beat]
}

run "beat_secret_not_an_arn" {
  command = plan

  variables {
    beat = { enabled = true, secrets = { TOKEN = "plain" } }
  }

  expect_failures = [var.beat]
}

run "broker_existing_needs_secret" {
  command = plan

  variables {
    broker = { create = false }
  }

  expect_failures = [var.broker]
}

run "broker_secret_arn_format" {
  command = plan

  variables {
    broker = { create = false, url_secret_arn = "redis://broker:6379/0" }
  }

  expect_failures = [var.broker]
}

run "broker_secret_kms_key_format" {
  command = plan

  variables {
    broker = { url_secret_kms_key_arn = "my-key" }
  }

  expect_failures = [var.broker]
}

run "broker_port_range" {
  command = plan

  variables {
    broker = { port = 70000 }
  }

  expect_failures = [var.broker]
}

run "broker_db_range" {
  command = plan

  variables {
    broker = { db = 16 }
  }

  expect_failures = [var.broker]
}

run "broker_node_type" {
  command = plan

  variables {
    broker = { node_type = "t4g.micro" }
  }

  expect_failures = [var.broker]
}

run "broker_num_cache_clusters" {
  command = plan

  variables {
    broker = { num_cache_clusters = 0 }
  }

  expect_failures = [var.broker]
}

run "broker_snapshot_retention" {
  command = plan

  variables {
    broker = { snapshot_retention_limit = 36 }
  }

  expect_failures = [var.broker]
}

run "broker_secret_recovery_window" {
  command = plan

  variables {
    broker = { secret_recovery_window_days = 3 }
  }

  expect_failures = [var.broker]
}

run "broker_priority_sep_empty" {
  command = plan

  variables {
    broker = { priority_sep = "" }
  }

  expect_failures = [var.broker]
}

run "broker_unacked_scan_negative" {
  command = plan

  variables {
    broker = { unacked_scan_cap = -1 }
  }

  expect_failures = [var.broker]
}

run "broker_socket_timeout_zero" {
  command = plan

  variables {
    broker = { socket_timeout_s = 0 }
  }

  expect_failures = [var.broker]
}

run "auth_token_too_short" {
  command = plan

  variables {
    broker_auth_token = "short-token"
  }

  expect_failures = [var.broker_auth_token]
}

run "auth_token_forbidden_character" {
  command = plan

  variables {
    broker_auth_token = "token-with-an-@-sign-inside"
  }

  expect_failures = [var.broker_auth_token]
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

run "scaler_package_not_zip" {
  command = plan

  variables {
    scaler = { package_path = "lambda/celery_autoscaler" }
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
    scaler = { timeout = 1000 }
  }

  expect_failures = [var.scaler]
}

run "scaler_schedule_plural" {
  command = plan

  variables {
    scaler = { schedule_expression = "rate(1 minutes)" }
  }

  expect_failures = [var.scaler]
}

run "scaler_schedule_format" {
  command = plan

  variables {
    scaler = { schedule_expression = "every minute" }
  }

  expect_failures = [var.scaler]
}

run "scaler_ticks" {
  command = plan

  variables {
    scaler = { ticks_per_invocation = 0 }
  }

  expect_failures = [var.scaler]
}

run "scaler_ticks_exceed_timeout" {
  command = plan

  variables {
    scaler = { tick_interval_s = 30, ticks_per_invocation = 4, timeout = 70 }
  }

  expect_failures = [var.scaler]
}

run "scaler_metrics_namespace" {
  command = plan

  variables {
    scaler = { metrics_namespace = "AWS/Celery" }
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

run "task_statement_effect" {
  command = plan

  variables {
    task_role_policy_statements = [{ effect = "allow", actions = ["s3:GetObject"], resources = ["*"] }]
  }

  expect_failures = [var.task_role_policy_statements]
}

run "task_statement_empty_actions" {
  command = plan

  variables {
    task_role_policy_statements = [{ actions = [], resources = ["*"] }]
  }

  expect_failures = [var.task_role_policy_statements]
}

run "task_statement_sid" {
  command = plan

  variables {
    task_role_policy_statements = [{ sid = "read-files", actions = ["s3:GetObject"], resources = ["*"] }]
  }

  expect_failures = [var.task_role_policy_statements]
}

run "permissions_boundary_format" {
  command = plan

  variables {
    iam_permissions_boundary = "boundary"
  }

  expect_failures = [var.iam_permissions_boundary]
}

run "alarm_actions_format" {
  command = plan

  variables {
    monitoring = { alarm_actions = ["ops@example.com"] }
  }

  expect_failures = [var.monitoring]
}

run "age_alarm_threshold" {
  command = plan

  variables {
    monitoring = { oldest_task_age_alarm_s = 0 }
  }

  expect_failures = [var.monitoring]
}

run "broker_type_known" {
  command = plan

  variables {
    broker = { type = "kafka" }
  }

  expect_failures = [var.broker]
}

run "broker_management_url_only_for_an_existing_rabbitmq" {
  command = plan

  variables {
    broker = { type = "rabbitmq", management_url = "https://b-1234.mq.eu-west-1.amazonaws.com" }
  }

  expect_failures = [var.broker]
}

run "broker_management_url_without_credentials" {
  command = plan

  variables {
    broker = {
      type           = "rabbitmq"
      create         = false
      url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rabbit-AbCdEf"
      management_url = "https://admin:secret@rabbit.internal"
    }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_active_standby_is_activemq_only" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { deployment_mode = "ACTIVE_STANDBY_MULTI_AZ", host_instance_type = "mq.m5.large" } }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_public_broker_rejects_security_groups" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { publicly_accessible = true } }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_engine_version" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { engine_version = "3.8.6" } }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_4_runs_on_m7g_only" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { engine_version = "4.2", host_instance_type = "mq.m5.large" } }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_cluster_needs_more_than_t3_micro" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { deployment_mode = "CLUSTER_MULTI_AZ" } }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_username" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { username = "guest" } }
  }

  expect_failures = [var.broker]
}

run "rabbitmq_on_4_with_m7g_is_valid" {
  command = plan

  variables {
    broker = { type = "rabbitmq", rabbitmq = { engine_version = "4.2", host_instance_type = "mq.m7g.large", deployment_mode = "CLUSTER_MULTI_AZ" } }
  }
}

run "sqs_takes_no_url_secret" {
  command = plan

  variables {
    broker = { type = "sqs", url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-url-XyZ123" }
  }

  expect_failures = [var.broker]
}

run "sqs_queue_name_prefix_characters" {
  command = plan

  variables {
    broker = { type = "sqs", queue_name_prefix = "my app/" }
  }

  expect_failures = [var.broker]
}

run "sqs_queue_name_length_with_dead_letter_queue" {
  command = plan

  variables {
    # 78 characters: an SQS name alone, but not with "-dlq".
    worker_pools = { default = { image = "app:1", queues = ["q23456789012345678901234567890123456789012345678901234567890123456789012345678"] } }
    broker       = { type = "sqs", dead_letter_queue = true }
  }

  expect_failures = [var.broker]
}

run "sqs_queue_names_distinct" {
  command = plan

  variables {
    worker_pools = {
      default = { image = "app:1", queues = ["jobs.high"] }
      other   = { image = "app:1", queues = ["jobs-high"] }
    }
    broker = { type = "sqs" }
  }

  expect_failures = [var.broker]
}

run "sqs_visibility_timeout_range" {
  command = plan

  variables {
    broker = { type = "sqs", visibility_timeout_s = 43201 }
  }

  expect_failures = [var.broker]
}

run "sqs_message_retention_range" {
  command = plan

  variables {
    broker = { type = "sqs", message_retention_s = 30 }
  }

  expect_failures = [var.broker]
}

run "sqs_max_receive_count_range" {
  command = plan

  variables {
    broker = { type = "sqs", dead_letter_queue = true, max_receive_count = 0 }
  }

  expect_failures = [var.broker]
}

################################################################################
# Upper bounds (the scaler's, docs: the Configuration field reference) and non-finite numbers
################################################################################

# Every bound itself is accepted, here and by the scaler (tests/test_config.py reads these values).
run "settings_at_their_upper_bounds" {
  command = plan

  variables {
    worker_pools = {
      default = {
        image                   = "app:1"
        queues                  = ["celery"]
        concurrency             = 10000
        oldest_task_age_alarm_s = 604800
        scaling = {
          min_workers               = 5000
          max_workers               = 5000
          target_backlog_per_worker = 1000000
          target_latency_s          = 86400
          target_utilisation        = 1
          max_scale_out_step        = 5000
          max_scale_in_percent      = 100
          scale_in_window_s         = 3600
          idle_window_s             = 86400
          stale_after_s             = 3600
          fallback_count            = 5000
        }
      }
    }
    broker     = { unacked_scan_interval_s = 3600, unacked_scan_cap = 1000000, socket_timeout_s = 60 }
    scaler     = { tick_interval_s = 900, ticks_per_invocation = 1, timeout = 900 }
    monitoring = { oldest_task_age_alarm_s = 604800 }
  }

  assert {
    condition     = output.scaler_config.pools.default.max_workers == 5000 && output.scaler_config.pools.default.scale_in_window_s == 3600 && output.scaler_config.tick_interval_s == 900
    error_message = "Settings at their bounds reach the scaler's config."
  }
}

run "pool_concurrency_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], concurrency = 10001 } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_min_workers_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { min_workers = 5001, max_workers = 5000 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_max_workers_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { max_workers = 5001 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_target_backlog_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { target_backlog_per_worker = 1000001 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_target_latency_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { target_latency_s = 86401 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_max_scale_out_step_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { max_scale_out_step = 5001 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_scale_in_window_negative" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { scale_in_window_s = -1 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_scale_in_window_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { scale_in_window_s = 3601 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_scale_in_window_infinite" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { scale_in_window_s = 1 / 0 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_scale_in_window_above_4000_ticks" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { scale_in_window_s = 2001 } } }
    scaler       = { tick_interval_s = 0.5 }
  }

  expect_failures = [var.worker_pools]
}

run "pool_idle_window_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { idle_window_s = 86401 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_stale_after_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { stale_after_s = 3601 } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_age_alarm_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], oldest_task_age_alarm_s = 604801 } }
  }

  expect_failures = [var.worker_pools]
}

run "broker_unacked_scan_interval_negative" {
  command = plan

  variables {
    broker = { unacked_scan_interval_s = -1 }
  }

  expect_failures = [var.broker]
}

run "broker_unacked_scan_interval_above_bound" {
  command = plan

  variables {
    broker = { unacked_scan_interval_s = 3601 }
  }

  expect_failures = [var.broker]
}

run "broker_unacked_scan_cap_above_bound" {
  command = plan

  variables {
    broker = { unacked_scan_cap = 1000001 }
  }

  expect_failures = [var.broker]
}

run "broker_unacked_scan_cap_huge" {
  command = plan

  variables {
    broker = { unacked_scan_cap = pow(10, 30) }
  }

  expect_failures = [var.broker]
}

run "broker_socket_timeout_above_bound" {
  command = plan

  variables {
    broker = { socket_timeout_s = 61 }
  }

  expect_failures = [var.broker]
}

run "scaler_tick_interval_zero" {
  command = plan

  variables {
    scaler = { tick_interval_s = 0 }
  }

  expect_failures = [var.scaler]
}

run "scaler_tick_interval_above_bound" {
  command = plan

  variables {
    scaler = { tick_interval_s = 901, ticks_per_invocation = 1, timeout = 900 }
  }

  expect_failures = [var.scaler]
}

run "scaler_ticks_above_bound" {
  command = plan

  variables {
    scaler = { tick_interval_s = 0.5, ticks_per_invocation = 901, timeout = 900 }
  }

  expect_failures = [var.scaler]
}

run "monitoring_age_alarm_above_bound" {
  command = plan

  variables {
    monitoring = { oldest_task_age_alarm_s = 604801 }
  }

  expect_failures = [var.monitoring]
}

run "pool_schedule_lead_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 9 * * *", lead_s = 86401, min_workers = 2, duration_s = 600 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "pool_schedule_duration_above_bound" {
  command = plan

  variables {
    worker_pools = { default = { image = "app:1", queues = ["celery"], scaling = { schedules = [{ cron = "0 9 * * *", min_workers = 2, duration_s = 604801 }] } } }
  }

  expect_failures = [var.worker_pools]
}

run "producer_security_group_ids_format" {
  command = plan

  variables {
    producer_security_group_ids = { web = "web-sg" }
  }

  expect_failures = [var.producer_security_group_ids]
}

run "prices_not_negative" {
  command = plan

  variables {
    prices = { spot_discount_percent = 120 }
  }

  expect_failures = [var.prices]
}

run "monitoring_oncall_alarm_s" {
  command = plan

  variables {
    monitoring = { scaler_silent_alarm_s = 30 }
  }

  expect_failures = [var.monitoring]
}
