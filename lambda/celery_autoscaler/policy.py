"""The scaling policy: one pure function from (measurements, pool config, state, now) to a decision.

No I/O happens here, so the Lambda, the local demo and the simulator all run exactly this code.
Data flows one way: the tick's measurements feed the estimators (:mod:`celery_autoscaler.estimates`:
arrival rate lambda, mean run time s, start delay D), whose estimates feed the sizing below.

The rule, per pool (c = concurrency x target_utilisation slots per worker):
  load     R = lambda x s busy slots; at least in-flight without the helper's counters; while
           every slot is busy with a queue behind and the busy slots did not turn over since the
           last tick (completions x s below half the slots busy at both ticks), at least in-flight -
           sqrt(in-flight) - concurrency (long tasks still running: the completions' run time lags)
  backlog  work = waiting x s + (R - running x concurrency) x A slot-seconds: the backlog as it
           will stand when the capacity asked for arrives. A is the start delay D, or, while
           asked-for workers still start (running < current), what is left of it, so the backlog
           that builds while they start is not sized again
  slots    no wait target: R + sqrt(R) (square-root staffing, beta 1: little waiting) + work /
           drain_time_s;
           wait_target_s W: the fewest K that keep a task's projected wait under W until a
           correction asked for now could run (H = D), the queue changing by R' - K a second with a
           spread of one standard deviation (R' from the median arrival rate):
           K = L + max(work / max(drain_time_s, W - D), (work + R' H + sqrt(2 R' s H)) / (W + H)),
           where L is what the long-task floor above finds beyond R' (slots long tasks hold serve
           no backlog; 0 without the floor); K is below R when the wait budget allows a queue; if
           W < s (waits from coincidences, not from a queue), at least Erlang C's fewest N with
           C(N, R) x exp(-(N - R) W / s) <= 0.05
  need     slots / c workers; without a run time yet: (waiting + in-flight) /
           tasks_per_worker, as before (one slot per task), but no more than current while
           asked-for workers still start
  late     if the oldest waiting task is older than target_latency_s and every worker asked for
           is running, at least current + 1
  out      : ceil(need) > current -> at once (capped by max_scale_out_step unless starting from 0)
  in       : the max over scale_in_window_s of ceil(need x (1 + scale_in_tolerance)), never fewer
           than in-flight / concurrency (the busy workers), is below current -> that max,
           removing at most max_scale_in_percent of current per tick: a small drop waits; with
           nothing waiting and this tick's count at most half of current (a burst is over), that
           count at once, without the window
  zero     : only after the pool's queues have nothing waiting, in flight or scheduled (ETA) for
             idle_window_s (nothing unacked at all when attribution is unknown)
  hold     : broker unreadable, one of the pool's queues unreadable, or the reading older than
             stale_after_s -> keep current (or fallback_count if higher); the estimators are not updated
  clamp    : always within [min_workers, max_workers]; a count capped by max_workers says so in its
             reason ("-> 6 (at max_workers; 126 wanted)") and in ``Decision.wanted``
  floor    : then at least the minimum of every declared schedule whose window is open (schedules.py);
             a floor only raises, and is not kept as a recommendation, so it ends with its window
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.estimates import Estimates, EstimatorState, observe, record_raise
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.pause import Pause
from celery_autoscaler.recurrence import RecurrenceState, prewarm_floor
from celery_autoscaler.recurrence import observe as learn
from celery_autoscaler.schedules import schedule_floor

BETA = 1.0
"""Square-root staffing's safety factor without a wait target: about 1 task in 5 waits, briefly."""
WAIT_QUANTILE = 0.95
"""A wait target is a p95: at most 5 % of tasks wait longer."""


