"""Measure Celery queues on a Redis broker.

Every tick costs ONE pipelined round trip, whatever the number of queues: for each queue key and its
priority sub-keys ``q{sep}1..9`` it reads LLEN (waiting) and LINDEX -1 (the oldest message, whose
publish-time header gives the age), HMGET of the worker helper's counters, plus HLEN of the
``unacked`` hash (in-flight, all queues). The pipeline never aborts on one command's error reply:
every reply is inspected, and an error on a queue's keys marks that queue alone unreadable.

Per-queue attribution of the ``unacked`` hash needs every entry, so it runs by HSCAN (never
HGETALL/HVALS, which block Redis on a big hash) only every ``unacked_scan_interval_s``, and not at
all while the hash holds more than ``unacked_scan_cap`` entries, or at once when the hash shrank.
Between scans the last attribution is carried forward; ETA messages found by a scan are
``scheduled`` until their ETA passes, then in-flight.

Kombu's binding sets (``_kombu.binding.<exchange>``) route named exchanges and tell which queues a
Celery app declared; they are read by SCAN at the same cadence (and on the first tick), and carried
forward in between.

Message contents never fail a tick: a message larger than :data:`MAX_MESSAGE_BYTES`, not JSON,
nested too deeply or holding numbers out of range is counted as waiting with its age unknown.
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
from redis.connection import parse_url

from celery_autoscaler.config import BrokerConfig
from celery_autoscaler.counters import COMPLETED_FIELD, RUN_MS_FIELD, stats_key
from celery_autoscaler.measurements import BrokerMeasurements, QueueMeasurement
from celery_autoscaler.probe import MAX_CLOCK_SKEW_S, MAX_PLAUSIBLE_AGE_S, BrokerUnavailableError

log = logging.getLogger(__name__)

PRIORITY_SUFFIXES = tuple(range(1, 10))
"""Kombu's priority sub-lists are ``q{sep}n`` for the configured steps; 1..9 covers every configuration."""
_KEYS_PER_QUEUE = 1 + len(PRIORITY_SUFFIXES)
_REPLIES_PER_QUEUE = 2 * _KEYS_PER_QUEUE + 1  # LLEN and LINDEX per key, one HMGET of the counters
_HSCAN_COUNT = 1000
_SCAN_COUNT = 1000
MAX_BINDING_SCAN_PAGES = 1000
"""SCAN pages (of ~1,000 keys) read to find kombu's binding sets; past that, ``declared`` is unknown."""

MAX_MESSAGE_BYTES = 1_000_000
"""A stored message larger than this is not parsed: it counts as waiting, age unknown."""


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


