"""The benchmark: every built-in trace under every policy, in the simulator; writes bench-out/.

    python scripts/bench.py [--out bench-out] [--hours 24] [--seed 1]

Two worker set-ups are run: the module's defaults (every pool gets ``CELERY_TASK_ACKS_LATE=true`` and
prefetch multiplier 1, so the probe sees running tasks as unacked) and Celery's own default
``acks_late`` off (the probe sees only reserved messages). The controller's targets are checked
for our policy with the module's defaults, each with the numbers that decide it: the same wait as
AWS target tracking, AWS step scaling and KEDA for a lower bill (our policy given their p95 as its
``wait_target_s``; where one fails, the cheapest constant fleet at that wait is searched for, as a
bound), the default mode never dominated and within 1.15 x the clairvoyant schedule, churn on
``steady``, and the speed of a 100-pool decision and of a simulated day.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.policy import PoolState, decide
from celery_autoscaler.sim import BUILTIN, SimSettings, builtin, simulate
from celery_autoscaler.sim.baselines import ScalerPolicy, Static
from celery_autoscaler.sim.engine import RunResult, run_pool
from celery_autoscaler.sim.simulate import DEFAULT_POOL, PolicyOutcome, smallest_static_fleet, summarise
from celery_autoscaler.sim.traces import ServiceModel, Trace, steady

OURS = "celery-autoscaler"
SCENARIOS = {
    "defaults": SimSettings(),
    "acks_early": SimSettings(acks_late=False),
}
SCENARIO_LABELS = {
    "defaults": "the module's defaults: acks_late on, prefetch multiplier 1 (the probe sees running tasks)",
    "acks_early": "acks_late off, Celery's default (the probe sees reserved messages, not running tasks)",
}
COLUMNS = (
    ("wait_p50_s", "p50 wait s"),
    ("wait_p95_s", "p95 wait s"),
    ("wait_p99_s", "p99 wait s"),
    ("max_backlog", "max backlog"),
    ("worker_seconds", "worker-s"),
    ("cost_usd", "USD"),
    ("scaling_actions", "actions"),
    ("slo_violation_minutes", "SLO-min"),
    ("tasks_killed", "killed"),
)


def fleet_bound(trace: Trace, settings: SimSettings, seed: int, p95_s: float) -> tuple[int, float] | None:
    """The smallest constant warm fleet whose p95 wait is at most ``p95_s``, and its worker-seconds.

    On a load that does not change over the day no schedule does much better, so a fleet that bills
    more than the alternatives shows the cost target cannot hold together with the wait target.
    ``None`` when even ``max_workers`` warm workers miss it.
    """
    pool = DEFAULT_POOL
    tight = replace(settings, slo_s=p95_s)
    count = smallest_static_fleet(
        trace.enqueue_s, trace.service_s, pool, tight, seed, trace.horizon_s, pool.max_workers
    )
    run = run_pool(trace.enqueue_s, trace.service_s, Static(count, "bound"), pool, tight, seed, trace.horizon_s)
    if summarise([run], tight)["wait_p95_s"] > p95_s:
        return None
    return count, run.worker_seconds


PEERS = ("aws-target-tracking", "aws-step-scaling", "keda")
RIVALS = (*PEERS, "static-min", "static-peak")
MAX_STEADY_ACTIONS_PER_DAY = 800


def same_wait(
    trace: Trace, settings: SimSettings, seed: int, policies: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Target 1: ours given each peer's p95 as wait target: p95 <= 1.1 x theirs + 2 s, bill <= 0.9 x theirs."""
    checks = []
    lower = float(policies["oracle-lower"]["worker_seconds"])
    for peer in PEERS:
        theirs = policies[peer]
        wait = max(0.1, float(theirs["wait_p95_s"]))
        pool = replace(DEFAULT_POOL, wait_target_s=wait)
        run = run_pool(trace.enqueue_s, trace.service_s, ScalerPolicy(pool), pool, settings, seed, trace.horizon_s)
        ours = summarise([run], settings)
        bound = 1.1 * theirs["wait_p95_s"] + 2.0
        p95_ok = ours["wait_p95_s"] <= bound
        bill = ours["worker_seconds"] / theirs["worker_seconds"] if theirs["worker_seconds"] else 0.0
        item: dict[str, Any] = {
            "target": f"same wait as {peer} (wait_target_s {wait:.1f}), lower bill",
            "holds": bool(p95_ok and bill <= 0.9),
            "numbers": f"p95 {ours['wait_p95_s']:.1f} s vs <= {bound:.1f} s; bill {bill:.2f} x theirs (<= 0.90)",
            "verdict": f"{bill:.2f} x" if p95_ok else f"p95 {ours['wait_p95_s']:.1f} > {bound:.1f} s",
            "ours": ours,
        }
        if not item["holds"]:
            # A constant fleet bounds every schedule only on a load that does not change over the day.
            bound = fleet_bound(trace, settings, seed, wait) if trace.name.startswith("steady") else None
            if bound is not None and bound[1] > 0.9 * theirs["worker_seconds"]:
                item["why"] = (
                    f"the cheapest constant warm fleet with p95 <= {wait:.1f} s ({bound[0]} workers) bills "
                    f"{bound[1]:.0f} worker-s, more than 0.9 x {peer}'s {theirs['worker_seconds']:.0f}: on this load "
                    "no schedule reaches the bill at that wait"
                )
            elif lower and 0.9 * theirs["worker_seconds"] < lower:
                item["why"] = (
                    f"0.9 x {peer}'s {theirs['worker_seconds']:.0f} worker-s is below the work itself at full "
                    f"concurrency ({lower:.0f}, oracle-lower): no schedule bills that"
                )
            elif p95_ok:
                need = 0.9 * theirs["worker_seconds"] / lower if lower else 0.0
                item["why"] = (
                    f"the target needs {need:.2f} x the work at full concurrency (oracle-lower {lower:.0f} worker-s); "
                    f"we bill {ours['worker_seconds'] / lower if lower else 0.0:.2f} x at p95 "
                    f"{ours['wait_p95_s']:.1f} s of the {wait:.1f} s allowed: whole workers of "
                    f"{DEFAULT_POOL.concurrency} slots, and a worker added under load is seldom idle long enough "
                    f"for a safe scale-in, so the fleet stays above the load {peer} runs at"
                )
            else:
                item["why"] = f"our p95 {ours['wait_p95_s']:.1f} s is above the bound"
        checks.append(item)
    return checks


