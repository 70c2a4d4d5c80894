# Shape of the module, planned and "applied" against a mocked AWS provider (nothing leaves the machine).
# The real apply against an AWS emulator is tests/test_terraform_apply.py.

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
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "GeneratedToken0123456789abcdefGeneratedToken0123456789abcdef0123" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/celery" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:celery-broker-url-AbCdEf" }
  }
  mock_resource "aws_elasticache_replication_group" {
    defaults = { primary_endpoint_address = "master.celery.abc123.euw1.cache.amazonaws.com" }
  }
  mock_resource "aws_mq_broker" {
    defaults = {
      id        = "b-1234abcd-56ef-78ab-90cd-1234567890ab"
      user      = [{ username = "celery", password = "GeneratedToken0123456789abcdef", console_access = false, groups = [], replication_user = false }]
      instances = [{ console_url = "https://b-1234abcd.mq.eu-west-1.amazonaws.com", endpoints = ["amqps://b-1234abcd.mq.eu-west-1.amazonaws.com:5671"], ip_address = "" }]
    }
  }
  mock_resource "aws_security_group" {
    defaults = { id = "sg-0123456789abcdef0" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_sqs_queue" {
    defaults = { arn = "arn:aws:sqs:eu-west-1:123456789012:celery-scaler-dlq" }
  }
  mock_resource "aws_lambda_function" {
    defaults = { arn = "arn:aws:lambda:eu-west-1:123456789012:function:celery-scaler" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/celery:1" }
  }
}

variables {
  name       = "celery"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  celery_app = "proj.celery"
  worker_pools = {
    default = {
      image       = "registry.example.com/app:1"
      queues      = ["celery", "emails"]
      concurrency = 4
      spot_weight = 50
      scaling     = { min_workers = 1, max_workers = 20 }
    }
    reports = {
      image        = "registry.example.com/app:1"
      queues       = ["reports"]
      cpu          = 1024
      memory       = 2048
      architecture = "ARM64"
      shutdown     = "soft"
      stop_timeout = 60
      environment  = { DJANGO_SETTINGS_MODULE = "proj.settings" }
      secrets      = { API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-key-AbCdEf:key::" }
      scaling      = { target_latency_s = 30 }
    }
  }
  beat = { enabled = true }
}

run "workers_start_at_min_and_get_the_broker_url_as_a_secret" {
  command = apply

  assert {
    condition     = aws_ecs_service.worker["default"].desired_count == 1 && aws_ecs_service.worker["reports"].desired_count == 0
    error_message = "Each service must start at its pool's scaling.min_workers."
  }

  assert {
    condition = alltrue([for pool, td in aws_ecs_task_definition.worker : alltrue([
      for c in jsondecode(td.container_definitions) : contains([for s in c.secrets : s.name if s.valueFrom == aws_secretsmanager_secret.broker[0].arn], "CELERY_BROKER_URL")
    ])])
    error_message = "Every worker container must receive CELERY_BROKER_URL from the broker secret."
  }

  assert {
    condition = alltrue(flatten([for td in concat(values(aws_ecs_task_definition.worker), aws_ecs_task_definition.beat) : [
      for c in jsondecode(td.container_definitions) : [for e in c.environment : e.name != "CELERY_BROKER_URL" && !strcontains(e.value, "redis")]
    ]]))
    error_message = "No broker URL may appear in a container's plain environment."
  }

  assert {
    condition     = !strcontains(jsonencode(jsondecode(aws_ecs_task_definition.worker["default"].container_definitions)), "rediss://")
    error_message = "The broker URL must not be written into a task definition."
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.beat[0].container_definitions)[0].secrets[0].name == "CELERY_BROKER_URL"
    error_message = "Beat must receive the broker URL as a secret too."
  }

  assert {
    condition     = aws_ecs_service.beat[0].desired_count == 1 && aws_ecs_service.beat[0].deployment_maximum_percent == 100
    error_message = "Beat runs exactly one task and never two during a deployment."
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.worker["default"].container_definitions)[0].readonlyRootFilesystem
    error_message = "Worker root filesystems are read-only by default."
  }

  assert {
    condition     = !aws_ecs_service.worker["default"].enable_execute_command && aws_ecs_service.worker["default"].propagate_tags == "SERVICE"
    error_message = "ECS Exec is off by default and service tags propagate to tasks."
  }
}

