"""The scaler's side of fence and drain: turn a lowering into "drain k, then lower by the drained".

The policy stays pure and says "k fewer". :func:`plan` (pure) decides what the tick sets instead:
never fewer than the running workers that have not drained, because those are protected and ECS
could otherwise only wait for one to become unprotected (the scale-in race). So ECS stops pending
tasks and drained workers only, and slots stay open for the drains still wanted; the follow-up
tick seconds later (or the next tick) lowers by those that drained. The drain ends once the
decision no longer lowers and ECS has caught up (or ``MAX_CATCH_UP_S`` after the last lowering).

:class:`TickSchedule` is when ticks run, for the Lambda handler, the local demo and the simulator
alike: regular ticks ``tick_interval_s`` apart, and after a regular tick that asked workers to drain,
one follow-up tick ``FOLLOW_UP_S`` later for those pools only, which lowers by the workers drained
by then instead of a whole tick later.

A :class:`Drainer` reads and writes the pool's drain keys on the broker; the probe only reads.
One factory picks it per broker scheme: Redis (:class:`RedisDrainer`) and RabbitMQ
(:mod:`celery_autoscaler.drain_rabbitmq`); on SQS there is none and scale-in is as before
(protection only). A pool with no worker running the helper (none fresh in
the workers set) also keeps today's scale-in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from celery_autoscaler.config import BrokerConfig
from celery_autoscaler.drain_keys import (
    DRAIN_TTL_MS,
    FRESH_MS,
    LOWERED_AT_FIELD,
    OPEN_FIELD,
    SINCE_FIELD,
    STATUS_SCRIPT,
    drain_key,
    workers_key,
)

if TYPE_CHECKING:
    import redis

MAX_CATCH_UP_S = 60.0
"""A drain whose count was lowered ends this long after, even if ECS still reports more running."""
START_GRACE_S = 120.0
"""How long a drain waits for workers ECS runs but that have not polled yet (still starting) before lowering."""


FOLLOW_UP_S = 3.0
"""How long after a tick that asked workers to drain its follow-up runs: an idle worker polls once a
second, so it claims a slot within a second and reports drained about a poll later."""


class DrainError(Exception):
    """The drain keys could not be read or written; the pool scales in as without the handshake."""


@dataclass(frozen=True)
class DrainStatus:
    """One pool's drain as read at the start of a tick."""

    workers: int
    """Workers of the pool running the helper (polled within ``FRESH_MS``)."""
    active: bool = False
    open: int = 0
    draining: int = 0
    drained: int = 0
    lowered_at: float | None = None
    since: float | None = None


@dataclass(frozen=True)
class DrainPlan:
    """What the tick does for a pool: set ``desired``; open ``open`` slots (None: end the drain, or none)."""

    desired: int
    open: int | None
    asked: int = 0
    """Workers asked to drain (slots open now plus those draining or drained)."""
    drained: int = 0
    lowering: bool = False

    @property
    def drains(self) -> bool:
        """The handshake is in use this tick (a drain exists after it)."""
        return self.open is not None

    @property
    def pending(self) -> int:
        """Workers asked to drain that have not drained yet: a follow-up tick can lower by them."""
        return max(0, self.asked - self.drained)


def plan(wanted: int, current: int, running: int, status: DrainStatus | None, now: float) -> DrainPlan:
    """The count to set and the slots to keep open, for the policy's ``wanted`` (pure)."""
    if status is None or status.workers == 0:
        return DrainPlan(desired=wanted, open=None)  # no helper, or no drainer: today's scale-in
    if wanted >= current:
        caught_up = running <= current or (status.lowered_at is not None and now - status.lowered_at >= MAX_CATCH_UP_S)
        keep_open = status.active and not caught_up
        return DrainPlan(desired=wanted, open=0 if keep_open else None, drained=status.drained)
    keep = running - status.drained  # protected: ECS must not be asked to stop one of these
    open_slots = max(0, keep - status.draining - wanted)
    desired = min(current, max(wanted, keep))
    # A worker still starting is unprotected too and ECS might stop it instead of a drained one
    # (it holds nothing, but it is a start wasted and the drained worker stays): wait for it a while.
    starting = running - status.workers
    young = status.since is None or now - status.since < START_GRACE_S
    if starting > 0 and young and status.drained > 0:
        desired = max(desired, min(current, running))
    return DrainPlan(
        desired=desired,
        open=open_slots,
        asked=open_slots + status.draining + status.drained,
        drained=status.drained,
        lowering=desired < current,
    )


@dataclass(frozen=True)
class Tick:
    """One tick of a :class:`TickSchedule`: when, and the pools it is for (``None``: every pool, a regular tick)."""

    at: float
    follow_up: tuple[str, ...] | None = None