def targets(
    name: str, trace: Trace, settings: SimSettings, seed: int, hours: float, policies: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Issue 11's targets for our policy on one trace, each with the numbers that decide it."""
    ours, oracle = policies[OURS], policies["oracle-upper"]
    checks = same_wait(trace, settings, seed, policies)
    better = [
        p
        for p in RIVALS
        if policies[p]["wait_p95_s"] < ours["wait_p95_s"] and policies[p]["worker_seconds"] < ours["worker_seconds"]
    ]
    checks.append(
        {
            "target": "default mode not dominated by aws-*, keda, static-*",
            "holds": not better,
            "numbers": "dominated by " + ", ".join(better) if better else f"p95 {ours['wait_p95_s']:.1f} s",
            "verdict": ", ".join(better),
        }
    )
    ratio = ours["worker_seconds"] / oracle["worker_seconds"] if oracle["worker_seconds"] else 0.0
    item: dict[str, Any] = {
        "target": "default mode worker-seconds <= 1.15 x oracle-upper",
        "holds": ratio <= 1.15,
        "numbers": f"{ratio:.2f} x",
        "verdict": f"{ratio:.2f} x",
    }
    if ratio > 1.15:
        # The same run with busy workers stoppable (no protection, no fence: tasks get killed) says how much
        # of the bill is workers the rule no longer wants but a safe scale-in could not stop yet.
        loose = replace(settings, scale_in_protection=False, drain=False)
        pool = DEFAULT_POOL
        run = run_pool(trace.enqueue_s, trace.service_s, ScalerPolicy(pool), pool, loose, seed, trace.horizon_s)
        unprotected = summarise([run], loose)["worker_seconds"] / oracle["worker_seconds"]
        item["why"] = (
            "a reactive scaler sees a burst or a batch only after it arrives and drains the backlog built during "
            "detection + start (median about 55 s) with workers billed at least 60 s; the oracle launches ahead. "
            f"With busy workers stoppable (no scale-in protection or fence, tasks killed) the same rule bills "
            f"{unprotected:.2f} x: the rest is workers a safe scale-in waits for, idle "
            f"{settings.protection_release_s:g} s, which a busy pool seldom has"
        )
    checks.append(item)
    if name == "steady":
        per_day = ours["scaling_actions"] * 24.0 / hours
        checks.append(
            {
                "target": f"at most {MAX_STEADY_ACTIONS_PER_DAY} scaling actions a day",
                "holds": per_day <= MAX_STEADY_ACTIONS_PER_DAY,
                "numbers": f"{per_day:.0f} a day",
                "verdict": f"{per_day:.0f} a day",
            }
        )
    return checks


def target_table(checks: dict[str, list[dict[str, Any]]], killed: dict[str, int]) -> list[str]:
    """One row per trace, as the README shows it: each target holds or **fails**, with the number that
    decides it (the bill as a share of theirs, the p95 over its bound, who dominates), and the tasks killed."""
    lines = [
        "| trace | same wait as target tracking | as step scaling | as KEDA | not dominated "
        "| <= 1.15x oracle | churn <= 800/day | killed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(checks):
        cells = []
        for check in checks[name]:
            verdict = f" ({check['verdict']})" if check["verdict"] else ""
            cells.append(f"{'holds' if check['holds'] else '**fails**'}{verdict}")
        cells += ["-"] * (6 - len(cells))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {killed[name]} |")
    return [*lines, ""]


def decision_speed(pools: int = 100, rounds: int = 50) -> dict[str, float]:
    """Wall time of one tick's decisions for ``pools`` pools with warm estimator state (median of ``rounds``)."""
    configs = [replace(DEFAULT_POOL, name=f"p{i}", service=f"s{i}", queues=(f"q{i}",)) for i in range(pools)]
    states = [PoolState() for _ in configs]
    done = [0] * pools

    def tick(now: float) -> float:
        start = time.perf_counter()
        for i, pool in enumerate(configs):
            done[i] += 30
            load = PoolLoad(i % 7, 4, 4, 1.0, now, completed=done[i], run_seconds=done[i] * 2.0)
            decision = decide(PoolMeasurements(3, 3, load), pool, states[i], now)
            states[i] = decision.new_state
        return time.perf_counter() - start

    for k in range(20):  # warm the estimators: rates, run-time sums
        tick(15.0 * k)
    times = sorted(tick(15.0 * (20 + k)) for k in range(rounds))
    return {"pools": pools, "median_ms": round(times[len(times) // 2] * 1000, 3), "max_ms": round(times[-1] * 1000, 3)}


def _cell(key: str, value: float | int) -> str:
    if key == "cost_usd":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 1000 else f"{value:.1f}"
    return str(value)


def table(policies: dict[str, dict[str, Any]]) -> list[str]:
    """One markdown table: every policy, with billed cost relative to the clairvoyant schedule."""
    oracle = policies["oracle-upper"]["worker_seconds"] or 1.0
    head = "| policy | " + " | ".join(label for _, label in COLUMNS) + " | cost / oracle-upper |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, m in policies.items():
        cells = []
        for key, _ in COLUMNS:
            value = m[key]
            cells.append(_cell(key, value))
        label = f"**{name}**" if name == OURS else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {m['worker_seconds'] / oracle:.2f} |")
    return lines


def pareto(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Cost vs p95 wait, one panel per trace, every policy a labelled point."""
    names = list(results)
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    markers = dict(zip(next(iter(results.values())), "o^v<s>DP*", strict=False))
    for ax, name in zip(axes.flat, names, strict=False):
        for policy, m in results[name].items():
            ax.scatter(m["wait_p95_s"], m["cost_usd"], marker=markers.get(policy, "o"), s=60 if policy == OURS else 30)
            ax.annotate(policy, (m["wait_p95_s"], m["cost_usd"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("p95 wait (s)", fontsize=8)
        ax.set_ylabel("USD per day (log)", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(
        "Cost vs p95 wait (lower left is better); module defaults (acks_late on, prefetch 1), "
        "one pool of 0.25 vCPU / 0.5 GB x86"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline(name: str, outcomes: dict[str, PolicyOutcome], path: Path) -> None:
    """Backlog and running workers over the trace for ours and the main alternatives."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    for policy in (OURS, "aws-target-tracking", "keda", "oracle-upper"):
        points = outcomes[policy].timeline
        hours = [t / 3600 for t, *_ in points]
        top.plot(hours, [p[1] for p in points], label=policy, linewidth=0.8)
        bottom.plot(hours, [p[2] for p in points], label=policy, linewidth=0.8)
    top.set_ylabel("tasks not started")
    bottom.set_ylabel("workers running")
    bottom.set_xlabel("hour")
    top.legend(fontsize=7)
    top.set_title(f"{name}: sampled every minute")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def handshake(hours: float, seed: int, document: dict[str, Any]) -> list[str]:
    """Our policy with and without fence and drain (issue 13's targets): kills, worker-seconds, p95."""
    lines = [
        "## Fence and drain (our policy, the module's defaults, with and without the handshake)",
        "",
        "| trace | killed (without -> with) | worker-s (without -> with) | p95 wait s (without -> with) | targets |",
        "|---|---|---|---|---|",
    ]
    rows: dict[str, dict[str, Any]] = {}
    for name in BUILTIN:
        trace = builtin(name, hours=hours, seed=seed)
        pair = {}
        for label, drain in (("without", False), ("with", True)):
            settings = SimSettings(drain=drain)
            run = run_pool(
                trace.enqueue_s,
                trace.service_s,
                ScalerPolicy(DEFAULT_POOL),
                DEFAULT_POOL,
                settings,
                seed,
                trace.horizon_s,
            )
            pair[label] = summarise([run], settings)
        before, after = pair["without"], pair["with"]
        cost = after["worker_seconds"] / before["worker_seconds"] - 1 if before["worker_seconds"] else 0.0
        p95 = after["wait_p95_s"] / before["wait_p95_s"] - 1 if before["wait_p95_s"] else 0.0
        held = {
            "killed 0": after["tasks_killed"] == 0,
            "worker-s <= +3 %": cost <= 0.03,
            "p95 <= +10 %": after["wait_p95_s"] <= before["wait_p95_s"] * 1.10 + 1e-9,
        }
        rows[name] = {**pair, "worker_seconds_change": round(cost, 4), "wait_p95_change": round(p95, 4), "holds": held}
        verdict = ", ".join(f"{'holds' if ok else 'FAILS'}: {target}" for target, ok in held.items())
        lines.append(
            f"| {name} | {before['tasks_killed']} -> {after['tasks_killed']} | "
            f"{before['worker_seconds']:.0f} -> {after['worker_seconds']:.0f} ({cost:+.1%}) | "
            f"{before['wait_p95_s']:.2f} -> {after['wait_p95_s']:.2f} ({p95:+.0%}) | {verdict} |"
        )
    document["handshake"] = rows
    return [*lines, ""]


def speed(seed: int) -> dict[str, float]:
    """Wall time of one simulated day at 5 tasks/s under our policy (engine only, and with trace generation)."""
    start = time.perf_counter()
    trace = steady(86_400.0, ServiceModel(), seed, rate=5.0)
    generated = time.perf_counter()
    run_pool(trace.enqueue_s, trace.service_s, ScalerPolicy(DEFAULT_POOL), DEFAULT_POOL, SimSettings(), seed, 86_400.0)
    done = time.perf_counter()
    return {"tasks": len(trace), "engine_s": round(done - generated, 3), "with_trace_s": round(done - start, 3)}


RECURRING = {"cron": 3 * 3600.0 + 18 * 60.0, "weekday": 86_400.0}
"""Recurring traces and when learning may have seen enough: after the first three storms, after the first day."""


def _p50_after(run: RunResult, start_s: float) -> float:
    waits = sorted(w for e, w in zip(run.enqueue_s, run.waits, strict=True) if e >= start_s and w >= 0)
    return waits[len(waits) // 2] if waits else 0.0


def prewarm(seed: int, document: dict[str, Any]) -> list[str]:
    """Issue 12's targets: learned pre-warm on vs off on every built-in trace at its default length.

    Recurring traces: p50 wait after learning <= 15 s, worker-seconds <= 1.15 x oracle-upper, and no
    other policy of the run at least as good on worker-seconds, p50 and p95 (oracle-lower, a bound, left
    out). The rest: at most 3 % more worker-seconds than with pre-warm off, p95 no worse.
    """
    lines = [
        "## Learned pre-warm (our policy, pre-warm on vs off; each trace at its default length)",
        "",
        "| trace | hours | p50 s off -> on | p50 after learning s off -> on | p95 s off -> on | worker-s off -> on "
        "| on / oracle-upper | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    settings = SimSettings()
    off_pool = replace(DEFAULT_POOL, learned_prewarm=False)
    for name in BUILTIN:
        trace = builtin(name, seed=seed)
        shape = name.partition("-")[0]
        runs = {
            label: run_pool(trace.enqueue_s, trace.service_s, ScalerPolicy(pool), pool, settings, seed, trace.horizon_s)
            for label, pool in (("off", off_pool), ("on", DEFAULT_POOL))
        }
        m = {label: summarise([run], settings) for label, run in runs.items()}
        others = simulate(trace, compare=["aws", "keda", "static-peak", "oracle-upper"], seed=seed, settings=settings)
        oracle = others["oracle-upper"].metrics["worker_seconds"] or 1.0
        on, off = m["on"], m["off"]
        warm = RECURRING.get(shape, 0.0)
        after = {label: _p50_after(run, warm) for label, run in runs.items()}
        checks: list[tuple[str, bool]]
        if shape in RECURRING:
            keys = ("worker_seconds", "wait_p50_s", "wait_p95_s")
            dominated_by = [
                p
                for p, o in others.items()
                if p != OURS and all(o.metrics[k] <= on[k] for k in keys) and any(o.metrics[k] < on[k] for k in keys)
            ]
            checks = [
                (f"p50 after learning <= 15 s ({after['on']:.1f})", after["on"] <= 15.0),
                (
                    f"<= 1.15 x oracle-upper ({on['worker_seconds'] / oracle:.2f})",
                    on["worker_seconds"] <= 1.15 * oracle,
                ),
                (f"not dominated ({', '.join(dominated_by) or 'by none'})", not dominated_by),
            ]
        else:
            extra = on["worker_seconds"] / (off["worker_seconds"] or 1.0) - 1.0
            checks = [
                (f"worker-s <= +3 % ({extra:+.1%})", extra <= 0.03),
                (
                    f"p95 no worse ({on['wait_p95_s'] - off['wait_p95_s']:+.1f} s)",
                    on["wait_p95_s"] <= off["wait_p95_s"],
                ),
            ]
        verdict = "; ".join(f"{'holds' if ok else 'FAILS'}: {text}" for text, ok in checks)
        lines.append(
            f"| {name} | {trace.horizon_s / 3600:g} | {off['wait_p50_s']:.1f} -> {on['wait_p50_s']:.1f} | "
            f"{after['off']:.1f} -> {after['on']:.1f} | {off['wait_p95_s']:.1f} -> {on['wait_p95_s']:.1f} | "
            f"{off['worker_seconds']:.0f} -> {on['worker_seconds']:.0f} | {on['worker_seconds'] / oracle:.2f} | "
            f"{verdict} |"
        )
        document.setdefault("prewarm", {})[name] = {
            "off": off,
            "on": on,
            "p50_after_learning": after,
            "oracle_upper_worker_seconds": oracle,
            "checks": [{"target": text, "holds": ok} for text, ok in checks],
        }
        print(lines[-1], file=sys.stderr)
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "hours": args.hours,
        "seed": args.seed,
        "pool": asdict(DEFAULT_POOL),
        "scenarios": {},
        "targets": {},
    }
    md = [
        "# Benchmark results",
        "",
        f"Simulated {args.hours:g} h per trace, seed {args.seed}; one pool: concurrency {DEFAULT_POOL.concurrency}, "
        f"max {DEFAULT_POOL.max_workers} workers, 0.25 vCPU / 0.5 GB x86 Fargate (us-east-1 list price), "
        "start delay median about 55 s, stop timeout 120 s, scale-in protection on, warm shutdown, "
        "acks_late on and prefetch multiplier 1 (the module's defaults) unless the scenario says otherwise; "
        f"scaler defaults: scale_in_window_s {DEFAULT_POOL.scale_in_window_s:g}, max_scale_in_percent "
        f"{DEFAULT_POOL.max_scale_in_percent:g}, idle_window_s {DEFAULT_POOL.idle_window_s:g}, target_utilisation "
        f"{DEFAULT_POOL.target_utilisation:g}.",
        "",
    ]
    started = time.perf_counter()
    for scenario, base in SCENARIOS.items():
        results: dict[str, dict[str, dict[str, Any]]] = {}
        md += [f"## Scenario: {scenario}: {SCENARIO_LABELS[scenario]}", ""]
        for name in BUILTIN:
            trace = builtin(name, hours=args.hours, seed=args.seed)
            outcomes = simulate(trace, compare=["all"], seed=args.seed, settings=replace(base), timeline=True)
            results[name] = {policy: o.metrics for policy, o in outcomes.items()}
            md += [f"### {name} ({len(trace)} tasks)", "", *table(results[name]), ""]
            if scenario == "defaults":
                checks = targets(name, trace, base, args.seed, args.hours, results[name])
                document["targets"][name] = checks
                for c in checks:
                    md.append(f"- {'holds' if c['holds'] else 'FAILS'}: {c['target']} ({c['numbers']})")
                    md += [f"  - why: {c['why']}"] if "why" in c else []
                md.append("")
            if scenario == "defaults":
                timeline(name, outcomes, out / f"timeline-{name}.png")
            print(f"{scenario:10} {name:14} {time.perf_counter() - started:6.1f} s", file=sys.stderr)
        document["scenarios"][scenario] = results
        if scenario == "defaults":
            pareto(results, out / "pareto.png")
    drain_lines = handshake(args.hours, args.seed, document)
    print("\n".join(drain_lines), file=sys.stderr)
    md += drain_lines
    md += prewarm(args.seed, document)
    document["speed"] = speed(args.seed)
    document["decision_speed"] = decision_speed()
    sim_s, decide_ms = document["speed"]["engine_s"], document["decision_speed"]["median_ms"]
    md += [
        "## Speed",
        "",
        f"- {'holds' if decide_ms < 5 else 'FAILS'}: one tick's decisions for 100 pools under 5 ms "
        f"(median {decide_ms} ms, slowest {document['decision_speed']['max_ms']} ms).",
        f"- {'holds' if sim_s < 2 else 'FAILS'}: one simulated day at 5 tasks/s ({document['speed']['tasks']} tasks) "
        f"under 2 s: {sim_s} s in the engine, {document['speed']['with_trace_s']} s with trace generation (one core).",
        "",
    ]
    killed = {name: m[OURS]["tasks_killed"] for name, m in document["scenarios"]["defaults"].items()}
    summary = [
        "## Targets per trace (our policy, the module's defaults)",
        "",
        *target_table(document["targets"], killed),
    ]
    md[md.index("## Speed") : md.index("## Speed")] = summary
    print("\n".join(summary), file=sys.stderr)
    probe = Path(__file__).with_name("bench_probe.py")
    if probe.exists():
        result = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, check=False)
        document["probe"] = {"returncode": result.returncode, "output": result.stdout[-4000:]}
        md += ["## Probe time", "", "```", result.stdout.strip() or result.stderr.strip()[-2000:], "```", ""]
    (out / "results.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (out / "results.md").write_text("\n".join(md))
    print(f"wrote {out}/results.json, results.md, pareto.png, timeline-*.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
