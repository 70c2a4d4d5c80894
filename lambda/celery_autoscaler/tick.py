"""One tick: describe -> measure -> load state -> decide -> save state -> act -> record, for every pool.

The Lambda handler, the CLI and the local demo all call :func:`run_tick`; they differ only in the
probe, actuator, store and clock they pass in (the simulator calls the policy's ``decide`` itself).

Safety rules kept here (the policy keeps the rest):
- a pool whose ECS service could not be described is not acted on;
- the broker unreadable, or its reading stamped far from the tick's clock -> every pool's load is
  ``None``, so the policy holds (never scales in); one queue unreadable -> its pool holds with the
  error, every other pool decides normally;
- a pool whose state could not be read (corrupt item, unprocessed key, refused table) is not acted
  on; a corrupt item is replaced by a fresh state seeded with the current count (no scale-in for a
  full window);
- state is saved BEFORE acting, conditionally: if another invocation saved first, this one does
  not act on that pool;
- with a drainer (Redis, RabbitMQ) and a pool whose workers run the helper, a lower count goes through fence
  and drain (:mod:`celery_autoscaler.drain`): the tick never sets fewer than the running workers
  that have not drained; drain keys that cannot be read or written give today's scale-in, reported;
- a follow-up tick (:class:`celery_autoscaler.drain.TickSchedule`) is a tick like any other, for the
  pools it names only, and counts no WorkerSeconds (the regular ticks count every second);
- UpdateService only when the desired count differs, and never in dry-run;
- a pool an operator paused (its state item holds the pause, see pause.py) keeps its count, or gets
  exactly the pause's count, instead of the policy's; an expired pause lapses here and is forgotten
  when the state is saved;
- nothing raises out of a tick: an unexpected exception (a bug) is reported, with its traceback,
  on the pools it concerns; the other pools still act.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from celery_autoscaler.config import PoolConfig, ScalerConfig
from celery_autoscaler.drain import Drainer, DrainError, DrainPlan, DrainStatus, plan
from celery_autoscaler.ecs import Actuator, EcsError, ProtectionReader, ServiceStatus, require_active
from celery_autoscaler.measurements import BrokerMeasurements, PoolMeasurements, QueueMeasurement, pool_load
from celery_autoscaler.pause import Pause
from celery_autoscaler.policy import Decision, PoolState, decide
from celery_autoscaler.probe import BrokerUnavailableError, Probe
from celery_autoscaler.state import (
    StateConflictError,
    StateRepairer,
    StateStore,
    StateStoreError,
    StoredState,
    UnreadableState,
)
from celery_autoscaler.telemetry import Telemetry

CLOCK_SKEW_S = 60.0
"""A broker reading or a state timestamp further than this from the tick's clock is not trusted."""


class Fault(StrEnum):
    """Which part kept a pool from deciding or acting; each has its own metric (``metric``)."""

    BROKER = "broker"
    QUEUE = "queue"
    CLOCK = "clock"
    STATE = "state"
    ECS = "ecs"
    BUG = "bug"

    @property
    def metric(self) -> str | None:
        """The EMF metric (value 1) a pool reports on a tick with this fault (queues: UnreadableQueues counts them)."""
        return {
            Fault.BROKER: "BrokerErrors",
            Fault.QUEUE: None,
            Fault.CLOCK: "ClockSkewErrors",
            Fault.STATE: "StateErrors",
            Fault.ECS: "EcsErrors",
            Fault.BUG: "ScalerBugs",
        }[self]


@dataclass(frozen=True)
class Problem:
    """Why a pool (or every pool) could not decide or act this tick."""

    message: str
    fault: Fault
    traceback: str | None = None

    @classmethod
    def bug(cls, where: str, exc: BaseException) -> Problem:
        """An exception the scaler did not expect: a bug, reported with its traceback."""
        text = "".join(traceback.format_exception(exc))
        return cls(f"scaler bug in {where}: {type(exc).__name__}: {exc}", Fault.BUG, text)


