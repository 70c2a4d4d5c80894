"""One tick: describe -> measure -> load state -> decide -> save state -> act -> record, for every pool.

The Lambda handler, the CLI and the local demo all call :func:`run_tick`; they differ only in the
probe, actuator, store and clock they pass in (the simulator calls the policy's ``decide`` itself).

Safety rules kept here (the policy keeps the rest):
- a pool whose ECS service could not be described is not acted on;
- the broker unreadable -> every pool's load is ``None``, so the policy holds (never scales in);
  one queue unreadable -> its pool holds with the error, every other pool decides normally;
- state is saved BEFORE acting, conditionally: if another invocation saved first, this one does
  not act on that pool; without readable state no pool is acted on;
- UpdateService only when the desired count differs, and never in dry-run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celery_autoscaler.config import PoolConfig, ScalerConfig
from celery_autoscaler.ecs import Actuator, EcsError, ProtectionReader, ServiceStatus, require_active
from celery_autoscaler.measurements import BrokerMeasurements, PoolMeasurements, QueueMeasurement, pool_load
from celery_autoscaler.policy import Decision, PoolState, decide
from celery_autoscaler.probe import BrokerUnavailableError, Probe
from celery_autoscaler.state import StateConflictError, StateStore, StateStoreError
from celery_autoscaler.telemetry import Telemetry


@dataclass(frozen=True)
class PoolOutcome:
    """What one tick saw and did for one pool.

    ``conflict`` means another invocation saved this pool's state first, so this one stood back;
    it is expected under overlap and is not an error.
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
            "protected_tasks": self.protected_tasks,
        }


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


def _save_failure(store: StateStore, pool: str, state: PoolState) -> None:
    """Count a failed tick in the pool's state if the store lets us; a conflict or outage is fine."""
    with contextlib.suppress(StateConflictError, StateStoreError):
        store.save(pool, replace(state, consecutive_failures=state.consecutive_failures + 1))


def _pool_tick(
    pool: PoolConfig,
    config: ScalerConfig,
    status: ServiceStatus | None,
    describe_error: str | None,
    broker: BrokerMeasurements | None,
    broker_error: str | None,
    state: PoolState,
    store: StateStore,
    actuator: Actuator,
    now: float,
    dry_run: bool,
) -> PoolOutcome:
    queues = {q: broker.queues[q] for q in pool.queues} if broker is not None else {}
    base = PoolOutcome(pool.name, pool.service, None, None, acted=False, queues=queues)
    try:
        if describe_error is not None:
            raise EcsError(describe_error)
        status = require_active(status, pool.service, config.cluster)
    except EcsError as exc:
        _save_failure(store, pool.name, state)
        return replace(base, error=str(exc))

    load = pool_load(pool.queues, broker) if broker is not None else None
    measurements = PoolMeasurements(current_desired=status.desired, running=status.running, load=load)
    decision = decide(measurements, pool, state, now)
    unreadable = "; ".join(f"queue {q!r} unreadable: {e}" for q, e in load.unreadable.items()) if load else ""
    outcome = replace(base, measurements=measurements, decision=decision, error=broker_error or unreadable or None)
    try:
        saved = store.save(pool.name, decision.new_state)
    except StateConflictError:
        return replace(outcome, conflict=True)
    except StateStoreError as exc:
        return replace(outcome, error=str(exc))

    if decision.desired == status.desired:
        return outcome
    if decision.desired < status.desired and isinstance(actuator, ProtectionReader):
        outcome = replace(outcome, protected_tasks=actuator.protected_tasks(pool.service))
    if dry_run:
        return outcome
    try:
        actuator.set_desired(pool.service, decision.desired)
    except EcsError as exc:
        _save_failure(store, pool.name, saved)
        return replace(outcome, error=str(exc))
    return replace(outcome, acted=True)


def run_tick(
    config: ScalerConfig,
    probe: Probe,
    actuator: Actuator,
    store: StateStore,
    now: float,
    *,
    dry_run: bool = False,
    telemetry: Telemetry | None = None,
) -> TickResult:
    """Measure, decide and act once for every pool; see the module docstring for the safety rules."""
    services = [pool.service for pool in config.pools]
    statuses: dict[str, ServiceStatus] = {}
    describe_error: str | None = None
    try:
        statuses = actuator.describe(services)
    except EcsError as exc:
        describe_error = str(exc)

    broker: BrokerMeasurements | None = None
    broker_error: str | None = None
    try:
        broker = probe.measure(config.queues)
    except BrokerUnavailableError as exc:
        broker_error = f"broker unavailable: {exc}"

    names = [pool.name for pool in config.pools]
    try:
        states = store.load(names)
    except StateStoreError as exc:
        # Without the stored version no write can be conditional, so nobody acts this tick.
        outcomes = tuple(
            PoolOutcome(pool.name, pool.service, None, None, acted=False, error=str(exc)) for pool in config.pools
        )
    else:
        outcomes = tuple(
            _pool_tick(
                pool,
                config,
                statuses.get(pool.service),
                describe_error,
                broker,
                broker_error,
                states[pool.name],
                store,
                actuator,
                now,
                dry_run,
            )
            for pool in config.pools
        )
    result = TickResult(outcomes=outcomes, now=now, broker_error=broker_error)
    if telemetry is not None:
        for outcome in outcomes:
            telemetry.pool(outcome, dry_run=dry_run, now=now)
    return result