run "services_ignore_desired_count" {
  command = apply

  variables {
    worker_pools = {
      default = {
        image       = "registry.example.com/app:1"
        queues      = ["celery", "emails"]
        concurrency = 4
        spot_weight = 50
        scaling     = { min_workers = 3, max_workers = 20 }
      }
      reports = {
        image        = "registry.example.com/app:1"
        queues       = ["reports"]
        cpu          = 1024
        memory       = 2048
        architecture = "ARM64"
        shutdown     = "soft"
        stop_timeout = 60
        environment  = { DJANGO_SETTINGS_MODULE = "proj.settings" }
        secrets      = { API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-key-AbCdEf:key::" }
        scaling      = { target_latency_s = 30 }
      }
    }
  }

  assert {
    condition     = aws_ecs_service.worker["default"].desired_count == 1
    error_message = "A changed min_workers must not reset the desired count the scaler owns (lifecycle ignore_changes)."
  }

  assert {
    condition     = output.scaler_config.pools.default.min_workers == 3
    error_message = "The new min_workers reaches the scaler's configuration."
  }
}

run "safe_scale_in_settings" {
  command = plan

  assert {
    condition     = jsondecode(aws_ecs_task_definition.worker["reports"].container_definitions)[0].stopTimeout == 60
    error_message = "stop_timeout becomes the container's stopTimeout."
  }

  assert {
    condition = {
      for e in jsondecode(aws_ecs_task_definition.worker["reports"].container_definitions)[0].environment : e.name => e.value
      if contains(["REMAP_SIGTERM", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", "CELERY_TASK_ACKS_LATE", "CELERY_WORKER_PREFETCH_MULTIPLIER", "CELERY_QUEUES", "CELERY_CONCURRENCY", "DJANGO_SETTINGS_MODULE"], e.name)
      } == {
      REMAP_SIGTERM                       = "SIGQUIT"
      CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = "50"
      CELERY_TASK_ACKS_LATE               = "true"
      CELERY_WORKER_PREFETCH_MULTIPLIER   = "1"
      CELERY_QUEUES                       = "reports"
      CELERY_CONCURRENCY                  = "2"
      DJANGO_SETTINGS_MODULE              = "proj.settings"
    }
    error_message = "A soft-shutdown pool gets REMAP_SIGTERM, a soft timeout 10 s under stopTimeout, acks_late and prefetch 1."
  }

  assert {
    condition     = !contains([for e in jsondecode(aws_ecs_task_definition.worker["default"].container_definitions)[0].environment : e.name], "REMAP_SIGTERM")
    error_message = "A warm-shutdown pool keeps SIGTERM as warm shutdown."
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.worker["default"].container_definitions)[0].command == ["celery", "--app", "proj.celery", "worker", "--queues", "celery,emails", "--concurrency", "4", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    error_message = "The default command consumes the pool's queues with its concurrency and prefetch 1."
  }

  assert {
    condition     = aws_ecs_task_definition.worker["reports"].runtime_platform[0].cpu_architecture == "ARM64" && aws_ecs_task_definition.worker["reports"].cpu == "1024"
    error_message = "architecture and cpu reach the task definition."
  }

  assert {
    condition     = contains(jsondecode(aws_iam_role_policy.task[0].policy).Statement[*].Sid, "ScaleInProtection")
    error_message = "Pools with scale_in_protection need ecs:UpdateTaskProtection on the task role."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.task[0].policy).Statement : s.Resource if s.Sid == "ScaleInProtection"][0] == ["arn:aws:ecs:eu-west-1:123456789012:task/celery/*"]
    error_message = "Task protection is scoped to this cluster's tasks."
  }
}

run "spot_weight_sets_the_capacity_provider_strategy" {
  command = plan

  assert {
    condition     = { for s in aws_ecs_service.worker["default"].capacity_provider_strategy : s.capacity_provider => s.weight } == { FARGATE = 50, FARGATE_SPOT = 50 }
    error_message = "spot_weight = 50 splits tasks evenly between FARGATE and FARGATE_SPOT."
  }

  assert {
    condition     = { for s in aws_ecs_service.worker["reports"].capacity_provider_strategy : s.capacity_provider => s.weight } == { FARGATE = 100 }
    error_message = "spot_weight = 0 places every task on FARGATE."
  }

  assert {
    condition     = aws_ecs_cluster_capacity_providers.this[0].capacity_providers == toset(["FARGATE", "FARGATE_SPOT"])
    error_message = "The cluster offers both Fargate capacity providers."
  }
}

run "the_scaler_submodule_scales_exactly_this_modules_worker_services" {
  command = apply

  assert {
    condition = module.scaler.service_arns == {
      default = "arn:aws:ecs:eu-west-1:123456789012:service/celery/celery-default"
      reports = "arn:aws:ecs:eu-west-1:123456789012:service/celery/celery-reports"
    }
    error_message = "The scaler (modules/scaler) may describe/update exactly this module's worker services (not beat, not '*')."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.task_execution[0].policy).Statement : s.Resource if s.Sid == "ContainerSecrets"][0] == [aws_secretsmanager_secret.broker[0].arn, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-key-AbCdEf"]
    error_message = "The execution role reads the broker secret and the pools' secrets (JSON-key suffix stripped), nothing else."
  }

  assert {
    condition = alltrue([for r in [aws_iam_role.task_execution, aws_iam_role.task] :
    jsondecode(r.assume_role_policy).Statement[0].Condition.StringEquals["aws:SourceAccount"] == "123456789012"])
    error_message = "Every assume-role policy carries an aws:SourceAccount condition."
  }

  assert {
    condition = (
      output.scaler_function_name == "celery-scaler" && output.scaler_state_table_name == "celery-scaler-state" &&
      output.dashboard_name == "celery" && output.scaler_config.state_table == output.scaler_state_table_name
    )
    error_message = "The scaler's resources keep the names they had before the submodule (no replacement on upgrade)."
  }

  assert {
    condition     = aws_cloudwatch_log_group.workers.retention_in_days == 30
    error_message = "The workers' log group keeps logs for log_retention_days."
  }
}

