variable "aws_endpoint" {
  description = "The AWS emulator every service is sent to (the demo starts moto and passes its URL)."
  type        = string
  default     = "http://127.0.0.1:5000"
}

variable "broker_type" {
  description = "The broker's type: \"redis\" or \"rabbitmq\"."
  type        = string
  default     = "redis"
  nullable    = false
}

variable "broker_url" {
  description = "The broker URL stored in the broker secret: local Redis in a db of the demo's own, or the demo's RabbitMQ node (amqp://)."
  type        = string
  default     = "redis://127.0.0.1:6379/12"
}

variable "management_url" {
  description = "RabbitMQ only: the demo node's management API (http://127.0.0.1:PORT); null with Redis."
  type        = string
  default     = null
}

variable "name" {
  description = "Name prefix of everything created."
  type        = string
  default     = "celery-demo"
}

variable "image" {
  description = "Worker image in the task definitions (examples/django-celery-app/Dockerfile); locally the runner starts the same command in the virtualenv instead."
  type        = string
  default     = "celery-demo-app:latest"
}

variable "tick_interval_s" {
  description = "The scaler's tick (the demo's QUICK profile shortens it)."
  type        = number
  default     = 15
}

variable "scale_in_window_s" {
  description = "How long a pool's highest recommendation holds before it scales in."
  type        = number
  default     = 45
}

variable "idle_window_s" {
  description = "How long a pool must be idle before it goes to zero."
  type        = number
  default     = 45
}
