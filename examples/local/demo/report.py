"""The end of a run: ``summary.json`` (what our checks read) and ``timeline.png`` (what people look at).

Both come from the run's event log and the tasks' own records in Redis, never from a part's own
opinion of how it did: completed means the task wrote its record; lost means it never did.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from demo.loadgen import SENT_KEY

DONE_KEY = "demo:done"
RUNS_KEY = "demo:runs"
READY_KEY = "demo:ready"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _worker_seconds(events: list[dict[str, Any]], end_t: float) -> float:
    """Seconds each worker process lived, summed (from the runner's start and exit events)."""
    started: dict[str, float] = {}
    total = 0.0
    for event in events:
        if event["kind"] == "task_started":
            started[event["task"]] = event["t"]
        elif event["kind"] == "task_exited" and event["task"] in started:
            total += event["t"] - started.pop(event["task"])
    return total + sum(end_t - t for t in started.values())


def scaler_changes(events: list[dict[str, Any]]) -> dict[str, list[tuple[float, int, int]]]:
    """Per pool, every desired count the scaler set: (t, previous, new)."""
    changes: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for event in events:
        if event["kind"] == "tick" and event["acted"]:
            changes[event["pool"]].append((event["t"], event["current_desired"], event["desired"]))
    return changes


def task_records(results: redis.Redis) -> dict[str, dict[str, Any]]:
    """The records of the run, by task id: ``sent`` (the load generator's), ``done`` and ``runs`` (the tasks'),
    and ``ready``: when each worker (by hostname) began to consume."""
    return {
        "sent": {_text(k): json.loads(v) for k, v in results.hgetall(SENT_KEY).items()},
        "done": {_text(k): json.loads(v) for k, v in results.hgetall(DONE_KEY).items()},
        "runs": {_text(k): int(v) for k, v in results.hgetall(RUNS_KEY).items()},
        "ready": {_text(k): json.loads(v) for k, v in results.hgetall(READY_KEY).items()},
    }


def build_summary(records: dict[str, dict[str, Any]], events: list[dict[str, Any]], pools: list[str]) -> dict[str, Any]:
    """Exactly the keys issue #3 names (other checks read the event log)."""
    sent, done, runs = records["sent"], records["done"], records["runs"]
    completed = [task_id for task_id in sent if task_id in done]
    waits = [done[i]["started_at"] - sent[i]["sent_at"] for i in completed]
    end_t = events[-1]["t"] if events else 0.0
    peak: dict[str, int] = dict.fromkeys(pools, 0)
    last_running: dict[str, int] = dict.fromkeys(pools, 0)
    for event in events:
        if event["kind"] == "runner_running":
            peak[event["pool"]] = max(peak[event["pool"]], event["running"])
            last_running[event["pool"]] = event["running"]
    changes = scaler_changes(events)
    scaled_to_zero = {
        pool: peak[pool] > 0 and last_running[pool] == 0 and bool(changes[pool]) and changes[pool][-1][2] == 0
        for pool in pools
    }
    errors = sum(1 for e in events if e["kind"] in {"tick", "tick_failed"} and e.get("error"))
    scale_ins = sum(1 for pool in pools for _, before, after in changes[pool] if after < before)
    return {
        "tasks_sent": len(sent),
        "tasks_completed": len(completed),
        "tasks_lost": len(sent) - len(completed),
        "tasks_duplicated": sum(1 for i in sent if runs.get(i, 0) > 1),
        "wait_p50_s": round(_percentile(waits, 50), 3),
        "wait_p95_s": round(_percentile(waits, 95), 3),
        "worker_seconds": round(_worker_seconds(events, end_t), 1),
        "peak_workers": peak,
        "scaled_to_zero": scaled_to_zero,
        "scaler_errors": errors,
        "scale_in_events": scale_ins,
    }


def plot_timeline(
    events: list[dict[str, Any]],
    pools: list[str],
    path: Path,
    max_workers: dict[str, int] | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """``timeline.png``: :func:`timeline_figure`, saved."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(events, pools, max_workers, summary)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline_figure(
    events: list[dict[str, Any]],
    pools: list[str],
    max_workers: dict[str, int] | None = None,
    summary: dict[str, Any] | None = None,
) -> Any:
    """Per pool: queue depth (waiting, in flight) and the oldest task's age, desired/running workers and
    max_workers, decisions marked; every axis in its series' colour, the legend explains the shading and
    markers, and the run's summary is printed on the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    tasks_colour, workers_colour, age_colour = "#3182bd", "#d62728", "#6a51a3"
    fig, axes = plt.subplots(len(pools), 1, figsize=(12, 3.8 * len(pools)), sharex=True, squeeze=False)
    phases = [(e["t"], e["phase"]) for e in events if e["kind"] == "load_phase"]
    end_t = events[-1]["t"] if events else 1.0
    for ax, pool in zip(axes[:, 0], pools, strict=True):
        ticks = [e for e in events if e["kind"] == "tick" and e["pool"] == pool and e.get("waiting") is not None]
        t = [e["t"] for e in ticks]
        waiting = [e["waiting"] for e in ticks]
        in_flight = [e["in_flight"] or 0 for e in ticks]
        ax.fill_between(t, 0, waiting, step="post", color="#9ecae1", label="waiting")
        ax.fill_between(
            t,
            waiting,
            [w + f for w, f in zip(waiting, in_flight, strict=True)],
            step="post",
            color="#fdd0a2",
            label="in flight",
        )
        ax.set_ylabel("tasks in queue", color=tasks_colour)
        ax.tick_params(axis="y", colors=tasks_colour)
        ax.set_title(f"pool {pool}", loc="left")
        right = ax.twinx()
        desired = [(e["t"], e["desired"]) for e in ticks if e.get("desired") is not None]
        if desired:
            dt, dv = zip(*desired, strict=True)
            right.step([*dt, end_t], [*dv, dv[-1]], where="post", color=workers_colour, lw=2, label="desired workers")
        running = [(0.0, 0)] + [
            (e["t"], e["running"]) for e in events if e["kind"] == "runner_running" and e["pool"] == pool
        ]
        rt, rv = zip(*running, strict=True)
        right.step([*rt, end_t], [*rv, rv[-1]], where="post", color="#2ca02c", lw=2, ls="--", label="running workers")
        top = max([*rv, *(v for _, v in desired), 1])
        if max_workers and pool in max_workers:
            right.axhline(
                max_workers[pool], color="#444444", lw=1.2, ls=":", label=f"max_workers ({max_workers[pool]})"
            )
            top = max(top, max_workers[pool])
        for when, before, after in scaler_changes(events)[pool]:
            marker, color = ("^", workers_colour) if after > before else ("v", "#9467bd")
            right.plot([when], [after], marker=marker, color=color, ms=9, ls="none")
        right.set_ylabel("workers", color=workers_colour)
        right.tick_params(axis="y", colors=workers_colour)
        right.set_ylim(bottom=0, top=top + 1)
        age = ax.twinx()
        age.spines["right"].set_position(("axes", 1.07))
        ages = [(e["t"], e["oldest_age_s"]) for e in ticks if e.get("oldest_age_s") is not None]
        if ages:
            at, av = zip(*ages, strict=True)
            age.plot(at, av, color=age_colour, lw=1, alpha=0.8, label="oldest waiting task's age")
        age.set_ylabel("oldest task age (s)", color=age_colour)
        age.tick_params(axis="y", colors=age_colour)
        age.set_ylim(bottom=0)
        for index, (when, phase) in enumerate(phases):
            until = phases[index + 1][0] if index + 1 < len(phases) else end_t
            if phase == "trickle":
                ax.axvspan(when, until, color="#fff6cc", lw=0, zorder=0)
            ax.axvline(when, color="grey", lw=0.8, ls=":")
            ax.annotate(
                phase, (when, 0.98), xycoords=("data", "axes fraction"), fontsize=8, va="top", ha="right", rotation=90
            )
        explained = [
            Patch(color="#fff6cc", label="shaded: trickle phase of the load"),
            Line2D([], [], color="grey", lw=0.8, ls=":", label="dotted grey: a load phase starts"),
            Line2D([], [], marker="^", color=workers_colour, ls="none", label="scale out the scaler acted on"),
            Line2D([], [], marker="v", color="#9467bd", ls="none", label="scale in the scaler acted on"),
        ]
        handles, labels = [], []
        for part in (ax, right, age):
            more = part.get_legend_handles_labels()
            handles += more[0]
            labels += more[1]
        ax.legend(
            handles + explained, labels + [h.get_label() for h in explained], loc="upper left", fontsize=7, ncol=2
        )
    axes[-1, 0].set_xlabel("seconds since start")
    if summary:
        fig.suptitle(
            f"wait p95 {summary.get('wait_p95_s')} s   tasks lost {summary.get('tasks_lost')}   "
            f"worker-seconds {summary.get('worker_seconds')}   tasks {summary.get('tasks_completed')}"
            f"/{summary.get('tasks_sent')} completed",
            fontsize=10,
        )
    fig.tight_layout()
    return fig