@dataclass(frozen=True)
class PoolOutcome:
    """What one tick saw and did for one pool.

    ``conflict`` means another invocation saved this pool's state first, so this one stood back;
    it is expected under overlap and is not an error. ``faults`` says which parts failed (``error``
    says how); ``traceback`` is set when one of them was a bug. ``pause`` is the operator's pause in
    force (``None`` when not paused, or when the state could not be read).
    """

    pool: str
    service: str
    measurements: PoolMeasurements | None
    decision: Decision | None
    acted: bool
    error: str | None = None
    conflict: bool = False
    queues: Mapping[str, QueueMeasurement] = field(default_factory=dict)
    protected_tasks: int | None = None
    faults: tuple[Fault, ...] = ()
    traceback: str | None = None
    pause: Pause | None = None
    drain: DrainPlan | None = None
    worker_seconds: float | None = None
    cost_usd: float | None = None
    follow_up: bool = False
    """This tick was a follow-up (:class:`celery_autoscaler.drain.TickSchedule`)."""
    drain_pending: int = 0
    """Workers asked on the broker to drain that had not drained yet: a follow-up tick is due."""

    def with_problem(self, problem: Problem | None) -> PoolOutcome:
        """This outcome with ``problem`` added to its error, faults and traceback."""
        if problem is None:
            return self
        error = problem.message if self.error is None else f"{self.error}; {problem.message}"
        return replace(
            self, error=error, faults=(*self.faults, problem.fault), traceback=self.traceback or problem.traceback
        )

    def measured(self) -> dict[str, Any]:
        """What was measured, JSON-able, ``None`` where unknown (the CLI's summary and the log line)."""
        m = self.measurements
        load = m.load if m is not None else None
        return {
            "current_desired": m.current_desired if m else None,
            "running": m.running if m else None,
            "waiting": load.waiting if load else None,
            "in_flight": load.in_flight if load else None,
            "unacked_total": load.unacked_total if load else None,
            "oldest_age_s": load.oldest_age_s if load else None,
            "queues": {name: q.summary() for name, q in self.queues.items()},
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able summary (the CLI prints it; the handler returns a shorter one)."""
        return {
            "pool": self.pool,
            "service": self.service,
            **self.measured(),
            "desired": self.decision.desired if self.decision else None,
            "reason": self.decision.reason if self.decision else None,
            "acted": self.acted,
            "conflict": self.conflict,
            "error": self.error,
            "faults": list(self.faults),
            "protected_tasks": self.protected_tasks,
            "paused": self.paused(),
            "drain": self.drained(),
            "pinned_at_max": self.decision is not None and self.decision.wanted is not None,
            "worker_seconds": self.worker_seconds,
            "estimated_cost_usd": self.cost_usd,
            "follow_up": self.follow_up,
        }

    def drained(self) -> dict[str, int] | None:
        """Fence and drain this tick (the log line's ``drain``): workers asked, drained, and the count set."""
        d = self.drain
        return None if d is None or not d.drains else {"asked": d.asked, "drained": d.drained, "set": d.desired}

    def paused(self) -> dict[str, Any] | None:
        """The pause in force as JSON (the log line's and the CLI's ``paused``), ``None`` when not paused."""
        return None if self.pause is None else asdict(self.pause)


@dataclass(frozen=True)
class TickResult:
    """Every pool's outcome; ``broker_error`` says why no load was read, if it was not."""

    outcomes: tuple[PoolOutcome, ...]
    now: float
    broker_error: str | None = None

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    @property
    def actions(self) -> int:
        return sum(1 for o in self.outcomes if o.acted)

    @property
    def draining(self) -> tuple[str, ...]:
        """The pools with workers asked to drain that have not drained yet (a follow-up tick is due for them)."""
        return tuple(o.pool for o in self.outcomes if o.drain_pending > 0)


@dataclass(frozen=True)
class _Readings:
    """What the tick read once for all pools, and why a part of it is missing."""

    statuses: Mapping[str, ServiceStatus]
    describe_problem: Problem | None
    broker: BrokerMeasurements | None
    broker_problem: Problem | None
    states: Mapping[str, StoredState]
    state_problem: Problem | None
    drains: Mapping[str, DrainStatus] | None = None
    drain_problem: Problem | None = None


def _describe(actuator: Actuator, services: Sequence[str]) -> tuple[dict[str, ServiceStatus], Problem | None]:
    try:
        return actuator.describe(services), None
    except EcsError as exc:
        return {}, Problem(str(exc), Fault.ECS)
    except Exception as exc:  # a bug: no pool's service is known, so none is acted on
        return {}, Problem.bug("describing the ECS services", exc)


def _measure(probe: Probe, queues: Sequence[str], now: float) -> tuple[BrokerMeasurements | None, Problem | None]:
    try:
        broker = probe.measure(queues)
    except BrokerUnavailableError as exc:
        return None, Problem(f"broker unavailable: {exc}", Fault.BROKER)
    except Exception as exc:  # a bug in the probe: every pool holds (never scales in) on no reading
        return None, Problem.bug("the broker probe", exc)
    skew = broker.measured_at - now
    if abs(skew) > CLOCK_SKEW_S:
        side = "ahead of" if skew > 0 else "behind"
        return None, Problem(
            f"broker reading stamped {abs(skew):.0f} s {side} the tick's clock (allowed {CLOCK_SKEW_S:g} s): "
            "not trusted",
            Fault.CLOCK,
        )
    return broker, None


def _drains(drainer: Drainer | None, pools: Sequence[str]) -> tuple[dict[str, DrainStatus] | None, Problem | None]:
    """Every pool's drain; unreadable -> None: each pool scales in as without the handshake, reported."""
    if drainer is None:
        return None, None
    try:
        return drainer.status(pools), None
    except DrainError as exc:
        return None, Problem(f"{exc}: scaling in without fence and drain", Fault.BROKER)
    except Exception as exc:  # a bug in the drainer: the same, with its traceback
        return None, Problem.bug("reading the drain keys", exc)


def _load(store: StateStore, pools: Sequence[str]) -> tuple[dict[str, StoredState], Problem | None]:
    try:
        return store.load(pools), None
    except Exception as exc:  # a bug in the store: nothing was read, so nothing is repaired either
        problem = Problem.bug("loading state", exc)
        return {pool: UnreadableState("not read") for pool in pools}, problem


def _trusted(stored: StoredState, now: float) -> PoolState | Problem:
    """The state to decide on, or why there is none: unreadable, or stamped by a clock far ahead of this one."""
    if isinstance(stored, UnreadableState):
        return Problem(f"state unreadable ({stored.reason})", Fault.STATE)
    stamps = (stored.idle_since, stored.last_action_at, *(t for t, _ in stored.recommendations))
    ahead = max((t for t in stamps if t is not None), default=0.0) - now
    if ahead > CLOCK_SKEW_S:
        return Problem(
            f"state untrusted (it holds a timestamp {ahead:.0f} s ahead of the tick's clock, "
            f"allowed {CLOCK_SKEW_S:g} s)",
            Fault.CLOCK,
        )
    return stored


def _save_failure(store: StateStore, pool: str, state: StoredState) -> None:
    """Count a failed tick in the pool's state if the store lets us; a conflict or outage is fine."""
    if isinstance(state, PoolState):
        with contextlib.suppress(StateConflictError, StateStoreError):
            store.save(pool, replace(state, consecutive_failures=state.consecutive_failures + 1))


def _reset_state(store: StateStore, pool: str, stored: StoredState, fresh: PoolState) -> bool:
    """Replace an untrusted state with ``fresh``, conditionally; False when there is nothing to replace."""
    if isinstance(stored, PoolState):
        store.save(pool, replace(fresh, version=stored.version))
        return True
    if stored.item is not None and isinstance(store, StateRepairer):
        store.repair(pool, stored, fresh)
        return True
    return False


def _hold_untrusted(
    outcome: PoolOutcome, problem: Problem, stored: StoredState, store: StateStore, status: ServiceStatus, now: float
) -> PoolOutcome:
    """Without trusted state the pool holds (no action at all) and its item is reset, when there is one.

    The fresh state's window holds the current count, so the next ticks cannot scale in before a
    full ``scale_in_window_s`` has passed, exactly as if that count had been recommended now.
    """
    kept_pause = stored.pause if isinstance(stored, PoolState) else None  # an operator's pause outlives a reset
    fresh = PoolState(
        recommendations=((now, status.desired),),
        last_desired=status.desired,
        consecutive_failures=1,
        pause=kept_pause,
    )
    held = replace(problem, message=f"{problem.message}: holding at {status.desired}, not acting")
    try:
        reset = _reset_state(store, outcome.pool, stored, fresh)
    except StateConflictError:
        return replace(outcome, conflict=True).with_problem(held)
    except StateStoreError as exc:
        return outcome.with_problem(replace(held, message=f"{held.message}; reset failed: {exc}"))
    suffix = "; state reset to the current count" if reset else ""
    return outcome.with_problem(replace(held, message=held.message + suffix))


def _active_pause(stored: StoredState, now: float) -> Pause | None:
    pause = stored.pause if isinstance(stored, PoolState) else None
    return pause if pause is not None and pause.active(now) else None


def _paused(pause: Pause, measurements: PoolMeasurements, state: PoolState, now: float) -> Decision:
    """The operator's word instead of the policy's: keep the current count, or set exactly ``pause.count``."""
    current = measurements.current_desired
    desired = current if pause.count is None else pause.count
    action = f"holding at {desired}" if pause.count is None else f"set to {desired} by the operator"
    new_state = replace(
        state,
        last_desired=desired,
        last_action_at=now if desired != current else state.last_action_at,
        consecutive_failures=0,
    )
    return Decision(desired, f"{pause.describe()}: {action}, not scaling -> {desired}", new_state)


def _decide(measurements: PoolMeasurements, pool: PoolConfig, state: PoolState, now: float) -> Decision:
    """The pause's decision while one is in force, else the policy's; the reason is remembered in the state."""
    pause = state.pause
    if pause is not None and pause.active(now):
        decision = _paused(pause, measurements, state, now)
    else:
        decision = decide(measurements, pool, replace(state, pause=None), now)
        if pause is not None:  # lapsed: said once, and forgotten when this state is saved
            decision = replace(decision, reason=f"{decision.reason} ({pause.describe()}: lapsed)")
    return replace(decision, new_state=replace(decision.new_state, last_reason=decision.reason))


def _pool_tick(
    pool: PoolConfig,
    config: ScalerConfig,
    readings: _Readings,
    store: StateStore,
    actuator: Actuator,
    now: float,
    dry_run: bool,
    drainer: Drainer | None = None,
    follow_up: bool = False,
) -> PoolOutcome:
    broker = readings.broker
    stored = readings.states[pool.name]
    queues = {q: broker.queues[q] for q in pool.queues} if broker is not None else {}
    pause = _active_pause(stored, now)
    base = (
        PoolOutcome(pool.name, pool.service, None, None, acted=False, queues=queues, pause=pause, follow_up=follow_up)
        .with_problem(readings.broker_problem)
        .with_problem(readings.state_problem)
    )
    trusted = _trusted(stored, now)
    untrusted = trusted if isinstance(trusted, Problem) else None
    if readings.describe_problem is not None:
        _save_failure(store, pool.name, stored)
        return base.with_problem(readings.describe_problem).with_problem(untrusted)
    try:
        status = require_active(readings.statuses.get(pool.service), pool.service, config.cluster)
    except EcsError as exc:
        _save_failure(store, pool.name, stored)
        return base.with_problem(Problem(str(exc), Fault.ECS)).with_problem(untrusted)

    load = pool_load(pool.queues, broker) if broker is not None else None
    measurements = PoolMeasurements(current_desired=status.desired, running=status.running, load=load)
    unreadable = "; ".join(f"queue {q!r} unreadable: {e}" for q, e in load.unreadable.items()) if load else ""
    base = replace(base, measurements=measurements).with_problem(
        Problem(unreadable, Fault.QUEUE) if unreadable else None
    )
    if not follow_up:  # the running tasks, until the next regular tick
        worker_seconds = status.running * config.tick_interval_s
        task_hour_usd = config.prices.task_hour_usd(pool.cpu, pool.memory, pool.architecture, pool.spot_weight)
        base = replace(base, worker_seconds=worker_seconds, cost_usd=worker_seconds / 3600 * task_hour_usd)
    if isinstance(trusted, Problem):
        return _hold_untrusted(base, trusted, stored, store, status, now)

    decision = _decide(measurements, pool, trusted, now)
    outcome = replace(base, decision=decision)
    try:
        saved = store.save(pool.name, decision.new_state)
    except StateConflictError:
        return replace(outcome, conflict=True)
    except StateStoreError as exc:
        return outcome.with_problem(Problem(str(exc), Fault.STATE))

    desired, drain_status = decision.desired, None
    if drainer is not None:
        outcome = outcome.with_problem(readings.drain_problem)
        drain_status = readings.drains.get(pool.name) if readings.drains is not None else None
        drain = plan(decision.desired, status.desired, status.running, drain_status, now)
        desired = drain.desired
        outcome = replace(outcome, drain=drain)
    if desired != status.desired:
        if desired < status.desired and isinstance(actuator, ProtectionReader):
            outcome = replace(outcome, protected_tasks=actuator.protected_tasks(pool.service))
        if dry_run:
            return outcome
        try:
            actuator.set_desired(pool.service, desired)
        except EcsError as exc:
            _save_failure(store, pool.name, saved)
            return outcome.with_problem(Problem(str(exc), Fault.ECS))
        outcome = replace(outcome, acted=True)
    if drainer is None or outcome.drain is None or dry_run:
        return outcome
    if outcome.drain.drains or (drain_status is not None and drain_status.active):
        try:
            drainer.apply(pool.name, outcome.drain, now)
        except DrainError as exc:
            return outcome.with_problem(Problem(str(exc), Fault.BROKER))
        outcome = replace(outcome, drain_pending=outcome.drain.pending if outcome.drain.drains else 0)
    return outcome


def run_tick(
    config: ScalerConfig,
    probe: Probe,
    actuator: Actuator,
    store: StateStore,
    now: float,
    *,
    dry_run: bool = False,
    telemetry: Telemetry | None = None,
    drainer: Drainer | None = None,
    follow_up: Collection[str] | None = None,
) -> TickResult:
    """Measure, decide and act once for every pool (a follow-up tick: for the pools ``follow_up`` names);
    see the module docstring for the safety rules."""
    pools = [p for p in config.pools if follow_up is None or p.name in follow_up]
    names = [pool.name for pool in pools]
    statuses, describe_problem = _describe(actuator, [pool.service for pool in pools])
    broker, broker_problem = _measure(probe, [q for pool in pools for q in pool.queues], now)
    states, state_problem = _load(store, names)
    drains, drain_problem = _drains(drainer, names)
    readings = _Readings(
        statuses, describe_problem, broker, broker_problem, states, state_problem, drains, drain_problem
    )
    outcomes: list[PoolOutcome] = []
    for pool in pools:
        try:
            outcome = _pool_tick(pool, config, readings, store, actuator, now, dry_run, drainer, follow_up is not None)
        except Exception as exc:  # a bug while handling this pool: reported on it; the others still act
            outcome = PoolOutcome(
                pool.name, pool.service, None, None, acted=False, follow_up=follow_up is not None
            ).with_problem(Problem.bug(f"pool {pool.name!r}", exc))
        outcomes.append(outcome)
    if telemetry is not None:  # after every pool acted, so a failure to write stops no pool
        for outcome in outcomes:
            telemetry.pool(outcome, dry_run=dry_run, now=now)
        telemetry.tick_done(now=now)
    broker_error = broker_problem.message if broker_problem is not None else None
    return TickResult(outcomes=tuple(outcomes), now=now, broker_error=broker_error)
