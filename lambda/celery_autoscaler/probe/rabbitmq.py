"""Measure Celery queues on RabbitMQ (and Amazon MQ for RabbitMQ) through the management HTTP API.

AMQP cannot see unacked messages (a passive ``queue.declare`` returns ready and consumers only), so
the probe reads the management API's queue listing of the broker URL's vhost, ONE request a tick::

    GET /api/queues/{vhost}?disable_stats=true&enable_queue_totals=true

It answers live counts for every queue of the vhost (its cost grows with all of them: give Celery
its own vhost). The requests share one keep-alive HTTP(S) connection (TLS verified), reopened once
when the broker closed it between ticks.

What the numbers mean on RabbitMQ:

- ``waiting`` is ``messages_ready``: messages no consumer holds. A priority queue
  (``x-max-priority``) is one queue, so this is the total over its priorities.
- ``unacked`` is ``messages_unacknowledged``: delivered to a worker and not yet acknowledged, i.e.
  the messages workers reserved (prefetched), the running ones when ``task_acks_late`` is on (with
  it off Celery acks at start, so running tasks are invisible to the broker), and the ETA/countdown
  messages a worker holds until they are due. The broker cannot tell these apart, so
  ``scheduled`` is ``None`` ("cannot tell") and held ETA messages count as in flight: an
  over-count, never an under-count. A worker's unacked messages are ready again as soon as its
  connection closes (no visibility timeout). Quorum queues with Celery's native delayed delivery
  keep ETA messages ready in the ``celery_delayed_*`` queues instead, not in the task's queue.
- ``unacked_total`` sums ``messages_unacknowledged`` over every queue of the vhost.
- ``oldest_age_s`` is now minus the stats-mode ``head_message_timestamp`` of the queue, read by a
  second request only on ticks where a configured classic queue has ready messages. It needs the
  AMQP ``timestamp`` property, which Celery does not set and the worker helper does, and it is an
  upper bound: the head includes messages a worker holds unacked, stats lag 5-10 s, a priority
  queue reports the head of its highest non-empty priority, and an unstamped head hides stamped
  messages behind it. It is ``None`` for an empty queue, an unstamped head and quorum queues (which
  do not report the field), and for every queue on a tick where that second request fails (the counts
  still stand: age only ever adds workers).
- ``declared`` is whether the queue exists in the vhost. A configured queue missing from the
  listing holds nothing (RabbitMQ drops messages routed nowhere): it is measured as empty and
  logged as not declared. ``completed`` and ``run_seconds`` are ``None`` (the worker helper's
  counters live on Redis brokers only).

A configured queue listed without integer counts (a quorum queue without a leader, a crashed
classic queue) is unreadable this tick: its pool holds, never reads it as 0.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from celery_autoscaler.config import BrokerConfig, ConfigError
from celery_autoscaler.measurements import BrokerMeasurements, QueueMeasurement
from celery_autoscaler.probe import MAX_CLOCK_SKEW_S, MAX_PLAUSIBLE_AGE_S, BrokerUnavailableError

log = logging.getLogger(__name__)

DEFAULT_MANAGEMENT_PORT = 15672
"""Where a self-hosted node's management plugin listens (plain HTTP)."""
MAX_LISTING_BYTES = 64 * 1024 * 1024
"""A listing larger than this is not parsed (about 300,000 queues): the broker counts as unreadable."""
COUNT_QUERY = "disable_stats=true&enable_queue_totals=true"
AGE_QUERY = "columns=name,type,head_message_timestamp"


