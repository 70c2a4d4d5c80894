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

# A minimal VPC so the example applies as-is; use the VPC your broker lives in.
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

# The broker URL as a Secrets Manager secret (its value is the plain URL). Pass your own secret's ARN
# in broker_url_secret_arn and this one is not created.
resource "aws_secretsmanager_secret" "broker_url" {
  #checkov:skip=CKV2_AWS_57:Stands in for the secret of a broker you already run; its rotation is that broker's.
  count = var.broker_url_secret_arn == null ? 1 : 0

  name_prefix             = "${var.name}-broker-url-"
  description             = "Celery broker URL of ${var.name}"
  recovery_window_in_days = 0
}

resource "aws_secretsmanager_secret_version" "broker_url" {
  count = var.broker_url_secret_arn == null ? 1 : 0

  secret_id     = aws_secretsmanager_secret.broker_url[0].id
  secret_string = var.broker_url
}

module "celery" {
  source = "../../"

  name       = var.name
  vpc_id     = aws_vpc.this.id
  subnet_ids = aws_subnet.private[*].id
  celery_app = var.celery_app

  worker_pools = {
    default = {
      image       = var.image
      queues      = ["celery"]
      concurrency = 4
      scaling     = { max_workers = 10 }
    }
  }

  broker = {
    create         = false
    url_secret_arn = coalesce(var.broker_url_secret_arn, try(aws_secretsmanager_secret.broker_url[0].arn, null))
    # Must match the Celery app's broker_transport_options global_keyprefix, if it sets one.
    key_prefix = var.broker_key_prefix
  }
}
