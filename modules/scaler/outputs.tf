################################################################################
# Lambda and schedule
################################################################################

output "function_name" {
  description = "Name of the scaler Lambda function, or null when create is false."
  value       = try(aws_lambda_function.this[0].function_name, null)
}

output "function_arn" {
  description = "ARN of the scaler Lambda function, or null when create is false."
  value       = try(aws_lambda_function.this[0].arn, null)
}

output "schedule_arn" {
  description = "ARN of the EventBridge Scheduler schedule that invokes the scaler, or null when create is false."
  value       = try(aws_scheduler_schedule.this[0].arn, null)
}

output "config" {
  description = "The scaler's configuration document (CELERY_AUTOSCALER_CONFIG), as an object; computed even when create is false. It names the broker secret's ARN, never the URL."
  value       = local.config
}

################################################################################
# State and dead letters
################################################################################

output "state_table_name" {
  description = "Name of the scaler's DynamoDB state table, or null when create is false."
  value       = try(aws_dynamodb_table.state[0].name, null)
}

output "state_table_arn" {
  description = "ARN of the scaler's DynamoDB state table, or null when create is false."
  value       = try(aws_dynamodb_table.state[0].arn, null)
}

output "dead_letter_queue_arn" {
  description = "ARN of the SQS queue receiving failed or undeliverable scaler invocations, or null when create is false."
  value       = try(aws_sqs_queue.dlq[0].arn, null)
}

################################################################################
# IAM and network
################################################################################

output "role_arn" {
  description = "ARN of the scaler Lambda's role, or null when create is false."
  value       = try(aws_iam_role.this[0].arn, null)
}

output "role_name" {
  description = "Name of the scaler Lambda's role (to attach more policies from outside), or null when create is false."
  value       = try(aws_iam_role.this[0].name, null)
}

output "policy_json" {
  description = "The scaler role's inline policy document (JSON), or null when create is false."
  value       = try(aws_iam_role_policy.this[0].policy, null)
}

output "service_arns" {
  description = "ARNs of the ECS services the scaler may describe and update, by pool name: exactly the pools' services."
  value       = local.pool_service_arns
}

output "broker_port" {
  description = "The port the scaler connects to on the broker (Redis's, or RabbitMQ's management API's): allow security_group_id on it in the broker's security group."
  value       = var.broker.port
}

output "security_group_id" {
  description = "Security group of the scaler Lambda: allow it into the broker's security group. Null when create is false."
  value       = try(aws_security_group.this[0].id, null)
}

################################################################################
# Monitoring
################################################################################

output "log_group_name" {
  description = "CloudWatch log group of the scaler Lambda (its JSON logs and EMF metrics), or null when create is false."
  value       = try(aws_cloudwatch_log_group.this[0].name, null)
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard, or null when disabled."
  value       = try(aws_cloudwatch_dashboard.this[0].dashboard_name, null)
}
