locals {
  gateway_endpoint_services   = var.vpc_endpoints.enabled ? setintersection(var.vpc_endpoints.services, ["dynamodb", "s3"]) : toset([])
  interface_endpoint_services = var.vpc_endpoints.enabled ? setsubtract(var.vpc_endpoints.services, ["dynamodb", "s3"]) : toset([])

  # Who may open connections to the broker (and to the interface endpoints): the workers and the scaler.
  broker_clients = merge(
    { workers = aws_security_group.workers.id },
    var.scaler.enabled ? { scaler = module.scaler.security_group_id } : {},
  )
  # What each of them opens on a created broker: Redis's port; on RabbitMQ AMQPS for the workers,
  # beat and the producers, the management API (HTTPS) for the scaler.
  broker_ingress = merge(
    {
      for client, group in local.broker_clients : client => {
        group       = group
        port        = var.broker.type == "redis" ? var.broker.port : client == "scaler" ? 443 : 5671
        description = var.broker.type == "redis" ? "Redis from the ${client}" : client == "scaler" ? "RabbitMQ management API (HTTPS) from the scaler" : "AMQPS from the workers and beat"
      }
    },
    {
      for name, group in var.producer_security_group_ids : "producer ${name}" => {
        group       = group
        port        = var.broker.type == "redis" ? var.broker.port : 5671
        description = "${var.broker.type == "redis" ? "Redis" : "AMQPS"} from the producer ${name}"
      }
    },
  )
  broker_names = { redis = "Redis", rabbitmq = "RabbitMQ" }
}

################################################################################
# Workers
################################################################################

resource "aws_security_group" "workers" {
  name        = "${var.name}-workers"
  description = "Celery workers and beat of ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-workers" })
}

resource "aws_vpc_security_group_egress_rule" "workers" {
  security_group_id = aws_security_group.workers.id
  description       = "Workers reach the broker, AWS APIs, image registries and whatever their tasks call"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

################################################################################
# Broker
################################################################################

resource "aws_security_group" "broker" {
  count = local.create_broker ? 1 : 0

  name        = "${var.name}-broker"
  description = "${local.broker_names[var.broker.type]} broker of ${var.name}: reachable from its workers and scaler only"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-broker" })
}

resource "aws_vpc_security_group_ingress_rule" "broker" {
  for_each = local.create_broker ? local.broker_ingress : {}

  security_group_id            = aws_security_group.broker[0].id
  description                  = each.value.description
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = each.value.group

  tags = local.tags
}

################################################################################
################################################################################
# VPC endpoints
################################################################################

resource "aws_security_group" "endpoints" {
  count = length(local.interface_endpoint_services) > 0 ? 1 : 0

  name        = "${var.name}-endpoints"
  description = "VPC interface endpoints of ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-endpoints" })
}

resource "aws_vpc_security_group_ingress_rule" "endpoints" {
  for_each = length(local.interface_endpoint_services) > 0 ? local.broker_clients : {}

  security_group_id            = aws_security_group.endpoints[0].id
  description                  = "HTTPS from the ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = each.value

  tags = local.tags
}

resource "aws_vpc_endpoint" "interface" {
  for_each = local.interface_endpoint_services

  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = var.vpc_endpoints.private_dns_enabled

  tags = merge(local.tags, { Name = "${var.name}-${each.key}" })
}

resource "aws_vpc_endpoint" "gateway" {
  for_each = local.gateway_endpoint_services

  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.vpc_endpoints.route_table_ids

  tags = merge(local.tags, { Name = "${var.name}-${each.key}" })
}
