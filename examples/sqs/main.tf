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

# A tiny VPC so the example applies as-is. Bring your own private subnets with NAT or VPC endpoints
# in real use: without them the tasks cannot pull images.
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

module "celery" {
  source = "../../"

  name       = var.name
  vpc_id     = aws_vpc.this.id
  subnet_ids = aws_subnet.private[*].id
  celery_app = var.celery_app

  worker_pools = {
    default = {
      image   = var.image
      queues  = ["celery"]
      scaling = { max_workers = 5 }
    }
    # "reports.daily" is the SQS queue "reports-daily" (kombu's naming).
    reports = {
      image   = var.image
      queues  = ["reports.daily"]
      scaling = { max_workers = 2, target_latency_s = 300 }
    }
  }

  # One encrypted SQS queue per Celery queue, each with a dead-letter queue for messages received
  # 5 times without being acknowledged. No broker secret: the task role signs the workers' calls.
  broker = {
    type                 = "sqs"
    dead_letter_queue    = true
    visibility_timeout_s = 3600 # above the longest task plus its countdown
  }
}
