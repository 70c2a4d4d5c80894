"""`make calibrate`: the simulator against a real run of the same trace.

    python scripts/calibrate.py [--out calibrate-out] [--trace FILE.csv] [--sim-seeds 9]

One per-task trace (by default :func:`calibration_trace`: a burst on both queues, a trickle, a quiet
stretch that scales both pools to zero, a second wave, silence; run times of 0.2-3 s and 1-20 s) is
played through the real demo (``demo.main.play`` with the default profile's timings: terraform apply
of examples/local on moto, the task runner with its start delay, real Django + Celery workers, the
scaler's own ``run_tick`` every tick interval), then through the simulator's engine with the same
settings, each taken from what the run used or measured, never fitted to its results:

- arrivals: each task's real send time (from the load generator's records), run time: how long it
  really ran (its own record), both relative to the load's start;
- the pools' scaling config: the document terraform produced for the run; concurrency, prefetch,
  ``acks_late`` and stop timeout from the pools' task definitions;
- ticks: every tick interval from the load's start, each late by up to the 95th percentile of the
  lateness the run's ticks showed (the demo ticks on an endless fixed period, not in invocations of
  four: with ticks exactly 15 s apart a 45 s window would drop its oldest sample at every boundary
  tick, and every scale-in would come a tick earlier than on a real clock);
- worker start: the measured time from the tick that raised a pool's count to the worker's process
  start (the runner's poll, its start delay; not billed, as the demo counts process lifetimes), then
  the measured boot to consuming (billed); scale-in: SIGTERM after the measured lag from a tick to
  the runner acting on it, and the process's measured exit after SIGTERM (billed);
- protection and drain: the demo app's ``release_after_idle_s`` and the helper's poll interval, fence
  and drain only if the run's ticks drained (a tick's ``drain`` in the event log); no
  minimum billing (the demo sums process seconds, not Fargate's one-minute minimum);
- the window: from the load's start to the demo's end (both pools back at 0).

The simulator's numbers are the median over ``--sim-seeds`` seeds (its start delays and consumer
order are random). Prints demo | simulate | ratio | within 20 % for p50 and p95 wait and
worker-seconds (scale actions and peak workers for information), writes ``calibration.json`` and
``calibration.png`` to ``--out`` (the demo run's own files in ``--out/demo``), and exits 0 when the
three agree within 20 %, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "local"))

from demo.loadgen import QUEUES, Schedule, replay  # noqa: E402
from demo.profiles import DEFAULT  # noqa: E402

from celery_autoscaler.config import PoolConfig, parse_config  # noqa: E402
from celery_autoscaler.sim.baselines import ScalerPolicy  # noqa: E402
from celery_autoscaler.sim.engine import RunResult, SimSettings, StartDelay, run_pool  # noqa: E402
from celery_autoscaler.sim.simulate import summarise  # noqa: E402
from celery_autoscaler.sim.traces import ServiceModel, Trace, poisson, read_csv, write_csv  # noqa: E402

SEED = 11
TOLERANCE = 0.2
CHECKED = ("wait_p50_s", "wait_p95_s", "worker_seconds")
INFORMATION = ("scaling_actions", "peak_workers")
EMAILS = ServiceModel(mean_s=0.8, cv=0.6)
REPORTS = ServiceModel(mean_s=3.0, cv=0.8, long_fraction=0.1, long_s=20.0)
# (from_s, phase): the shape of calibration_trace, also the demo's load phases.
PHASES = ((0.0, "quiet"), (20.0, "burst"), (23.0, "trickle"), (120.0, "quiet"), (270.0, "wave"), (360.0, "silence"))


def log(message: str) -> None:
    print(f"[calibrate] {message}", flush=True)


def calibration_trace(seed: int = SEED) -> Trace:
    """The default trace, the same for a seed: quiet 20 s; 1200 e-mails (about 0.8 s) and 100 reports
    (1-20 s) within 3 s; a trickle of 1.5 + 0.3 tasks/s to 120 s; quiet to 270 s (both pools scale to
    0); a wave of 4 + 0.5 tasks/s to 360 s. Times and run times are whole milliseconds."""
    rng = random.Random(f"{seed}:calibrate")
    rows: list[tuple[float, int, float]] = []

    def add(times: list[float], queue: int, model: ServiceModel) -> None:
        rows.extend((round(t, 3), queue, round(min(max(model.draw(rng), 0.2), 30.0), 3)) for t in times)

    add([rng.uniform(20.0, 23.0) for _ in range(1200)], 0, EMAILS)
    add([rng.uniform(20.0, 23.0) for _ in range(100)], 1, REPORTS)
    add(poisson(1.5, 120.0, rng, start_s=23.0), 0, EMAILS)
    add(poisson(0.3, 120.0, rng, start_s=23.0), 1, REPORTS)
    add(poisson(4.0, 360.0, rng, start_s=270.0), 0, EMAILS)
    add(poisson(0.5, 360.0, rng, start_s=270.0), 1, REPORTS)
    rows.sort()
    return Trace("calibration", [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], QUEUES, PHASES[-1][0])


# ------------------------------------------------------------------------------------ what the run measured


@dataclass(frozen=True)
class Measured:
    """What the demo run did, relative to the load's start: the trace as played and the delays it showed."""

    trace: Trace  # real send times, queues and real run times
    end_s: float  # the run's end (both pools back at 0, or the settle timeout)
    launch_s: dict[str, list[float]]  # per pool: tick that raised the count -> the worker's process started
    boot_s: dict[str, list[float]]  # per pool: process started -> consuming
    observe_s: list[float]  # tick that changed a count -> the runner acting on it (starting, or SIGTERM)
    exit_s: list[float]  # SIGTERM -> process exit
    tick_lag_s: list[float]  # each tick's start after its slot on the fixed period
    send_lag_s: list[float]  # each task's send after its scheduled time
    workers: dict[str, dict[str, Any]]  # per pool: the container's settings
    helper: dict[str, float]  # the worker helper's release_after_idle_s and poll_interval_s
    drains: bool  # the scaler scaled in through fence and drain (some tick's log line has a drain)
    demo: dict[str, Any]  # the demo's metrics, in the simulator's names


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)] if ordered else 0.0