@dataclass(frozen=True)
class PoolState:
    """What the policy remembers between ticks; persisted per pool by the state store.

    ``recommendations`` are the (time, count to keep) pairs still inside the scale-in window.
    ``estimator`` is what the estimators remember (rates, run-time sums, pending increases).
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
    estimator: EstimatorState = field(default_factory=EstimatorState)
    recurrence: RecurrenceState = field(default_factory=RecurrenceState)
    version: int = 0


@dataclass(frozen=True)
class Decision:
    """The desired worker count for a pool, why, the estimates it used (none on hold), and the state to remember."""

    desired: int
    reason: str
    new_state: PoolState
    estimates: Estimates | None = None
    wanted: int | None = None
    """What the load asked for when ``max_workers`` capped it (``desired`` is then max_workers), else ``None``."""


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
    lead_s = _lead_s(pool, state, now, pool.start_delay_s)
    desired, reason = _floor(_clamp(desired, pool), f"hold: {why} -> {desired}", pool, now, state.recurrence, lead_s)
    new_state = replace(state, consecutive_failures=state.consecutive_failures + 1)
    return Decision(desired, reason, new_state)


def _lead_s(pool: PoolConfig, state: PoolState, now: float, start_delay_s: float) -> float:
    """How long before a predicted onset to raise the pool: a start, the margin, and a tick (ticks are discrete)."""
    tick_s = now - state.recurrence.at if state.recurrence.at is not None else 0.0
    return start_delay_s + pool.prewarm_margin_s + min(tick_s, 60.0)


def _floor(
    desired: int, reason: str, pool: PoolConfig, now: float, recurrence: RecurrenceState, lead_s: float
) -> tuple[int, str]:
    """The floor step, after sizing: a declared schedule's minimum while its window is open, and the
    learned pre-warm before a predicted onset (recurrence.py).

    It only ever raises the count the rule above asks for (never past max_workers), and it is not
    remembered as a recommendation, so the count falls back to the rule's as soon as the window closes.
    """
    minimum, name = schedule_floor(pool.schedules, now)
    why = f"schedule {name!r} minimum"
    if pool.learned_prewarm:
        learned, predicted = prewarm_floor(recurrence, now, lead_s, pool.prewarm_confidence, pool.prewarm_max_misses)
        if learned > minimum:
            minimum, why = learned, f"pre-warm ({predicted})"
    minimum = min(minimum, pool.max_workers)
    if minimum <= desired:
        return desired, reason
    return minimum, f"{reason}; {why} -> {minimum}"


def erlang_c_slots(
    load: float, run_s: float, wait_s: float, quantile: float = WAIT_QUANTILE, limit: int | None = None
) -> int:
    """The fewest slots N > load with P(wait > wait_s) = C(N, load) x exp(-(N - load) wait_s / run_s) <= 1 - quantile.

    Erlang B by its recurrence B(n) = a B(n-1) / (n + a B(n-1)), then C = N B / (N - a (1 - B)):
    one pass, no factorials, so 100 pools stay far below a millisecond each. ``limit`` (the slots
    max_workers has) ends the search there: more could never be asked for.
    """
    if load <= 0:
        return 0
    blocking, n = 1.0, 0
    while True:
        n += 1
        if limit is not None and n >= limit:
            return limit
        blocking = load * blocking / (n + load * blocking)
        if n > load:
            waits = n * blocking / (n - load * (1.0 - blocking))
            if waits * math.exp(-(n - load) * wait_s / run_s) <= 1.0 - quantile:
                return n


def _need(
    measurements: PoolMeasurements, in_flight: int, estimates: Estimates, pool: PoolConfig, now: float
) -> tuple[float, str]:
    """Workers needed (a real number) and the terms that gave it, for the reason."""
    waiting = measurements.load.waiting if measurements.load is not None else 0
    run_s = estimates.mean_run_s
    if run_s is None or run_s <= 0:
        need = (waiting + in_flight) / pool.tasks_per_worker
        text = f"({waiting} + {in_flight}) / {pool.tasks_per_worker:g} tasks per worker (no run time yet)"
        if measurements.running < measurements.current_desired:
            # Nothing to project with: the backlog that builds while asked-for workers start waits for them.
            need = min(need, float(measurements.current_desired))
            text += f", {measurements.current_desired - measurements.running} still starting"
        return need, text
    rate = estimates.arrival_rate
    offered = rate * run_s if rate is not None else 0.0
    held_slots = 0.0
    if estimates.source != "counters" or rate is None:
        offered = max(offered, float(in_flight))  # without counters, busy slots are the load we know
    elif (
        waiting > 0
        and in_flight >= measurements.running * pool.concurrency
        and _slots_held(estimates, in_flight, run_s)
    ):
        # Every slot busy with a queue behind, and the busy slots do not turn over: long tasks still
        # running are load the completions' run time does not show yet. Less a noise margin, so a
        # steady pool's busy moments do not count.
        held_slots = in_flight - math.sqrt(in_flight) - pool.concurrency
        offered = max(offered, held_slots)
    # Until the capacity asked for arrives (the start delay; for workers already starting, what is left
    # of it), the running workers' spare slots drain the backlog and a shortfall adds to it. Asking
    # again while they start projects to the same moment, so that growth is not sized twice.
    arrives_in = estimates.start_delay_s
    if estimates.starting_since is not None and measurements.running < measurements.current_desired:
        arrives_in = max(0.0, arrives_in - (now - estimates.starting_since))
    deficit = offered - measurements.running * pool.concurrency
    work = max(0.0, waiting * run_s + deficit * arrives_in)
    rate_text = "?" if rate is None else f"{rate:.2f}/s"
    per_worker = pool.concurrency * pool.target_utilisation
    if pool.wait_target_s is None:
        base = offered + BETA * math.sqrt(offered)
        slots = base + work / pool.drain_time_s
        terms = f"over {pool.drain_time_s:g} s; ({base:.1f} + {work / pool.drain_time_s:.1f})"
    else:
        slots, terms = _wait_slots(pool.wait_target_s, work, run_s, estimates, pool, offered, held_slots)
        base = slots
    need = slots / per_worker
    text = (
        f"R {rate_text} x {run_s:.2f} s = {offered:.1f} slots, base {base:.1f}; backlog {waiting} x {run_s:.2f} s "
        f"{deficit:+.1f} slots x {arrives_in:.0f} s to capacity = {work:.0f} slot-s {terms} / {per_worker:g} "
        f"= {need:.2f} workers"
    )
    return need, text


def _slots_held(estimates: Estimates, in_flight: int, run_s: float) -> bool:
    """Whether the busy slots failed to turn over since the last tick: fewer completions than half of
    what the tasks busy at both ticks would give at the mean run time (or no counters to tell).

    A burst's first ticks fill every slot with tasks that just started, and a backlog being drained
    keeps them busy with short tasks that finish at the rate the run time says: neither is long tasks.
    """
    if estimates.completion_rate is None or estimates.busy_before is None:
        return True
    return estimates.completion_rate * run_s < min(in_flight, estimates.busy_before) / 2


def _wait_slots(
    wait_s: float,
    work: float,
    run_s: float,
    estimates: Estimates,
    pool: PoolConfig,
    offered: float,
    held_slots: float,
) -> tuple[float, str]:
    """Slots for a wait target W: the fewest K whose projected queue keeps the wait under W over the
    horizon H = D (how long until a correction asked for now runs).

    The queue at the capacity's arrival is ``work``; after it, it changes by (R - K) slot-seconds a
    second plus a spread of one standard deviation of the work arriving in H (Poisson arrivals, run
    times of coefficient of variation 1: sqrt(2 R s H)). A task waits the queue ahead over K, so
    K >= (work + R H + spread) / (W + H) keeps the last arrival of the horizon under W, and
    K >= work / max(drain_time_s, W - D) lets the backlog's tasks, which wait a start for it, drain in time.
    R here is the median rate (a minute ahead it predicts better than the quick one). Slots that
    long tasks hold (``held_slots``, the long-task floor) beyond R serve none of that, so they come on top:
    without them a burst's long tasks fill the fleet and its backlog waits a run time. A target
    shorter than a run time is waits from coincidences, not from a queue: then also Erlang C's.
    """
    steady = (estimates.median_rate or 0.0) * run_s
    horizon_s = estimates.start_delay_s
    spread = BETA * math.sqrt(2.0 * steady * run_s * horizon_s)
    drain_s = max(pool.drain_time_s, wait_s - estimates.start_delay_s)
    long_held = max(0.0, held_slots - steady)
    slots = long_held + max(work / drain_s, (work + steady * horizon_s + spread) / (wait_s + horizon_s))
    terms = (
        f"for wait {wait_s:g} s over H {horizon_s:.0f} s: {long_held:.1f} held + max({work:.0f} / {drain_s:.0f} s, "
        f"({work:.0f} + {steady:.1f} x {horizon_s:.0f} + {spread:.0f}) / ({wait_s:g} + {horizon_s:.0f})) = {slots:.1f}"
    )
    if wait_s < run_s:
        erlang = float(erlang_c_slots(offered, run_s, wait_s, limit=(pool.max_workers + 1) * pool.concurrency))
        terms += f", Erlang C {erlang:g} ({wait_s:g} s < run time)"
        slots = max(slots, erlang)
    return slots, f"{terms}; {slots:.1f}"


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
    estimates, estimator = observe(
        state.estimator, load, current, measurements.running, now, prior_start_s=pool.start_delay_s
    )
    in_flight = load.in_flight if load.in_flight is not None else load.unacked_total
    need, sizing = _need(measurements, in_flight, estimates, pool, now)
    raw = math.ceil(need - 1e-9)
    # Never below what the in-flight tasks occupy (they run on workers that exist: not a reason to add).
    occupied = math.ceil(in_flight / pool.concurrency)
    keep = _clamp(max(occupied, math.ceil(need * (1.0 + pool.scale_in_tolerance) - 1e-9)), pool)
    late = (
        pool.target_latency_s is not None
        and load.waiting > 0
        and load.oldest_age_s is not None
        and load.oldest_age_s > pool.target_latency_s
    )
    if late:
        # Still late once every worker asked for runs: add one. Still starting: hold, do not pile on.
        raw = max(raw, current + 1 if measurements.running >= current else current)
        keep = max(keep, raw)
    wanted = raw
    raw = _clamp(raw, pool)

    window = [(t, r) for t, r in state.recommendations if now - t < pool.scale_in_window_s]
    window.append((now, keep))
    stabilised = max(r for _, r in window)
    if load.waiting == 0 and 2 * keep <= current:
        stabilised = keep  # a burst is over: at least half the workers go at once, not a window later

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
        reason = f"{label}: {load_text}; {sizing} -> {desired}"
    elif stabilised < current:
        step = max(1, math.floor(current * pool.max_scale_in_percent / 100))
        desired = max(stabilised, current - step)
        if desired == 0 and idle_for < pool.idle_window_s:
            desired = 1
            reason = f"wait idle: {load_text}, idle {idle_for:.0f}/{pool.idle_window_s:g} s -> {desired}"
        elif desired == 0:
            reason = f"idle {idle_for:.0f} s: {load_text} -> 0"
        else:
            reason = (
                f"scale in: {load_text}; {sizing}; max over {pool.scale_in_window_s:g} s "
                f"(+{pool.scale_in_tolerance:.0%}) is {stabilised} -> {desired}"
            )
    else:
        desired = current
        reason = f"steady: {load_text}; {sizing} -> {desired}"

    desired = _clamp(desired, pool)
    capped = wanted > pool.max_workers and desired == pool.max_workers
    if capped:
        reason += f" (at max_workers; {wanted} wanted)"
    lead_s = _lead_s(pool, state, now, estimates.start_delay_s)
    recurrence = state.recurrence
    if pool.learned_prewarm:
        rate = estimator.rates[-1][1] if estimator.rates and estimator.rates[-1][0] == now else None
        run_s = estimates.mean_run_s
        per_worker = pool.concurrency * pool.target_utilisation * pool.drain_time_s / run_s if run_s else None
        recurrence = learn(recurrence, now, rate, load.oldest_age_s, desired, per_worker, pool.prewarm_max_misses)
    desired, reason = _floor(desired, reason, pool, now, recurrence, lead_s)
    if desired > current:
        estimator = record_raise(estimator, now, desired, measurements.running)
    new_state = replace(
        state,
        recommendations=tuple(window),
        idle_since=idle_since,
        last_action_at=now if desired != current else state.last_action_at,
        last_desired=desired,
        consecutive_failures=0,
        estimator=estimator,
        recurrence=recurrence,
    )
    return Decision(desired, reason, new_state, estimates, wanted if capped else None)
