################################################################################
# General
################################################################################

variable "create" {
  description = "Create the scaler's resources. False creates nothing; the `config` output is still computed (to run the scaler elsewhere)."
  type        = bool
  default     = true
  nullable    = false
}

variable "name" {
  description = "Prefix of every resource: the Lambda and its role are `<name>-scaler`, the state table `<name>-scaler-state`, the dead-letter queue `<name>-scaler-dlq`, the dashboard `<name>`. Lowercase letters, digits and single hyphens, 2-48 characters, starting with a letter."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,46}[a-z0-9]$", var.name)) && !strcontains(var.name, "--")
    error_message = "name must be 2-48 characters of lowercase letters, digits and single hyphens, start with a letter and not end with a hyphen (IAM role names: `<name>-scaler-schedule` must fit in 64)."
  }
}

variable "tags" {
  description = "Tags added to every resource the module creates."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "kms_key_arn" {
  description = "Customer managed KMS key ARN used to encrypt the log group, the state table, the dead-letter queue, the schedule and the Lambda environment. Null uses AWS managed keys. The key policy must allow CloudWatch Logs to use it."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "iam_permissions_boundary" {
  description = "ARN of a permissions boundary set on the scaler's and the schedule's IAM roles."
  type        = string
  default     = null

  validation {
    condition     = var.iam_permissions_boundary == null || can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/.+$", var.iam_permissions_boundary))
    error_message = "iam_permissions_boundary must be an IAM policy ARN."
  }
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "VPC of the scaler Lambda (the broker's VPC)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets of the scaler Lambda. They must reach the broker, and ECS, DynamoDB, Secrets Manager and CloudWatch Logs through NAT or VPC endpoints."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.subnet_ids) > 0 && length(distinct(var.subnet_ids)) == length(var.subnet_ids)
    error_message = "subnet_ids must name at least one subnet, each once."
  }

  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "Every entry of subnet_ids must be a subnet id (subnet-...)."
  }
}

################################################################################
# What it scales
################################################################################

variable "cluster" {
  description = "Name or ARN of the existing ECS cluster the pools' services run in."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^([A-Za-z0-9_-]{1,255}|arn:aws[a-z-]*:ecs:[a-z0-9-]+:[0-9]{12}:cluster/[A-Za-z0-9_-]{1,255})$", var.cluster))
    error_message = "cluster must be an ECS cluster name or ARN (arn:aws:ecs:REGION:ACCOUNT:cluster/NAME)."
  }
}

