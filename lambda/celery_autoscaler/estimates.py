"""What sizing needs and the broker does not say directly: arrival rate, mean run time, start delay.

Pure, like the policy that calls it: :func:`observe` takes one tick's measurements and the pool's
:class:`EstimatorState` and returns the :class:`Estimates` plus the state to keep. Data flows one way
(measurements -> estimates -> decision); nothing here knows the decision except :func:`record_raise`,
which remembers when the desired count went up so the start delay can be measured.

- **Arrival rate** per tick = (completions since the last tick + change in waiting + in-flight) / seconds.
  The rate used is ``max(median of the per-tick rates of the last RATE_WINDOW_S, min of the last
  two)``: one burst tick lands in the backlog the policy drains, not in the steady rate, and a real
  step up is followed within two ticks.
- **Mean run time** = decayed sum of run time / decayed sum of completions, half-life
  RUN_TIME_HALF_LIFE_S of time with completions (a per-tick mean swings by seconds when a few long
  tasks finish together; an idle pause does not age what was learned).
- **Without the worker helper's counters** (fallbacks, named in ``Estimates.source``): arrival rate
  ~ waiting / age of the oldest waiting task (FIFO: all of them came after it); run time ~ in-flight /
  throughput (Little's law; in-flight counts running tasks with ``acks_late``), throughput being
  arrivals minus the growth of the queue.
- **Start delay**: the time from raising the desired count to ECS's running count reaching it,
  median of the last START_SAMPLES, the Fargate median (the pool's ``start_delay_s``) until then.
  A tick sees the moment only to within a tick, so half the time since the previous tick is taken off.
- A counter that goes down (its key was reset) starts over from the new value; a lost tick only
  makes one interval longer (the counters are cumulative); a worker that never reports makes the
  counted arrivals too low, never negative, and the policy's in-flight floor still holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

from celery_autoscaler.measurements import PoolLoad

RATE_WINDOW_S = 120.0
RUN_TIME_HALF_LIFE_S = 600.0
START_SAMPLES = 5
MAX_PENDING_RAISES = 4
MAX_RATE_SAMPLES = 16
"""At most this many per-tick rates are kept, whatever the tick interval: the state stays small."""


@dataclass(frozen=True)
class EstimatorState:
    """What the estimators keep between ticks (inside ``PoolState``; JSON of well under 2 KB).

    ``at``, ``completed``, ``run_seconds``, ``backlog`` and ``waiting`` are the previous tick's
    readings; ``rates`` the recent per-tick arrival rates ``(time, per second)``; ``run_sum`` and
    ``count_sum`` the decayed sums behind the mean run time; ``raises`` the increases of the desired
    count not yet met by running workers ``(time, target)``; ``start_samples`` measured start delays.
    """

    at: float | None = None
    completed: int | None = None
    run_seconds: float | None = None
    backlog: int | None = None
    waiting: int | None = None
    rates: tuple[tuple[float, float], ...] = ()
    run_sum: float = 0.0
    count_sum: float = 0.0
    raises: tuple[tuple[float, int], ...] = ()
    start_samples: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, body: Any) -> EstimatorState:
        """The state from its stored JSON (``dataclasses.asdict`` form); ``None`` is a fresh state.

        Raises ``ValueError`` naming the field when a value is not what this class writes.
        """
        if body is None:
            return cls()
        if not isinstance(body, dict):
            raise ValueError("is not an object")
        return cls(
            at=_number(body, "at", optional=True),
            completed=_count(body, "completed"),
            run_seconds=_number(body, "run_seconds", optional=True),
            backlog=_count(body, "backlog"),
            waiting=_count(body, "waiting"),
            rates=tuple((_value(t, "rates"), _value(r, "rates")) for t, r in _pairs(body, "rates")),
            run_sum=_number(body, "run_sum") or 0.0,
            count_sum=_number(body, "count_sum") or 0.0,
            raises=tuple((_value(t, "raises"), int(_value(n, "raises"))) for t, n in _pairs(body, "raises")),
            start_samples=tuple(_value(v, "start_samples") for v in _list(body, "start_samples")),
        )


def _value(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} holds {str(value)[:20]}, not a number >= 0")
    return float(value)


def _number(body: dict[str, Any], name: str, optional: bool = False) -> float | None:
    value = body.get(name)
    if value is None and optional:
        return None
    return _value(0.0 if value is None else value, name)


def _count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} holds {str(value)[:20]}, not a count")
    return value


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"{name} is not a list")
    return value


def _pairs(body: dict[str, Any], name: str) -> list[tuple[Any, Any]]:
    items = _list(body, name)
    if not all(isinstance(item, list) and len(item) == 2 for item in items):
        raise ValueError(f"{name} is not a list of pairs")
    return [(a, b) for a, b in items]


@dataclass(frozen=True)
class Estimates:
    """One tick's estimates for a pool; ``None`` where nothing could be estimated yet.

    ``source`` says which estimators gave them: ``counters`` (the worker helper's), ``fallback``
    (arrival rate from the oldest waiting task's age, run time by Little's law) or ``none`` (too
    early to tell).
    ``starting_since`` is when the oldest increase still not met by running workers was asked for.
    ``median_rate`` is the median of the per-tick rates kept (no quick step-up: what a wait target's
    horizon, a minute or more ahead, projects); ``completion_rate`` the tasks finished per second since
    the last tick (counters only) and ``busy_before`` the last tick's in-flight: whether busy slots
    turn over.
    """

    arrival_rate: float | None
    mean_run_s: float | None
    start_delay_s: float
    source: str
    starting_since: float | None = None
    median_rate: float | None = None
    completion_rate: float | None = None
    busy_before: int | None = None

    def summary(self) -> dict[str, float | str | None]:
        """The JSON the tick logs."""
        return {
            "arrival_rate": None if self.arrival_rate is None else round(self.arrival_rate, 3),
            "mean_run_s": None if self.mean_run_s is None else round(self.mean_run_s, 3),
            "start_delay_s": round(self.start_delay_s, 1),
            "source": self.source,
        }


def _robust_rate(rates: tuple[tuple[float, float], ...]) -> float | None:
    if not rates:
        return None
    values = [r for _, r in rates]
    return max(median(values), min(values[-2:]))


def _start_delay(
    state: EstimatorState, current: int, running: int, now: float, prior_s: float
) -> tuple[EstimatorState, float]:
    """Meet pending raises that running workers reached; drop those the desired count fell below."""
    half_tick = (now - state.at) / 2.0 if state.at is not None else 0.0
    samples = list(state.start_samples)
    pending: list[tuple[float, int]] = []
    for raised_at, target in state.raises:
        if running >= target:
            samples.append(round(max(0.0, now - raised_at - half_tick), 1))
        elif current >= target:
            pending.append((raised_at, target))
    samples = samples[-START_SAMPLES:]
    estimate = median(samples) if samples else prior_s
    return replace(state, raises=tuple(pending), start_samples=tuple(samples)), estimate


def observe(
    state: EstimatorState, load: PoolLoad, current: int, running: int, now: float, prior_start_s: float
) -> tuple[Estimates, EstimatorState]:
    """Update the estimators with one tick's readings (``load`` must be fresh: the policy checks)."""
    state, start_delay = _start_delay(state, current, running, now, prior_start_s)
    in_flight = load.in_flight if load.in_flight is not None else load.unacked_total
    backlog = load.waiting + in_flight
    dt = now - state.at if state.at is not None else 0.0
    counters = load.completed is not None and load.run_seconds is not None
    reset = counters and state.completed is not None and (load.completed or 0) < state.completed
    rate: float | None = None
    completion_rate: float | None = None
    run_sum, count_sum = state.run_sum, state.count_sum
    if counters and state.completed is not None and state.run_seconds is not None and not reset and dt > 0:
        done = (load.completed or 0) - state.completed
        completion_rate = done / dt
        if done > 0:  # the helper writes both counters in one transaction: no run time without a count
            run_sum, count_sum = _aged(run_sum, count_sum, dt)
            run_sum += max(0.0, (load.run_seconds or 0.0) - state.run_seconds)
            count_sum += done
        if state.backlog is not None:
            rate = max(0.0, done + backlog - state.backlog) / dt
    elif not counters and dt > 0:
        if load.waiting == 0:
            rate = 0.0
        elif load.oldest_age_s is not None:
            rate = load.waiting / max(load.oldest_age_s, 1.0)
        if rate and state.waiting is not None and in_flight > 0:
            throughput = rate - (load.waiting - state.waiting) / dt
            if throughput > 0:
                run_sum, count_sum = _aged(run_sum, count_sum, dt)
                run_sum, count_sum = run_sum + in_flight * dt, count_sum + throughput * dt
    rates = state.rates
    if rate is not None:
        rates = tuple((t, r) for t, r in rates if now - t < RATE_WINDOW_S)[-(MAX_RATE_SAMPLES - 1) :]
        rates = (*rates, (now, round(rate, 4)))
    source = "counters" if counters else ("fallback" if rates else "none")
    mean_run = run_sum / count_sum if count_sum > 1e-9 else None
    estimates = Estimates(
        arrival_rate=_robust_rate(rates),
        mean_run_s=mean_run,
        start_delay_s=start_delay,
        source=source,
        starting_since=min((t for t, _ in state.raises), default=None),
        median_rate=median([r for _, r in rates]) if rates else None,
        completion_rate=completion_rate,
        busy_before=max(0, state.backlog - state.waiting)
        if state.backlog is not None and state.waiting is not None
        else None,
    )
    new_state = replace(
        state,
        at=now,
        completed=load.completed if counters else None,
        run_seconds=load.run_seconds if counters else None,
        backlog=backlog,
        waiting=load.waiting,
        rates=rates,
        run_sum=_compact(run_sum),
        count_sum=_compact(count_sum),
    )
    return estimates, new_state


def _aged(run_sum: float, count_sum: float, dt: float) -> tuple[float, float]:
    """The run-time sums aged by ``dt`` seconds of work: only intervals with completions age them, so
    a pool idle between batches keeps what it learned instead of forgetting it in the pause."""
    decay = 0.5 ** (dt / RUN_TIME_HALF_LIFE_S)
    return run_sum * decay, count_sum * decay


def record_raise(state: EstimatorState, now: float, desired: int, running: int) -> EstimatorState:
    """Remember that the desired count went up to ``desired`` at ``now`` (to time the workers' start).

    Only a raise above what already runs starts workers (ECS may still run workers a scale-in could
    not stop yet), so only that one is timed.
    """
    if desired <= running:
        return state
    return replace(state, raises=(*state.raises, (now, desired))[-MAX_PENDING_RAISES:])


def _compact(value: float) -> float:
    """Six significant digits: enough for a ratio, and the stored JSON stays short."""
    return float(f"{value:.6g}") if math.isfinite(value) else 0.0
