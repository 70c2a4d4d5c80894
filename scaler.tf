################################################################################
# State table (one item per pool: last decision, windows, last seen counts)
################################################################################

resource "aws_dynamodb_table" "scaler_state" {
  count = var.scaler.enabled ? 1 : 0

  name         = local.state_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pool"

  attribute {
    name = "pool"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = local.tags
}

################################################################################
# Dead letters (invocations that failed or could not be delivered)
################################################################################

resource "aws_sqs_queue" "scaler_dlq" {
  count = var.scaler.enabled ? 1 : 0

  name                      = local.scaler_dlq_name
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = var.kms_key_arn == null ? true : null
  kms_master_key_id         = var.kms_key_arn

  tags = local.tags
}

################################################################################
# Lambda
################################################################################

resource "aws_lambda_function" "scaler" {
  #checkov:skip=CKV_AWS_50:tracing_config is always set from scaler.tracing_mode (PassThrough by default, Active optional); checkov cannot resolve an optional() default.
  #checkov:skip=CKV_AWS_272:The package is pinned by source_code_hash of a reproducible build; code signing needs a Signer profile the user owns.
  count = var.scaler.enabled ? 1 : 0

  function_name     = local.scaler_name
  description       = "Celery autoscaler of ${var.name}: sets each worker pool's desired count from its queues"
  role              = aws_iam_role.scaler[0].arn
  runtime           = "python3.12"
  architectures     = ["arm64"]
  handler           = "celery_autoscaler.handler.lambda_handler"
  filename          = local.scaler_package
  source_code_hash  = local.scaler_package != null ? filebase64sha256(local.scaler_package) : null
  s3_bucket         = var.scaler.s3_bucket
  s3_key            = var.scaler.s3_key
  s3_object_version = var.scaler.s3_object_version
  memory_size       = var.scaler.memory_size
  timeout           = var.scaler.timeout
  kms_key_arn       = var.kms_key_arn

  # One invocation at a time: two ticks racing on the same pools would fight over desired counts.
  reserved_concurrent_executions = 1

  environment {
    variables = {
      CELERY_AUTOSCALER_CONFIG = jsonencode(local.scaler_config)
    }
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.scaler[0].id]
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.scaler_dlq[0].arn
  }

  tracing_config {
    mode = var.scaler.tracing_mode
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = length(jsonencode(local.scaler_config)) <= 4000
      error_message = "The scaler configuration exceeds Lambda's 4 KB environment limit; use fewer pools/queues or shorter names."
    }
  }

  depends_on = [
    aws_cloudwatch_log_group.scaler,
    aws_iam_role_policy.scaler,
    aws_iam_role_policy_attachment.scaler_vpc,
  ]
}

# A failed tick is not retried: the next scheduled invocation measures afresh.
resource "aws_lambda_function_event_invoke_config" "scaler" {
  count = var.scaler.enabled ? 1 : 0

  function_name                = aws_lambda_function.scaler[0].function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}

################################################################################
# Schedule
################################################################################

resource "aws_scheduler_schedule" "scaler" {
  count = var.scaler.enabled ? 1 : 0

  name                = local.scaler_name
  description         = "Runs the Celery autoscaler of ${var.name}"
  schedule_expression = var.scaler.schedule_expression
  state               = "ENABLED"
  kms_key_arn         = var.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.scaler[0].arn
    role_arn = aws_iam_role.scheduler[0].arn
    input    = jsonencode({ source = "schedule" })

    retry_policy {
      maximum_retry_attempts       = 0
      maximum_event_age_in_seconds = 60
    }

    dead_letter_config {
      arn = aws_sqs_queue.scaler_dlq[0].arn
    }
  }
}