def measure(run_dir: Path, pools: tuple[PoolConfig, ...]) -> Measured:
    """Read the event log and task records ``demo.main.play`` left in ``run_dir``."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    records = json.loads((run_dir / "tasks.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    started = next(e for e in events if e["kind"] == "run_started")
    load = next(e for e in events if e["kind"] == "load_started")
    t0, t0_wall = float(load["t"]), float(load["started_at"])
    end_s = next(e["t"] for e in events if e["kind"] == "run_finished") - t0
    interval = float(started["tick_interval_s"])

    sent, done = records["sent"], records["done"]
    order = sorted(sent, key=lambda i: sent[i]["sent_at"])
    queue_index = {q: n for n, q in enumerate(QUEUES)}
    trace = Trace(
        "calibration-as-played",
        [sent[i]["sent_at"] - t0_wall for i in order],
        [queue_index[sent[i]["queue"]] for i in order],
        [done[i]["finished_at"] - done[i]["started_at"] if i in done else 0.0 for i in order],
        QUEUES,
        end_s,
    )

    names = [p.name for p in pools]
    # The runner sees every count the scaler sets, in order (the demo's end-to-end test checks it): the
    # k-th count the runner saw for a pool is the k-th acted tick's, whichever event was written first.
    acted = {n: [float(e["t"]) for e in events if e["kind"] == "tick" and e["pool"] == n and e["acted"]] for n in names}
    seen = {n: [float(e["t"]) for e in events if e["kind"] == "runner_desired" and e["pool"] == n] for n in names}
    observe = [max(0.0, r - a) for n in names for a, r in zip(acted[n], seen[n], strict=False)]
    launch: dict[str, list[float]] = {n: [] for n in names}
    boot: dict[str, list[float]] = {n: [] for n in names}
    exits: list[float] = []
    asked: dict[str, float] = {}  # worker -> the tick whose count it was created for
    stopping: dict[str, float] = {}
    ticks: list[float] = []
    ready = {host.split("@")[0]: float(at) for host, at in records["ready"].items()}
    for e in events:
        kind, t = e["kind"], float(e["t"])
        if kind == "tick" and t >= t0 and (not ticks or t - ticks[-1] > interval / 2):
            ticks.append(t)
        elif kind == "task_pending":
            k = sum(1 for r in seen[e["pool"]] if r <= t) - 1
            if 0 <= k < len(acted[e["pool"]]):
                asked[e["task"]] = acted[e["pool"]][k]
        elif kind == "task_started":
            if e["task"] in asked:
                launch[e["pool"]].append(t - asked[e["task"]])
            if e["task"] in ready:
                boot[e["pool"]].append(ready[e["task"]] - (t0_wall + t - t0))
        elif kind == "task_stopping" and not e.get("at_exit"):
            stopping[e["task"]] = t
        elif kind == "task_exited" and e["task"] in stopping:
            exits.append(t - stopping.pop(e["task"]))

    waits = [done[i]["started_at"] - sent[i]["sent_at"] for i in order if i in done]
    demo = {
        "wait_p50_s": round(_percentile(waits, 50), 3),
        "wait_p95_s": round(_percentile(waits, 95), 3),
        "worker_seconds": summary["worker_seconds"],
        "scaling_actions": sum(1 for e in events if e["kind"] == "tick" and e["acted"]),
        "peak_workers": {n: summary["peak_workers"][n] for n in names},
        "tasks_sent": summary["tasks_sent"],
        "tasks_completed": summary["tasks_completed"],
        "scaled_to_zero": summary["scaled_to_zero"],
    }
    return Measured(
        trace=trace,
        end_s=end_s,
        launch_s=launch,
        boot_s=boot,
        observe_s=observe,
        exit_s=exits,
        tick_lag_s=[t - t0 - round((t - t0) / interval) * interval for t in ticks],
        send_lag_s=[sent[i]["sent_at"] - t0_wall - sent[i]["at_s"] for i in order],
        workers=started["workers"],
        helper=started["helper"],
        drains=any(e.get("drain") for e in events if e["kind"] == "tick"),
        demo=demo,
    )


# -------------------------------------------------------------------------------------------- the simulator


def _range(values: list[float]) -> tuple[float, float]:
    """The 5th to 95th percentile (a uniform draw between them stands in for the measured spread)."""
    return (_percentile(values, 5), _percentile(values, 95))


def sim_settings(measured: Measured, pool: PoolConfig, tick_interval_s: float) -> SimSettings:
    """The simulator's world for ``pool``, every value from what the run used or measured (see the module doc)."""
    launch = measured.launch_s[pool.name] or [x for v in measured.launch_s.values() for x in v]
    boot = measured.boot_s[pool.name] or [x for v in measured.boot_s.values() for x in v]
    if not launch or not boot:
        raise SystemExit(f"the run started no worker for pool {pool.name!r}: nothing to calibrate the start with")
    logs = [math.log(max(b, 0.01)) for b in boot]
    workers = measured.workers[pool.name]
    return SimSettings(
        tick_interval_s=tick_interval_s,
        ticks_per_invocation=1,
        invocation_period_s=tick_interval_s,
        invocation_jitter_s=max(0.0, _percentile(measured.tick_lag_s, 95)),
        start_delay=StartDelay(
            control_s=(0.0, 0.0),
            provisioning_s=_range(launch),
            pull_median_s=statistics.median(boot),
            pull_sigma=statistics.pstdev(logs) if len(logs) > 1 else 0.0,
            app_s=(0.0, 0.0),
        ),
        prefetch_multiplier=int(workers["prefetch_multiplier"]),
        acks_late=bool(workers["acks_late"]),
        stop_timeout_s=float(workers["stop_timeout_s"]),
        exit_s=statistics.median(measured.exit_s) if measured.exit_s else 0.0,
        stop_signal_s=_range(measured.observe_s),
        protection_release_s=float(measured.helper["release_after_idle_s"]),
        drain=measured.drains,
        drain_idle_s=float(measured.helper["release_after_idle_s"]),
        drain_poll_s=float(measured.helper["poll_interval_s"]),
        min_billed_s=0.0,
    )


