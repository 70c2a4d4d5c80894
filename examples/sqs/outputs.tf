output "cluster_name" {
  description = "ECS cluster of the workers."
  value       = module.celery.cluster_name
}

output "services" {
  description = "Worker services by pool."
  value       = module.celery.services
}

output "sqs_queues" {
  description = "Each Celery queue's SQS queue (name, url, arn, dead-letter queue arn)."
  value       = module.celery.sqs_queues
}

output "worker_broker_environment" {
  description = "CELERY_BROKER_URL and CELERY_BROKER_TRANSPORT_OPTIONS for producers the module does not run (a web app)."
  value       = module.celery.worker_broker_environment
}

output "scaler_function_name" {
  description = "Scaler Lambda."
  value       = module.celery.scaler_function_name
}