variable "pools" {
  description = <<-EOT
    Worker pools by name: each an existing ECS service (in `cluster`) of Celery workers, scaled from the load of its queues.
    The scaler owns each service's desired count: give the service `lifecycle { ignore_changes = [desired_count] }`.
    - service: the service's name or ARN. The scaler's IAM allows ecs:DescribeServices and ecs:UpdateService on exactly these services.
    - queues: the Celery queues the pool consumes (unique across pools); concurrency: Celery worker processes per task.
    - oldest_task_age_alarm_s: oldest-task-age alarm threshold (defaults to monitoring.oldest_task_age_alarm_s).
    - scaling: the scaler's settings for this pool, the same names and defaults as the root module's `worker_pools.NAME.scaling` and the scaler's JSON config (schedules: docs/schedules.md).
    - cpu (CPU units), memory (MiB), architecture (X86_64 or ARM64), spot_weight (percent of tasks on FARGATE_SPOT): the task's size, for the cost metrics (WorkerSeconds, EstimatedCostUSD) only.
  EOT
  type = map(object({
    service                 = string
    queues                  = list(string)
    concurrency             = optional(number, 2)
    oldest_task_age_alarm_s = optional(number)
    cpu                     = optional(number, 256)
    memory                  = optional(number, 512)
    architecture            = optional(string, "X86_64")
    spot_weight             = optional(number, 0)
    scaling = optional(object({
      min_workers               = optional(number, 0)
      max_workers               = optional(number, 10)
      target_backlog_per_worker = optional(number)
      target_latency_s          = optional(number)
      target_utilisation        = optional(number, 1)
      max_scale_out_step        = optional(number)
      max_scale_in_percent      = optional(number, 100)
      scale_in_window_s         = optional(number, 30)
      idle_window_s             = optional(number, 120)
      stale_after_s             = optional(number, 90)
      fallback_count            = optional(number)
      wait_target_s             = optional(number)
      drain_time_s              = optional(number, 30)
      scale_in_tolerance        = optional(number, 0.1)
      start_delay_s             = optional(number, 55)
      learned_prewarm           = optional(bool, true)
      prewarm_confidence        = optional(number, 3)
      prewarm_margin_s          = optional(number, 0)
      prewarm_max_misses        = optional(number, 2)
      schedules = optional(list(object({
        name        = optional(string)
        cron        = string
        time_zone   = optional(string, "UTC")
        min_workers = number
        lead_s      = optional(number, 0)
        duration_s  = number
      })), [])
    }), {})
  }))
  nullable = false

  validation {
    condition     = length(var.pools) > 0
    error_message = "pools must define at least one pool."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.cpu > 0 && p.memory > 0])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].cpu/memory (${p.cpu}/${p.memory})" if !(p.cpu > 0 && p.memory > 0)])} must be > 0 (CPU units, MiB)."
  }

  validation {
    condition     = alltrue([for p in var.pools : contains(["X86_64", "ARM64"], p.architecture)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].architecture (${p.architecture})" if !contains(["X86_64", "ARM64"], p.architecture)])} must be X86_64 or ARM64."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.spot_weight >= 0 && p.spot_weight <= 100])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].spot_weight (${p.spot_weight})" if !(p.spot_weight >= 0 && p.spot_weight <= 100)])} must be a percentage from 0 to 100."
  }

  validation {
    condition     = alltrue([for n, _ in var.pools : can(regex("^[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?$", n))])
    error_message = "${join(", ", [for n, _ in var.pools : "pools[\"${n}\"]" if !can(regex("^[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?$", n))])}: a pool name must be 1-32 lowercase letters, digits, '_' or '-', starting and ending with a letter or digit."
  }

  validation {
    condition     = alltrue([for p in var.pools : can(regex("^([A-Za-z0-9_-]{1,255}|arn:aws[a-z-]*:ecs:[a-z0-9-]+:[0-9]{12}:service/([A-Za-z0-9_-]{1,255}/)?[A-Za-z0-9_-]{1,255})$", p.service))])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].service (\"${p.service}\")" if !can(regex("^([A-Za-z0-9_-]{1,255}|arn:aws[a-z-]*:ecs:[a-z0-9-]+:[0-9]{12}:service/([A-Za-z0-9_-]{1,255}/)?[A-Za-z0-9_-]{1,255})$", p.service))])} must be an ECS service name or ARN."
  }

  validation {
    condition     = length(distinct([for p in var.pools : element(split("/", p.service), length(split("/", p.service)) - 1)])) == length(var.pools)
    error_message = "Each pool must scale its own service; two pools name the same one."
  }

  validation {
    condition     = alltrue([for p in var.pools : length(p.queues) > 0])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].queues" if length(p.queues) == 0])} must name at least one queue."
  }

  validation {
    condition     = alltrue(flatten([for p in var.pools : [for q in p.queues : can(regex("^[A-Za-z0-9_.:@-]{1,200}$", q))]]))
    error_message = "${join(", ", flatten([for n, p in var.pools : [for i, q in p.queues : "pools[\"${n}\"].queues[${i}] (\"${q}\")" if !can(regex("^[A-Za-z0-9_.:@-]{1,200}$", q))]]))}: a queue name must be 1-200 characters of letters, digits and _.:@- (the scaler's rule)."
  }

  validation {
    condition     = length(flatten([for p in var.pools : p.queues])) == length(distinct(flatten([for p in var.pools : p.queues])))
    error_message = "A queue may be consumed by one pool only and listed once; repeated: ${join(", ", [for q, n in { for q in flatten([for p in var.pools : p.queues]) : q => q... } : q if length(n) > 1])}."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.concurrency >= 1 && floor(p.concurrency) == p.concurrency])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].concurrency (${p.concurrency})" if !(p.concurrency >= 1 && floor(p.concurrency) == p.concurrency)])} must be a whole number >= 1."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.min_workers >= 0 && p.scaling.min_workers <= 5000 && floor(p.scaling.min_workers) == p.scaling.min_workers])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.min_workers (${p.scaling.min_workers})" if !(p.scaling.min_workers >= 0 && p.scaling.min_workers <= 5000 && floor(p.scaling.min_workers) == p.scaling.min_workers)])} must be a whole number from 0 to 5000 (ECS's tasks per service)."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.max_workers >= 1 && p.scaling.max_workers <= 5000 && floor(p.scaling.max_workers) == p.scaling.max_workers])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.max_workers (${p.scaling.max_workers})" if !(p.scaling.max_workers >= 1 && p.scaling.max_workers <= 5000 && floor(p.scaling.max_workers) == p.scaling.max_workers)])} must be a whole number from 1 to 5000 (ECS's tasks per service)."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.min_workers <= p.scaling.max_workers])
    error_message = join(" ", [for n, p in var.pools : "pools[\"${n}\"].scaling.max_workers (${p.scaling.max_workers}) must be >= min_workers (${p.scaling.min_workers})." if p.scaling.min_workers > p.scaling.max_workers])
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.target_backlog_per_worker == null || try(p.scaling.target_backlog_per_worker > 0 && p.scaling.target_backlog_per_worker <= 1000000, false)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.target_backlog_per_worker (${p.scaling.target_backlog_per_worker})" if !(p.scaling.target_backlog_per_worker == null || try(p.scaling.target_backlog_per_worker > 0 && p.scaling.target_backlog_per_worker <= 1000000, false))])}, when set, must be in (0, 1000000]."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.target_latency_s == null || try(p.scaling.target_latency_s > 0 && p.scaling.target_latency_s <= 86400, false)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.target_latency_s (${p.scaling.target_latency_s})" if !(p.scaling.target_latency_s == null || try(p.scaling.target_latency_s > 0 && p.scaling.target_latency_s <= 86400, false))])}, when set, must be in (0, 86400] seconds."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.target_utilisation > 0 && p.scaling.target_utilisation <= 1])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.target_utilisation (${p.scaling.target_utilisation})" if !(p.scaling.target_utilisation > 0 && p.scaling.target_utilisation <= 1)])} must be in (0, 1]."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.max_scale_out_step == null || try(p.scaling.max_scale_out_step >= 1 && p.scaling.max_scale_out_step <= 5000 && floor(p.scaling.max_scale_out_step) == p.scaling.max_scale_out_step, false)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.max_scale_out_step (${p.scaling.max_scale_out_step})" if !(p.scaling.max_scale_out_step == null || try(p.scaling.max_scale_out_step >= 1 && p.scaling.max_scale_out_step <= 5000 && floor(p.scaling.max_scale_out_step) == p.scaling.max_scale_out_step, false))])}, when set, must be a whole number from 1 to 5000."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.max_scale_in_percent > 0 && p.scaling.max_scale_in_percent <= 100])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.max_scale_in_percent (${p.scaling.max_scale_in_percent})" if !(p.scaling.max_scale_in_percent > 0 && p.scaling.max_scale_in_percent <= 100)])} must be in (0, 100]."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.scale_in_window_s >= 0 && p.scaling.scale_in_window_s <= 3600])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.scale_in_window_s (${p.scaling.scale_in_window_s})" if !(p.scaling.scale_in_window_s >= 0 && p.scaling.scale_in_window_s <= 3600)])} must be from 0 to 3600 seconds (the state item keeps every recommendation of the window)."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.scale_in_window_s <= 4000 * var.scaler.tick_interval_s])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.scale_in_window_s (${p.scaling.scale_in_window_s})" if !(p.scaling.scale_in_window_s <= 4000 * var.scaler.tick_interval_s)])} must be at most 4000 ticks of scaler.tick_interval_s (${var.scaler.tick_interval_s} s): the state item keeps one recommendation per tick."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.idle_window_s >= 0 && p.scaling.idle_window_s <= 86400])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.idle_window_s (${p.scaling.idle_window_s})" if !(p.scaling.idle_window_s >= 0 && p.scaling.idle_window_s <= 86400)])} must be from 0 to 86400 seconds."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.stale_after_s > 0 && p.scaling.stale_after_s <= 3600])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.stale_after_s (${p.scaling.stale_after_s})" if !(p.scaling.stale_after_s > 0 && p.scaling.stale_after_s <= 3600)])} must be in (0, 3600] seconds."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.fallback_count == null || try(p.scaling.fallback_count >= p.scaling.min_workers && p.scaling.fallback_count <= p.scaling.max_workers && floor(p.scaling.fallback_count) == p.scaling.fallback_count, false)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.fallback_count (${p.scaling.fallback_count})" if !(p.scaling.fallback_count == null || try(p.scaling.fallback_count >= p.scaling.min_workers && p.scaling.fallback_count <= p.scaling.max_workers && floor(p.scaling.fallback_count) == p.scaling.fallback_count, false))])}, when set, must be a whole number within [min_workers, max_workers]."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.wait_target_s == null || try(p.scaling.wait_target_s > 0, false)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.wait_target_s (${p.scaling.wait_target_s})" if !(p.scaling.wait_target_s == null || try(p.scaling.wait_target_s > 0, false))])}, when set, must be > 0: the p95 task wait, in seconds, the pool's users accept."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.drain_time_s > 0])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.drain_time_s (${p.scaling.drain_time_s})" if !(p.scaling.drain_time_s > 0)])} must be > 0: the seconds in which a backlog is to be drained."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.scale_in_tolerance >= 0 && p.scaling.scale_in_tolerance < 1])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.scale_in_tolerance (${p.scaling.scale_in_tolerance})" if !(p.scaling.scale_in_tolerance >= 0 && p.scaling.scale_in_tolerance < 1)])} must be in [0, 1): the headroom, as a fraction of the need, kept before scaling in."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.start_delay_s >= 0])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.start_delay_s (${p.scaling.start_delay_s})" if !(p.scaling.start_delay_s >= 0)])} must be >= 0: the worker start delay assumed until one is measured."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : can(regex(local.cron_pattern, w.cron))]]))
    error_message = "${join(", ", flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : "pools[\"${n}\"].scaling.schedules[${i}].cron (\"${w.cron}\")" if !(can(regex(local.cron_pattern, w.cron)))]]))} must be a 5-field cron expression: minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or jan-dec) day-of-week (0-7 or sun-sat), each *, a value, a range a-b, a step */n or a-b/n, or a comma list."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : contains(local.time_zones, w.time_zone)]]))
    error_message = "${join(", ", flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : "pools[\"${n}\"].scaling.schedules[${i}].time_zone (\"${w.time_zone}\")" if !(contains(local.time_zones, w.time_zone))]]))} must be an IANA time zone name such as Europe/Berlin or America/New_York, or UTC."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : w.lead_s >= 0 && w.lead_s <= 86400]]))
    error_message = "${join(", ", flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : "pools[\"${n}\"].scaling.schedules[${i}].lead_s (${w.lead_s})" if !(w.lead_s >= 0 && w.lead_s <= 86400)]]))} must be from 0 to 86400: the seconds before each occurrence at which the minimum starts."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : w.duration_s > 0 && w.duration_s <= 604800]]))
    error_message = "${join(", ", flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : "pools[\"${n}\"].scaling.schedules[${i}].duration_s (${w.duration_s})" if !(w.duration_s > 0 && w.duration_s <= 604800)]]))} must be in (0, 604800] (a week): it lasts duration_s after each occurrence."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : w.min_workers >= 1 && floor(w.min_workers) == w.min_workers && w.min_workers <= p.scaling.max_workers]]))
    error_message = "${join(", ", flatten([for n, p in var.pools : [for i, w in p.scaling.schedules : "pools[\"${n}\"].scaling.schedules[${i}].min_workers (${w.min_workers})" if !(w.min_workers >= 1 && floor(w.min_workers) == w.min_workers && w.min_workers <= p.scaling.max_workers)]]))} must be a whole number from 1 to the pool's max_workers."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.scaling.prewarm_confidence >= 2 && floor(p.scaling.prewarm_confidence) == p.scaling.prewarm_confidence && p.scaling.prewarm_max_misses >= 1 && floor(p.scaling.prewarm_max_misses) == p.scaling.prewarm_max_misses && p.scaling.prewarm_margin_s >= 0])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].scaling.prewarm_confidence/prewarm_max_misses/prewarm_margin_s (${p.scaling.prewarm_confidence}/${p.scaling.prewarm_max_misses}/${p.scaling.prewarm_margin_s})" if !(p.scaling.prewarm_confidence >= 2 && floor(p.scaling.prewarm_confidence) == p.scaling.prewarm_confidence && p.scaling.prewarm_max_misses >= 1 && floor(p.scaling.prewarm_max_misses) == p.scaling.prewarm_max_misses && p.scaling.prewarm_margin_s >= 0)])}: prewarm_confidence must be a whole number >= 2, prewarm_max_misses a whole number >= 1 and prewarm_margin_s >= 0."
  }

  validation {
    condition     = alltrue([for p in var.pools : p.oldest_task_age_alarm_s == null || try(p.oldest_task_age_alarm_s > 0 && p.oldest_task_age_alarm_s <= 604800, false)])
    error_message = "${join(", ", [for n, p in var.pools : "pools[\"${n}\"].oldest_task_age_alarm_s (${p.oldest_task_age_alarm_s})" if !(p.oldest_task_age_alarm_s == null || try(p.oldest_task_age_alarm_s > 0 && p.oldest_task_age_alarm_s <= 604800, false))])}, when set, must be in (0, 604800] seconds (a week)."
  }
}

