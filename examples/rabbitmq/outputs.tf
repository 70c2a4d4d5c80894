output "cluster_name" {
  description = "ECS cluster of the workers."
  value       = module.celery.cluster_name
}

output "services" {
  description = "Worker services by pool."
  value       = module.celery.services
}

output "broker_secret_arn" {
  description = "Secret holding the broker URL."
  value       = module.celery.broker_secret_arn
}

output "scaler_function_name" {
  description = "Scaler Lambda."
  value       = module.celery.scaler_function_name
}

output "rabbitmq_management_url" {
  description = "The broker's management API and web console (what the scaler reads)."
  value       = module.celery.rabbitmq_management_url
}
