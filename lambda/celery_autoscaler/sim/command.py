"""``simulate`` on the command line: argument definitions and the run, shared by the CLI and ``-m``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from celery_autoscaler.config import ConfigError, ScalerConfig, load_config
from celery_autoscaler.sim.engine import PRICES, SimSettings
from celery_autoscaler.sim.simulate import DEFAULT_POOL, PolicyOutcome, as_json, simulate
from celery_autoscaler.sim.traces import BUILTIN, ServiceModel, Trace, builtin, read_csv

PROBE_VIEWS: dict[str, float | None] = {"redis": 0.0, "sqs": 60.0, "no-age": None}
"""``--probe-view`` -> SimSettings.age_lag_s (docs/brokers.md says what each broker shows)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``simulate`` options; the world's defaults are :class:`SimSettings`' (the module's)."""
    world = SimSettings()
    parser.add_argument("--trace", required=True, help=f"a CSV file or a built-in trace: {', '.join(BUILTIN)}")
    parser.add_argument("--config", help="scaler config JSON (pools, tick interval); default: one pool, defaults")
    parser.add_argument(
        "--compare", default="", help="comma-separated: aws-target-tracking,aws-step-scaling,keda,static,oracle,all"
    )
    parser.add_argument("--seed", type=int, default=1, help="same seed, same output (default 1)")
    parser.add_argument(
        "--hours", type=float, help="simulate only the first H hours (built-ins default to 24, weekday to 168)"
    )
    parser.add_argument("--service-s", type=float, default=2.0, help="mean run time for per-minute CSV traces")
    parser.add_argument(
        "--slo-s", type=float, default=world.slo_s, help="wait counted as an SLO violation (default %(default)g)"
    )
    parser.add_argument(
        "--pricing", choices=sorted(PRICES), default=world.pricing, help="Fargate price list (default %(default)s)"
    )
    parser.add_argument("--vcpu", type=float, default=world.vcpu, help="worker vCPU (default %(default)g)")
    parser.add_argument(
        "--memory-gb", type=float, default=world.memory_gb, help="worker memory in GB (default %(default)g)"
    )
    parser.add_argument(
        "--acks-late",
        action=argparse.BooleanOptionalAction,
        default=world.acks_late,
        help="workers ack after running, so the probe sees running tasks (default on, as the module sets it)",
    )
    parser.add_argument(
        "--probe-sees-running", action="store_true", help="what-if: the probe also counts running tasks"
    )
    parser.add_argument(
        "--probe-view",
        choices=sorted(PROBE_VIEWS),
        default="redis",
        help="what the broker lets the probe see: redis = counts and the exact age (the worker helper's stamp); "
        "sqs = the age a minute late (CloudWatch); no-age = no age (RabbitMQ quorum queues, or no stamp)",
    )
    parser.add_argument(
        "--no-worker-counters",
        action="store_true",
        help="workers without the helper's task counters (the scaler uses its fallback estimates)",
    )
    parser.add_argument(
        "--wait-target-s",
        type=float,
        help="give every pool of our policy this p95 wait target (a pool's own wait_target_s in --config wins)",
    )
    parser.add_argument(
        "--prefetch-multiplier",
        type=int,
        default=world.prefetch_multiplier,
        help="Celery prefetch multiplier (default %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout-s", type=float, default=world.stop_timeout_s, help="ECS stopTimeout (default %(default)g)"
    )
    parser.add_argument("--no-protection", action="store_true", help="workers do not use scale-in protection")
    parser.add_argument("--json", action="store_true", help="print JSON (default: a table)")


def load_trace(spec: str, hours: float | None, seed: int, service_s: float = 2.0) -> Trace:
    """A built-in trace by name or a CSV file, cut to ``hours`` if given."""
    if spec in BUILTIN:
        return builtin(spec, hours=hours, seed=seed)
    if not Path(spec).is_file():
        raise ValueError(f"--trace {spec!r} is neither a built-in trace ({', '.join(BUILTIN)}) nor a CSV file")
    trace = read_csv(spec, ServiceModel(mean_s=service_s), seed=seed)
    return trace.truncated(hours * 3600.0) if hours is not None else trace


def run(args: argparse.Namespace) -> int:
    """Run the simulation and print it; exit 2 on a bad config or trace."""
    try:
        config = load_config(Path(args.config).read_text()) if args.config else None
        trace = load_trace(args.trace, args.hours, args.seed, args.service_s)
        settings = SimSettings(
            slo_s=args.slo_s,
            pricing=args.pricing,
            vcpu=args.vcpu,
            memory_gb=args.memory_gb,
            acks_late=args.acks_late,
            probe_sees_running=args.probe_sees_running,
            age_lag_s=PROBE_VIEWS[args.probe_view],
            worker_counters=not args.no_worker_counters,
            prefetch_multiplier=args.prefetch_multiplier,
            stop_timeout_s=args.stop_timeout_s,
            scale_in_protection=not args.no_protection,
        )
        if args.wait_target_s is not None and not args.wait_target_s > 0:
            raise ValueError(f"--wait-target-s must be > 0, got {args.wait_target_s:g}")
        outcomes = simulate(
            trace, config, args.compare.split(","), seed=args.seed, settings=settings, wait_target_s=args.wait_target_s
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    document = as_json(outcomes, trace)
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    print("\n".join(table(outcomes, trace, config, settings)))
    return 0


# (metric, header line 1, header line 2, width, decimals, a count per simulated day)
COLUMNS = (
    ("wait_p50_s", "wait", "p50 s", 7, 1, False),
    ("wait_p95_s", "wait", "p95 s", 7, 1, False),
    ("wait_p99_s", "wait", "p99 s", 7, 1, False),
    ("max_backlog", "max", "backlog", 8, 0, False),
    ("worker_seconds", "worker", "hours", 8, 1, True),
    ("cost_usd", "cost", "USD", 8, 2, True),
    ("scaling_actions", "scaling", "actions", 8, 0, True),
    ("slo_violation_minutes", "SLO", "late min", 9, 0, True),
    ("tasks_killed", "tasks", "killed", 7, 0, True),
)
POLICY_WIDTH = 20


def table(
    outcomes: Mapping[str, PolicyOutcome], trace: Trace, config: ScalerConfig | None, settings: SimSettings
) -> list[str]:
    """The comparison as text under 100 columns: the trace, the pool settings and the scaling to a day above it."""
    day = 86400.0 / trace.horizon_s if trace.horizon_s > 0 else 1.0
    pools = config.pools if config is not None else (DEFAULT_POOL,)
    lines = [f"{trace.name}: {len(trace)} tasks over {trace.horizon_s / 3600:.2f} h; slo {settings.slo_s:g} s"]
    lines += [
        f"pool {p.name}: concurrency {p.concurrency}, {p.min_workers}..{p.max_workers} workers, "
        f"scale-in window {p.scale_in_window_s:g} s, idle window {p.idle_window_s:g} s"
        for p in pools
    ]
    lines.append(f"workers: {settings.vcpu:g} vCPU, {settings.memory_gb:g} GB, {settings.pricing} prices")
    lines.append(f"per simulated day (this trace x{day:.3g}): worker hours, USD, scaling actions, late min, killed")
    lines.append(" " * POLICY_WIDTH + "".join(f"{top:>{width + 1}}" for _, top, _, width, _, _ in COLUMNS))
    lines.append(f"{'policy':<{POLICY_WIDTH}}" + "".join(f"{unit:>{width + 1}}" for _, _, unit, width, _, _ in COLUMNS))
    for name, outcome in outcomes.items():
        cells = []
        for metric, _, _, width, decimals, per_day in COLUMNS:
            value = float(outcome.metrics[metric]) * (day if per_day else 1.0)
            value = value / 3600.0 if metric == "worker_seconds" else value
            cells.append(f"{value:>{width + 1}.{decimals}f}")
        lines.append(f"{name:<{POLICY_WIDTH}}" + "".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m celery_autoscaler.sim``."""
    parser = argparse.ArgumentParser(prog="celery-autoscaler simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