run "scaler_config_matches_the_python_schema" {
  command = plan

  assert {
    condition     = toset(keys(output.scaler_config)) == toset(["broker", "cluster", "pools", "state_table", "tick_interval_s", "ticks_per_invocation", "dry_run", "metrics_namespace", "prices"])
    error_message = "Top-level keys of the config are exactly config.py's."
  }

  assert {
    condition     = toset(keys(output.scaler_config.broker)) == toset(["url_secret_arn", "key_prefix", "priority_sep", "publish_time_header", "unacked_scan_interval_s", "unacked_scan_cap", "socket_timeout_s", "region", "queue_name_prefix", "management_url"])
    error_message = "Broker keys of the config are config.py's (url_secret_arn, never url)."
  }

  assert {
    condition = alltrue([for p in output.scaler_config.pools : toset(keys(p)) == toset([
      "service", "queues", "concurrency", "min_workers", "max_workers", "target_utilisation", "target_backlog_per_worker",
      "target_latency_s", "max_scale_out_step", "max_scale_in_percent", "scale_in_window_s", "idle_window_s", "stale_after_s", "fallback_count",
      "wait_target_s", "drain_time_s", "scale_in_tolerance", "start_delay_s",
      "learned_prewarm", "prewarm_confidence", "prewarm_margin_s", "prewarm_max_misses", "schedules",
      "cpu", "memory", "architecture", "spot_weight",
    ])])
    error_message = "Pool keys of the config are config.py's."
  }

  assert {
    condition = (output.scaler_config.pools.reports.cpu == 1024 && output.scaler_config.pools.reports.memory == 2048 && output.scaler_config.pools.reports.architecture == "ARM64"
    && output.scaler_config.pools.default.spot_weight == 50 && output.scaler_config.pools.default.cpu == 256 && output.scaler_config.prices.spot_discount_percent == 70)
    error_message = "Each pool's task size (for the cost metrics) and the prices reach the config."
  }

  assert {
    condition     = output.scaler_config.pools.reports.target_latency_s == 30 && output.scaler_config.pools.default.service == "celery-default" && output.scaler_config.cluster == "celery"
    error_message = "Pool settings reach the config under the scaler's names."
  }

  assert {
    condition     = !can(output.scaler_config.pools.beat)
    error_message = "Beat is not a scaled pool."
  }
}

