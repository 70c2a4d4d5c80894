output "cluster_name" {
  description = "ECS cluster of the services."
  value       = aws_ecs_cluster.this.name
}

output "scaler_function_name" {
  description = "Scaler Lambda."
  value       = module.scaler.function_name
}

output "scaled_service_arns" {
  description = "The services the scaler may describe and update (its whole ECS scope), by pool."
  value       = module.scaler.service_arns
}

output "scaler_config" {
  description = "The scaler's configuration document (names the broker secret, never its URL)."
  value       = module.scaler.config
}
