variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the platform; prefixes every resource."
  type        = string
  default     = "shop"
}

variable "image" {
  description = "Container image of your Celery app (it must contain celery, the app named by celery_app and the worker helper)."
  type        = string
  default     = "registry.example.com/celery-app:latest"
}

variable "celery_app" {
  description = "Celery application for `celery --app`."
  type        = string
  default     = "proj.celery"
}
