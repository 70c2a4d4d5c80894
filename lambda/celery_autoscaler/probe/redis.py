"""Measure Celery queues on a Redis broker.

Every tick costs ONE pipelined round trip, whatever the number of queues: for each queue key and its
priority sub-keys ``q{sep}1..9`` it reads LLEN (waiting) and LINDEX -1 (the oldest message, whose
publish-time header gives the age), plus HLEN of the ``unacked`` hash (in-flight, all queues).

Per-queue attribution of the ``unacked`` hash needs every entry, so it runs by HSCAN (never
HGETALL/HVALS, which block Redis on a big hash) only every ``unacked_scan_interval_s``, and not at
all while the hash holds more than ``unacked_scan_cap`` entries, or at once when the hash shrank.
Between scans the last attribution is carried forward; ETA messages found by a scan are
``scheduled`` until their ETA passes, then in-flight.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from celery_autoscaler.config import BrokerConfig
from celery_autoscaler.measurements import BrokerMeasurements, QueueMeasurement
from celery_autoscaler.probe import BrokerUnavailableError

log = logging.getLogger(__name__)

PRIORITY_SUFFIXES = tuple(range(1, 10))
"""Kombu's priority sub-lists are ``q{sep}n`` for the configured steps; 1..9 covers every configuration."""
_KEYS_PER_QUEUE = 1 + len(PRIORITY_SUFFIXES)
_HSCAN_COUNT = 1000


class _MalformedError(ValueError):
    """A stored message the probe cannot read; it still counts as waiting."""


@dataclass
class _QueueInFlight:
    """One queue's share of the unacked hash at the last scan: ready entries plus future ETAs (sorted)."""

    ready: int = 0
    etas: list[float] = field(default_factory=list)

    def at(self, now: float) -> int:
        """In-flight now: ETA messages count once they are due, because a worker then runs them."""
        return self.ready + bisect.bisect_right(self.etas, now)

    def scheduled_at(self, now: float) -> int:
        """ETA messages held for this queue that are not due yet."""
        return len(self.etas) - bisect.bisect_right(self.etas, now)


