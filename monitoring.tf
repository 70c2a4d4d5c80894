################################################################################
# Logs
################################################################################

resource "aws_cloudwatch_log_group" "workers" {
  #checkov:skip=CKV_AWS_338:Retention is the user's choice (log_retention_days, default 30 days); a year of worker logs is rarely wanted.
  name              = local.worker_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = local.tags
}
