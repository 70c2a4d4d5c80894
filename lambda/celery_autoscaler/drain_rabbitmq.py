"""Fence and drain on RabbitMQ (and Amazon MQ for RabbitMQ): the drain queues, through the management HTTP API.

The queues are :mod:`celery_autoscaler.drain_queues`'. A tick's :meth:`RabbitMQDrainer.status` is
one listing of the vhost (names and ready counts only, live) plus, for each pool whose drain exists,
one read of its marker for ``since`` and ``lowered_at``. :meth:`~RabbitMQDrainer.apply` opens
slots by publishing the missing ones (or purging and publishing all when there are too many),
refreshes the marker, and ends a drain by purging both queues. A marker or slot queue that is not
there (the first drain of a pool, or expired) is declared and bound, and the publish tried again.

The times of an ongoing drain come from the status read at the start of the same tick (the tick
always reads before it writes), so a write needs no read of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery_autoscaler.config import BrokerConfig
from celery_autoscaler.drain import DrainError, DrainPlan, DrainStatus
from celery_autoscaler.drain_keys import DRAINED, DRAINING
from celery_autoscaler.drain_queues import (
    EXCHANGE,
    LOWERED_AT_HEADER,
    MARKER,
    MARKER_ARGUMENTS,
    MARKER_COPIES,
    SINCE_HEADER,
    SLOTS,
    SLOTS_ARGUMENTS,
    WORKERS,
    marker_queue,
    parse,
    slots_queue,
)
from celery_autoscaler.probe import BrokerUnavailableError
from celery_autoscaler.probe.rabbitmq import ManagementClient, ManagementEndpoint

STATUS_QUERY = "disable_stats=true&enable_queue_totals=true&columns=name,messages_ready"


class RabbitMQDrainer:
    """The drain queues of one RabbitMQ vhost, over a management API client of its own (the probe's settings)."""

    def __init__(self, settings: BrokerConfig, endpoint: ManagementEndpoint) -> None:
        self._api = ManagementClient(endpoint, settings.socket_timeout_s)
        self._vhost = endpoint.vhost
        self._seen: dict[str, DrainStatus] = {}

    @classmethod
    def from_config(cls, broker: BrokerConfig, url: str) -> RabbitMQDrainer:
        return cls(broker, ManagementEndpoint.from_urls(url, broker.management_url))

    def status(self, pools: Sequence[str]) -> dict[str, DrainStatus]:
        try:
            rows = self._api.queues(STATUS_QUERY)
            counts: dict[tuple[str, str], int] = {}
            for row in rows:
                name = row.get("name") if isinstance(row, dict) else None
                parsed = parse(name) if isinstance(name, str) else None
                if parsed is None:
                    continue
                ready = row.get("messages_ready")
                one = 1 if parsed[0] in (WORKERS, DRAINING, DRAINED) else ready if isinstance(ready, int) else 0
                counts[parsed] = counts.get(parsed, 0) + max(0, one)
            found = {pool: self._status(pool, counts) for pool in pools}
        except BrokerUnavailableError as exc:
            raise DrainError(f"reading the drain queues failed: {exc}") from exc
        self._seen = found
        return found

    def _status(self, pool: str, counts: dict[tuple[str, str], int]) -> DrainStatus:
        workers = counts.get((WORKERS, pool), 0)
        if counts.get((MARKER, pool), 0) == 0:
            return DrainStatus(workers=workers)
        headers = self._marker_headers(pool)
        if headers is None:  # it expired since the listing
            return DrainStatus(workers=workers)
        return DrainStatus(
            workers=workers,
            active=True,
            open=counts.get((SLOTS, pool), 0),
            draining=counts.get((DRAINING, pool), 0),
            drained=counts.get((DRAINED, pool), 0),
            lowered_at=_time(headers.get(LOWERED_AT_HEADER)),
            since=_time(headers.get(SINCE_HEADER)),
        )

    def _marker_headers(self, pool: str) -> dict[str, Any] | None:
        """The headers of one copy of the marker, which goes back at once (the other copy stays ready meanwhile)."""
        queue = marker_queue(pool)
        body = {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 1024}
        answer = self._call("POST", ("queues", self._vhost, queue, "get"), f"reading the drain of pool {pool!r}", body)
        if not isinstance(answer, list) or not answer:
            return None
        headers = (answer[0].get("properties") or {}).get("headers") if isinstance(answer[0], dict) else None
        return headers if isinstance(headers, dict) else {}

    def apply(self, pool: str, drain: DrainPlan, now: float) -> None:
        seen = self._seen.get(pool, DrainStatus(workers=0))
        what = f"writing the drain of pool {pool!r}"
        marker, slots = marker_queue(pool), slots_queue(pool)
        try:
            if drain.open is None:
                self._purge(marker, what)  # first: no worker claims a slot of a drain that is ending
                self._purge(slots, what)
                return
            ready = seen.open if seen.active else 0
            if not seen.active or drain.open < seen.open:
                self._purge(slots, what)  # a new drain starts empty: slots of an abandoned one are gone
                ready = 0
            for _ in range(drain.open - ready):
                self._publish(pool, slots, {}, what)
            since = seen.since if seen.active and seen.since is not None else now
            lowered_at = now if drain.lowering else seen.lowered_at if seen.active else None
            headers = {SINCE_HEADER: repr(since)}
            if lowered_at is not None:
                headers[LOWERED_AT_HEADER] = repr(lowered_at)
            for _ in range(MARKER_COPIES):  # after the slots: a worker claims only once the marker is there
                self._publish(pool, marker, headers, what)
        except BrokerUnavailableError as exc:
            raise DrainError(f"{what} failed: {exc}") from exc

    def _publish(self, pool: str, queue: str, headers: dict[str, str], what: str) -> None:
        """One transient message to ``queue`` through the drain exchange; declares and binds once if unrouted."""
        body = {
            "routing_key": queue,
            "payload": "",
            "payload_encoding": "string",
            "properties": {"delivery_mode": 1, "headers": headers},
        }
        parts = ("exchanges", self._vhost, EXCHANGE, "publish")
        for attempt in range(2):
            status, answer = self._send("POST", parts, body)
            if 200 <= status < 300 and isinstance(answer, dict) and answer.get("routed") is True:
                return
            if attempt == 0:  # no exchange (400 NOT_FOUND), or no queue bound (routed false)
                self._declare(pool, what)
        raise DrainError(f"{what} failed: the message to {queue} was not routed after declaring it ({status})")

    def _declare(self, pool: str, what: str) -> None:
        """The drain exchange and the pool's two queues, bound by name (each declaration is idempotent)."""
        self._call("PUT", ("exchanges", self._vhost, EXCHANGE), what, {"type": "direct", "durable": True})
        for queue, arguments in ((marker_queue(pool), MARKER_ARGUMENTS), (slots_queue(pool), SLOTS_ARGUMENTS)):
            self._call("PUT", ("queues", self._vhost, queue), what, {"durable": True, "arguments": arguments})
            binding = ("bindings", self._vhost, "e", EXCHANGE, "q", queue)
            self._call("POST", binding, what, {"routing_key": queue})

    def _purge(self, queue: str, what: str) -> None:
        self._call("DELETE", ("queues", self._vhost, queue, "contents"), what, missing_ok=True)

    def _call(
        self, method: str, parts: tuple[str, ...], what: str, body: object = None, *, missing_ok: bool = False
    ) -> Any:
        """One request that must succeed: the decoded answer (None when empty, or on 404 with ``missing_ok``)."""
        status, answer = self._send(method, parts, body)
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            denied = status in (401, 403)
            detail = " (the user needs configure, write and read on ^_celery_autoscaler\\.)" if denied else ""
            raise DrainError(f"{what} failed: {method} {self._api.path(*parts)}: {status}{detail}")
        return answer

    def _send(self, method: str, parts: tuple[str, ...], body: object = None) -> tuple[int, Any]:
        """The status and decoded answer (None when empty) of one request; the error text stays unread."""
        path = self._api.path(*parts)
        request = f"{method} {path} on {self._api.endpoint.where}"
        status, _, answer = self._api.request(method, path, request, body)
        return status, self._api.json(answer, request) if answer and 200 <= status < 300 else None


def _time(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
