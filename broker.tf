################################################################################
# Broker
################################################################################

# A fresh value on every plan: the replication group ignores auth_token changes, so only the first
# value (stored in its state) is ever used, and the secret below is built from that stored value.
data "aws_secretsmanager_random_password" "broker" {
  count = var.broker.create && nonsensitive(var.broker_auth_token == null) ? 1 : 0

  password_length     = 64
  exclude_punctuation = true
}

resource "aws_elasticache_subnet_group" "broker" {
  count = var.broker.create ? 1 : 0

  name        = "${var.name}-broker"
  description = "Celery broker subnets of ${var.name}"
  subnet_ids  = var.subnet_ids

  tags = local.tags
}

resource "aws_elasticache_replication_group" "broker" {
  #checkov:skip=CKV2_AWS_50:Failover is opt-in (broker.num_cache_clusters >= 2 enables it and Multi-AZ); one node is the low-cost default.
  count = var.broker.create ? 1 : 0

  replication_group_id       = var.name
  description                = "Celery broker of ${var.name}"
  engine                     = "redis"
  engine_version             = var.broker.engine_version
  node_type                  = var.broker.node_type
  num_cache_clusters         = var.broker.num_cache_clusters
  port                       = var.broker.port
  parameter_group_name       = var.broker.parameter_group_name
  subnet_group_name          = aws_elasticache_subnet_group.broker[0].name
  security_group_ids         = [aws_security_group.broker[0].id]
  automatic_failover_enabled = var.broker.num_cache_clusters > 1
  multi_az_enabled           = var.broker.num_cache_clusters > 1
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  auth_token                 = var.broker_auth_token != null ? var.broker_auth_token : one(data.aws_secretsmanager_random_password.broker[*].random_password)
  auto_minor_version_upgrade = true
  snapshot_retention_limit   = var.broker.snapshot_retention_limit
  maintenance_window         = var.broker.maintenance_window
  apply_immediately          = var.broker.apply_immediately

  tags = local.tags

  lifecycle {
    ignore_changes = [auth_token]
  }
}

resource "aws_secretsmanager_secret" "broker" {
  #checkov:skip=CKV2_AWS_57:The secret mirrors the Redis AUTH token; rotation is an ElastiCache token update, not a Secrets Manager rotation Lambda.
  count = var.broker.create ? 1 : 0

  name_prefix             = "${var.name}-broker-url-"
  description             = "Celery broker URL (rediss://:TOKEN@HOST:PORT/DB) of ${var.name}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.broker.secret_recovery_window_days

  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "broker" {
  count = var.broker.create ? 1 : 0

  secret_id     = aws_secretsmanager_secret.broker[0].id
  secret_string = "rediss://:${urlencode(aws_elasticache_replication_group.broker[0].auth_token)}@${aws_elasticache_replication_group.broker[0].primary_endpoint_address}:${var.broker.port}/${var.broker.db}"
}