def simulate_run(
    measured: Measured, pools: tuple[PoolConfig, ...], settings: dict[str, SimSettings], seed: int
) -> dict[str, Any]:
    """The engine on the trace as played, one pool at a time, summarised like ``simulate``."""
    runs: list[RunResult] = []
    for pool in pools:
        enq, svc = measured.trace.for_queues(pool.queues)
        runs.append(run_pool(enq, svc, ScalerPolicy(pool), pool, settings[pool.name], seed, measured.end_s))
    metrics = summarise(runs, settings[pools[0].name])
    return {
        "wait_p50_s": metrics["wait_p50_s"],
        "wait_p95_s": metrics["wait_p95_s"],
        "worker_seconds": metrics["worker_seconds"],
        "scaling_actions": metrics["scaling_actions"],
        "peak_workers": {pool.name: run.peak_workers for pool, run in zip(pools, runs, strict=True)},
        "tasks_killed": metrics["tasks_killed"],
        "waits": sorted(w for run in runs for w in run.waits),
    }


def median_of(runs: list[dict[str, Any]], key: str, pool: str | None = None) -> float:
    values = [float(r[key][pool] if pool else r[key]) for r in runs]
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------- the report


def compare(measured: Measured, sims: list[dict[str, Any]], pools: tuple[PoolConfig, ...]) -> list[dict[str, Any]]:
    """One row per metric: demo, the simulator's median over seeds (and its range), ratio, verdict."""
    rows: list[dict[str, Any]] = []
    keys: list[tuple[str, str | None, str]] = [
        ("wait_p50_s", None, "p50 wait (s)"),
        ("wait_p95_s", None, "p95 wait (s)"),
        ("worker_seconds", None, "worker-seconds"),
        ("scaling_actions", None, "scale actions"),
        *(("peak_workers", p.name, f"peak workers ({p.name})") for p in pools),
    ]
    for key, pool, label in keys:
        demo = float(measured.demo[key][pool] if pool else measured.demo[key])
        sim = median_of(sims, key, pool)
        values = [float(r[key][pool] if pool else r[key]) for r in sims]
        ratio = sim / demo if demo else (1.0 if sim == 0 else math.inf)
        checked = key in CHECKED
        rows.append(
            {
                "metric": label,
                "key": key if pool is None else f"{key}.{pool}",
                "demo": demo,
                "simulate": sim,
                "simulate_range": [min(values), max(values)],
                "ratio": round(ratio, 3),
                "checked": checked,
                "within": abs(ratio - 1.0) <= TOLERANCE if checked else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], seeds: int) -> list[str]:
    """The comparison as text."""
    head = f"{'metric':<26}{'demo':>10}{'simulate':>10}  {f'(range of {seeds} seeds)':<22}{'ratio':>7}  within 20 %?"
    lines = [head, "-" * len(head)]
    for row in rows:
        low, high = row["simulate_range"]
        verdict = "info" if row["within"] is None else ("yes" if row["within"] else "NO")
        lines.append(
            f"{row['metric']:<26}{row['demo']:>10.1f}{row['simulate']:>10.1f}  {f'{low:.1f}-{high:.1f}':<22}"
            f"{row['ratio']:>7.2f}  {verdict}"
        )
    return lines