@dataclass
class TickSchedule:
    """When a run of the scaler ticks (pure; the caller sleeps, ticks and reports back with :meth:`ran`).

    Regular ticks are ``interval_s`` apart from ``started``: ``ticks`` of them (a Lambda invocation's
    ``ticks_per_invocation``), or without end (``None``: the local demo). A regular tick that leaves
    workers asked to drain (slots open, or claimed and still finishing) gets one follow-up tick for
    those pools, ``FOLLOW_UP_S`` after it ended; a follow-up never counts as one of the ``ticks`` and
    gets no follow-up of its own. It is skipped when it would not end, by the longest tick so far,
    before the next regular tick, which then does its work.
    """

    started: float
    interval_s: float
    ticks: int | None = None
    regular: int = 0
    """Regular ticks run so far."""
    follow_up: Tick | None = None

    def next(self, longest_s: float = 0.0) -> Tick | None:
        """The next tick, or ``None`` once the last regular tick and its follow-up (if any) have run."""
        due = (
            None
            if self.ticks is not None and self.regular >= self.ticks
            else self.started + self.regular * self.interval_s
        )
        if self.follow_up is not None and (due is None or self.follow_up.at + longest_s <= due):
            return self.follow_up
        return None if due is None else Tick(due)

    def ran(self, tick: Tick, ended: float, draining: Sequence[str] = ()) -> None:
        """``tick`` ended at ``ended``, leaving the pools ``draining`` with workers asked to drain."""
        self.follow_up = None
        if tick.follow_up is None:
            self.regular += 1
            if draining:
                self.follow_up = Tick(ended + FOLLOW_UP_S, tuple(draining))


class Drainer(Protocol):
    """Reads and writes the pools' drain keys on the broker."""

    def status(self, pools: Sequence[str]) -> dict[str, DrainStatus]:
        """Every pool's drain, in one round trip; :class:`DrainError` when it cannot be read."""
        ...

    def apply(self, pool: str, drain: DrainPlan, now: float) -> None:
        """Open the plan's slots (refreshing the drain's TTL) or end the drain; :class:`DrainError` on failure."""
        ...


class RedisDrainer:
    """The drain keys of a Redis broker, over a client of its own (the probe's settings and timeouts)."""

    def __init__(self, settings: BrokerConfig, *, url: str | None = None, client: redis.Redis | None = None) -> None:
        if (url is None) == (client is None):
            raise ValueError("give exactly one of a broker url and a redis client")
        self._settings = settings
        self._url = url
        self._client = client
        self._script: Any = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            from celery_autoscaler.probe.redis import connect

            assert self._url is not None
            self._client = connect(self._url, self._settings)
        return self._client

    def status(self, pools: Sequence[str]) -> dict[str, DrainStatus]:
        import redis

        prefix = self._settings.key_prefix
        try:
            if self._script is None:
                self._script = self.client.register_script(STATUS_SCRIPT)
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                self._script(keys=[drain_key(prefix, pool), workers_key(prefix, pool)], args=[FRESH_MS], client=pipe)
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise DrainError(f"reading the drain keys failed: {type(exc).__name__}: {exc}") from exc
        return {pool: _status(row) for pool, row in zip(pools, rows, strict=True)}

    def apply(self, pool: str, drain: DrainPlan, now: float) -> None:
        import redis

        key = drain_key(self._settings.key_prefix, pool)
        try:
            if drain.open is None:
                self.client.delete(key)
                return
            fields: dict[str | bytes, str | int] = {OPEN_FIELD: drain.open}
            if drain.lowering:
                fields[LOWERED_AT_FIELD] = repr(now)
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(key, SINCE_FIELD, repr(now))
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, DRAIN_TTL_MS)
            pipe.execute()
        except redis.RedisError as exc:
            raise DrainError(f"writing the drain of pool {pool!r} failed: {type(exc).__name__}: {exc}") from exc


def _time(value: Any) -> float | None:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return float(text) if text else None


def _status(row: Sequence[Any]) -> DrainStatus:
    workers, active, open_slots, draining, drained, lowered_at, since = row
    return DrainStatus(
        workers=int(workers),
        active=bool(active),
        open=int(open_slots),
        draining=int(draining),
        drained=int(drained),
        lowered_at=_time(lowered_at),
        since=_time(since),
    )


def _redis_drainer(broker: BrokerConfig, url: str) -> Drainer:
    return RedisDrainer(broker, url=url)


def _rabbitmq_drainer(broker: BrokerConfig, url: str) -> Drainer:
    from celery_autoscaler.drain_rabbitmq import RabbitMQDrainer  # imported here: it imports this module

    return RabbitMQDrainer.from_config(broker, url)


DRAINERS: dict[str, Callable[[BrokerConfig, str], Drainer]] = {
    "redis": _redis_drainer,
    "rediss": _redis_drainer,
    "amqp": _rabbitmq_drainer,
    "amqps": _rabbitmq_drainer,
}
"""URL scheme -> the drainer for that broker; a scheme not here has none (scale-in as before)."""


def drainer_for(broker: BrokerConfig, url: str) -> Drainer | None:
    """The drainer for ``url``'s scheme, or None where fence and drain is not built (yet)."""
    make = DRAINERS.get(urlsplit(url).scheme.lower())
    return make(broker, url) if make is not None else None
