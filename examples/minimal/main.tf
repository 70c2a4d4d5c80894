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

# A tiny VPC with private subnets only: no NAT gateway, so the module's VPC endpoints (below) are how
# the scaler and the workers reach the AWS APIs and ECR.
resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:Example VPC; flow logs belong to the VPC you bring in real use.
  cidr_block           = "10.43.0.0/16"
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

# The private subnets' route table, for the gateway endpoints (DynamoDB, S3).
resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id

  tags = { Name = "${var.name}-private" }
}

resource "aws_route_table_association" "private" {
  count = 2

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
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
  }

  # Examples are disposable: delete the broker secret at once on destroy.
  broker = { secret_recovery_window_days = 0 }

  # Without NAT: the scaler calls ECS, DynamoDB, Secrets Manager and CloudWatch Logs; the workers
  # read their secret, write logs and pull the image from ECR (ecr.api, ecr.dkr and its S3 layers).
  vpc_endpoints = {
    enabled         = true
    services        = ["dynamodb", "ecr.api", "ecr.dkr", "ecs", "logs", "s3", "secretsmanager"]
    route_table_ids = [aws_route_table.private.id]
  }
}
