"""The policies the benchmark compares ours with, each called like ``decide``: (measurements, state, now).

They emulate what users would deploy instead, as documented by their vendors, fed with what those
tools can see of a Celery Redis broker: the list length (``LLEN``), never the reserved messages.
The comparison runs them on the same simulated broker, workers and ECS (with the same scale-in
protection), so only the decisions differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.policy import PoolState, decide

SIM_EPOCH_S = 1_704_067_200.0
"""The wall-clock time of simulated second 0 for our policy: Monday 2024-01-01 00:00 UTC, so schedules and
learned periods see real dates (and ``weekday`` starts on a Monday)."""


class ScalerPolicy:
    """This product: the real :func:`celery_autoscaler.policy.decide`, state threaded as in production.

    Its clock (``now`` and the reading's time) is the simulated one plus :data:`SIM_EPOCH_S`.
    """

    name = "celery-autoscaler"
    interval_s: float | None = None
    initial_count = 0
    drains = True
    """Scale-in goes through the worker helper's fence and drain (``SimSettings.drain`` turns it off)."""

    def __init__(self, pool: PoolConfig) -> None:
        self.pool = pool

    def initial_state(self) -> PoolState:
        return PoolState()

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, PoolState]:
        if measurements.load is not None:
            load = replace(measurements.load, measured_at=measurements.load.measured_at + SIM_EPOCH_S)
            measurements = replace(measurements, load=load)
        decision = decide(measurements, self.pool, state, now + SIM_EPOCH_S)
        return decision.desired, decision.new_state


def _clamp(count: int, pool: PoolConfig) -> int:
    return max(pool.min_workers, min(pool.max_workers, count))


@dataclass(frozen=True)
class _AwsState:
    datapoints: tuple[float | None, ...] = ()
    depths: tuple[int, ...] = ()
    last_out: float = -math.inf
    last_in: float = -math.inf


class _VendorPolicy:
    """What the vendor baselines share: no worker at the start, and no change while the broker is unread."""

    initial_count = 0

    def __init__(self, pool: PoolConfig) -> None:
        self.pool = pool

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, Any]:
        if measurements.load is None:
            return measurements.current_desired, state
        return self._decide(measurements.load, measurements.current_desired, measurements.running, state, now)

    def _decide(self, load: PoolLoad, current: int, running: int, state: Any, now: float) -> tuple[int, Any]:
        raise NotImplementedError


class AwsTargetTracking(_VendorPolicy):
    """Application Auto Scaling target tracking on a custom "backlog per task" metric.

    As AWS documents it (Application Auto Scaling user guide, "How target tracking scaling works",
    and the SQS backlog-per-instance recipe): a datapoint every 60 s of visible messages / running
    tasks; the managed high alarm fires after 3 datapoints above the target and scales out
    proportionally, ``ceil(current x metric / target)``; the low alarm needs 15 datapoints below
    90 % of the target; scale-in waits ``in_cooldown`` (300 s) after any scaling activity and a
    scale-out during the scale-in cooldown happens at once; during the scale-out cooldown (300 s)
    only a larger capacity than the one already set is applied. The metric is undefined with no
    running task and proportional scaling cannot leave 0, so, as AWS advises for scale-to-zero, a
    step-scaling alarm on the raw depth (> 0 for one datapoint) sets 1 task.
    The target follows AWS's recipe: acceptable latency / average processing time x concurrency.
    """

    name = "aws-target-tracking"
    interval_s: float | None = 60.0
    out_datapoints = 3
    in_datapoints = 15
    out_cooldown = 300.0
    in_cooldown = 300.0

    def __init__(self, pool: PoolConfig, target: float) -> None:
        super().__init__(pool)
        self.target = target

    def initial_state(self) -> _AwsState:
        return _AwsState()

    def _decide(self, load: PoolLoad, current: int, running: int, state: Any, now: float) -> tuple[int, _AwsState]:
        metric = load.waiting / running if running > 0 else None
        keep = max(self.out_datapoints, self.in_datapoints)
        points = (*state.datapoints, metric)[-keep:]
        new: _AwsState = replace(state, datapoints=points)
        if current == 0 or running == 0:
            if current == 0 and load.waiting > 0:  # the step alarm on raw depth: 0 -> 1
                return _clamp(1, self.pool), replace(new, last_out=now)
            return current, new
        last_out = points[-self.out_datapoints :]
        if len(last_out) == self.out_datapoints and all(p is not None and p > self.target for p in last_out):
            wanted = _clamp(math.ceil(current * (metric or 0.0) / self.target), self.pool)
            if wanted > current:
                return wanted, replace(new, last_out=now)
        last_in = points[-self.in_datapoints :]
        quiet = (
            now - max(state.last_out, state.last_in) >= self.in_cooldown and now - state.last_out >= self.out_cooldown
        )
        if (
            quiet
            and len(last_in) == self.in_datapoints
            and all(p is not None and p < 0.9 * self.target for p in last_in)
        ):
            wanted = _clamp(math.ceil(current * (metric or 0.0) / self.target), self.pool)
            if wanted < current:
                return wanted, replace(new, last_in=now)
        return current, new