################################################################################
# Broker
################################################################################

variable "broker" {
  description = <<-EOT
    The broker the pools consume from, as the scaler reads it.
    - type: "redis", "rabbitmq" or "sqs" (the scaler reads the URL's scheme; this names the security group rule, and sqs needs no URL).
    - url_secret_arn: Secrets Manager secret whose value is the plain broker URL (the scaler reads it; the URL is never in the config), required unless type is "sqs"; url_secret_kms_key_arn: its customer managed key, if any. With SQS, give the scaler sqs:GetQueueAttributes and sqs:GetQueueUrl on the queues and cloudwatch:GetMetricData through policy_statements.
    - port: the port the scaler connects to, Redis's or RabbitMQ's management API's (443 on Amazon MQ, 15672 self-hosted); security_group_id: the broker's security group, or null to allow the port to any address (an existing broker's address is unknown here). Allow `security_group_id` (output) into the broker's own security group.
    - key_prefix, priority_sep and publish_time_header must match the Celery app (global_keyprefix, priority separator, the publish-time header of celery_autoscaler.worker.install); unacked_scan_interval_s, unacked_scan_cap, socket_timeout_s: the probe's settings.
    - queue_name_prefix (SQS: kombu's transport option of that name); management_url (RabbitMQ: the management API, when not derived from the broker URL). The config's broker.region is the scaler's own region.
    - extra_config: more string keys of the config's `broker` section (settings of a newer scaler this module does not know yet), passed through unchanged.
  EOT
  type = object({
    type                    = optional(string, "redis")
    url_secret_arn          = optional(string)
    url_secret_kms_key_arn  = optional(string)
    port                    = optional(number, 6379)
    security_group_id       = optional(string)
    key_prefix              = optional(string, "")
    priority_sep            = optional(string, "\u0006\u0016")
    publish_time_header     = optional(string, "x_published_at")
    unacked_scan_interval_s = optional(number, 60)
    unacked_scan_cap        = optional(number, 10000)
    socket_timeout_s        = optional(number, 5)
    queue_name_prefix       = optional(string, "")
    management_url          = optional(string)
    extra_config            = optional(map(string), {})
  })
  nullable = false

  validation {
    condition     = contains(["redis", "rabbitmq", "sqs"], var.broker.type)
    error_message = "broker.type must be \"redis\", \"rabbitmq\" or \"sqs\"."
  }

  validation {
    condition     = (var.broker.url_secret_arn == null) == (var.broker.type == "sqs")
    error_message = "broker.url_secret_arn is required with redis and rabbitmq, and not used with sqs (the scaler reads SQS with its own role)."
  }

  validation {
    condition     = var.broker.url_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.broker.url_secret_arn))
    error_message = "broker.url_secret_arn must be a Secrets Manager secret ARN (the secret's value is the plain broker URL)."
  }

  validation {
    condition     = var.broker.url_secret_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.broker.url_secret_kms_key_arn))
    error_message = "broker.url_secret_kms_key_arn must be a KMS key ARN."
  }

  validation {
    condition     = var.broker.port >= 1 && var.broker.port <= 65535 && floor(var.broker.port) == var.broker.port
    error_message = "broker.port must be a TCP port (1-65535)."
  }

  validation {
    condition     = var.broker.security_group_id == null || can(regex("^sg-[0-9a-f]+$", var.broker.security_group_id))
    error_message = "broker.security_group_id must be a security group id (sg-...)."
  }

  validation {
    condition     = var.broker.priority_sep != "" && var.broker.publish_time_header != ""
    error_message = "broker.priority_sep and broker.publish_time_header must not be empty."
  }

  validation {
    condition     = var.broker.unacked_scan_interval_s >= 0 && var.broker.unacked_scan_cap >= 0 && floor(var.broker.unacked_scan_cap) == var.broker.unacked_scan_cap
    error_message = "broker.unacked_scan_interval_s must be >= 0 and broker.unacked_scan_cap a whole number >= 0."
  }

  validation {
    condition     = var.broker.socket_timeout_s > 0
    error_message = "broker.socket_timeout_s must be > 0."
  }

  validation {
    condition     = length(setintersection(keys(var.broker.extra_config), ["url", "url_secret_arn", "key_prefix", "priority_sep", "publish_time_header", "unacked_scan_interval_s", "unacked_scan_cap", "socket_timeout_s", "region", "queue_name_prefix", "management_url"])) == 0
    error_message = "broker.extra_config must not repeat a key the module sets (url, url_secret_arn, key_prefix, priority_sep, publish_time_header, unacked_scan_interval_s, unacked_scan_cap, socket_timeout_s, region, queue_name_prefix, management_url); set those as broker attributes."
  }
}