def _headers(raw: bytes) -> dict[str, Any]:
    """The Celery/kombu message headers of a stored message, or :class:`_MalformedError`."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _MalformedError("not JSON") from exc
    headers = message.get("headers") if isinstance(message, dict) else None
    if not isinstance(headers, dict):
        raise _MalformedError("no headers object")
    return headers


def _epoch(value: Any) -> float | None:
    """A header value as epoch seconds: numbers as they are, ISO 8601 strings (Celery's ``eta``) parsed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:  # Celery writes naive ETAs in UTC when enable_utc is on (the default)
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


class RedisProbe:
    """Reads waiting, in-flight and age of Celery queues from Redis; see the module docstring.

    ``clock`` (epoch seconds) is injectable so tests control time. The Redis client
    is created on first use from ``url`` (``redis://`` or ``rediss://``, user:password, db in the path),
    or injected as ``client``.
    """

    def __init__(
        self,
        settings: BrokerConfig,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = url if url is not None else settings.url
        if (url is None) == (client is None):
            raise ValueError("give exactly one of a broker url and a redis client")
        self._settings = settings
        self._url = url
        self._client = client
        self._clock = clock
        # task id -> when this probe first saw it as a tail without a publish-time header.
        self._first_seen: dict[str, float] = {}
        # key -> the malformed tail already warned about, so a stuck message warns once, not every tick.
        self._warned: dict[str, bytes] = {}
        self._in_flight: dict[str, _QueueInFlight] | None = None
        self._scanned_at: float | None = None
        self._scanned_total = 0

    @classmethod
    def from_config(cls, broker: BrokerConfig, url: str) -> RedisProbe:
        """The probe for a configured broker; ``url`` is passed apart because it may come from a secret."""
        return cls(broker, url=url)

    @property
    def client(self) -> redis.Redis:
        """The Redis client, connected on first use with the configured socket timeouts."""
        if self._client is None:
            assert self._url is not None
            timeout = self._settings.socket_timeout_s
            self._client = redis.Redis.from_url(self._url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return self._client

    def close(self) -> None:
        """Release the connection pool (a Lambda keeps the probe warm instead)."""
        if self._client is not None:
            self._client.close()

    def _key(self, name: str) -> str:
        return self._settings.key_prefix + name

    def _queue_keys(self, queue: str) -> list[str]:
        base = self._key(queue)
        return [base, *(f"{base}{self._settings.priority_sep}{n}" for n in PRIORITY_SUFFIXES)]

    def measure(self, queues: Sequence[str]) -> BrokerMeasurements:
        """Measure ``queues`` now (one round trip, plus HSCAN round trips on scan ticks only)."""
        keys = [key for queue in queues for key in self._queue_keys(queue)]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.llen(key)
                for key in keys:
                    pipe.lindex(key, -1)
                pipe.hlen(self._key("unacked"))
                replies = pipe.execute()
            now = self._clock()
            unacked_total = int(replies[-1])
            in_flight = self._attribute(unacked_total, now)
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read the Redis broker: {exc}") from exc
        lengths, tails = replies[: len(keys)], replies[len(keys) : 2 * len(keys)]
        seen: dict[str, float] = {}
        result: dict[str, QueueMeasurement] = {}
        for i, queue in enumerate(queues):
            span = slice(i * _KEYS_PER_QUEUE, (i + 1) * _KEYS_PER_QUEUE)
            published = [
                t
                for key, tail in zip(keys[span], tails[span], strict=True)
                if tail is not None and (t := self._published_at(key, tail, now, seen)) is not None
            ]
            share = None if in_flight is None else in_flight.get(queue, _QueueInFlight())
            result[queue] = QueueMeasurement(
                waiting=sum(int(n) for n in lengths[span]),
                unacked=None if share is None else share.at(now),
                oldest_age_s=max(0.0, now - min(published)) if published else None,
                scheduled=None if share is None else share.scheduled_at(now),
            )
        self._first_seen = seen
        measured = set(keys)
        self._warned = {k: v for k, v in self._warned.items() if k in measured}
        return BrokerMeasurements(queues=result, unacked_total=unacked_total, measured_at=now)

    def _published_at(self, key: str, tail: bytes, now: float, seen: dict[str, float]) -> float | None:
        """When the oldest message of one sub-list was published: its header, else when first seen.

        The first-seen time is a lower bound of the age (the message may have waited before the probe
        looked). Only current tails are remembered in ``seen``, so the map stays as small as the queues.
        """
        try:
            headers = _headers(tail)
            header = headers.get(self._settings.publish_time_header)
            if header is not None:
                published = _epoch(header)
                if published is None:
                    raise _MalformedError(f"header {self._settings.publish_time_header} is not epoch seconds")
                return published
            task_id = headers.get("id")
            if not isinstance(task_id, str):
                raise _MalformedError("no task id header")
        except _MalformedError as exc:
            if self._warned.get(key) != tail:
                log.warning("unreadable message at the tail of %r (%s); counted as waiting, age unknown", key, exc)
                self._warned[key] = tail
            return None
        first = self._first_seen.get(task_id, now)
        seen[task_id] = first
        return first

    def _attribute(self, unacked_total: int, now: float) -> dict[str, _QueueInFlight] | None:
        """Per-queue in-flight counts, rescanned when due; ``None`` when the hash is above the cap.

        An empty hash needs no scan, and the first non-empty hash after it is scanned at once, so
        in-flight is known as soon as workers start taking messages from idle. A hash smaller than at
        the last scan is rescanned at once too: the carried-forward counts would hold finished work
        and keep a pool from scaling in.
        """
        if unacked_total == 0:
            self._in_flight, self._scanned_at = {}, None
            return self._in_flight
        if unacked_total > self._settings.unacked_scan_cap:
            self._in_flight, self._scanned_at = None, None
            return None
        due = self._scanned_at is None or now - self._scanned_at >= self._settings.unacked_scan_interval_s
        if due or unacked_total < self._scanned_total:
            self._in_flight, self._scanned_at, self._scanned_total = self._scan(now), now, unacked_total
        return self._in_flight

    def _scan(self, now: float) -> dict[str, _QueueInFlight]:
        """Attribute every unacked entry (JSON ``[message, exchange, routing_key]``) to its queue."""
        routed: list[tuple[str, str, float | None]] = []
        for tag, raw in self.client.hscan_iter(self._key("unacked"), count=_HSCAN_COUNT):
            try:
                message, exchange, routing_key = json.loads(raw)
                eta = _epoch(message.get("headers", {}).get("eta"))
            except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
                log.warning("unreadable unacked entry %r; counted in unacked_total only", tag)
                continue
            routed.append((str(exchange), str(routing_key), eta))
        tables = self._bindings({exchange for exchange, _, _ in routed if exchange})
        counts: dict[str, _QueueInFlight] = {}
        for exchange, routing_key, eta in routed:
            for queue in tables[exchange].route(routing_key) if exchange else (routing_key,):
                share = counts.setdefault(queue, _QueueInFlight())
                if eta is not None and eta > now:
                    share.etas.append(eta)
                else:
                    share.ready += 1
        for share in counts.values():
            share.etas.sort()
        return counts

    def _bindings(self, exchanges: Iterable[str]) -> dict[str, _BindingTable]:
        """Kombu's binding sets of the named exchanges, read in one extra round trip."""
        names = sorted(exchanges)
        if not names:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(self._key(f"_kombu.binding.{name}"))
            members = pipe.execute()
        return {
            name: _BindingTable.parse(found, self._settings.priority_sep)
            for name, found in zip(names, members, strict=True)
        }


@dataclass(frozen=True)
class _BindingTable:
    """Kombu's ``_kombu.binding.<exchange>`` set: members ``routing_key{sep}pattern{sep}queue``.

    Kombu joins with the transport's ``sep`` (the priority separator). A topic binding stores a regex
    pattern; a direct binding an empty one. A message matching several bindings is counted for each
    queue: an over-count, never an under-count.
    """

    rows: tuple[tuple[str, re.Pattern[str] | None, str], ...]

    @classmethod
    def parse(cls, members: Iterable[bytes], sep: str) -> _BindingTable:
        rows = []
        for member in members:
            parts = member.decode("utf-8", "replace").split(sep)
            if len(parts) != 3:  # kombu itself cannot route with such a member either
                log.warning("unreadable kombu binding %r", member)
                continue
            routing_key, pattern, queue = parts
            try:
                rows.append((routing_key, re.compile(pattern) if pattern else None, queue))
            except re.error:
                log.warning("unreadable kombu binding pattern %r", pattern)
        return cls(tuple(rows))

    def route(self, routing_key: str) -> set[str]:
        return {
            queue
            for key, pattern, queue in self.rows
            if (pattern.match(routing_key) if pattern is not None else key == routing_key)
        }
