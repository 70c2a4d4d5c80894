"""Where the scaler and the worker helper meet for fence and drain on RabbitMQ: queue names and arguments.

Standard library only, like :mod:`celery_autoscaler.drain_keys` (the Redis side): the worker helper
(kombu) and the scaler (the management HTTP API) both use these names, so neither imports the other.
Every name is in the broker URL's vhost and starts with ``_celery_autoscaler.``; per pool:

- ``_celery_autoscaler.workers.<pool>:<hostname>``, ``...draining.<pool>:<hostname>`` and
  ``...drained.<pool>:<hostname>``: one **exclusive** queue per worker and state, declared on the
  helper's own connection. It vanishes with that connection, so a worker that dies or is cut off
  counts for nothing once the broker closes its connection (at most two missed heartbeats,
  ``HEARTBEAT_S``): no timestamps to expire. The scaler counts them by name in the queue listing.
  A pool name has no ``:``, so the name parses back without ambiguity.
- ``_celery_autoscaler.drain.<pool>``: the drain's marker. The drain exists while it holds a
  message; each carries ``since`` and ``lowered_at`` (the scaler's clock) as headers. The scaler
  publishes ``MARKER_COPIES`` copies every tick of the drain: ``x-max-length`` drops the oldest, so
  the count never passes through 0 when the marker is refreshed or read (a read takes one copy and
  puts it back), and ``x-message-ttl`` (``DRAIN_TTL_MS``) ends a drain the scaler stops refreshing.
- ``_celery_autoscaler.slots.<pool>``: one ready message per open slot. An idle worker claims one
  with ``basic.get`` (RabbitMQ delivers each message once: the claim is atomic).

The scaler publishes through the exchange ``_celery_autoscaler.drain`` (direct, bound by queue
name), never the default exchange: its user then needs no write permission on Celery's queues.
"""

from __future__ import annotations

import hashlib
from typing import Any

from celery_autoscaler.drain_keys import DRAIN_TTL_MS, DRAINED, DRAINING

PREFIX = "_celery_autoscaler."
EXCHANGE = f"{PREFIX}drain"
WORKERS = "workers"
MARKER = "drain"
SLOTS = "slots"
STATES = (WORKERS, DRAINING, DRAINED)
"""The per-worker kinds: present, and the two drain states."""
MARKER_COPIES = 2
HEARTBEAT_S = 10
"""The helper's connection's AMQP heartbeat: the broker drops a silent worker's queues within about twice this."""
QUEUE_EXPIRES_MS = 3_600_000
"""A pool's marker and slot queues go this long after their last use (a pool that went away)."""
SINCE_HEADER = "since"
LOWERED_AT_HEADER = "lowered_at"
MAX_NAME_BYTES = 255

_SHARED: dict[str, Any] = {"x-queue-type": "classic", "x-expires": QUEUE_EXPIRES_MS}
MARKER_ARGUMENTS: dict[str, Any] = {**_SHARED, "x-max-length": MARKER_COPIES, "x-message-ttl": DRAIN_TTL_MS}
SLOTS_ARGUMENTS: dict[str, Any] = dict(_SHARED)
STATE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}
"""Both sides declare a queue with exactly these arguments (RabbitMQ refuses a declaration that differs)."""


def marker_queue(pool: str) -> str:
    return f"{PREFIX}{MARKER}.{pool}"


def slots_queue(pool: str) -> str:
    return f"{PREFIX}{SLOTS}.{pool}"


def state_queue(state: str, pool: str, hostname: str) -> str:
    """One worker's queue for ``state``; a hostname too long for a queue name is replaced by its digest."""
    name = f"{PREFIX}{state}.{pool}:{hostname}"
    if len(name.encode()) > MAX_NAME_BYTES:
        name = f"{PREFIX}{state}.{pool}:{hashlib.sha256(hostname.encode()).hexdigest()}"
    return name


def parse(name: str) -> tuple[str, str] | None:
    """``(kind, pool)`` for one of these queues' names (kind: a state, ``drain`` or ``slots``), else None."""
    if not name.startswith(PREFIX):
        return None
    kind, _, rest = name[len(PREFIX) :].partition(".")
    if kind in STATES:
        pool, colon, _ = rest.partition(":")
        return (kind, pool) if colon and pool else None
    if kind in (MARKER, SLOTS) and rest and ":" not in rest:
        return kind, rest
    return None
