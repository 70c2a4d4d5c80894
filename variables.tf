################################################################################
# General
################################################################################

variable "name" {
  description = "Name of this Celery platform; prefixes every resource (cluster, services, Redis, roles, Lambda, table). Lowercase letters, digits and single hyphens, 2-28 characters, starting with a letter."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,26}[a-z0-9]$", var.name))
    error_message = "name must be 2-28 characters of lowercase letters, digits and hyphens, start with a letter and not end with a hyphen (ElastiCache and IAM name limits)."
  }

  validation {
    condition     = !strcontains(var.name, "--")
    error_message = "name must not contain two hyphens in a row (ElastiCache replication group ids forbid it)."
  }
}

variable "tags" {
  description = "Tags added to every resource the module creates."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "kms_key_arn" {
  description = "Customer managed KMS key ARN used to encrypt the broker secret, log groups, the state table, the dead-letter queue, Redis at rest and the Lambda environment. Null uses AWS managed keys. The key policy must allow CloudWatch Logs to use it."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "VPC of the workers, the scaler Lambda and Redis."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets for the worker tasks, the scaler Lambda and the Redis subnet group. Use at least two availability zones."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must name at least one subnet."
  }

  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "Every entry of subnet_ids must be a subnet id (subnet-...)."
  }

  validation {
    condition     = length(distinct(var.subnet_ids)) == length(var.subnet_ids)
    error_message = "subnet_ids must not repeat a subnet."
  }
}

variable "assign_public_ip" {
  description = "Give worker tasks a public IP. Only for public subnets without NAT; keep false in private subnets."
  type        = bool
  default     = false
  nullable    = false
}

variable "vpc_endpoints" {
  description = "Optional VPC endpoints so private subnets without NAT reach AWS APIs. Interface endpoints get a security group open on 443 to the workers and the scaler; gateway endpoints (dynamodb, s3) are added to route_table_ids. Workers pulling from ECR without NAT also need ecr.api, ecr.dkr and s3."
  type = object({
    enabled             = optional(bool, false)
    services            = optional(set(string), ["dynamodb", "ecs", "logs", "monitoring", "secretsmanager"])
    route_table_ids     = optional(list(string), [])
    private_dns_enabled = optional(bool, true)
  })
  default  = {}
  nullable = false

  validation {
    condition     = length(setsubtract(var.vpc_endpoints.services, ["dynamodb", "ecr.api", "ecr.dkr", "ecs", "logs", "monitoring", "s3", "secretsmanager", "sts"])) == 0
    error_message = "vpc_endpoints.services may only contain dynamodb, ecr.api, ecr.dkr, ecs, logs, monitoring, s3, secretsmanager and sts."
  }

  validation {
    condition     = !var.vpc_endpoints.enabled || length(setintersection(var.vpc_endpoints.services, ["dynamodb", "s3"])) == 0 || length(var.vpc_endpoints.route_table_ids) > 0
    error_message = "vpc_endpoints.route_table_ids must name the private route tables when the gateway endpoints dynamodb or s3 are enabled."
  }
}

################################################################################
# Cluster
################################################################################

variable "create_cluster" {
  description = "Create the ECS cluster (with FARGATE and FARGATE_SPOT capacity providers). False uses cluster_arn, which must already have both capacity providers associated."
  type        = bool
  default     = true
  nullable    = false
}

variable "cluster_arn" {
  description = "ARN of an existing ECS cluster, used when create_cluster is false."
  type        = string
  default     = null

  validation {
    condition     = var.cluster_arn == null || can(regex("^arn:aws[a-z-]*:ecs:[a-z0-9-]+:[0-9]{12}:cluster/[A-Za-z0-9_-]{1,255}$", var.cluster_arn))
    error_message = "cluster_arn must be an ECS cluster ARN (arn:aws:ecs:REGION:ACCOUNT:cluster/NAME)."
  }

  validation {
    condition     = var.create_cluster || var.cluster_arn != null
    error_message = "cluster_arn is required when create_cluster is false."
  }
}

variable "container_insights" {
  description = "Enable CloudWatch Container Insights on the created cluster."
  type        = bool
  default     = true
  nullable    = false
}

################################################################################
# Workers
################################################################################

variable "celery_app" {
  description = "Celery application passed as `celery --app` in the default worker and beat commands (for example \"proj.celery\"). Null requires every pool (and beat) to set its own command."
  type        = string
  default     = null

  validation {
    condition     = var.celery_app == null || can(regex("^[A-Za-z_][A-Za-z0-9_.:]*$", var.celery_app))
    error_message = "celery_app must be a Python module path such as proj.celery or proj.celery:app."
  }
}

