output "services" {
  description = "Worker services by pool."
  value       = module.celery.services
}

output "worker_security_group_id" {
  description = "Allow this security group on the existing broker's port."
  value       = module.celery.worker_security_group_id
}

output "scaler_security_group_id" {
  description = "Allow this security group on the existing broker's port too."
  value       = module.celery.scaler_security_group_id
}

output "scaler_function_name" {
  description = "Scaler Lambda."
  value       = module.celery.scaler_function_name
}
