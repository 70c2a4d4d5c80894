"""What the probe reads from the broker and ECS, as plain values the policy can decide on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueueMeasurement:
    """One Celery queue at one instant.

    ``waiting`` sums the queue list and its priority sub-lists. ``unacked`` is the number of
    reserved/unacked messages attributed to this queue (ETA messages not yet due excluded), or
    ``None`` when attribution was skipped this tick (lower cadence, or above the scan cap).
    ``oldest_age_s`` is now minus the earliest publish time among the sub-lists' oldest messages,
    or ``None`` when the queue is empty or no age could be known. ``scheduled`` counts the ETA/countdown
    messages workers hold for this queue that are not due yet (``None`` when unattributed): not demand,
    but a worker must stay to hold them.

    ``error`` says why this queue alone could not be read this tick (its numbers are then not to be
    used; the queue's pool holds). ``declared`` is whether a Celery app declared the queue on the
    broker (``None`` when the broker cannot tell). ``completed`` and ``run_seconds`` are the worker
    helper's cumulative counters for the queue (tasks finished, their total run time), ``None``
    when no helper has written them.
    """

    waiting: int
    unacked: int | None
    oldest_age_s: float | None
    scheduled: int | None = None
    error: str | None = None
    declared: bool | None = None
    completed: int | None = None
    run_seconds: float | None = None

    def summary(self) -> dict[str, int | float | str | bool | None]:
        """The JSON the CLI prints and the tick logs for a queue."""
        return {
            "waiting": self.waiting,
            "unacked": self.unacked,
            "oldest_age_s": self.oldest_age_s,
            "declared": self.declared,
            "error": self.error,
        }


@dataclass(frozen=True)
class BrokerMeasurements:
    """Every configured queue read in one round trip, plus the broker-wide unacked count."""

    queues: dict[str, QueueMeasurement]
    unacked_total: int
    measured_at: float


@dataclass(frozen=True)
class PoolLoad:
    """The broker-side load of one pool's queues, summed.

    ``in_flight`` and ``scheduled`` are ``None`` when per-queue attribution of unacked messages is
    unknown this tick; the policy then falls back to the broker-wide ``unacked_total``.
    ``unreadable`` names the pool's queues that could not be read (queue -> error); the numbers
    then leave them out, and the policy holds.
    ``completed`` and ``run_seconds`` sum the worker helper's cumulative counters over the queues that
    have them (``None`` when none has).
    """

    waiting: int
    in_flight: int | None
    unacked_total: int
    oldest_age_s: float | None
    measured_at: float
    scheduled: int | None = None
    unreadable: Mapping[str, str] = field(default_factory=dict)
    completed: int | None = None
    run_seconds: float | None = None


@dataclass(frozen=True)
class PoolMeasurements:
    """What ``decide`` sees for one pool: ECS's current counts and the load, if it could be read.

    ``load`` is ``None`` when the broker could not be read this tick; the policy then holds.
    """

    current_desired: int
    running: int
    load: PoolLoad | None


def pool_load(queues: tuple[str, ...], broker: BrokerMeasurements) -> PoolLoad:
    """Sum a pool's readable queues: waiting adds up, in-flight is known only if every queue's is, age is the max."""
    parts = [broker.queues[q] for q in queues if broker.queues[q].error is None]
    unacked = [p.unacked for p in parts]
    scheduled = [p.scheduled for p in parts]
    ages = [p.oldest_age_s for p in parts if p.oldest_age_s is not None]
    counted = [p for p in parts if p.completed is not None and p.run_seconds is not None]
    return PoolLoad(
        waiting=sum(p.waiting for p in parts),
        in_flight=None if any(u is None for u in unacked) else sum(u for u in unacked if u is not None),
        unacked_total=broker.unacked_total,
        oldest_age_s=max(ages) if ages else None,
        measured_at=broker.measured_at,
        scheduled=None if any(s is None for s in scheduled) else sum(s for s in scheduled if s is not None),
        unreadable={q: error for q in queues if (error := broker.queues[q].error) is not None},
        completed=sum(p.completed or 0 for p in counted) if counted else None,
        run_seconds=sum(p.run_seconds or 0.0 for p in counted) if counted else None,
    )