variable "worker_pools" {
  description = <<-EOT
    Worker pools by name: one ECS service each, scaled by the scaler from the load of its queues.
    The service starts at `scaling.min_workers` tasks and then ignores desired_count: the scaler owns it.
    - image, command: the worker image; command defaults to `celery --app <celery_app> worker --queues <queues> --concurrency <concurrency> --prefetch-multiplier 1`.
    - cpu, memory (a valid Fargate pair), architecture (X86_64 or ARM64).
    - queues: the Celery queues this pool consumes (unique across pools); concurrency: Celery worker processes per task.
    - stop_timeout: seconds ECS waits after SIGTERM before SIGKILL (Fargate max 120); shutdown: "warm" (finish running tasks) or "soft" (REMAP_SIGTERM=SIGQUIT + soft shutdown stop_timeout-10 s + acks_late: re-runs cut tasks, needs idempotent tasks).
    - spot_weight: percent of tasks placed on FARGATE_SPOT (0-100).
    - scale_in_protection: workers protect themselves while busy (celery_autoscaler.worker.install); grants the task role ecs:UpdateTaskProtection.
    - environment, secrets (name => Secrets Manager or SSM parameter ARN): added to the container; CELERY_BROKER_URL is always set from the broker secret.
    - oldest_task_age_alarm_s: oldest-task-age alarm threshold (defaults to monitoring.oldest_task_age_alarm_s).
    - scaling: the scaler's settings for this pool, the same names and defaults as the scaler's JSON config (pools.<name> in docs/configuration.md): min_workers, max_workers (task count bounds); target_backlog_per_worker or target_latency_s (what one worker should carry); target_utilisation (fraction of concurrency to fill); max_scale_out_step, max_scale_in_percent, scale_in_window_s, idle_window_s, stale_after_s, fallback_count.
      schedules (docs/schedules.md): declared windows, each at least min_workers from lead_s before every occurrence of cron (5 fields) in time_zone (IANA name, default UTC) until duration_s after it; learned_prewarm (default on): raise the pool before a burst that recurred prewarm_confidence times at the same period (hourly, daily, weekly), by the learned start delay + prewarm_margin_s; a prediction that misses prewarm_max_misses times in a row is dropped.
  EOT
  type = map(object({
    image                    = string
    command                  = optional(list(string))
    cpu                      = optional(number, 256)
    memory                   = optional(number, 512)
    architecture             = optional(string, "X86_64")
    queues                   = list(string)
    concurrency              = optional(number, 2)
    stop_timeout             = optional(number, 120)
    shutdown                 = optional(string, "warm")
    spot_weight              = optional(number, 0)
    scale_in_protection      = optional(bool, true)
    readonly_root_filesystem = optional(bool, true)
    environment              = optional(map(string), {})
    secrets                  = optional(map(string), {})
    oldest_task_age_alarm_s  = optional(number)
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
    condition     = length(var.worker_pools) > 0
    error_message = "worker_pools must define at least one pool."
  }

  validation {
    condition     = alltrue([for n, _ in var.worker_pools : can(regex("^[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?$", n)) && n != "beat"])
    error_message = "${join(", ", [for n, _ in var.worker_pools : "worker_pools[\"${n}\"]" if !(can(regex("^[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?$", n)) && n != "beat")])}: a pool name must be 1-32 lowercase letters, digits, '_' or '-', start and end with a letter or digit, and not be \"beat\" (the beat service's name)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : trimspace(p.image) != ""])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].image" if trimspace(p.image) == ""])} must not be empty."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.command == null || try(length(p.command) > 0 && alltrue([for a in p.command : a != ""]), false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].command" if !(p.command == null || try(length(p.command) > 0 && alltrue([for a in p.command : a != ""]), false))])}, when set, must be a non-empty list of non-empty arguments."
  }

  validation {
    condition     = var.celery_app != null || alltrue([for p in var.worker_pools : p.command != null])
    error_message = "Set celery_app (used by the default worker command) or give every pool a command (${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].command" if p.command == null])} not set)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : contains(lookup(local.fargate_memory, tostring(p.cpu), []), p.memory)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].cpu/memory (${p.cpu}/${p.memory})" if !contains(lookup(local.fargate_memory, tostring(p.cpu), []), p.memory)])} must be a Fargate pair: 256 with 512/1024/2048; 512 with 1024-4096; 1024 with 2048-8192; 2048 with 4096-16384 (1024 steps); 4096 with 8192-30720 (1024 steps); 8192 with 16384-61440 (4096 steps); 16384 with 32768-122880 (8192 steps)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : contains(["X86_64", "ARM64"], p.architecture)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].architecture (${p.architecture})" if !contains(["X86_64", "ARM64"], p.architecture)])} must be X86_64 or ARM64."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : length(p.queues) > 0])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].queues" if length(p.queues) == 0])} must name at least one queue."
  }

  validation {
    condition     = alltrue(flatten([for p in var.worker_pools : [for q in p.queues : can(regex("^[A-Za-z0-9_.:@-]{1,200}$", q))]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for i, q in p.queues : "worker_pools[\"${n}\"].queues[${i}] (\"${q}\")" if !can(regex("^[A-Za-z0-9_.:@-]{1,200}$", q))]]))}: a queue name must be 1-200 characters of letters, digits and _.:@- (the scaler's rule)."
  }

  validation {
    condition     = length(flatten([for p in var.worker_pools : p.queues])) == length(distinct(flatten([for p in var.worker_pools : p.queues])))
    error_message = "A queue may be consumed by one pool only and listed once; repeated: ${join(", ", [for q, n in { for q in flatten([for p in var.worker_pools : p.queues]) : q => q... } : q if length(n) > 1])}."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.concurrency >= 1 && p.concurrency <= 10000 && floor(p.concurrency) == p.concurrency])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].concurrency (${p.concurrency})" if !(p.concurrency >= 1 && p.concurrency <= 10000 && floor(p.concurrency) == p.concurrency)])} must be a whole number from 1 to 10000."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.min_workers >= 0 && p.scaling.min_workers <= 5000 && floor(p.scaling.min_workers) == p.scaling.min_workers])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.min_workers (${p.scaling.min_workers})" if !(p.scaling.min_workers >= 0 && p.scaling.min_workers <= 5000 && floor(p.scaling.min_workers) == p.scaling.min_workers)])} must be a whole number from 0 to 5000 (ECS's tasks per service)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.max_workers >= 1 && p.scaling.max_workers <= 5000 && floor(p.scaling.max_workers) == p.scaling.max_workers])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.max_workers (${p.scaling.max_workers})" if !(p.scaling.max_workers >= 1 && p.scaling.max_workers <= 5000 && floor(p.scaling.max_workers) == p.scaling.max_workers)])} must be a whole number from 1 to 5000 (ECS's tasks per service)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.min_workers <= p.scaling.max_workers])
    error_message = join(" ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.max_workers (${p.scaling.max_workers}) must be >= min_workers (${p.scaling.min_workers})." if p.scaling.min_workers > p.scaling.max_workers])
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.target_backlog_per_worker == null || try(p.scaling.target_backlog_per_worker > 0 && p.scaling.target_backlog_per_worker <= 1000000, false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.target_backlog_per_worker (${p.scaling.target_backlog_per_worker})" if !(p.scaling.target_backlog_per_worker == null || try(p.scaling.target_backlog_per_worker > 0 && p.scaling.target_backlog_per_worker <= 1000000, false))])}, when set, must be in (0, 1000000]."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.target_latency_s == null || try(p.scaling.target_latency_s > 0 && p.scaling.target_latency_s <= 86400, false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.target_latency_s (${p.scaling.target_latency_s})" if !(p.scaling.target_latency_s == null || try(p.scaling.target_latency_s > 0 && p.scaling.target_latency_s <= 86400, false))])}, when set, must be in (0, 86400] seconds."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.target_utilisation > 0 && p.scaling.target_utilisation <= 1])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.target_utilisation (${p.scaling.target_utilisation})" if !(p.scaling.target_utilisation > 0 && p.scaling.target_utilisation <= 1)])} must be in (0, 1]."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.stop_timeout >= 2 && p.stop_timeout <= 120 && floor(p.stop_timeout) == p.stop_timeout])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].stop_timeout (${p.stop_timeout})" if !(p.stop_timeout >= 2 && p.stop_timeout <= 120 && floor(p.stop_timeout) == p.stop_timeout)])} must be a whole number of seconds from 2 to 120 (the Fargate maximum)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : contains(["warm", "soft"], p.shutdown)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].shutdown (\"${p.shutdown}\")" if !contains(["warm", "soft"], p.shutdown)])} must be \"warm\" or \"soft\"."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.shutdown != "soft" || p.stop_timeout >= 15])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].stop_timeout (${p.stop_timeout})" if !(p.shutdown != "soft" || p.stop_timeout >= 15)])}: shutdown = \"soft\" needs stop_timeout >= 15, as the soft shutdown timeout is stop_timeout - 10 s so cut tasks are restored before SIGKILL."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.spot_weight >= 0 && p.spot_weight <= 100 && floor(p.spot_weight) == p.spot_weight])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].spot_weight (${p.spot_weight})" if !(p.spot_weight >= 0 && p.spot_weight <= 100 && floor(p.spot_weight) == p.spot_weight)])} must be a whole percentage from 0 to 100."
  }

  validation {
    condition     = alltrue(flatten([for p in var.worker_pools : [for k in concat(keys(p.environment), keys(p.secrets)) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k))]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for k in concat(keys(p.environment), keys(p.secrets)) : "worker_pools[\"${n}\"] ${k}" if !can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k))]]))}: environment and secret names must be letters, digits and underscores, not starting with a digit."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : !contains(concat(keys(p.environment), keys(p.secrets)), "CELERY_BROKER_URL")])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"]" if contains(concat(keys(p.environment), keys(p.secrets)), "CELERY_BROKER_URL")])}: CELERY_BROKER_URL is set by the module from the broker secret; do not set it in a pool's environment or secrets."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : length(setintersection(keys(p.environment), keys(p.secrets))) == 0])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"] ${join("/", setintersection(keys(p.environment), keys(p.secrets)))}" if length(setintersection(keys(p.environment), keys(p.secrets))) > 0])}: a name may be in a pool's environment or its secrets, not both."
  }

  validation {
    condition     = alltrue(flatten([for p in var.worker_pools : [for v in values(p.secrets) : can(regex("^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:[0-9]{12}:(secret:|parameter/).+$", v))]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for k, v in p.secrets : "worker_pools[\"${n}\"].secrets.${k}" if !can(regex("^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:[0-9]{12}:(secret:|parameter/).+$", v))]]))} must be a Secrets Manager secret ARN or an SSM parameter ARN."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.max_scale_out_step == null || try(p.scaling.max_scale_out_step >= 1 && p.scaling.max_scale_out_step <= 5000 && floor(p.scaling.max_scale_out_step) == p.scaling.max_scale_out_step, false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.max_scale_out_step (${p.scaling.max_scale_out_step})" if !(p.scaling.max_scale_out_step == null || try(p.scaling.max_scale_out_step >= 1 && p.scaling.max_scale_out_step <= 5000 && floor(p.scaling.max_scale_out_step) == p.scaling.max_scale_out_step, false))])}, when set, must be a whole number from 1 to 5000."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.max_scale_in_percent > 0 && p.scaling.max_scale_in_percent <= 100])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.max_scale_in_percent (${p.scaling.max_scale_in_percent})" if !(p.scaling.max_scale_in_percent > 0 && p.scaling.max_scale_in_percent <= 100)])} must be in (0, 100]."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.scale_in_window_s >= 0 && p.scaling.scale_in_window_s <= 3600])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.scale_in_window_s (${p.scaling.scale_in_window_s})" if !(p.scaling.scale_in_window_s >= 0 && p.scaling.scale_in_window_s <= 3600)])} must be from 0 to 3600 seconds (the state item keeps every recommendation of the window)."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.scale_in_window_s <= 4000 * var.scaler.tick_interval_s])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.scale_in_window_s (${p.scaling.scale_in_window_s})" if !(p.scaling.scale_in_window_s <= 4000 * var.scaler.tick_interval_s)])} must be at most 4000 ticks of scaler.tick_interval_s (${var.scaler.tick_interval_s} s): the state item keeps one recommendation per tick."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.idle_window_s >= 0 && p.scaling.idle_window_s <= 86400])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.idle_window_s (${p.scaling.idle_window_s})" if !(p.scaling.idle_window_s >= 0 && p.scaling.idle_window_s <= 86400)])} must be from 0 to 86400 seconds."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.stale_after_s > 0 && p.scaling.stale_after_s <= 3600])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.stale_after_s (${p.scaling.stale_after_s})" if !(p.scaling.stale_after_s > 0 && p.scaling.stale_after_s <= 3600)])} must be in (0, 3600] seconds."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.fallback_count == null || try(p.scaling.fallback_count >= p.scaling.min_workers && p.scaling.fallback_count <= p.scaling.max_workers && floor(p.scaling.fallback_count) == p.scaling.fallback_count, false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.fallback_count (${p.scaling.fallback_count})" if !(p.scaling.fallback_count == null || try(p.scaling.fallback_count >= p.scaling.min_workers && p.scaling.fallback_count <= p.scaling.max_workers && floor(p.scaling.fallback_count) == p.scaling.fallback_count, false))])}, when set, must be a whole number within [min_workers, max_workers]."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.wait_target_s == null || try(p.scaling.wait_target_s > 0, false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.wait_target_s (${p.scaling.wait_target_s})" if !(p.scaling.wait_target_s == null || try(p.scaling.wait_target_s > 0, false))])}, when set, must be > 0: the p95 task wait, in seconds, the pool's users accept."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.drain_time_s > 0])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.drain_time_s (${p.scaling.drain_time_s})" if !(p.scaling.drain_time_s > 0)])} must be > 0: the seconds in which a backlog is to be drained."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.scale_in_tolerance >= 0 && p.scaling.scale_in_tolerance < 1])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.scale_in_tolerance (${p.scaling.scale_in_tolerance})" if !(p.scaling.scale_in_tolerance >= 0 && p.scaling.scale_in_tolerance < 1)])} must be in [0, 1): the headroom, as a fraction of the need, kept before scaling in."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.start_delay_s >= 0])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.start_delay_s (${p.scaling.start_delay_s})" if !(p.scaling.start_delay_s >= 0)])} must be >= 0: the worker start delay assumed until one is measured."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : can(regex(local.cron_pattern, w.cron))]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : "worker_pools[\"${n}\"].scaling.schedules[${i}].cron (\"${w.cron}\")" if !(can(regex(local.cron_pattern, w.cron)))]]))} must be a 5-field cron expression: minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or jan-dec) day-of-week (0-7 or sun-sat), each *, a value, a range a-b, a step */n or a-b/n, or a comma list."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : contains(local.time_zones, w.time_zone)]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : "worker_pools[\"${n}\"].scaling.schedules[${i}].time_zone (\"${w.time_zone}\")" if !(contains(local.time_zones, w.time_zone))]]))} must be an IANA time zone name such as Europe/Berlin or America/New_York, or UTC."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : w.lead_s >= 0 && w.lead_s <= 86400]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : "worker_pools[\"${n}\"].scaling.schedules[${i}].lead_s (${w.lead_s})" if !(w.lead_s >= 0 && w.lead_s <= 86400)]]))} must be from 0 to 86400: the seconds before each occurrence at which the minimum starts."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : w.duration_s > 0 && w.duration_s <= 604800]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : "worker_pools[\"${n}\"].scaling.schedules[${i}].duration_s (${w.duration_s})" if !(w.duration_s > 0 && w.duration_s <= 604800)]]))} must be in (0, 604800] (a week): it lasts duration_s after each occurrence."
  }

  validation {
    condition     = alltrue(flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : w.min_workers >= 1 && floor(w.min_workers) == w.min_workers && w.min_workers <= p.scaling.max_workers]]))
    error_message = "${join(", ", flatten([for n, p in var.worker_pools : [for i, w in p.scaling.schedules : "worker_pools[\"${n}\"].scaling.schedules[${i}].min_workers (${w.min_workers})" if !(w.min_workers >= 1 && floor(w.min_workers) == w.min_workers && w.min_workers <= p.scaling.max_workers)]]))} must be a whole number from 1 to the pool's max_workers."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.scaling.prewarm_confidence >= 2 && floor(p.scaling.prewarm_confidence) == p.scaling.prewarm_confidence && p.scaling.prewarm_max_misses >= 1 && floor(p.scaling.prewarm_max_misses) == p.scaling.prewarm_max_misses && p.scaling.prewarm_margin_s >= 0])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].scaling.prewarm_confidence/prewarm_max_misses/prewarm_margin_s (${p.scaling.prewarm_confidence}/${p.scaling.prewarm_max_misses}/${p.scaling.prewarm_margin_s})" if !(p.scaling.prewarm_confidence >= 2 && floor(p.scaling.prewarm_confidence) == p.scaling.prewarm_confidence && p.scaling.prewarm_max_misses >= 1 && floor(p.scaling.prewarm_max_misses) == p.scaling.prewarm_max_misses && p.scaling.prewarm_margin_s >= 0)])}: prewarm_confidence must be a whole number >= 2, prewarm_max_misses a whole number >= 1 and prewarm_margin_s >= 0."
  }

  validation {
    condition     = alltrue([for p in var.worker_pools : p.oldest_task_age_alarm_s == null || try(p.oldest_task_age_alarm_s > 0 && p.oldest_task_age_alarm_s <= 604800, false)])
    error_message = "${join(", ", [for n, p in var.worker_pools : "worker_pools[\"${n}\"].oldest_task_age_alarm_s (${p.oldest_task_age_alarm_s})" if !(p.oldest_task_age_alarm_s == null || try(p.oldest_task_age_alarm_s > 0 && p.oldest_task_age_alarm_s <= 604800, false))])}, when set, must be in (0, 604800] seconds (a week)."
  }
}