@dataclass(frozen=True)
class ManagementEndpoint:
    """Where the scaler reads a RabbitMQ vhost: the management API's address, credentials and vhost.

    ``repr`` leaves the password out; :attr:`where` is safe to log.
    """

    https: bool
    host: str
    port: int
    path_prefix: str
    user: str
    password: str
    vhost: str

    def __repr__(self) -> str:
        return f"ManagementEndpoint({self.where}, user={self.user!r}, vhost={self.vhost!r})"

    @property
    def where(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.host}:{self.port}{self.path_prefix}"

    @classmethod
    def from_urls(
        cls, amqp_url: str, management_url: str | None, *, field: str = "broker.management_url"
    ) -> ManagementEndpoint:
        """The endpoint for a broker URL (``amqp://`` or ``amqps://``, vhost in the path) and an optional override.

        By default the management API is on the broker's host with its credentials: ``http://HOST:15672``
        for ``amqp://``, ``https://HOST`` (443, as on Amazon MQ) for ``amqps://``. ``management_url``
        (``http://`` or ``https://``, optionally with a path prefix) replaces the address; credentials
        in it replace the broker URL's. A bad override is a :class:`ConfigError` naming ``field``; a bad
        broker URL a ``ValueError`` (the factory names its field). Neither quotes the URL.
        """
        broker = urlsplit(amqp_url)
        if broker.scheme not in ("amqp", "amqps") or not broker.hostname:
            raise ValueError("not an amqp:// or amqps:// URL with a host")  # probe_for names the field
        vhost = unquote(broker.path[1:]) if broker.path not in ("", "/") else "/"
        user, password = unquote(broker.username or "guest"), unquote(broker.password or "guest")
        if management_url is None:
            https = broker.scheme == "amqps"
            port = 443 if https else DEFAULT_MANAGEMENT_PORT
            return cls(https, broker.hostname, port, "", user, password, vhost)
        parts = urlsplit(management_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(field, "must be http(s)://host[:port][/prefix] (not shown: it may hold a password)")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(field, "has a port that is not a number from 1 to 65535") from None
        if parts.query or parts.fragment:
            raise ConfigError(field, "must not have a query or fragment")
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        prefix = parts.path.rstrip("/")
        return cls(parts.scheme == "https", parts.hostname, port, prefix, user, password, vhost)


def _count(row: dict[str, Any], key: str) -> int | None:
    value = row.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class ManagementClient:
    """Requests to one vhost's management API on a keep-alive HTTP(S) connection (TLS verified).

    A connection the broker closed between ticks is reopened once. Failures are
    :class:`BrokerUnavailableError` naming the request and the address, never the credentials.
    """

    def __init__(self, endpoint: ManagementEndpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None
        token = base64.b64encode(f"{endpoint.user}:{endpoint.password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    def path(self, *parts: str) -> str:
        """``/api/PARTS...`` under the endpoint's prefix, each part quoted (the vhost is one)."""
        return "/".join([f"{self.endpoint.path_prefix}/api", *(quote(part, safe="") for part in parts)])

    def close(self) -> None:
        """Close the keep-alive connection (the next request opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def queues(self, query: str) -> list[Any]:
        """``GET /api/queues/{vhost}?query`` as a JSON list, or :class:`BrokerUnavailableError`."""
        endpoint = self.endpoint
        what = f"GET /api/queues/{quote(endpoint.vhost, safe='')} on {endpoint.where}"
        status, reason, body = self.request("GET", f"{self.path('queues', endpoint.vhost)}?{query}", what)
        if status == 401:
            raise BrokerUnavailableError(
                f"{what}: 401 {reason} (the user needs the tag 'monitoring' or 'management' and a password that works)"
            )
        if status == 404:
            raise BrokerUnavailableError(f"{what}: 404 (no vhost {endpoint.vhost!r}, or no permission on it)")
        if not 200 <= status < 300:
            raise BrokerUnavailableError(f"{what}: {status} {reason}")
        listing = self.json(body, what)
        if not isinstance(listing, list):
            raise BrokerUnavailableError(f"{what}: the answer is not a JSON list")
        return listing

    @staticmethod
    def json(body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BrokerUnavailableError(f"{what}: the answer is not JSON ({type(exc).__name__})") from None

    def request(
        self, method: str, path: str, what: str, body: object = None, *, retry: bool = True
    ) -> tuple[int, str, bytes]:
        """One request (``body`` sent as JSON) on the kept-alive connection: status, reason and answer."""
        reused = self._connection is not None
        # Accept only where an answer comes: the API refuses it (406) on a DELETE, which answers nothing.
        headers = {**self._headers, **({"Accept": "application/json"} if method in ("GET", "POST") else {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = None if body is None else json.dumps(body).encode()
        try:
            connection = self._connect()
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            answer = response.read(MAX_LISTING_BYTES + 1)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if reused and retry:
                return self.request(method, path, what, body, retry=False)
            raise BrokerUnavailableError(f"{what}: connection closed ({type(exc).__name__})") from None
        except ssl.SSLError as exc:  # before OSError: SSLError is one
            self.close()
            raise BrokerUnavailableError(f"{what}: TLS failed ({exc.reason or type(exc).__name__})") from None
        except TimeoutError:
            self.close()
            raise BrokerUnavailableError(f"{what}: no answer within {self._timeout_s:g} s") from None
        except OSError as exc:
            self.close()
            raise BrokerUnavailableError(f"{what}: {exc.strerror or type(exc).__name__}") from None
        except http.client.HTTPException as exc:
            self.close()
            raise BrokerUnavailableError(f"{what}: not an HTTP answer ({type(exc).__name__})") from None
        if len(answer) > MAX_LISTING_BYTES:
            self.close()
            raise BrokerUnavailableError(f"{what}: the answer is larger than {MAX_LISTING_BYTES} bytes")
        if response.will_close:
            self.close()
        return response.status, response.reason, answer

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            endpoint, timeout = self.endpoint, self._timeout_s
            if endpoint.https:
                context = ssl.create_default_context()
                self._connection = http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout,
                                                               context=context)  # fmt: skip
            else:
                self._connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
        return self._connection


class RabbitMQProbe:
    """Reads waiting, unacked and age of Celery queues from RabbitMQ's management API; see the module docstring.

    ``clock`` (epoch seconds) is injectable so tests control time.
    """

    def __init__(
        self, settings: BrokerConfig, endpoint: ManagementEndpoint, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._api = ManagementClient(endpoint, settings.socket_timeout_s)
        self._warned: set[str] = set()

    @classmethod
    def from_config(cls, broker: BrokerConfig, url: str) -> RabbitMQProbe:
        """The probe for a configured broker; ``url`` (AMQP) is passed apart because it may come from a secret."""
        return cls(broker, ManagementEndpoint.from_urls(url, broker.management_url))

    def close(self) -> None:
        """Close the keep-alive connection (the next ``measure`` opens a new one)."""
        self._api.close()

    def measure(self, queues: Sequence[str]) -> BrokerMeasurements:
        """Measure ``queues`` now: one listing request, plus one for head timestamps when a classic queue waits."""
        listing = self._api.queues(COUNT_QUERY)
        now = self._clock()
        rows = {row["name"]: row for row in listing if isinstance(row, dict) and isinstance(row.get("name"), str)}
        unacked_total = sum(n for row in rows.values() if (n := _count(row, "messages_unacknowledged")) is not None)
        ages: dict[str, float | None] = {}
        if any(self._ages_wanted(rows.get(q)) for q in queues):
            try:
                ages = self._ages(now)
            except BrokerUnavailableError as exc:  # the counts were read: only the ages are unknown
                log.warning("queue ages unknown this tick: %s", exc)
        result = {queue: self._queue(queue, rows.get(queue), ages) for queue in queues}
        self._warned &= {q for q, m in result.items() if m.declared is False or m.error is not None}
        return BrokerMeasurements(queues=result, unacked_total=unacked_total, measured_at=now)

    @staticmethod
    def _ages_wanted(row: dict[str, Any] | None) -> bool:
        return row is not None and row.get("type") != "quorum" and (_count(row, "messages_ready") or 0) > 0

    def _queue(self, queue: str, row: dict[str, Any] | None, ages: dict[str, float | None]) -> QueueMeasurement:
        if row is None:
            self._warn_once(queue, "queue %r is not declared in vhost %r on %s: is the name or vhost right?",
                            queue, self._endpoint.vhost, self._endpoint.where)  # fmt: skip
            return QueueMeasurement(waiting=0, unacked=0, oldest_age_s=None, scheduled=None, declared=False)
        ready, unacked = _count(row, "messages_ready"), _count(row, "messages_unacknowledged")
        if ready is None or unacked is None:
            state = row.get("state", "unknown")
            error = f"the management API lists no message counts for it (state {str(state)[:40]!r})"
            self._warn_once(queue, "queue %r unreadable: %s", queue, error)
            return QueueMeasurement(waiting=0, unacked=None, oldest_age_s=None, error=error, declared=True)
        age = ages.get(queue) if ready > 0 else None
        return QueueMeasurement(waiting=ready, unacked=unacked, oldest_age_s=age, scheduled=None, declared=True)

    def _warn_once(self, queue: str, message: str, *args: Any) -> None:
        if queue not in self._warned:
            log.warning(message, *args)
            self._warned.add(queue)

    def _ages(self, now: float) -> dict[str, float | None]:
        """Head ages from the stats-mode listing; ``None`` where the head is unstamped or implausible."""
        ages: dict[str, float | None] = {}
        for row in self._api.queues(AGE_QUERY):
            if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                continue
            stamp = row.get("head_message_timestamp")
            if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
                ages[row["name"]] = None  # null (an unstamped head), absent (quorum) or garbage
                continue
            plausible = now - MAX_PLAUSIBLE_AGE_S <= stamp <= now + MAX_CLOCK_SKEW_S
            ages[row["name"]] = max(0.0, now - float(stamp)) if plausible else None
        return ages