class AwsStepScaling(_VendorPolicy):
    """Application Auto Scaling step scaling on the raw queue depth (visible messages), 1-minute datapoints.

    Scale out when the depth alarm (depth > 0 for 1 datapoint) is in ALARM, adding capacity by the
    step the depth falls in (``steps``: lower bound -> tasks to add); scale in by
    ``scale_in_percent`` of the capacity when the depth has been 0 for ``in_datapoints`` datapoints.
    Each policy's cooldown blocks its own next action, as step scaling's ``Cooldown`` does.
    """

    name = "aws-step-scaling"
    interval_s: float | None = 60.0
    steps = ((1, 1), (10, 2), (50, 5), (200, 10), (1000, 20))
    in_datapoints = 5
    scale_in_percent = 25.0
    out_cooldown = 60.0
    in_cooldown = 300.0

    def initial_state(self) -> _AwsState:
        return _AwsState()

    def _decide(self, load: PoolLoad, current: int, running: int, state: Any, now: float) -> tuple[int, _AwsState]:
        depths = (*state.depths, load.waiting)[-self.in_datapoints :]
        new: _AwsState = replace(state, depths=depths)
        if load.waiting > 0 and now - state.last_out >= self.out_cooldown:
            add = max(n for lower, n in self.steps if load.waiting >= lower)
            wanted = _clamp(current + add, self.pool)
            if wanted > current:
                return wanted, replace(new, last_out=now)
        if (
            len(depths) == self.in_datapoints
            and not any(depths)
            and current > 0
            and now - state.last_in >= self.in_cooldown
        ):
            step = max(1, math.floor(current * self.scale_in_percent / 100.0))
            wanted = _clamp(current - step, self.pool)
            if wanted < current:
                return wanted, replace(new, last_in=now)
        return current, new


@dataclass(frozen=True)
class _KedaState:
    last_poll: float = -math.inf
    active_at: float = -math.inf
    active: bool = False
    recommendations: tuple[tuple[float, int], ...] = ()