run "redis_is_encrypted_and_reachable_only_from_workers_and_scaler" {
  command = apply

  assert {
    condition     = aws_elasticache_replication_group.broker[0].transit_encryption_enabled && aws_elasticache_replication_group.broker[0].at_rest_encryption_enabled
    error_message = "Redis encrypts in transit and at rest."
  }

  assert {
    condition     = nonsensitive(aws_elasticache_replication_group.broker[0].auth_token == "GeneratedToken0123456789abcdefGeneratedToken0123456789abcdef0123")
    error_message = "Without broker_auth_token the token comes from GetRandomPassword."
  }

  assert {
    condition     = nonsensitive(aws_secretsmanager_secret_version.broker[0].secret_string == "rediss://:GeneratedToken0123456789abcdefGeneratedToken0123456789abcdef0123@master.celery.abc123.euw1.cache.amazonaws.com:6379/0")
    error_message = "The broker secret holds the full rediss:// URL with the token."
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_ingress_rule.broker)) == toset(["workers", "scaler"]) && alltrue([for r in aws_vpc_security_group_ingress_rule.broker : r.from_port == 6379 && r.cidr_ipv4 == null])
    error_message = "Only the workers' and the scaler's security groups reach Redis, on its port."
  }

  assert {
    condition     = output.redis_endpoint == "master.celery.abc123.euw1.cache.amazonaws.com" && output.redis_port == 6379
    error_message = "The Redis endpoint and port are outputs."
  }

  assert {
    condition     = !strcontains(jsonencode([output.scaler_config, output.services, output.broker_secret_arn, output.redis_endpoint]), "GeneratedToken")
    error_message = "No output carries the auth token."
  }
}

run "later_token_changes_are_ignored" {
  command = apply

  variables {
    broker_auth_token = "Supplied-Token_0123456789"
  }

  assert {
    condition     = nonsensitive(aws_secretsmanager_secret_version.broker[0].secret_string == "rediss://:GeneratedToken0123456789abcdefGeneratedToken0123456789abcdef0123@master.celery.abc123.euw1.cache.amazonaws.com:6379/0")
    error_message = "Once created, the token stays (a new value from GetRandomPassword on every plan must not churn Redis)."
  }
}

run "supplied_auth_token_is_used" {
  command   = apply
  state_key = "supplied-token"

  variables {
    broker_auth_token = "Supplied-Token_0123456789"
  }

  assert {
    condition     = nonsensitive(aws_secretsmanager_secret_version.broker[0].secret_string == "rediss://:Supplied-Token_0123456789@master.celery.abc123.euw1.cache.amazonaws.com:6379/0")
    error_message = "A supplied token is used in the broker URL."
  }

  assert {
    condition     = length(data.aws_secretsmanager_random_password.broker) == 0
    error_message = "No password is generated when one is supplied."
  }
}

run "existing_broker_and_cluster" {
  command = plan

  variables {
    create_cluster = false
    cluster_arn    = "arn:aws:ecs:eu-west-1:123456789012:cluster/shared"
    broker = {
      create         = false
      url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-url-XyZ123"
    }
  }

  assert {
    condition     = length(aws_elasticache_replication_group.broker) == 0 && length(aws_secretsmanager_secret.broker) == 0 && length(aws_ecs_cluster.this) == 0
    error_message = "No Redis, secret or cluster is created when existing ones are given."
  }

  assert {
    condition     = output.broker_secret_arn == "arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-url-XyZ123" && output.scaler_config.broker.url_secret_arn == output.broker_secret_arn
    error_message = "The existing broker secret is what the scaler reads."
  }

  assert {
    condition     = [for s in jsondecode(aws_ecs_task_definition.worker["default"].container_definitions)[0].secrets : s.valueFrom if s.name == "CELERY_BROKER_URL"] == ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-url-XyZ123"]
    error_message = "Workers read the existing broker secret."
  }

  assert {
    condition     = aws_ecs_service.worker["default"].cluster == "arn:aws:ecs:eu-west-1:123456789012:cluster/shared" && output.scaler_config.cluster == "shared"
    error_message = "Services and the scaler use the existing cluster."
  }

  assert {
    condition     = module.scaler.service_arns.default == "arn:aws:ecs:eu-west-1:123456789012:service/shared/celery-default"
    error_message = "Service ARNs in the scaler policy follow the existing cluster's name."
  }
}