def plot(measured: Measured, run_dir: Path, sim: dict[str, Any], path: Path) -> None:
    """``calibration.png``: the wait distribution of the demo and of one simulated run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = json.loads((run_dir / "tasks.json").read_text())
    sent, done = records["sent"], records["done"]
    demo_waits = sorted(done[i]["started_at"] - sent[i]["sent_at"] for i in sent if i in done)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for waits, label in ((demo_waits, "demo (real workers)"), (sim["waits"], "simulate (seed 1)")):
        ax.step(waits, [(n + 1) / len(waits) for n in range(len(waits))], where="post", label=label)
    ax.set_xlabel("task wait (s): start - send")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(f"calibration: {len(demo_waits)} tasks, {measured.end_s:.0f} s", loc="left")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_of(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "p50": round(statistics.median(values), 3),
        "p95": round(_percentile(values, 95), 3),
        "max": round(max(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "calibrate-out", help="where the results go")
    parser.add_argument(
        "--trace", type=Path, help="a per-task CSV trace (enqueue_s,queue,service_s on queues default and reports)"
    )
    parser.add_argument("--sim-seeds", type=int, default=9, help="simulated runs; the median is compared")
    parser.add_argument(
        "--from-run", type=Path, help="compare an earlier run's directory (its demo/) instead of running the demo"
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.from_run is not None:
        run_dir = args.from_run.resolve()
    else:
        trace = read_csv(args.trace) if args.trace else calibration_trace()
        schedule: Schedule = replay(trace) if args.trace else replay(trace, PHASES)
        write_csv(trace, out / "trace.csv")
        log(f"trace {trace.name}: {len(trace)} tasks over {schedule.length_s:.0f} s -> {out / 'trace.csv'}")
        from demo.main import play  # the demo's whole run: broker, emulator, terraform, runner, workers, ticks

        run_dir = out / "demo"
        play(DEFAULT, schedule, run_dir)
    document = json.loads((run_dir / "scaler_config.json").read_text())
    config = parse_config(document)
    measured = measure(run_dir, config.pools)
    settings = {pool.name: sim_settings(measured, pool, config.tick_interval_s) for pool in config.pools}
    sims = [simulate_run(measured, config.pools, settings, seed) for seed in range(1, args.sim_seeds + 1)]
    rows = compare(measured, sims, config.pools)
    lines = table(rows, args.sim_seeds)
    ok = all(row["within"] for row in rows if row["checked"])
    result = {
        "ok": ok,
        "tolerance": TOLERANCE,
        "run_dir": str(run_dir),
        "tasks": len(measured.trace),
        "window_s": round(measured.end_s, 1),
        "fence_and_drain": measured.drains,
        "rows": rows,
        "demo": measured.demo,
        "measured": {
            "launch_s": {k: summary_of(v) for k, v in measured.launch_s.items()},
            "boot_s": {k: summary_of(v) for k, v in measured.boot_s.items()},
            "observe_s": summary_of(measured.observe_s),
            "exit_s": summary_of(measured.exit_s),
            "tick_lag_s": summary_of(measured.tick_lag_s),
            "send_lag_s": summary_of(measured.send_lag_s),
        },
        "settings": {name: _settings_json(s) for name, s in settings.items()},
        "simulate": [{k: v for k, v in sim.items() if k != "waits"} for sim in sims],
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "calibration.txt").write_text("\n".join(lines) + "\n")
    plot(measured, run_dir, sims[0], out / "calibration.png")
    for name, values in result["measured"].items():
        log(f"measured {name}: {json.dumps(values)}")
    print("\n".join(lines))
    log(f"{'all three within' if ok else 'NOT all within'} 20 %; {out / 'calibration.json'}, {out / 'calibration.png'}")
    return 0 if ok else 1


def _settings_json(settings: SimSettings) -> dict[str, Any]:
    values = asdict(settings)
    return values


if __name__ == "__main__":
    sys.exit(main())
