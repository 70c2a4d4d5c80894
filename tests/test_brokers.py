"""The private brokers the tests run on: a RabbitMQ node of our own with its management API."""

from __future__ import annotations

import uuid
from typing import Any, cast
from urllib.parse import urlparse

from brokers import RabbitBroker
from kombu import Connection
from waiting import wait_until


def test_a_queue_declared_over_amqp_is_listed_by_the_management_api(rabbitmq: RabbitBroker) -> None:
    name = f"brokers-{uuid.uuid4().hex[:8]}"
    with Connection(rabbitmq.amqp_url) as connection:
        channel = connection.default_channel
        channel.queue_declare(name, durable=False, auto_delete=False)
        try:

            def listed() -> dict[str, Any] | None:
                queues = cast(list[dict[str, Any]], rabbitmq.management_get("/api/queues/%2F"))
                return next((q for q in queues if q["name"] == name), None)

            queue = wait_until(listed, timeout=30, what=f"{name} in GET /api/queues/%2F")
            assert queue["vhost"] == "/"
            assert queue["durable"] is False
        finally:
            channel.queue_delete(name)
    remaining = cast(list[dict[str, Any]], rabbitmq.management_get("/api/queues/%2F"))
    assert name not in {q["name"] for q in remaining}


def test_the_node_is_our_own_not_the_machines(rabbitmq: RabbitBroker) -> None:
    overview = cast(dict[str, Any], rabbitmq.management_get("/api/overview"))
    assert overview["node"] == rabbitmq.node
    ports = {item["protocol"]: int(item["port"]) for item in overview["listeners"]}
    assert ports["amqp"] == urlparse(rabbitmq.amqp_url).port
    assert ports["http"] == urlparse(rabbitmq.management_url).port
    assert not {5672, 15672, 25672} & set(ports.values()), ports  # the machine's node's ports
