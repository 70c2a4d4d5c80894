output "cluster_name" {
  description = "ECS cluster of the workers."
  value       = module.celery.cluster_name
}

output "services" {
  description = "Worker services by pool."
  value       = module.celery.services
}

output "beat_service_name" {
  description = "Celery beat service."
  value       = module.celery.beat_service_name
}

output "redis_endpoint" {
  description = "Primary endpoint of the Redis broker."
  value       = module.celery.redis_endpoint
}

output "broker_secret_arn" {
  description = "Secret holding the broker URL (give it to producers: web, cron jobs)."
  value       = module.celery.broker_secret_arn
}

output "scaler_function_name" {
  description = "Scaler Lambda."
  value       = module.celery.scaler_function_name
}

output "dashboard_name" {
  description = "CloudWatch dashboard of queues and workers."
  value       = module.celery.dashboard_name
}

output "vpc_id" {
  description = "VPC created by the example."
  value       = aws_vpc.this.id
}
