################################################################################
# Cluster
################################################################################

output "cluster_name" {
  description = "Name of the ECS cluster the services run in."
  value       = local.cluster_name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster the services run in."
  value       = local.cluster_arn
}

################################################################################
# Workers
################################################################################

output "services" {
  description = "Worker pool services by pool name: name, ARN and the queues the pool consumes."
  value = { for pool, p in var.worker_pools : pool => {
    name   = try(aws_ecs_service.worker[pool].name, null)
    arn    = try(aws_ecs_service.worker[pool].id, null)
    queues = p.queues
  } }
}

output "task_definitions" {
  description = "Worker task definition ARNs (with revision) by pool name."
  value       = { for pool, td in aws_ecs_task_definition.worker : pool => td.arn }
}

output "beat_service_name" {
  description = "Name of the Celery beat service, or null when beat is disabled."
  value       = try(aws_ecs_service.beat[0].name, null)
}

output "beat_task_definition_arn" {
  description = "ARN of the Celery beat task definition, or null when beat is disabled."
  value       = try(aws_ecs_task_definition.beat[0].arn, null)
}

output "worker_log_group_name" {
  description = "CloudWatch log group of the workers and beat (one stream prefix per pool)."
  value       = try(aws_cloudwatch_log_group.workers.name, null)
}

################################################################################
# Broker
################################################################################

output "broker_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the broker URL (the module's own or the one supplied; Redis or RabbitMQ), null on SQS. The URL itself is never an output."
  value       = local.broker_secret_arn
}

output "broker_secret_read_policy_json" {
  description = "IAM policy document (JSON) that reads the broker URL secret (and decrypts it, with a customer managed key): attach it to the producers' roles (web app, cron jobs) so they get the broker URL as the workers do."
  value = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [{
        Sid      = "ReadBrokerUrl"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [local.broker_secret_arn]
      }],
      length(local.kms_key_arns) > 0 ? [{
        Sid      = "DecryptBrokerUrl"
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = local.kms_key_arns
      }] : [],
    )
  })
}

output "redis_endpoint" {
  description = "Primary endpoint address of the created Redis, or null with an existing broker or RabbitMQ."
  value       = try(aws_elasticache_replication_group.broker[0].primary_endpoint_address, null)
}

output "redis_port" {
  description = "Port of the created Redis, or null with an existing broker or RabbitMQ."
  value       = local.create_redis ? var.broker.port : null
}

output "sqs_queues" {
  description = "With broker.type = \"sqs\": each Celery queue's SQS queue (name, url, arn, and its dead-letter queue's arn or null); empty otherwise."
  value = { for q, name in local.sqs_queue_names : q => {
    name            = name
    url             = local.sqs_queue_urls[q]
    arn             = "arn:${local.partition}:sqs:${local.region}:${local.account_id}:${name}"
    dead_letter_arn = try(aws_sqs_queue.celery_dead_letter[q].arn, null)
  } }
}

output "worker_broker_environment" {
  description = "The broker settings the module passes to the workers' and beat's containers as plain environment (SQS: CELERY_BROKER_URL and CELERY_BROKER_TRANSPORT_OPTIONS; empty for Redis, whose URL comes from the secret). Use them in containers the module does not run."
  value       = local.broker_environment
}

output "redis_replication_group_id" {
  description = "Id of the created ElastiCache replication group, or null with an existing broker or RabbitMQ."
  value       = try(aws_elasticache_replication_group.broker[0].id, null)
}

output "rabbitmq_broker_id" {
  description = "Id of the created Amazon MQ for RabbitMQ broker, or null with Redis or an existing broker."
  value       = try(aws_mq_broker.broker[0].id, null)
}

output "rabbitmq_management_url" {
  description = "RabbitMQ's management API (and web console) the scaler reads: the created broker's https://HOST, or broker.management_url; null when derived from an existing broker's URL, or with Redis."
  value       = local.rabbitmq_management_url
}

################################################################################
# Scaler
################################################################################

output "scaler_function_name" {
  description = "Name of the scaler Lambda function."
  value       = module.scaler.function_name
}

output "scaler_function_arn" {
  description = "ARN of the scaler Lambda function."
  value       = module.scaler.function_arn
}

output "scaler_state_table_name" {
  description = "Name of the scaler's DynamoDB state table."
  value       = module.scaler.state_table_name
}

output "scaler_state_table_arn" {
  description = "ARN of the scaler's DynamoDB state table."
  value       = module.scaler.state_table_arn
}

output "scaler_dead_letter_queue_arn" {
  description = "ARN of the SQS queue receiving failed or undeliverable scaler invocations."
  value       = module.scaler.dead_letter_queue_arn
}

output "scaler_schedule_arn" {
  description = "ARN of the EventBridge Scheduler schedule that invokes the scaler."
  value       = module.scaler.schedule_arn
}

output "scaler_config" {
  description = "The scaler's configuration document (CELERY_AUTOSCALER_CONFIG), as an object. It names the broker secret's ARN, never the URL."
  value       = module.scaler.config
}

################################################################################
# IAM
################################################################################

output "task_execution_role_arn" {
  description = "ARN of the ECS task execution role (image pull, logs, container secrets)."
  value       = try(aws_iam_role.task_execution.arn, null)
}

output "task_role_arn" {
  description = "ARN of the workers' task role (what the Celery tasks may call)."
  value       = try(aws_iam_role.task.arn, null)
}

output "task_role_name" {
  description = "Name of the workers' task role, to attach more policies from outside the module."
  value       = try(aws_iam_role.task.name, null)
}

output "scaler_role_arn" {
  description = "ARN of the scaler Lambda's role."
  value       = module.scaler.role_arn
}

################################################################################
# Network
################################################################################

output "worker_security_group_id" {
  description = "Security group of the workers and beat (allow it on an existing broker)."
  value       = try(aws_security_group.workers.id, null)
}

output "scaler_security_group_id" {
  description = "Security group of the scaler Lambda (allow it on an existing broker)."
  value       = module.scaler.security_group_id
}

output "broker_security_group_id" {
  description = "Security group of the created broker (Redis or RabbitMQ), or null with an existing broker."
  value       = try(aws_security_group.broker[0].id, null)
}

################################################################################
# Monitoring
################################################################################

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard, or null when disabled."
  value       = module.scaler.dashboard_name
}
