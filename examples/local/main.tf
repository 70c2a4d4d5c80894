# The module on one machine: an AWS emulator (moto) stands in for AWS and local Redis (or RabbitMQ) is the broker,
# given to the module as an existing broker through a Secrets Manager secret, exactly as an
# existing ElastiCache would be. `make demo` applies this, runs real workers for the services it
# creates and runs the scaler's own code against them, then destroys it.

terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 7.0"
    }
  }

  # The demo passes -backend-config=path=... so each run keeps its state in its own output dir.
  backend "local" {}
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  # An API the emulator lacks fails in seconds instead of being retried for minutes.
  max_retries = 2

  endpoints {
    applicationautoscaling = var.aws_endpoint
    cloudwatch             = var.aws_endpoint
    dynamodb               = var.aws_endpoint
    ec2                    = var.aws_endpoint
    ecs                    = var.aws_endpoint
    events                 = var.aws_endpoint
    iam                    = var.aws_endpoint
    kms                    = var.aws_endpoint
    lambda                 = var.aws_endpoint
    logs                   = var.aws_endpoint
    scheduler              = var.aws_endpoint
    secretsmanager         = var.aws_endpoint
    sqs                    = var.aws_endpoint
    sts                    = var.aws_endpoint
  }
}

# A VPC and two subnets only because the module asks for them; nothing listens in the emulator.
resource "aws_vpc" "demo" {
  #checkov:skip=CKV2_AWS_11:Lives only inside the local emulator for the length of a demo run.
  #checkov:skip=CKV2_AWS_12:Lives only inside the local emulator; no traffic ever reaches it.
  cidr_block = "10.42.0.0/16"
}

resource "aws_subnet" "demo" {
  count = 2

  vpc_id            = aws_vpc.demo.id
  cidr_block        = cidrsubnet(aws_vpc.demo.cidr_block, 8, count.index)
  availability_zone = "us-east-1${["a", "b"][count.index]}"
}

# The existing broker: its URL lives in a secret, which the workers and the scaler read.
resource "aws_secretsmanager_secret" "broker" {
  #checkov:skip=CKV_AWS_149:Holds a loopback Redis URL without a password, inside the local emulator.
  #checkov:skip=CKV2_AWS_57:Stands in for the secret of a broker you already run; its rotation is that broker's.
  name_prefix             = "${var.name}-broker-url-"
  recovery_window_in_days = 0
}

resource "aws_secretsmanager_secret_version" "broker" {
  secret_id     = aws_secretsmanager_secret.broker.id
  secret_string = var.broker_url
}

module "celery" {
  source = "../../"

  name       = var.name
  vpc_id     = aws_vpc.demo.id
  subnet_ids = aws_subnet.demo[*].id
  celery_app = "demoapp"

  broker = {
    type           = var.broker_type
    create         = false
    url_secret_arn = aws_secretsmanager_secret_version.broker.arn
    management_url = var.management_url
    # Attribute in-flight tasks to queues on every tick: the demo's unacked hash is small, and its
    # short windows need in-flight counts that are seconds old, not a minute.
    unacked_scan_interval_s = 0
  }

  worker_pools = {
    # Short jobs (about a second) in bursts: many workers, four tasks each.
    default = {
      image       = var.image
      queues      = ["default"]
      concurrency = 4
      scaling = {
        max_workers       = 6
        scale_in_window_s = var.scale_in_window_s
        idle_window_s     = var.idle_window_s
      }
    }
    # Longer jobs on their own queue, so a burst of e-mails never delays a report (or the reverse).
    reports = {
      image       = var.image
      queues      = ["reports"]
      concurrency = 2
      scaling = {
        max_workers       = 4
        scale_in_window_s = var.scale_in_window_s
        idle_window_s     = var.idle_window_s
      }
    }
  }

  scaler = {
    tick_interval_s = var.tick_interval_s
  }
}