variable "enable_execute_command" {
  description = "Enable ECS Exec on worker and beat services (grants the task role the ssmmessages permissions it needs and makes root filesystems writable, which the ECS Exec agent requires)."
  type        = bool
  default     = false
  nullable    = false
}

variable "log_retention_days" {
  description = "Retention of the workers' and the scaler's CloudWatch log groups, in days."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

################################################################################
# Beat
################################################################################

variable "beat" {
  description = "Optional Celery beat service: exactly one task on FARGATE (not Spot), never scaled. image defaults to the first pool's image, command to `celery --app <celery_app> beat`. Its root filesystem is writable (beat keeps its schedule file)."
  type = object({
    enabled      = optional(bool, false)
    image        = optional(string)
    command      = optional(list(string))
    cpu          = optional(number, 256)
    memory       = optional(number, 512)
    architecture = optional(string, "X86_64")
    environment  = optional(map(string), {})
    secrets      = optional(map(string), {})
  })
  default  = {}
  nullable = false

  validation {
    condition     = contains(lookup(local.fargate_memory, tostring(var.beat.cpu), []), var.beat.memory)
    error_message = "beat.cpu/beat.memory must be a Fargate pair (for example 256/512, 512/1024, 1024/2048)."
  }

  validation {
    condition     = contains(["X86_64", "ARM64"], var.beat.architecture)
    error_message = "beat.architecture must be X86_64 or ARM64."
  }

  validation {
    condition     = var.beat.command == null || try(length(var.beat.command) > 0 && alltrue([for a in var.beat.command : a != ""]), false)
    error_message = "beat.command, when set, must be a non-empty list of non-empty arguments."
  }

  validation {
    condition     = !var.beat.enabled || var.beat.command != null || var.celery_app != null
    error_message = "Set celery_app (used by the default beat command) or beat.command when beat is enabled."
  }

  validation {
    condition     = alltrue([for k in concat(keys(var.beat.environment), keys(var.beat.secrets)) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k)) && k != "CELERY_BROKER_URL"]) && length(setintersection(keys(var.beat.environment), keys(var.beat.secrets))) == 0
    error_message = "beat environment/secret names must be letters, digits and underscores, appear once, and not be CELERY_BROKER_URL (set by the module)."
  }

  validation {
    condition     = alltrue([for v in values(var.beat.secrets) : can(regex("^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:[0-9]{12}:(secret:|parameter/).+$", v))])
    error_message = "beat.secrets values must be Secrets Manager secret ARNs or SSM parameter ARNs."
  }
}