################################################################################
# Scaler
################################################################################

variable "scaler" {
  description = <<-EOT
    The scaler Lambda. Every minute (schedule_expression) one invocation runs ticks_per_invocation ticks, tick_interval_s apart.
    package_path defaults to the committed zip (lambda/dist/celery-autoscaler-lambda.zip of this repository); s3_bucket + s3_key use a package from S3 instead.
    dry_run decides and logs without UpdateService. tracing_mode: "PassThrough" (no sampling) or "Active" (X-Ray traces; grants the X-Ray write policy).
  EOT
  type = object({
    package_path         = optional(string)
    s3_bucket            = optional(string)
    s3_key               = optional(string)
    s3_object_version    = optional(string)
    memory_size          = optional(number, 256)
    timeout              = optional(number, 70)
    schedule_expression  = optional(string, "rate(1 minute)")
    tick_interval_s      = optional(number, 15)
    ticks_per_invocation = optional(number, 4)
    dry_run              = optional(bool, false)
    metrics_namespace    = optional(string, "CeleryAutoscaler")
    tracing_mode         = optional(string, "PassThrough")
  })
  default  = {}
  nullable = false

  validation {
    condition     = (var.scaler.s3_bucket == null) == (var.scaler.s3_key == null)
    error_message = "scaler.s3_bucket and scaler.s3_key go together."
  }

  validation {
    condition     = var.scaler.s3_bucket == null || var.scaler.package_path == null
    error_message = "Give scaler.package_path or scaler.s3_bucket/s3_key, not both."
  }

  validation {
    condition     = var.scaler.package_path == null || try(endswith(var.scaler.package_path, ".zip"), false)
    error_message = "scaler.package_path must be a .zip file."
  }

  validation {
    condition     = var.scaler.memory_size >= 128 && var.scaler.memory_size <= 10240
    error_message = "scaler.memory_size must be 128-10240 MB."
  }

  validation {
    condition     = var.scaler.timeout >= 1 && var.scaler.timeout <= 900
    error_message = "scaler.timeout must be 1-900 seconds."
  }

  validation {
    condition     = can(regex("^(rate\\((1 (minute|hour|day)|([2-9]|[1-9][0-9]+) (minutes|hours|days))\\)|cron\\([^ ()]+( [^ ()]+){5}\\))$", var.scaler.schedule_expression))
    error_message = "scaler.schedule_expression must be rate(1 minute), rate(N minutes|hours|days) or cron(six fields)."
  }

  validation {
    condition     = var.scaler.tick_interval_s > 0 && var.scaler.ticks_per_invocation >= 1 && floor(var.scaler.ticks_per_invocation) == var.scaler.ticks_per_invocation
    error_message = "scaler.tick_interval_s must be > 0 and scaler.ticks_per_invocation a whole number >= 1."
  }

  validation {
    condition     = var.scaler.tick_interval_s * var.scaler.ticks_per_invocation <= var.scaler.timeout
    error_message = "scaler.ticks_per_invocation x scaler.tick_interval_s must fit in scaler.timeout."
  }

  validation {
    condition     = can(regex("^[^:][^:]{0,254}$", var.scaler.metrics_namespace)) && !startswith(var.scaler.metrics_namespace, "AWS/")
    error_message = "scaler.metrics_namespace must be 1-255 characters without ':' and must not start with AWS/."
  }

  validation {
    condition     = contains(["Active", "PassThrough"], var.scaler.tracing_mode)
    error_message = "scaler.tracing_mode must be \"Active\" or \"PassThrough\"."
  }
}

