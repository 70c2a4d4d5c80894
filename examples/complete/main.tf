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
  azs  = slice(data.aws_availability_zones.available.names, 0, 2)
  tags = { Example = "complete", Project = var.name }
}

################################################################################
# Network: two private subnets behind one NAT gateway (workers pull images, call APIs)
################################################################################

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:Example VPC; flow logs belong to the VPC you bring in real use.
  cidr_block           = "10.42.0.0/16"
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = var.name })
}

# No rules: nothing uses the default security group.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  count = 2

  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(aws_vpc.this.cidr_block, 4, count.index)
  availability_zone = local.azs[count.index]

  tags = merge(local.tags, { Name = "${var.name}-private-${local.azs[count.index]}" })
}

resource "aws_subnet" "public" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(aws_vpc.this.cidr_block, 4, 15)
  availability_zone = local.azs[0]

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_eip" "nat" {
  domain = "vpc"

  tags = merge(local.tags, { Name = "${var.name}-nat" })
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public.id

  tags = merge(local.tags, { Name = var.name })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-private" })
}

resource "aws_route" "private_nat" {
  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this.id
}

resource "aws_route_table_association" "private" {
  count = 2

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

################################################################################
# Celery platform: ElastiCache Redis, two pools (one half on Spot), beat
################################################################################

module "celery" {
  source = "../../"

  name       = var.name
  vpc_id     = aws_vpc.this.id
  subnet_ids = aws_subnet.private[*].id
  celery_app = var.celery_app

  worker_pools = {
    default = {
      image       = var.image
      queues      = ["celery", "emails"]
      concurrency = 4
      spot_weight = 50
      environment = { DJANGO_SETTINGS_MODULE = "proj.settings" }
      scaling = {
        min_workers = 0
        max_workers = 20
        # Size for ~8 waiting or running tasks per worker (2 x concurrency).
        target_backlog_per_worker = 8
      }
    }
    reports = {
      image        = var.image
      queues       = ["reports"]
      cpu          = 1024
      memory       = 2048
      architecture = "ARM64"
      concurrency  = 2
      stop_timeout = 120
      environment  = { DJANGO_SETTINGS_MODULE = "proj.settings" }
      scaling      = { min_workers = 0, max_workers = 5, target_latency_s = 60 }
    }
  }

  beat = {
    enabled     = true
    environment = { DJANGO_SETTINGS_MODULE = "proj.settings" }
  }

  broker = {
    node_type = "cache.t4g.micro"
    # Examples are disposable: delete the broker secret at once on destroy.
    secret_recovery_window_days = 0
  }

  # Free gateway endpoint: the scaler's DynamoDB traffic stays off the NAT gateway.
  vpc_endpoints = {
    enabled         = true
    services        = ["dynamodb"]
    route_table_ids = [aws_route_table.private.id]
  }

  # The web app sends tasks: it may reach Redis, and its role reads the broker URL secret (below).
  producer_security_group_ids = { web = aws_security_group.web.id }

  log_retention_days = 14
  tags               = local.tags
}

################################################################################
# A producer: the web app's security group and task role (its service is yours)
################################################################################

resource "aws_security_group" "web" {
  #checkov:skip=CKV2_AWS_5:Stands in for the web app's security group; its service lives in your repository.
  name        = "${var.name}-web"
  description = "Web app of ${var.name} (sends Celery tasks)"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-web" })
}

resource "aws_iam_role" "web" {
  name = "${var.name}-web"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })

  tags = local.tags
}

# Read CELERY_BROKER_URL from the broker secret, as the workers do.
resource "aws_iam_role_policy" "web_broker_url" {
  name   = "celery-broker-url"
  role   = aws_iam_role.web.name
  policy = module.celery.broker_secret_read_policy_json
}
