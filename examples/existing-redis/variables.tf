variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the platform; prefixes every resource."
  type        = string
  default     = "celery-existing"
}

variable "image" {
  description = "Container image of your Celery app (it must contain celery and the app named by celery_app)."
  type        = string
  default     = "registry.example.com/celery-app:latest"
}

variable "celery_app" {
  description = "Celery application for `celery --app`."
  type        = string
  default     = "proj.celery"
}

variable "broker_url_secret_arn" {
  description = "ARN of an existing Secrets Manager secret whose value is the broker URL. Null creates one from broker_url."
  type        = string
  default     = null
}

variable "broker_url" {
  description = "Broker URL stored in the example's own secret when broker_url_secret_arn is null."
  type        = string
  default     = "rediss://broker.example.internal:6379/0"
  sensitive   = true
}

variable "broker_key_prefix" {
  description = "Celery's global_keyprefix on that broker (empty when unset)."
  type        = string
  default     = ""
}