run "options_off_and_overrides" {
  command = plan

  variables {
    worker_pools = {
      default = { image = "app:1", queues = ["celery"], scale_in_protection = false }
    }
    beat       = { enabled = false }
    monitoring = { dashboard = false, alarms = false }
    scaler = {
      s3_bucket = "artifacts"
      s3_key    = "celery-autoscaler.zip"
      dry_run   = true
    }
    task_role_policy_statements = [{
      sid        = "Uploads"
      actions    = ["s3:PutObject"]
      resources  = ["arn:aws:s3:::uploads/*"]
      conditions = [{ test = "StringEquals", variable = "s3:x-amz-acl", values = ["private"] }]
    }]
  }

  assert {
    condition     = length(aws_ecs_service.beat) == 0 && output.dashboard_name == null
    error_message = "Beat and the dashboard can be switched off."
  }

  assert {
    condition     = output.scaler_config.dry_run
    error_message = "dry_run reaches the config."
  }

  assert {
    condition     = jsondecode(aws_iam_role_policy.task[0].policy).Statement == [{ Sid = "Uploads", Effect = "Allow", Action = ["s3:PutObject"], Resource = ["arn:aws:s3:::uploads/*"], Condition = { StringEquals = { "s3:x-amz-acl" = ["private"] } } }]
    error_message = "Extra task role statements are added as given; no task protection permission without scale_in_protection."
  }
}

run "ecs_exec" {
  command = plan

  variables {
    enable_execute_command = true
  }

  assert {
    condition     = aws_ecs_service.worker["default"].enable_execute_command && contains(jsondecode(aws_iam_role_policy.task[0].policy).Statement[*].Sid, "EcsExec")
    error_message = "ECS Exec turns on per service and grants the ssmmessages channel permissions."
  }

  assert {
    condition     = !jsondecode(aws_ecs_task_definition.worker["default"].container_definitions)[0].readonlyRootFilesystem
    error_message = "The ECS Exec agent needs a writable root filesystem."
  }
}

run "vpc_endpoints" {
  command = plan

  variables {
    vpc_endpoints = { enabled = true, route_table_ids = ["rtb-0123456789abcdef0"] }
  }

  assert {
    condition     = toset(keys(aws_vpc_endpoint.interface)) == toset(["ecs", "logs", "monitoring", "secretsmanager"]) && keys(aws_vpc_endpoint.gateway) == ["dynamodb"]
    error_message = "Interface endpoints for ECS, Logs, CloudWatch and Secrets Manager; a gateway endpoint for DynamoDB."
  }

  assert {
    condition     = aws_vpc_endpoint.interface["ecs"].service_name == "com.amazonaws.eu-west-1.ecs" && aws_vpc_endpoint.gateway["dynamodb"].route_table_ids == toset(["rtb-0123456789abcdef0"])
    error_message = "Endpoints use the region's service names and the given route tables."
  }
}

run "scaler_disabled" {
  command = plan

  variables {
    scaler = { enabled = false }
  }

  assert {
    condition     = output.scaler_function_name == null && output.scaler_security_group_id == null && output.dashboard_name == null
    error_message = "scaler.enabled = false creates no scaler resource."
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_ingress_rule.broker)) == toset(["workers"]) && output.scaler_config.pools.default.service == "celery-default"
    error_message = "Without the scaler only the workers reach Redis; the config is still an output (to run the scaler elsewhere)."
  }
}

run "producers_reach_the_broker_and_read_its_secret" {
  command = apply

  variables {
    producer_security_group_ids = { web = "sg-0fedcba9876543210" }
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.broker["producer web"].referenced_security_group_id == "sg-0fedcba9876543210" && aws_vpc_security_group_ingress_rule.broker["producer web"].from_port == 6379
    error_message = "Each producer security group may reach Redis on its port."
  }

  assert {
    condition     = jsondecode(output.broker_secret_read_policy_json).Statement == [{ Sid = "ReadBrokerUrl", Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [aws_secretsmanager_secret.broker[0].arn] }]
    error_message = "The producers' policy reads exactly the broker secret (no KMS statement with AWS managed keys)."
  }
}