################################################################################
# Broker
################################################################################

variable "broker" {
  description = <<-EOT
    The Celery broker. type = "redis" (default), "rabbitmq" or "sqs".
    Redis: create = true builds an ElastiCache replication group (TLS in transit, encrypted at rest, AUTH token) and a Secrets Manager secret holding its `rediss://:TOKEN@HOST:PORT/DB` URL.
    RabbitMQ: create = true builds a private Amazon MQ for RabbitMQ broker (settings in `rabbitmq`; AMQPS on 5671 from the workers and beat, the management API on 443 from the scaler) and a secret holding its `amqps://USER:PASSWORD@HOST:5671//` URL; the scaler reads the broker's management API (docs/brokers.md).
    Redis and RabbitMQ: create = false uses an existing broker: url_secret_arn names a Secrets Manager secret whose value is the plain broker URL (redis://, rediss://, amqp:// or amqps://, the vhost in the path); allow the workers' and the scaler's security groups (outputs) in its security group. For an existing RabbitMQ, management_url is where its management API is when not `http://HOST:15672` (amqp://) or `https://HOST` (amqps://, as on Amazon MQ).
    key_prefix, priority_sep and publish_time_header must match the Celery app (global_keyprefix, priority separator, the publish-time header of celery_autoscaler.worker.install).
    SQS: one queue per Celery queue of every pool, named as kombu names it (queue_name_prefix, then "." -> "-", ":" and "@" -> "_"); create = true builds them (encrypted; a dead-letter queue each with dead_letter_queue), create = false uses existing queues of those names in this account and region. No URL secret: the workers and the scaler sign with their roles; the workers get CELERY_BROKER_URL = "sqs://" and CELERY_BROKER_TRANSPORT_OPTIONS (region, prefix, visibility timeout, predefined_queues), which celery_autoscaler.worker.install(app) applies. visibility_timeout_s must exceed the longest task plus its ETA/countdown, or SQS delivers it twice.
  EOT
  type = object({
    type                        = optional(string, "redis")
    create                      = optional(bool, true)
    url_secret_arn              = optional(string)
    url_secret_kms_key_arn      = optional(string)
    port                        = optional(number, 6379)
    db                          = optional(number, 0)
    node_type                   = optional(string, "cache.t4g.micro")
    engine_version              = optional(string, "7.1")
    num_cache_clusters          = optional(number, 1)
    parameter_group_name        = optional(string)
    snapshot_retention_limit    = optional(number, 1)
    maintenance_window          = optional(string)
    apply_immediately           = optional(bool, false)
    secret_recovery_window_days = optional(number, 7)
    key_prefix                  = optional(string, "")
    priority_sep                = optional(string, "\u0006\u0016")
    publish_time_header         = optional(string, "x_published_at")
    unacked_scan_interval_s     = optional(number, 60)
    unacked_scan_cap            = optional(number, 10000)
    socket_timeout_s            = optional(number, 5)
    management_url              = optional(string)
    rabbitmq = optional(object({
      engine_version      = optional(string, "3.13")
      host_instance_type  = optional(string, "mq.t3.micro")
      deployment_mode     = optional(string, "SINGLE_INSTANCE")
      publicly_accessible = optional(bool, false)
      username            = optional(string, "celery")
      general_log         = optional(bool, true)
    }), {})
    queue_name_prefix    = optional(string, "")
    visibility_timeout_s = optional(number, 1800)
    message_retention_s  = optional(number, 345600)
    dead_letter_queue    = optional(bool, false)
    max_receive_count    = optional(number, 5)
  })
  default  = {}
  nullable = false

  validation {
    condition     = contains(["redis", "rabbitmq", "sqs"], var.broker.type)
    error_message = "broker.type must be \"redis\", \"rabbitmq\" or \"sqs\" (got \"${var.broker.type}\")."
  }

  validation {
    condition     = var.broker.type == "sqs" || var.broker.create || var.broker.url_secret_arn != null
    error_message = "broker.url_secret_arn is required when broker.create is false."
  }

  validation {
    condition     = var.broker.type != "sqs" || var.broker.url_secret_arn == null
    error_message = "broker.url_secret_arn is not used with broker.type = \"sqs\": the workers and the scaler sign SQS calls with their roles."
  }

  validation {
    condition     = can(regex("^[A-Za-z0-9_.:@-]{0,60}$", var.broker.queue_name_prefix))
    error_message = "broker.queue_name_prefix must be at most 60 characters of letters, digits and _.:@- (the characters of queue names)."
  }

  # kombu maps each character to one (prefix + queue, "." -> "-", ":" and "@" -> "_"), so the SQS name is as long.
  validation {
    condition     = var.broker.type != "sqs" || alltrue([for q in flatten([for p in var.worker_pools : p.queues]) : length("${var.broker.queue_name_prefix}${q}") + (var.broker.dead_letter_queue ? 4 : 0) <= 80])
    error_message = "SQS queue names are at most 80 characters (\"-dlq\" included with dead_letter_queue); too long: ${join(", ", [for q in flatten([for p in var.worker_pools : p.queues]) : "${var.broker.queue_name_prefix}${q}" if length("${var.broker.queue_name_prefix}${q}") + (var.broker.dead_letter_queue ? 4 : 0) > 80])}."
  }

  # The names are computed here again (as local.sqs_queue_names does): a validation cannot read a local built from its variable.
  validation {
    condition = var.broker.type != "sqs" || length(distinct([for q in flatten([for p in var.worker_pools : p.queues]) : (
      endswith(q, ".fifo") ? "${replace(replace(trimsuffix(q, ".fifo"), ".", "-"), "/[:@]/", "_")}.fifo" : replace(replace(q, ".", "-"), "/[:@]/", "_")
    )])) == length(flatten([for p in var.worker_pools : p.queues]))
    error_message = "Two Celery queues have the same SQS name (kombu maps \".\" to \"-\", \":\" and \"@\" to \"_\"): rename one of ${join(", ", flatten([for p in var.worker_pools : p.queues]))}."
  }

  validation {
    condition     = var.broker.visibility_timeout_s >= 0 && var.broker.visibility_timeout_s <= 43200 && floor(var.broker.visibility_timeout_s) == var.broker.visibility_timeout_s
    error_message = "broker.visibility_timeout_s must be a whole number of seconds from 0 to 43200 (12 hours, SQS's maximum)."
  }

  validation {
    condition     = var.broker.message_retention_s >= 60 && var.broker.message_retention_s <= 1209600 && floor(var.broker.message_retention_s) == var.broker.message_retention_s
    error_message = "broker.message_retention_s must be a whole number of seconds from 60 to 1209600 (14 days)."
  }

  validation {
    condition     = var.broker.max_receive_count >= 1 && var.broker.max_receive_count <= 1000 && floor(var.broker.max_receive_count) == var.broker.max_receive_count
    error_message = "broker.max_receive_count must be a whole number from 1 to 1000."
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
    condition     = var.broker.db >= 0 && var.broker.db <= 15 && floor(var.broker.db) == var.broker.db
    error_message = "broker.db must be a Redis database number from 0 to 15."
  }

  validation {
    condition     = can(regex("^cache\\.[a-z0-9]+\\.[a-z0-9]+$", var.broker.node_type))
    error_message = "broker.node_type must be an ElastiCache node type such as cache.t4g.micro."
  }

  validation {
    condition     = var.broker.num_cache_clusters >= 1 && var.broker.num_cache_clusters <= 6 && floor(var.broker.num_cache_clusters) == var.broker.num_cache_clusters
    error_message = "broker.num_cache_clusters must be 1 (single node) to 6 (primary + 5 replicas; 2+ turns on automatic failover and Multi-AZ)."
  }

  validation {
    condition     = var.broker.snapshot_retention_limit >= 0 && var.broker.snapshot_retention_limit <= 35
    error_message = "broker.snapshot_retention_limit must be 0-35 days."
  }

  validation {
    condition     = var.broker.secret_recovery_window_days == 0 || (var.broker.secret_recovery_window_days >= 7 && var.broker.secret_recovery_window_days <= 30)
    error_message = "broker.secret_recovery_window_days must be 0 (delete at once) or 7-30."
  }

  validation {
    condition     = var.broker.priority_sep != "" && var.broker.publish_time_header != ""
    error_message = "broker.priority_sep and broker.publish_time_header must not be empty."
  }

  validation {
    condition     = var.broker.unacked_scan_interval_s >= 0 && var.broker.unacked_scan_interval_s <= 3600
    error_message = "broker.unacked_scan_interval_s (${var.broker.unacked_scan_interval_s}) must be from 0 to 3600 seconds."
  }

  validation {
    condition     = var.broker.unacked_scan_cap >= 0 && var.broker.unacked_scan_cap <= 1000000 && floor(var.broker.unacked_scan_cap) == var.broker.unacked_scan_cap
    error_message = "broker.unacked_scan_cap (${var.broker.unacked_scan_cap}) must be a whole number from 0 to 1000000."
  }

  validation {
    condition     = var.broker.socket_timeout_s > 0 && var.broker.socket_timeout_s <= 60
    error_message = "broker.socket_timeout_s (${var.broker.socket_timeout_s}) must be in (0, 60] seconds."
  }


  validation {
    condition     = var.broker.management_url == null || (var.broker.type == "rabbitmq" && !var.broker.create && can(regex("^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^?#@[:space:]]*)?$", var.broker.management_url)))
    error_message = "broker.management_url is for an existing RabbitMQ only (type = \"rabbitmq\", create = false; the module knows its own broker's) and must be http(s)://HOST[:PORT][/PREFIX] without credentials (they come from the broker URL)."
  }

  validation {
    condition     = contains(["SINGLE_INSTANCE", "CLUSTER_MULTI_AZ"], var.broker.rabbitmq.deployment_mode)
    error_message = "broker.rabbitmq.deployment_mode must be SINGLE_INSTANCE or CLUSTER_MULTI_AZ (Amazon MQ rejects ACTIVE_STANDBY_MULTI_AZ for RabbitMQ: it is ActiveMQ's)."
  }

  validation {
    condition     = !var.broker.rabbitmq.publicly_accessible
    error_message = "broker.rabbitmq.publicly_accessible must be false: Amazon MQ rejects security groups on a public RabbitMQ broker, and the module's broker is private behind its own security group."
  }

  validation {
    condition     = can(regex("^(3\\.13|4\\.[0-9]+)$", var.broker.rabbitmq.engine_version))
    error_message = "broker.rabbitmq.engine_version must be an Amazon MQ for RabbitMQ version that takes new brokers: 3.13 or 4.x (such as 4.2)."
  }

  validation {
    condition = (
      startswith(var.broker.rabbitmq.engine_version, "4.")
      ? can(regex("^mq\\.m7g\\.(medium|large|xlarge|2xlarge|4xlarge|8xlarge|12xlarge|16xlarge)$", var.broker.rabbitmq.host_instance_type))
      : can(regex("^mq\\.(t3\\.micro|m5\\.(large|xlarge|2xlarge|4xlarge)|m7g\\.(medium|large|xlarge|2xlarge|4xlarge|8xlarge|12xlarge|16xlarge))$", var.broker.rabbitmq.host_instance_type))
    )
    error_message = "broker.rabbitmq.host_instance_type must be one Amazon MQ offers for the engine version: RabbitMQ 4.x runs on mq.m7g.* only; 3.13 on mq.t3.micro, mq.m5.* or mq.m7g.*."
  }

  validation {
    condition     = !(var.broker.rabbitmq.deployment_mode == "CLUSTER_MULTI_AZ" && var.broker.rabbitmq.host_instance_type == "mq.t3.micro")
    error_message = "broker.rabbitmq.host_instance_type mq.t3.micro is for SINGLE_INSTANCE only: a CLUSTER_MULTI_AZ broker needs mq.m5.* or mq.m7g.*."
  }

  validation {
    condition     = can(regex("^[A-Za-z0-9_.~-]{2,100}$", var.broker.rabbitmq.username)) && var.broker.rabbitmq.username != "guest"
    error_message = "broker.rabbitmq.username must be 2-100 letters, digits or -_.~ and not \"guest\" (Amazon MQ's user name rules)."
  }
}

variable "producer_security_group_ids" {
  description = "Security groups of the broker's producers (the web app, cron jobs: whatever sends tasks), by a name of your choice. Each may connect to the created Redis on its port (with an existing broker, allow them in its own security group). Producers also read the broker URL: attach the output `broker_secret_read_policy_json` to their roles."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for name, id in var.producer_security_group_ids : can(regex("^[A-Za-z0-9_-]{1,64}$", name)) && can(regex("^sg-[0-9a-f]+$", id))])
    error_message = "${join(", ", [for name, id in var.producer_security_group_ids : "producer_security_group_ids[\"${name}\"]" if !(can(regex("^[A-Za-z0-9_-]{1,64}$", name)) && can(regex("^sg-[0-9a-f]+$", id)))])}: a name must be 1-64 letters, digits, '_' or '-' and its value a security group id (sg-...)."
  }
}

