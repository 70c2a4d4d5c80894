"""The what-if entry point: replay a trace under our policy and the ones users would use instead."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from celery_autoscaler.config import PoolConfig, ScalerConfig
from celery_autoscaler.sim.baselines import (
    AwsStepScaling,
    AwsTargetTracking,
    Keda,
    OracleUpper,
    ScalerPolicy,
    Static,
    busy_per_minute,
    oracle_lower_worker_seconds,
    staffing,
)
from celery_autoscaler.sim.engine import RunResult, SimPolicy, SimSettings, run_pool
from celery_autoscaler.sim.traces import Trace

POLICIES = (
    "celery-autoscaler",
    "aws-target-tracking",
    "aws-step-scaling",
    "keda",
    "static-min",
    "static-peak",
    "oracle-lower",
    "oracle-upper",
)
GROUPS = {
    "aws": ("aws-target-tracking", "aws-step-scaling"),
    "static": ("static-min", "static-peak"),
    "oracle": ("oracle-lower", "oracle-upper"),
    "all": POLICIES[1:],
}
METRICS = (
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "max_backlog",
    "worker_seconds",
    "cost_usd",
    "scaling_actions",
    "slo_violation_minutes",
    "tasks_killed",
)
DEFAULT_POOL = PoolConfig(name="workers", service="celery-workers", queues=("celery",), max_workers=100)
"""The module's pool defaults (concurrency 2) with room (max_workers 100) for the built-in bursts."""


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """Comparison names and groups (aws, static, oracle, all) -> policy names, ours first, in table order."""
    wanted = {"celery-autoscaler"}
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in POLICIES:
            wanted.add(name)
        else:
            known = ", ".join([*POLICIES, *GROUPS])
            raise ValueError(f"unknown policy {name!r} (known: {known})")
    return tuple(p for p in POLICIES if p in wanted)


