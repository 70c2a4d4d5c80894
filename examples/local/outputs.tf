output "scaler_config" {
  description = "The scaler's configuration document as the module builds it (the demo runs the scaler with it)."
  value       = module.celery.scaler_config
}

output "cluster_name" {
  description = "The ECS cluster the demo's task runner watches."
  value       = module.celery.cluster_name
}