run "rabbitmq_is_private_amqps_from_workers_management_from_the_scaler" {
  command = apply

  variables {
    broker = { type = "rabbitmq" }
  }

  assert {
    condition     = length(aws_elasticache_replication_group.broker) == 0 && length(aws_mq_broker.broker) == 1
    error_message = "type = rabbitmq creates Amazon MQ, not Redis."
  }

  assert {
    condition     = aws_mq_broker.broker[0].engine_type == "RabbitMQ" && !aws_mq_broker.broker[0].publicly_accessible && aws_mq_broker.broker[0].deployment_mode == "SINGLE_INSTANCE"
    error_message = "A private single-instance RabbitMQ broker by default."
  }

  assert {
    condition     = aws_mq_broker.broker[0].security_groups == toset([aws_security_group.broker[0].id]) && length(aws_mq_broker.broker[0].subnet_ids) == 1
    error_message = "The broker sits in the module's own security group, in one subnet."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.broker["workers"].from_port == 5671 && aws_vpc_security_group_ingress_rule.broker["scaler"].from_port == 443
    error_message = "AMQPS from the workers and beat, the management API from the scaler."
  }

  assert {
    condition     = module.scaler.broker_port == 443
    error_message = "The scaler reaches the management API on 443."
  }

  assert {
    condition     = output.scaler_config.broker.management_url == "https://b-1234abcd.mq.eu-west-1.amazonaws.com" && output.scaler_config.broker.url_secret_arn == aws_secretsmanager_secret.broker[0].arn
    error_message = "The scaler reads the console URL's management API, with the URL from the secret."
  }

  assert {
    condition     = startswith(aws_secretsmanager_secret_version.broker[0].secret_string, "amqps://celery:") && endswith(aws_secretsmanager_secret_version.broker[0].secret_string, "@b-1234abcd.mq.eu-west-1.amazonaws.com:5671//")
    error_message = "The secret holds the amqps:// URL of the broker's user."
  }

  assert {
    condition     = output.redis_port == null && output.rabbitmq_broker_id == aws_mq_broker.broker[0].id
    error_message = "Outputs name the RabbitMQ broker, not a Redis port."
  }
}

run "existing_rabbitmq_through_the_url_secret" {
  command = plan

  variables {
    broker = {
      type           = "rabbitmq"
      create         = false
      url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rabbit-AbCdEf"
      management_url = "https://rabbit.internal:15671"
    }
  }

  assert {
    condition     = length(aws_mq_broker.broker) == 0 && length(aws_security_group.broker) == 0
    error_message = "An existing broker creates no broker and no broker security group."
  }

  assert {
    condition     = output.scaler_config.broker.management_url == "https://rabbit.internal:15671" && module.scaler.broker_port == 15671
    error_message = "The scaler reads the given management URL and may reach its port."
  }
}