@dataclass
class PolicyOutcome:
    """One policy's numbers over every pool, and the timeline of the first pool (for plots)."""

    metrics: dict[str, float | int]
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def summarise(runs: list[RunResult], settings: SimSettings) -> dict[str, float | int]:
    """The reported numbers of one policy over its pools' runs."""
    waits = sorted(w for r in runs for w in r.waits)
    late = {int(e // 60.0) for r in runs for e, w in zip(r.enqueue_s, r.waits, strict=True) if w > settings.slo_s}
    seconds = sum(r.worker_seconds for r in runs)
    return {
        "wait_p50_s": round(_percentile(waits, 50), 3),
        "wait_p95_s": round(_percentile(waits, 95), 3),
        "wait_p99_s": round(_percentile(waits, 99), 3),
        "max_backlog": sum(r.max_backlog for r in runs),
        "worker_seconds": round(seconds, 1),
        "cost_usd": round(seconds * settings.usd_per_worker_second, 4),
        "scaling_actions": sum(r.scaling_actions for r in runs),
        "slo_violation_minutes": len(late),
        "tasks_killed": sum(r.tasks_killed for r in runs),
    }


def smallest_static_fleet(
    enq: list[float], svc: list[float], pool: PoolConfig, settings: SimSettings, seed: int, horizon: float, peak: int
) -> int:
    """The smallest constant fleet whose p95 wait meets the SLO (binary search; p95 falls as workers rise)."""
    low, high = 1, max(1, peak)
    while low < high:
        mid = (low + high) // 2
        run = run_pool(enq, svc, Static(mid, "static-min"), pool, settings, seed, horizon)
        if _percentile(sorted(run.waits), 95) <= settings.slo_s:
            high = mid
        else:
            low = mid + 1
    return low


def _pool_tasks(trace: Trace, pools: tuple[PoolConfig, ...]) -> list[tuple[PoolConfig, list[float], list[float]]]:
    """Each pool's tasks; a trace on queues no pool consumes goes to the first pool (built-ins use 'celery')."""
    consumed = {q for p in pools for q in p.queues}
    if not consumed & set(trace.queues):
        return [(pools[0], trace.enqueue_s, trace.service_s)]
    return [(p, *trace.for_queues(p.queues)) for p in pools]


def simulate(
    trace: Trace,
    config: ScalerConfig | None = None,
    compare: Iterable[str] = (),
    seed: int = 1,
    settings: SimSettings | None = None,
    timeline: bool = False,
    wait_target_s: float | None = None,
) -> dict[str, PolicyOutcome]:
    """Run ``trace`` under our policy and each compared one; returns outcomes by policy name.

    ``wait_target_s`` is given to every pool of our policy that has none of its own.
    """
    settings = settings or SimSettings()
    pools: tuple[PoolConfig, ...] = (DEFAULT_POOL,)
    if config is not None:
        pools = config.pools
        settings = replace(
            settings, tick_interval_s=config.tick_interval_s, ticks_per_invocation=config.ticks_per_invocation
        )
    if wait_target_s is not None:
        pools = tuple(p if p.wait_target_s is not None else replace(p, wait_target_s=wait_target_s) for p in pools)
    horizon = trace.horizon_s
    lookahead = settings.start_delay.quantile(0.95) + OracleUpper.period_s
    outcomes: dict[str, PolicyOutcome] = {}
    for name in expand(compare):
        runs: list[RunResult] = []
        lower = 0.0
        for pool, enq, svc in _pool_tasks(trace, pools):
            if name == "oracle-lower":
                lower += oracle_lower_worker_seconds(svc, pool.concurrency, settings.min_billed_s)
                continue
            policy = _policy(name, pool, enq, svc, settings, seed, horizon, lookahead)
            runs.append(run_pool(enq, svc, policy, pool, settings, seed, horizon, timeline=timeline))
        if name == "oracle-lower":
            metrics: dict[str, float | int] = dict.fromkeys(METRICS, 0)
            metrics.update(
                {
                    "wait_p50_s": 0.0,
                    "wait_p95_s": 0.0,
                    "wait_p99_s": 0.0,
                    "worker_seconds": round(lower, 1),
                    "cost_usd": round(lower * settings.usd_per_worker_second, 4),
                }
            )
            outcomes[name] = PolicyOutcome(metrics)
        else:
            outcomes[name] = PolicyOutcome(summarise(runs, settings), runs[0].timeline if runs else [])
    return outcomes


def _policy(
    name: str,
    pool: PoolConfig,
    enq: list[float],
    svc: list[float],
    settings: SimSettings,
    seed: int,
    horizon: float,
    lookahead: float,
) -> SimPolicy:
    mean_service = sum(svc) / len(svc) if svc else 1.0
    if name == "celery-autoscaler":
        return ScalerPolicy(pool)
    if name == "aws-target-tracking":
        # AWS's recipe: acceptable backlog per task = acceptable latency / average processing time.
        return AwsTargetTracking(pool, target=max(1.0, settings.slo_s / mean_service * pool.concurrency))
    if name == "aws-step-scaling":
        return AwsStepScaling(pool)
    if name == "keda":
        return Keda(pool)
    busy = busy_per_minute(enq, svc, horizon)
    if name == "oracle-upper":
        return OracleUpper(pool, busy, lookahead)
    peak = min(pool.max_workers, staffing(max(busy, default=0.0), pool.concurrency))
    if name == "static-peak":
        return Static(max(1, peak), name)
    return Static(smallest_static_fleet(enq, svc, pool, settings, seed, horizon, peak), name)


def as_json(outcomes: dict[str, PolicyOutcome], trace: Trace) -> dict[str, Any]:
    """The ``simulate --json`` document."""
    return {
        "trace": {"name": trace.name, "tasks": len(trace), "hours": round(trace.horizon_s / 3600.0, 4)},
        "policies": {name: outcome.metrics for name, outcome in outcomes.items()},
    }