class Keda(_VendorPolicy):
    """KEDA's Redis list scaler driving a Kubernetes HPA, with every default as documented.

    KEDA (keda.sh, "Scaling Deployments" and the Redis Lists scaler): the operator polls the list
    every ``polling_interval_s`` (30 s) and alone moves 0 <-> 1: to 1 when the length exceeds
    ``activationListLength`` (0), to 0 after ``cooldown_period_s`` (300 s) without activity. Above 0
    the HPA (sync every 15 s) reads the metric live and sets ``ceil(length / listLength)`` (listLength
    default 5), skipped within the 10 % tolerance; scale-up is limited to max(4 pods, 100 %) per
    15 s; scale-down takes the highest recommendation of the last 300 s (stabilisation window).
    """

    name = "keda"
    interval_s: float | None = 15.0
    list_length = 5.0
    polling_interval_s = 30.0
    cooldown_period_s = 300.0
    stabilisation_s = 300.0
    tolerance = 0.1

    def initial_state(self) -> _KedaState:
        return _KedaState()

    def _decide(self, load: PoolLoad, current: int, running: int, state: Any, now: float) -> tuple[int, _KedaState]:
        length = load.waiting
        new: _KedaState = state
        if now - state.last_poll >= self.polling_interval_s - 1e-9:
            new = replace(new, last_poll=now, active=length > 0)
            if length > 0:
                new = replace(new, active_at=now)
            if current == 0 and length > 0:
                return _clamp(1, self.pool), new
            if current > 0 and length == 0 and now - new.active_at >= self.cooldown_period_s:
                return _clamp(0, self.pool), replace(new, recommendations=())
        if current == 0:
            return current, new
        ratio = length / (self.list_length * current)
        recommended = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(length / self.list_length)
        recommended = max(1, _clamp(recommended, self.pool))
        window = (*((t, r) for t, r in new.recommendations if now - t < self.stabilisation_s), (now, recommended))
        new = replace(new, recommendations=window)
        if recommended > current:
            return min(recommended, max(current + 4, 2 * current)), new
        stabilised = max(r for _, r in window)
        if stabilised < current:
            return stabilised, new
        return current, new


class Static:
    """A constant fleet, warm from the start."""

    interval_s: float | None = 3600.0

    def __init__(self, count: int, name: str) -> None:
        self.initial_count, self.name = count, name

    def initial_state(self) -> None:
        return None

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, None]:
        return self.initial_count, None


def busy_per_minute(enqueue_s: list[float], service_s: list[float], horizon_s: float) -> list[float]:
    """Mean number of tasks running in each minute if every task started on arrival (exact overlap)."""
    minutes = math.ceil(horizon_s / 60.0) + 1
    busy = [0.0] * minutes
    for t, s in zip(enqueue_s, service_s, strict=True):
        end = t + s
        m = int(t // 60.0)
        while m < minutes and m * 60.0 < end:
            busy[m] += min(end, m * 60.0 + 60.0) - max(t, m * 60.0)
            m += 1
    return [b / 60.0 for b in busy]


def staffing(busy: float, concurrency: int, beta: float = 1.0) -> int:
    """Workers for an offered load of ``busy`` tasks: square-root staffing, busy + beta x sqrt(busy) slots."""
    return math.ceil((busy + beta * math.sqrt(busy)) / concurrency) if busy > 0 else 0


class OracleUpper:
    """The clairvoyant feasible schedule: it knows every future arrival and run time.

    For each minute it staffs the load that minute will carry if tasks never wait, by the
    square-root rule (load + sqrt(load) slots: short waits at high utilisation), and every
    ``period_s`` it asks for the most any minute in the next ``lookahead_s`` needs (the start
    delay's high quantile), so workers are launched a start delay ahead of need and stopped when
    need falls. It runs through the same engine, so its waits and bill are measured, not assumed.
    """

    period_s = 5.0
    interval_s: float | None = period_s
    name = "oracle-upper"

    def __init__(self, pool: PoolConfig, busy: list[float], lookahead_s: float) -> None:
        self.pool = pool
        self.need = [_clamp(staffing(b, pool.concurrency), pool) for b in busy]
        self.lookahead_s = lookahead_s
        self.initial_count = self._ahead(0.0)

    def _ahead(self, now: float) -> int:
        first = int(now // 60.0)
        last = int((now + self.lookahead_s) // 60.0)
        return max(self.need[first : last + 1], default=0)

    def initial_state(self) -> None:
        return None

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, None]:
        return self._ahead(now), None


def oracle_lower_worker_seconds(service_s: list[float], concurrency: int, min_billed_s: float) -> float:
    """No schedule can bill less: all the work at full concurrency plus one worker's app start (>= 2 s)."""
    if not service_s:
        return 0.0
    return max(min_billed_s, sum(service_s) / concurrency + 2.0)