run "sqs_broker" {
  command = apply

  variables {
    worker_pools = {
      default = { image = "app:1", queues = ["celery", "jobs.high", "bulk.fifo"] }
      reports = { image = "app:1", queues = ["reports:daily"] }
    }
    broker = { type = "sqs", queue_name_prefix = "prod.", dead_letter_queue = true, max_receive_count = 3, visibility_timeout_s = 600 }
  }

  override_resource {
    target = aws_sqs_queue.celery["jobs.high"]
    values = { url = "https://sqs.eu-west-1.amazonaws.com/123456789012/prod-jobs-high", arn = "arn:aws:sqs:eu-west-1:123456789012:prod-jobs-high" }
  }

  override_resource {
    target = aws_sqs_queue.celery_dead_letter["jobs.high"]
    values = { arn = "arn:aws:sqs:eu-west-1:123456789012:prod-jobs-high-dlq" }
  }

  assert {
    condition     = { for q, r in aws_sqs_queue.celery : q => r.name } == { "celery" = "prod-celery", "jobs.high" = "prod-jobs-high", "bulk.fifo" = "prod-bulk.fifo", "reports:daily" = "prod-reports_daily" }
    error_message = "One SQS queue per Celery queue, named by kombu's rule (prefix, . -> -, : -> _, .fifo kept)."
  }

  assert {
    condition     = aws_sqs_queue.celery["bulk.fifo"].fifo_queue && !aws_sqs_queue.celery["celery"].fifo_queue && aws_sqs_queue.celery_dead_letter["bulk.fifo"].name == "prod-bulk-dlq.fifo" && aws_sqs_queue.celery_dead_letter["bulk.fifo"].fifo_queue
    error_message = "A .fifo Celery queue is a FIFO SQS queue with a FIFO dead-letter queue."
  }

  assert {
    condition     = alltrue([for r in aws_sqs_queue.celery : r.sqs_managed_sse_enabled && r.visibility_timeout_seconds == 600]) && alltrue([for r in aws_sqs_queue.celery_dead_letter : r.sqs_managed_sse_enabled])
    error_message = "Every queue is encrypted and has the configured visibility timeout."
  }

  assert {
    condition     = jsondecode(aws_sqs_queue.celery["jobs.high"].redrive_policy) == { deadLetterTargetArn = "arn:aws:sqs:eu-west-1:123456789012:prod-jobs-high-dlq", maxReceiveCount = 3 }
    error_message = "Each queue sends messages received max_receive_count times to its own dead-letter queue."
  }

  assert {
    condition = [for s in jsondecode(aws_iam_role_policy.task[0].policy).Statement : s if s.Sid == "CeleryQueues"][0] == {
      Sid      = "CeleryQueues"
      Effect   = "Allow"
      Action   = ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:SendMessage"]
      Resource = [for n in ["prod-bulk.fifo", "prod-celery", "prod-jobs-high", "prod-reports_daily"] : "arn:aws:sqs:eu-west-1:123456789012:${n}"]
    }
    error_message = "The workers may use exactly the transport's actions on exactly the module's queues."
  }

  assert {
    condition = [for s in jsondecode(module.scaler.policy_json).Statement : [s.Action, s.Resource] if contains(["MeasureQueues", "QueueAges"], s.Sid)] == [
      [["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], [for n in ["prod-bulk.fifo", "prod-celery", "prod-jobs-high", "prod-reports_daily"] : "arn:aws:sqs:eu-west-1:123456789012:${n}"]],
      [["cloudwatch:GetMetricData"], ["*"]],
    ]
    error_message = "The scaler may read the queues' attributes and URLs, and CloudWatch metrics."
  }

  assert {
    condition     = length(aws_elasticache_replication_group.broker) == 0 && length(aws_secretsmanager_secret.broker) == 0 && output.broker_secret_arn == null
    error_message = "No Redis and no URL secret on SQS (modules/scaler's tests: no broker port rule)."
  }

  assert {
    condition     = length([for s in jsondecode(module.scaler.policy_json).Statement : s if s.Sid == "BrokerUrl"]) == 0 && length(aws_iam_role_policy.task_execution) == 0
    error_message = "Nobody reads a broker secret on SQS."
  }

  assert {
    condition     = output.scaler_config.broker.url == "sqs://" && !can(output.scaler_config.broker.url_secret_arn) && output.scaler_config.broker.region == "eu-west-1" && output.scaler_config.broker.queue_name_prefix == "prod."
    error_message = "The scaler reads sqs:// in the queues' region with the transport's prefix."
  }

  assert {
    condition = alltrue([for td in concat(values(aws_ecs_task_definition.worker), aws_ecs_task_definition.beat) : alltrue([
      for c in jsondecode(td.container_definitions) : (
        length([for s in c.secrets : s if s.name == "CELERY_BROKER_URL"]) == 0
        && [for e in c.environment : e.value if e.name == "CELERY_BROKER_URL"] == ["sqs://"]
      )
    ])])
    error_message = "Workers and beat get CELERY_BROKER_URL = sqs:// as plain environment, no secret."
  }

  assert {
    condition = jsondecode([for e in jsondecode(aws_ecs_task_definition.worker["reports"].container_definitions)[0].environment : e.value if e.name == "CELERY_BROKER_TRANSPORT_OPTIONS"][0]) == {
      region             = "eu-west-1"
      queue_name_prefix  = "prod."
      visibility_timeout = 600
      predefined_queues = {
        "prod-bulk.fifo"     = { url = aws_sqs_queue.celery["bulk.fifo"].url }
        "prod-celery"        = { url = aws_sqs_queue.celery["celery"].url }
        "prod-jobs-high"     = { url = "https://sqs.eu-west-1.amazonaws.com/123456789012/prod-jobs-high" }
        "prod-reports_daily" = { url = aws_sqs_queue.celery["reports:daily"].url }
      }
    }
    error_message = "Every container knows every queue (tasks may send to any), by kombu's name, with the transport's options."
  }
}

run "existing_sqs_queues" {
  command = plan

  variables {
    broker = { type = "sqs", create = false }
  }

  assert {
    condition     = length(aws_sqs_queue.celery) == 0 && output.sqs_queues["emails"].url == "https://sqs.eu-west-1.amazonaws.com/123456789012/emails"
    error_message = "Existing queues are used by their names' URLs in this account and region."
  }
}
