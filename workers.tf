locals {
  # Workers and beat log to one group, one stream prefix each.
  container_log_configuration = { for prefix in concat(keys(var.worker_pools), ["beat"]) : prefix => {
    logDriver = "awslogs"
    options = {
      awslogs-group         = local.worker_log_group
      awslogs-region        = local.region
      awslogs-stream-prefix = prefix
    }
  } }

  # Settings for safe scale-in, read by celery_autoscaler.worker.install(app) (and usable in any Celery
  # config): acks_late + prefetch 1 so a stopped worker holds at most its running tasks; "soft" adds
  # REMAP_SIGTERM=SIGQUIT and a soft shutdown that restores cut tasks before ECS's SIGKILL.
  pool_environment = { for pool, p in var.worker_pools : pool => merge(
    {
      CELERY_AUTOSCALER_POOL                = pool
      CELERY_AUTOSCALER_PUBLISH_TIME_HEADER = var.broker.publish_time_header
      CELERY_AUTOSCALER_SCALE_IN_PROTECTION = tostring(p.scale_in_protection)
      CELERY_AUTOSCALER_STOP_TIMEOUT        = tostring(p.stop_timeout)
      CELERY_CONCURRENCY                    = tostring(p.concurrency)
      CELERY_QUEUES                         = join(",", p.queues)
      CELERY_TASK_ACKS_LATE                 = "true"
      CELERY_WORKER_PREFETCH_MULTIPLIER     = "1"
    },
    local.broker_environment,
    p.shutdown == "soft" ? { REMAP_SIGTERM = "SIGQUIT", CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = tostring(p.stop_timeout - 10) } : {},
    p.environment,
  ) }

  pool_command = { for pool, p in var.worker_pools : pool => p.command != null ? p.command : [
    "celery", "--app", coalesce(var.celery_app, "-"), "worker",
    "--queues", join(",", p.queues),
    "--concurrency", tostring(p.concurrency),
    "--prefetch-multiplier", "1",
    "--without-gossip", "--without-mingle",
    "--loglevel", "INFO",
  ] }

  # Redis's URL holds its password, so it comes from the secret; SQS's is plain (local.broker_environment).
  broker_secret_env = local.broker_is_sqs ? {} : { CELERY_BROKER_URL = local.broker_secret_arn }

  worker_containers = { for pool, p in var.worker_pools : pool => [{
    name                   = "worker"
    image                  = p.image
    essential              = true
    command                = local.pool_command[pool]
    environment            = [for k, v in local.pool_environment[pool] : { name = k, value = v }]
    secrets                = [for k, v in merge(p.secrets, local.broker_secret_env) : { name = k, valueFrom = v }]
    stopTimeout            = p.stop_timeout
    readonlyRootFilesystem = p.readonly_root_filesystem && !var.enable_execute_command # the ECS Exec agent writes to the root filesystem
    linuxParameters        = { initProcessEnabled = true }
    logConfiguration       = local.container_log_configuration[pool]
  }] }

  beat_environment = merge({ CELERY_AUTOSCALER_PUBLISH_TIME_HEADER = var.broker.publish_time_header }, local.broker_environment, var.beat.environment)
  beat_container = [{
    name                   = "beat"
    image                  = coalesce(var.beat.image, values(var.worker_pools)[0].image)
    essential              = true
    command                = var.beat.command != null ? var.beat.command : ["celery", "--app", coalesce(var.celery_app, "-"), "beat", "--loglevel", "INFO"]
    environment            = [for k, v in local.beat_environment : { name = k, value = v }]
    secrets                = [for k, v in merge(var.beat.secrets, local.broker_secret_env) : { name = k, valueFrom = v }]
    readonlyRootFilesystem = false
    linuxParameters        = { initProcessEnabled = true }
    logConfiguration       = local.container_log_configuration["beat"]
  }]
}

################################################################################
# Workers
################################################################################

resource "aws_ecs_task_definition" "worker" {
  for_each = var.worker_pools

  family                   = local.pool_services[each.key]
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(local.worker_containers[each.key])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = each.value.architecture
  }

  tags = merge(local.tags, { "celery-ecs-autoscaler:pool" = each.key })
}

resource "aws_ecs_service" "worker" {
  for_each = var.worker_pools

  name                    = local.pool_services[each.key]
  cluster                 = local.cluster_arn
  task_definition         = aws_ecs_task_definition.worker[each.key].arn
  desired_count           = each.value.scaling.min_workers
  platform_version        = "LATEST"
  enable_execute_command  = var.enable_execute_command
  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  wait_for_steady_state   = false

  # Workers hold no traffic: a deployment may start new tasks before the old ones drain.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "capacity_provider_strategy" {
    for_each = { for provider, weight in { FARGATE = 100 - each.value.spot_weight, FARGATE_SPOT = each.value.spot_weight } : provider => weight if weight > 0 }
    content {
      capacity_provider = capacity_provider_strategy.key
      weight            = capacity_provider_strategy.value
    }
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.workers.id]
    assign_public_ip = var.assign_public_ip
  }

  tags = merge(local.tags, { "celery-ecs-autoscaler:pool" = each.key })

  # The scaler owns desired_count; Terraform sets it once (the pool's min_workers) and never resets it.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_ecs_cluster_capacity_providers.this, aws_iam_role_policy.task_execution]
}

################################################################################
# Beat
################################################################################

resource "aws_ecs_task_definition" "beat" {
  count = var.beat.enabled ? 1 : 0

  family                   = local.beat_service
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.beat.cpu
  memory                   = var.beat.memory
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(local.beat_container)

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.beat.architecture
  }

  tags = local.tags
}

resource "aws_ecs_service" "beat" {
  count = var.beat.enabled ? 1 : 0

  name                    = local.beat_service
  cluster                 = local.cluster_arn
  task_definition         = aws_ecs_task_definition.beat[0].arn
  desired_count           = 1
  platform_version        = "LATEST"
  enable_execute_command  = var.enable_execute_command
  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  wait_for_steady_state   = false

  # Exactly one beat: stop the old task before starting the new one, or schedules fire twice.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.workers.id]
    assign_public_ip = var.assign_public_ip
  }

  tags = local.tags

  depends_on = [aws_ecs_cluster_capacity_providers.this, aws_iam_role_policy.task_execution]
}