variable "broker_auth_token" {
  description = "AUTH token of the created Redis. Null generates one with Secrets Manager's GetRandomPassword (no extra provider). Later changes are ignored (rotate with ElastiCache's auth token update, then update the secret)."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.broker_auth_token == null || try(length(var.broker_auth_token) >= 16 && length(var.broker_auth_token) <= 128, false)
    error_message = "broker_auth_token must be 16-128 characters long."
  }

  validation {
    condition     = var.broker_auth_token == null || can(regex("^[!#-.0-?A-~]+$", var.broker_auth_token))
    error_message = "broker_auth_token may only contain printable ASCII characters other than space, '\"', '/' and '@'."
  }
}

################################################################################
# Scaler
################################################################################

variable "scaler" {
  description = <<-EOT
    The scaler Lambda. Every minute (schedule_expression) one invocation runs ticks_per_invocation ticks, tick_interval_s apart.
    package_path defaults to the committed zip (lambda/dist/celery-autoscaler-lambda.zip); s3_bucket + s3_key use a package from S3 instead.
    dry_run decides and logs without UpdateService. tracing_mode: "PassThrough" (no sampling) or "Active" (X-Ray traces; grants the X-Ray write policy).
  EOT
  type = object({
    enabled              = optional(bool, true)
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
    condition     = var.scaler.tick_interval_s > 0 && var.scaler.tick_interval_s <= 900
    error_message = "scaler.tick_interval_s (${var.scaler.tick_interval_s}) must be in (0, 900] seconds (a Lambda runs at most 900 s)."
  }

  validation {
    condition     = var.scaler.ticks_per_invocation >= 1 && var.scaler.ticks_per_invocation <= 900 && floor(var.scaler.ticks_per_invocation) == var.scaler.ticks_per_invocation
    error_message = "scaler.ticks_per_invocation (${var.scaler.ticks_per_invocation}) must be a whole number from 1 to 900."
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

################################################################################
# IAM
################################################################################

variable "task_role_policy_statements" {
  description = "Extra IAM statements for the workers' task role (what the Celery tasks themselves call: S3, SQS, ...)."
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
    condition     = alltrue([for s in var.task_role_policy_statements : contains(["Allow", "Deny"], s.effect)])
    error_message = "Every task_role_policy_statements effect must be Allow or Deny."
  }

  validation {
    condition     = alltrue([for s in var.task_role_policy_statements : length(s.actions) > 0 && length(s.resources) > 0])
    error_message = "Every task_role_policy_statements entry needs at least one action and one resource."
  }

  validation {
    condition     = alltrue([for s in var.task_role_policy_statements : s.sid == null || can(regex("^[A-Za-z0-9]+$", s.sid))])
    error_message = "A task_role_policy_statements sid may only contain letters and digits."
  }
}

variable "iam_permissions_boundary" {
  description = "ARN of a permissions boundary set on every IAM role the module creates."
  type        = string
  default     = null

  validation {
    condition     = var.iam_permissions_boundary == null || can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/.+$", var.iam_permissions_boundary))
    error_message = "iam_permissions_boundary must be an IAM policy ARN."
  }
}

################################################################################
# Monitoring
################################################################################

variable "monitoring" {
  description = "CloudWatch dashboard (queue depth, in-flight, oldest task age, desired/running per pool from the scaler's metrics) and alarms (scaler errors, Lambda errors, dead letters, oldest task age per pool). alarm_actions: SNS topic ARNs notified on alarm and OK."
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
    condition     = var.monitoring.oldest_task_age_alarm_s > 0 && var.monitoring.oldest_task_age_alarm_s <= 604800
    error_message = "monitoring.oldest_task_age_alarm_s (${var.monitoring.oldest_task_age_alarm_s}) must be in (0, 604800] seconds (a week)."
  }
}

variable "prices" {
  description = "Fargate prices in USD for the scaler's EstimatedCostUSD metric (per pool, from its cpu, memory, architecture and spot_weight): configuration, never fetched at run time. Defaults: us-east-1 Linux on-demand; the Spot share is priced spot_discount_percent below on-demand."
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