variable "policy_statements" {
  description = "Extra IAM statements for the scaler's role, for what a broker probe reads beyond the broker secret (for example sqs:GetQueueAttributes on the pools' queues)."
  type = list(object({
    sid       = optional(string)
    effect    = optional(string, "Allow")
    actions   = list(string)
    resources = list(string)
    conditions = optional(list(object({
      test     = string
      variable = string
      values   = list(string)
    })), [])
  }))
  default  = []
  nullable = false

  validation {
    condition     = alltrue([for s in var.policy_statements : contains(["Allow", "Deny"], s.effect) && length(s.actions) > 0 && length(s.resources) > 0])
    error_message = "Every policy_statements entry needs effect Allow or Deny, at least one action and one resource."
  }

  validation {
    condition     = alltrue([for s in var.policy_statements : s.sid == null || can(regex("^[A-Za-z0-9]+$", s.sid))])
    error_message = "A policy_statements sid may only contain letters and digits."
  }
}

################################################################################
# Monitoring
################################################################################

variable "log_retention_days" {
  description = "Retention of the scaler's CloudWatch log group, in days."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "monitoring" {
  description = "CloudWatch dashboard (queue depth, in-flight, oldest task age, desired/running and cost per pool from the scaler's metrics; the latest scaling actions, holds and errors from its logs) and alarms (scaler silent, scaler errors, Lambda errors, dead letters, and per pool oldest task age, broker unreadable, pinned at max_workers; see docs/operations.md). alarm_actions: SNS topic ARNs notified on alarm and OK. *_alarm_s: how long the condition lasts before the alarm fires (whole minutes for the last three)."
  type = object({
    dashboard                 = optional(bool, true)
    alarms                    = optional(bool, true)
    alarm_actions             = optional(list(string), [])
    oldest_task_age_alarm_s   = optional(number, 900)
    scaler_silent_alarm_s     = optional(number, 300)
    broker_unreadable_alarm_s = optional(number, 180)
    pinned_at_max_alarm_s     = optional(number, 900)
  })
  default  = {}
  nullable = false

  validation {
    condition = alltrue([for s in [var.monitoring.scaler_silent_alarm_s, var.monitoring.broker_unreadable_alarm_s, var.monitoring.pinned_at_max_alarm_s] :
    s >= 60 && s <= 86400 && s % 60 == 0])
    error_message = "monitoring.scaler_silent_alarm_s, broker_unreadable_alarm_s and pinned_at_max_alarm_s must be whole minutes from 60 to 86400 s (got ${var.monitoring.scaler_silent_alarm_s}, ${var.monitoring.broker_unreadable_alarm_s}, ${var.monitoring.pinned_at_max_alarm_s})."
  }

  validation {
    condition     = alltrue([for a in var.monitoring.alarm_actions : can(regex("^arn:aws[a-z-]*:", a))])
    error_message = "monitoring.alarm_actions must be ARNs (SNS topics)."
  }

  validation {
    condition     = var.monitoring.oldest_task_age_alarm_s > 0
    error_message = "monitoring.oldest_task_age_alarm_s must be > 0."
  }
}

variable "prices" {
  description = "Fargate prices in USD for the scaler's EstimatedCostUSD metric: configuration, never fetched at run time. Defaults: us-east-1 Linux on-demand; the Spot share of a pool (spot_weight) is priced spot_discount_percent below on-demand."
  type = object({
    x86_64_vcpu_hour_usd  = optional(number, 0.04048)
    x86_64_gb_hour_usd    = optional(number, 0.004445)
    arm64_vcpu_hour_usd   = optional(number, 0.03238)
    arm64_gb_hour_usd     = optional(number, 0.00356)
    spot_discount_percent = optional(number, 70)
  })
  default  = {}
  nullable = false

  validation {
    condition     = alltrue([for name, price in var.prices : price >= 0]) && var.prices.spot_discount_percent <= 100
    error_message = "prices must be >= 0 and prices.spot_discount_percent <= 100."
  }
}
