provider "aws" {
  region = var.region
}

data "aws_region" "current" {}

# Two named zones, so the set never grows when AWS adds a zone.
data "aws_availability_zones" "available" {
  filter {
    name   = "zone-name"
    values = ["${data.aws_region.current.id}a", "${data.aws_region.current.id}b"]
  }
}

locals {
  # The user's own worker services: one per pool, each consuming its queues.
  services = {
    default = { queues = ["celery", "emails"], concurrency = 4 }
    reports = { queues = ["reports"], concurrency = 2 }
  }
}

################################################################################
# What a user's repository already has: network, broker, cluster and services
################################################################################

# Stands in for your VPC. Its subnets have no NAT or endpoints: in real use pass private subnets that
# reach ECR and the AWS APIs (ECS, DynamoDB, Secrets Manager, CloudWatch Logs).
resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:Example VPC; flow logs belong to the VPC you bring in real use.
  cidr_block           = "10.44.0.0/16"
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.name }
}

# No rules: nothing uses the default security group.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  count = 2

  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(aws_vpc.this.cidr_block, 8, count.index)
  availability_zone = data.aws_availability_zones.available.names[count.index]

  tags = { Name = "${var.name}-private-${count.index}" }
}

# Your broker's security group and the secret holding its URL (redis:// or rediss://).
resource "aws_security_group" "broker" {
  name        = "${var.name}-broker"
  description = "Redis broker of ${var.name}"
  vpc_id      = aws_vpc.this.id
}

resource "aws_secretsmanager_secret" "broker" {
  #checkov:skip=CKV_AWS_149:Stands in for the secret of a broker you already run; use your own KMS key in real use.
  #checkov:skip=CKV2_AWS_57:Stands in for the secret of a broker you already run; its rotation is that broker's.
  name_prefix             = "${var.name}-broker-url-"
  recovery_window_in_days = 0 # Examples are disposable: delete at once on destroy.
}

resource "aws_secretsmanager_secret_version" "broker" {
  secret_id     = aws_secretsmanager_secret.broker.id
  secret_string = "redis://redis.${var.name}.internal:6379/0"
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_security_group" "workers" {
  name        = "${var.name}-workers"
  description = "Celery workers of ${var.name}"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "workers" {
  security_group_id = aws_security_group.workers.id
  description       = "Workers reach the broker, AWS APIs and image registries"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

locals {
  ecs_tasks_trust = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

# The ECS agent reads the broker URL secret into CELERY_BROKER_URL.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-task-execution"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "execution" {
  name = "broker-secret"
  role = aws_iam_role.execution.name
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [aws_secretsmanager_secret.broker.arn] }]
  })
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = local.ecs_tasks_trust
}

# The worker helper protects busy tasks from scale-in (celery_autoscaler.worker.install).
resource "aws_iam_role_policy" "task" {
  name = "scale-in-protection"
  role = aws_iam_role.task.name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
      Resource = ["${replace(aws_ecs_cluster.this.arn, ":cluster/", ":task/")}/*"]
    }]
  })
}

resource "aws_ecs_task_definition" "worker" {
  for_each = local.services

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([{
    name                   = "worker"
    image                  = var.image
    essential              = true
    command                = ["celery", "--app", var.celery_app, "worker", "--queues", join(",", each.value.queues), "--concurrency", tostring(each.value.concurrency)]
    readonlyRootFilesystem = true
    stopTimeout            = 120
    # What the worker helper reads: safe scale-in needs late acks, prefetch 1 and the stop timeout.
    environment = [
      { name = "CELERY_TASK_ACKS_LATE", value = "true" },
      { name = "CELERY_WORKER_PREFETCH_MULTIPLIER", value = "1" },
      { name = "CELERY_AUTOSCALER_SCALE_IN_PROTECTION", value = "true" },
      { name = "CELERY_AUTOSCALER_STOP_TIMEOUT", value = "120" },
    ]
    secrets = [{ name = "CELERY_BROKER_URL", valueFrom = aws_secretsmanager_secret.broker.arn }]
  }])
}

resource "aws_ecs_service" "worker" {
  for_each = local.services

  name            = "${var.name}-${each.key}"
  cluster         = aws_ecs_cluster.this.arn
  task_definition = aws_ecs_task_definition.worker[each.key].arn
  launch_type     = "FARGATE"
  desired_count   = 0

  network_configuration {
    subnets         = aws_subnet.private[*].id
    security_groups = [aws_security_group.workers.id]
  }

  # The scaler owns the desired count from here on.
  lifecycle {
    ignore_changes = [desired_count]
  }
}

################################################################################
# The scaler for those services
################################################################################

module "scaler" {
  source = "../../modules/scaler"

  name       = var.name
  vpc_id     = aws_vpc.this.id
  subnet_ids = aws_subnet.private[*].id
  cluster    = aws_ecs_cluster.this.name

  pools = { for pool, s in local.services : pool => {
    service     = aws_ecs_service.worker[pool].name
    queues      = s.queues
    concurrency = s.concurrency
    scaling     = { max_workers = pool == "reports" ? 5 : 20 }
  } }

  broker = {
    url_secret_arn    = aws_secretsmanager_secret_version.broker.arn
    security_group_id = aws_security_group.broker.id
  }
}

# Let the scaler into the broker, as you would for any new client.
resource "aws_vpc_security_group_ingress_rule" "broker_from_scaler" {
  security_group_id            = aws_security_group.broker.id
  description                  = "Redis from the Celery autoscaler"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = module.scaler.security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "broker_from_workers" {
  security_group_id            = aws_security_group.broker.id
  description                  = "Redis from the Celery workers"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.workers.id
}
