"""The scaling policy: one pure function from (measurements, pool config, state, now) to a decision.

No I/O happens here, so the Lambda, the local demo and the simulator all run exactly this code.

The rule, per pool:
  demand   = waiting + in-flight (unacked attributed to the pool's queues; the broker-wide unacked
             count when attribution is unknown, which over- rather than under-counts)
  raw      = ceil(demand / tasks_per_worker), where tasks_per_worker is target_backlog_per_worker
             or concurrency x target_utilisation; if the oldest waiting task is older than
             target_latency_s and every worker asked for is running, raw is at least current + 1
  out      : raw > current -> raw at once (capped by max_scale_out_step unless starting from 0)
  in       : the max of every raw seen in the last scale_in_window_s is below current -> that max,
             but removing at most max_scale_in_percent of current (at least 1) per tick
  zero     : only after the pool's queues have nothing waiting, in flight or scheduled (ETA) for
             idle_window_s (nothing unacked at all when attribution is unknown)
  hold     : broker unreadable, one of the pool's queues unreadable, or the reading older than
             stale_after_s -> keep current (or fallback_count if higher)
  clamp    : always within [min_workers, max_workers]
  floor    : then at least the minimum of every declared schedule whose window is open (schedules.py);
             a floor only raises, and is not kept as a recommendation, so it ends with its window
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.pause import Pause
from celery_autoscaler.schedules import schedule_floor


@dataclass(frozen=True)
class PoolState:
    """What the policy remembers between ticks; persisted per pool by the state store.

    ``recommendations`` are the (time, raw count) pairs still inside the scale-in window.
    ``version`` belongs to the store (optimistic locking); ``decide`` never changes it.
    ``pause`` (an operator's, see pause.py) and ``last_reason`` are the tick's; ``decide`` keeps them as they are.
    """

    recommendations: tuple[tuple[float, int], ...] = ()
    idle_since: float | None = None
    last_action_at: float | None = None
    last_desired: int | None = None
    consecutive_failures: int = 0
    pause: Pause | None = None
    last_reason: str | None = None
    version: int = 0


@dataclass(frozen=True)
class Decision:
    """The desired worker count for a pool, why, and the state to remember."""

    desired: int
    reason: str
    new_state: PoolState


def _clamp(count: int, pool: PoolConfig) -> int:
    return max(pool.min_workers, min(pool.max_workers, count))


def _describe(load: PoolLoad, in_flight: int, pool: PoolConfig) -> str:
    text = f"{load.waiting} waiting, {in_flight} in flight"
    if load.oldest_age_s is not None:
        text += f", oldest {load.oldest_age_s:.0f} s"
        if pool.target_latency_s is not None:
            relation = ">" if load.oldest_age_s > pool.target_latency_s else "<="
            text += f" {relation} {pool.target_latency_s:g} s target"
    return text


def _hold(measurements: PoolMeasurements, pool: PoolConfig, state: PoolState, why: str, now: float) -> Decision:
    """Missing or stale data: never lower the count; raise it to the fallback if one is configured."""
    current = measurements.current_desired
    desired = current if pool.fallback_count is None else max(current, pool.fallback_count)
    desired, reason = _floor(_clamp(desired, pool), f"hold: {why} -> {desired}", pool, now)
    new_state = replace(state, consecutive_failures=state.consecutive_failures + 1)
    return Decision(desired, reason, new_state)


def _floor(desired: int, reason: str, pool: PoolConfig, now: float) -> tuple[int, str]:
    """The floor step, after sizing: a declared schedule's minimum while its window is open.

    It only ever raises the count the rule above asks for (never past max_workers), and it is not
    remembered as a recommendation, so the count falls back to the rule's as soon as the window closes.
    """
    minimum, name = schedule_floor(pool.schedules, now)
    minimum = min(minimum, pool.max_workers)
    if minimum <= desired:
        return desired, reason
    return minimum, f"{reason}; schedule {name!r} minimum -> {minimum}"


def decide(measurements: PoolMeasurements, pool: PoolConfig, state: PoolState, now: float) -> Decision:
    """Return the pool's desired worker count (see the module docstring for the rule)."""
    load = measurements.load
    if load is None:
        return _hold(measurements, pool, state, "broker unreadable", now)
    if load.unreadable:
        queue, error = next(iter(load.unreadable.items()))
        more = f" (and {len(load.unreadable) - 1} more)" if len(load.unreadable) > 1 else ""
        return _hold(measurements, pool, state, f"queue {queue!r} unreadable: {error}{more}", now)
    if now - load.measured_at > pool.stale_after_s:
        return _hold(measurements, pool, state, f"reading {now - load.measured_at:.0f} s old", now)

    current = measurements.current_desired
    in_flight = load.in_flight if load.in_flight is not None else load.unacked_total
    demand = load.waiting + in_flight
    raw = math.ceil(demand / pool.tasks_per_worker)
    late = (
        pool.target_latency_s is not None
        and load.waiting > 0
        and load.oldest_age_s is not None
        and load.oldest_age_s > pool.target_latency_s
    )
    if late:
        # Still late once every worker asked for runs: add one. Still starting: hold, do not pile on.
        raw = max(raw, current + 1 if measurements.running >= current else current)
    raw = _clamp(raw, pool)

    window = [(t, r) for t, r in state.recommendations if now - t < pool.scale_in_window_s]
    window.append((now, raw))
    stabilised = max(r for _, r in window)

    # Another pool's unacked messages do not keep this one up; held ETA messages do (a worker must stay).
    held = load.scheduled if load.scheduled is not None else load.unacked_total
    idle = load.waiting == 0 and in_flight == 0 and held == 0
    idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None
    idle_for = now - idle_since if idle_since is not None else 0.0
    load_text = _describe(load, in_flight, pool)

    if raw > current:
        desired = raw
        if pool.max_scale_out_step is not None and current > 0:
            desired = min(raw, current + pool.max_scale_out_step)
        label = "burst" if current == 0 or late else "scale out"
        reason = f"{label}: {load_text} -> {desired}"
    elif stabilised < current:
        step = max(1, math.floor(current * pool.max_scale_in_percent / 100))
        desired = max(stabilised, current - step)
        if desired == 0 and idle_for < pool.idle_window_s:
            desired = 1
            reason = f"wait idle: {load_text}, idle {idle_for:.0f}/{pool.idle_window_s:g} s -> {desired}"
        elif desired == 0:
            reason = f"idle {idle_for:.0f} s: {load_text} -> 0"
        else:
            reason = f"scale in: {load_text}, max over {pool.scale_in_window_s:g} s is {stabilised} -> {desired}"
    else:
        desired = current
        reason = f"steady: {load_text} -> {desired}"

    desired, reason = _floor(_clamp(desired, pool), reason, pool, now)
    new_state = replace(
        state,
        recommendations=tuple(window),
        idle_since=idle_since,
        last_action_at=now if desired != current else state.last_action_at,
        last_desired=desired,
        consecutive_failures=0,
    )
    return Decision(desired, reason, new_state)