def _decode(raw: bytes) -> Any:
    """A stored message as JSON, with bounded work; any input that cannot be read is :class:`_MalformedError`."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise _MalformedError(f"larger than {MAX_MESSAGE_BYTES} bytes, not parsed")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError, OverflowError, MemoryError) as exc:
        raise _MalformedError(f"not JSON ({type(exc).__name__})") from None


def _headers(message: Any) -> dict[str, Any]:
    """The Celery/kombu message headers of a decoded message, or :class:`_MalformedError`."""
    headers = message.get("headers") if isinstance(message, dict) else None
    if not isinstance(headers, dict):
        raise _MalformedError("no headers object")
    return headers


def _epoch(value: Any) -> float | None:
    """A header value as finite epoch seconds (numbers, numeric strings, ISO 8601 such as Celery's ``eta``).

    ``None`` for anything else: NaN, infinities, numbers too large for a float, dates out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        if isinstance(value, str):
            seconds = _parse_time(value)
            if seconds is None:
                return None
        else:
            seconds = float(value)
    except (ValueError, OverflowError, OSError):
        return None
    return seconds if math.isfinite(seconds) else None


def _parse_time(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:  # Celery writes naive ETAs in UTC when enable_utc is on (the default)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _count(value: Any) -> int | None:
    """A counter field: a non-negative integer, else ``None``."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _reply_error(error: Exception) -> str:
    """An error reply as text; redis-py strips some codes (``NOPERM``), so its class then names it."""
    return str(error) if type(error) is redis.ResponseError else f"{type(error).__name__}: {error}"


def _glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN's MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def connect(url: str, settings: BrokerConfig) -> redis.Redis:
    """A client for ``url`` with the broker's socket timeouts: the probe's and the drainer's, made one way."""
    timeout = settings.socket_timeout_s
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


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
        # task id -> when this probe first saw it as a tail whose publish time is unknown.
        self._first_seen: dict[str, float] = {}
        # key -> the unreadable tail (or counter error) already warned about: one warning, not one a tick.
        self._warned: dict[str, bytes | str] = {}
        self._in_flight: dict[str, _QueueInFlight] | None = None
        self._scanned_at: float | None = None
        self._scanned_total = 0
        self._tables: dict[str, _BindingTable] = {}
        self._declared: set[str] | None = None  # None: the binding sets could not all be read
        self._bindings_read_at: float | None = None

    @classmethod
    def from_config(cls, broker: BrokerConfig, url: str) -> RedisProbe:
        """The probe for a configured broker; ``url`` is passed apart because it may come from a secret.

        The URL is parsed here (without connecting), so a malformed one fails at start, not every tick.
        """
        parse_url(url)  # type: ignore[no-untyped-call]
        return cls(broker, url=url)

    @property
    def client(self) -> redis.Redis:
        """The Redis client, connected on first use with the configured socket timeouts."""
        if self._client is None:
            assert self._url is not None
            self._client = connect(self._url, self._settings)
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

    def _where(self) -> str:
        """The db and key prefix, for warnings about keys that are not where the config says."""
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        return f"db {db}, key prefix {self._settings.key_prefix!r}"

    def measure(self, queues: Sequence[str]) -> BrokerMeasurements:
        """Measure ``queues`` now (one round trip, plus SCAN/HSCAN round trips on scan ticks only)."""
        unacked_key = self._key("unacked")
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    keys = self._queue_keys(queue)
                    for key in keys:
                        pipe.llen(key)
                    for key in keys:
                        pipe.lindex(key, -1)
                    pipe.hmget(stats_key(self._settings.key_prefix, queue), [COMPLETED_FIELD, RUN_MS_FIELD])
                pipe.hlen(unacked_key)
                replies = pipe.execute(raise_on_error=False)
            if isinstance(replies[-1], Exception):  # every pool's demand depends on it
                raise BrokerUnavailableError(f"cannot read {unacked_key!r}: {_reply_error(replies[-1])}")
            now = self._clock()
            unacked_total = int(replies[-1])
            self._refresh_bindings(now)
            in_flight = self._attribute(unacked_total, now)
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read the Redis broker: {exc}") from exc
        seen: dict[str, float] = {}
        result: dict[str, QueueMeasurement] = {}
        for i, queue in enumerate(queues):
            share = None if in_flight is None else in_flight.get(queue, _QueueInFlight())
            span = replies[i * _REPLIES_PER_QUEUE : (i + 1) * _REPLIES_PER_QUEUE]
            result[queue] = self._queue(queue, span, share, now, seen)
        self._first_seen = seen
        measured = {key for queue in queues for key in self._queue_keys(queue)}
        measured |= {stats_key(self._settings.key_prefix, queue) for queue in queues}
        self._warned = {k: v for k, v in self._warned.items() if k in measured}
        return BrokerMeasurements(queues=result, unacked_total=unacked_total, measured_at=now)

    def _queue(
        self, queue: str, replies: list[Any], share: _QueueInFlight | None, now: float, seen: dict[str, float]
    ) -> QueueMeasurement:
        """One queue from its slice of the pipeline's replies (LLENs, LINDEXes, HMGET)."""
        keys = self._queue_keys(queue)
        lengths, tails = replies[:_KEYS_PER_QUEUE], replies[_KEYS_PER_QUEUE:-1]
        declared = None if self._declared is None else queue in self._declared
        if declared is False:
            log.warning("queue %r was never declared by a Celery app (%s): is the name, db or prefix right?",
                        queue, self._where())  # fmt: skip
        completed, run_seconds = self._counters(queue, replies[-1])
        commands = ["LLEN"] * _KEYS_PER_QUEUE + ["LINDEX"] * _KEYS_PER_QUEUE
        checks = zip(commands, keys + keys, replies[:-1], strict=True)
        error = next((f"{cmd} {key!r}: {_reply_error(r)}" for cmd, key, r in checks if isinstance(r, Exception)), None)
        if error is not None:
            return QueueMeasurement(0, None, None, error=error, declared=declared, completed=completed,
                                    run_seconds=run_seconds)  # fmt: skip
        published = [
            t
            for key, tail in zip(keys, tails, strict=True)
            if tail is not None and (t := self._published_at(key, tail, now, seen)) is not None
        ]
        return QueueMeasurement(
            waiting=sum(int(n) for n in lengths),
            unacked=None if share is None else share.at(now),
            oldest_age_s=max(0.0, now - min(published)) if published else None,
            scheduled=None if share is None else share.scheduled_at(now),
            declared=declared,
            completed=completed,
            run_seconds=run_seconds,
        )

    def _counters(self, queue: str, reply: Any) -> tuple[int | None, float | None]:
        """The worker helper's counters; a bad counter key loses the counters only, with one warning."""
        key = stats_key(self._settings.key_prefix, queue)
        if isinstance(reply, Exception):
            self._warn_once(key, str(reply), "cannot read the counters %r (%s); counters unknown", key, reply)
            return None, None
        completed, run_ms = (_count(value) for value in reply)
        return completed, None if run_ms is None else run_ms / 1000

    def _warn_once(self, key: str, what: bytes | str, message: str, *args: Any) -> None:
        if self._warned.get(key) != what:
            log.warning(message, *args)
            self._warned[key] = what

    def _published_at(self, key: str, tail: bytes, now: float, seen: dict[str, float]) -> float | None:
        """When the oldest message of one sub-list was published, or ``None`` when that is unknown.

        A plausible publish-time header gives it. Without one, the probe falls back to when it first
        saw the message (by task id): unknown at the first sighting, then a lower bound of the age
        (the message may have waited before the probe looked). Only current tails are remembered in
        ``seen``, so the map stays as small as the queues.
        """
        header_name = self._settings.publish_time_header
        try:
            headers = _headers(_decode(tail))
            header = headers.get(header_name)
            task_id = headers.get("id")
            if header is not None:
                published = _epoch(header)
                if published is not None and now - MAX_PLAUSIBLE_AGE_S <= published <= now + MAX_CLOCK_SKEW_S:
                    return published
                if not isinstance(task_id, str):
                    raise _MalformedError(f"header {header_name} is not a plausible epoch time, and no task id")
                self._warn_once(key, tail, "message at the tail of %r has an implausible %s; age from first seen",
                                key, header_name)  # fmt: skip
            elif not isinstance(task_id, str):
                raise _MalformedError("no task id header")
        except _MalformedError as exc:
            self._warn_once(
                key, tail, "unreadable message at the tail of %r (%s); counted as waiting, age unknown", key, exc
            )
            return None
        first = self._first_seen.get(task_id)
        seen[task_id] = now if first is None else first
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

    def _scan(self, now: float) -> dict[str, _QueueInFlight] | None:
        """Attribute every unacked entry (JSON ``[message, exchange, routing_key]``) to its queue.

        ``None`` (attribution unknown, the policy uses the broker-wide count) when the hash cannot be
        scanned (an ACL without HSCAN). Named exchanges route through the binding sets; the sets are
        read again first when an entry names an exchange they do not hold yet.
        """
        routed: list[tuple[str, str, float | None]] = []
        try:
            for tag, raw in self.client.hscan_iter(self._key("unacked"), count=_HSCAN_COUNT):
                try:
                    message, exchange, routing_key = _decode(raw)
                    eta = _epoch(_headers(message).get("eta"))
                    if not isinstance(exchange, str) or not isinstance(routing_key, str):
                        raise _MalformedError("exchange or routing key is not a string")
                except (_MalformedError, ValueError, TypeError):
                    log.warning("unreadable unacked entry %.80r; counted in unacked_total only", tag)
                    continue
                routed.append((exchange, routing_key, eta))
        except redis.ResponseError as exc:
            log.warning("cannot scan %r (%s); per-queue in-flight unknown", self._key("unacked"), exc)
            return None
        if not {exchange for exchange, _, _ in routed if exchange} <= self._tables.keys():
            self._refresh_bindings(now, force=True)  # an exchange declared since the last binding read
        unbound = _BindingTable(())  # kombu cannot route through an exchange without bindings either
        counts: dict[str, _QueueInFlight] = {}
        for exchange, routing_key, eta in routed:
            for queue in self._tables.get(exchange, unbound).route(routing_key) if exchange else (routing_key,):
                share = counts.setdefault(queue, _QueueInFlight())
                if eta is not None and eta > now:
                    share.etas.append(eta)
                else:
                    share.ready += 1
        for share in counts.values():
            share.etas.sort()
        return counts

    def _refresh_bindings(self, now: float, *, force: bool = False) -> None:
        """Read every ``_kombu.binding.*`` set (SCAN, then one pipelined SMEMBERS) when due.

        Due on the first tick and then every ``unacked_scan_interval_s``. A set that cannot be read is
        left out of the routing tables, and ``declared`` is then unknown for queues not found elsewhere.
        """
        interval = self._settings.unacked_scan_interval_s
        if not force and self._bindings_read_at is not None and now - self._bindings_read_at < interval:
            return
        self._bindings_read_at = now
        table_prefix = self._key("_kombu.binding.")
        try:
            names, complete = self._binding_keys(table_prefix)
        except redis.ResponseError as exc:  # an ACL without SCAN: routing by the default exchange only
            log.warning("cannot list kombu's binding sets (%s); declared queues unknown", exc)
            self._tables, self._declared = {}, None
            return
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(name)
            replies = pipe.execute(raise_on_error=False)
        tables: dict[str, _BindingTable] = {}
        for name, members in zip(names, replies, strict=True):
            if isinstance(members, Exception):
                log.warning("cannot read kombu's binding set %r (%s)", name, members)
                complete = False
                continue
            exchange = name.decode("utf-8", "replace").removeprefix(table_prefix)
            tables[exchange] = _BindingTable.parse(members, self._settings.priority_sep)
        self._tables = tables
        declared = {queue for table in tables.values() for queue in table.queues}
        self._declared = declared if complete else None

    def _binding_keys(self, table_prefix: str) -> tuple[list[bytes], bool]:
        """The binding sets' key names, and whether the SCAN finished within its page bound."""
        pattern = _glob_escape(table_prefix) + "*"
        names: set[bytes] = set()
        cursor = 0
        for _ in range(MAX_BINDING_SCAN_PAGES):
            cursor, found = self.client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            names.update(k if isinstance(k, bytes) else k.encode() for k in found)
            if cursor == 0:
                return sorted(names), True
        log.warning("more than %d SCAN pages of keys; declared queues unknown", MAX_BINDING_SCAN_PAGES)
        return sorted(names), False


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
                log.warning("unreadable kombu binding %.80r", member)
                continue
            routing_key, pattern, queue = parts
            try:
                rows.append((routing_key, re.compile(pattern) if pattern else None, queue))
            except (re.error, RecursionError, OverflowError):
                log.warning("unreadable kombu binding pattern %.80r", pattern)
        return cls(tuple(rows))

    @property
    def queues(self) -> set[str]:
        return {queue for _, _, queue in self.rows}

    def route(self, routing_key: str) -> set[str]:
        return {
            queue
            for key, pattern, queue in self.rows
            if (pattern.match(routing_key) if pattern is not None else key == routing_key)
        }
