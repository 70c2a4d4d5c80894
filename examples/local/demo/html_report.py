"""``report.html``: the run's timeline per pool with every decision's reason on hover, cost per pool and
the summary, in one self-contained file (inline SVG and script; nothing is fetched, so it opens offline).

Like ``summary.json`` it is built from the run's event log only: the scaler's tick outcomes (counts,
reasons, worker-seconds, estimated cost) and the runner's running counts.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 960, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 14, 34
COLOURS = {"waiting": "#9ecae1", "in_flight": "#fdd0a2", "desired": "#d62728", "running": "#2ca02c", "max": "#444444"}

SCRIPT = """
(function () {
  var tip = document.getElementById("tip");
  document.querySelectorAll(".decision").forEach(function (mark) {
    mark.addEventListener("mouseenter", function (event) {
      var d = mark.dataset;
      tip.textContent = "t=" + d.t + " s  " + d.from + " -> " + d.to + (d.acted === "true" ? " (acted)" : "") +
        "\\n" + d.reason;
      tip.style.left = (event.pageX + 12) + "px";
      tip.style.top = (event.pageY + 12) + "px";
      tip.hidden = false;
    });
    mark.addEventListener("mouseleave", function () { tip.hidden = true; });
  });
  window.reportReady = true;
})();
"""

ERRORS = 'window.reportErrors = []; window.addEventListener("error", e => window.reportErrors.push(String(e.message)));'
"""Runs first: any later script error is kept where a test (or a curious reader's console) finds it."""

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
section.pool { margin-bottom: 28px; }
table { border-collapse: collapse; margin: 8px 0 20px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
#tip { position: absolute; background: #fffbe6; border: 1px solid #999; padding: 6px 8px; white-space: pre-wrap;
       max-width: 520px; font-size: 12px; pointer-events: none; }
.legend span { margin-right: 16px; } .swatch { display: inline-block; width: 14px; height: 10px; margin-right: 4px; }
.decision { cursor: pointer; }
"""


def _el(tag: str, text: str | None = None, **attrs: Any) -> str:
    """One element; ``font_size="11"`` is written ``font-size="11"``, every value escaped."""
    written = " ".join(f'{name.rstrip("_").replace("_", "-")}="{html.escape(str(v))}"' for name, v in attrs.items())
    return f"<{tag} {written}/>" if text is None else f"<{tag} {written}>{html.escape(text)}</{tag}>"


def _x(t: float, end_t: float) -> float:
    return round(LEFT + (WIDTH - LEFT - RIGHT) * t / end_t, 1)


def _y(value: float, top: float) -> float:
    return round(HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * value / top, 1)


def _steps(points: Sequence[tuple[float, float]], end_t: float, top: float) -> str:
    """An SVG path of a step function (each value holds until the next point)."""
    if not points:
        return ""
    path = [f"M{_x(points[0][0], end_t)},{_y(points[0][1], top)}"]
    path += [f"H{_x(t, end_t)}V{_y(value, top)}" for t, value in points[1:]]
    return "".join([*path, f"H{_x(end_t, end_t)}"])


def _area(points: Sequence[tuple[float, float, float]], end_t: float, top: float) -> str:
    """A step area between ``low`` and ``high`` of each (t, low, high), each holding until the next point."""
    if not points:
        return ""
    spans = list(zip(points, [*(p[0] for p in points[1:]), end_t], strict=True))
    upper = [f"L{_x(t, end_t)},{_y(high, top)}L{_x(until, end_t)},{_y(high, top)}" for (t, _, high), until in spans]
    lower = [f"L{_x(until, end_t)},{_y(low, top)}L{_x(t, end_t)},{_y(low, top)}" for (t, low, _), until in spans]
    return f"M{_x(points[0][0], end_t)},{_y(points[0][1], top)}{''.join(upper)}{''.join(reversed(lower))}Z"


def _axes(end_t: float, tasks_top: float, workers_top: float) -> str:
    """Time along the bottom, tasks on the left and workers on the right, each in its series' colour."""
    tasks, workers, middle = "#3182bd", COLOURS["desired"], HEIGHT / 2
    parts = [_el("line", x1=LEFT, y1=HEIGHT - BOTTOM, x2=WIDTH - RIGHT, y2=HEIGHT - BOTTOM, stroke="#888")]
    for i in range(6):
        t, task_value, worker_value = end_t * i / 5, tasks_top * i / 5, workers_top * i / 5
        parts += [
            _el("text", f"{t:.0f} s", x=_x(t, end_t), y=HEIGHT - BOTTOM + 16, font_size=11, text_anchor="middle"),
            _el(
                "text",
                f"{task_value:.3g}",
                x=LEFT - 6,
                y=_y(task_value, tasks_top) + 4,
                font_size=11,
                text_anchor="end",
                fill=tasks,
            ),
            _el(
                "text",
                f"{worker_value:.1f}",
                x=WIDTH - RIGHT + 6,
                y=_y(worker_value, workers_top) + 4,
                font_size=11,
                fill=workers,
            ),
        ]
    parts += [
        _el(
            "text",
            "tasks (waiting + in flight)",
            x=14,
            y=middle,
            font_size=12,
            fill=tasks,
            transform=f"rotate(-90 14 {middle})",
            text_anchor="middle",
        ),
        _el(
            "text",
            "workers",
            x=WIDTH - 10,
            y=middle,
            font_size=12,
            fill=workers,
            transform=f"rotate(90 {WIDTH - 10} {middle})",
            text_anchor="middle",
        ),
    ]
    return "".join(parts)


def pool_costs(events: list[dict[str, Any]], pools: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per pool: worker-seconds and estimated USD as the scaler reported them tick by tick, summed."""
    costs = {pool: {"worker_seconds": 0.0, "estimated_cost_usd": 0.0} for pool in pools}
    for event in events:
        if event["kind"] == "tick" and event["pool"] in costs:
            row = costs[event["pool"]]
            row["worker_seconds"] += event.get("worker_seconds") or 0.0
            row["estimated_cost_usd"] += event.get("estimated_cost_usd") or 0.0
    return costs


def _decision(event: dict[str, Any], end_t: float, workers_top: float) -> str:
    """A dot at the desired count of one tick, carrying what the hover shows."""
    acted = bool(event.get("acted"))
    radius, fill = (5, COLOURS["desired"]) if acted else (3, "#ffffff")
    return _el(
        "circle",
        class_="decision",
        data_t=f"{event['t']:.0f}",
        data_from=event.get("current_desired"),
        data_to=event["desired"],
        data_acted=str(acted).lower(),
        data_reason=event.get("reason") or event.get("error") or "",
        cx=_x(event["t"], end_t),
        cy=_y(event["desired"], workers_top),
        r=radius,
        fill=fill,
        stroke=COLOURS["desired"],
    )


def _pool_svg(pool: str, events: list[dict[str, Any]], end_t: float, max_workers: int | None) -> str:
    ticks = [e for e in events if e["kind"] == "tick" and e["pool"] == pool and e.get("desired") is not None]
    loads = [
        (e["t"], e["waiting"], e["waiting"] + (e["in_flight"] or 0)) for e in ticks if e.get("waiting") is not None
    ]
    desired = [(e["t"], e["desired"]) for e in ticks]
    running = [(0.0, 0)] + [
        (e["t"], e["running"]) for e in events if e["kind"] == "runner_running" and e["pool"] == pool
    ]
    tasks_top = max([high for _, _, high in loads] + [1]) * 1.1
    workers_top = max([v for _, v in desired] + [v for _, v in running] + [max_workers or 0, 1]) * 1.15
    body = [
        _el("path", d=_area([(t, 0, w) for t, w, _ in loads], end_t, tasks_top), fill=COLOURS["waiting"]),
        _el("path", d=_area(loads, end_t, tasks_top), fill=COLOURS["in_flight"]),
        _el(
            "path",
            d=_steps(running, end_t, workers_top),
            fill="none",
            stroke=COLOURS["running"],
            stroke_width=2,
            stroke_dasharray="6 3",
        ),
        _el("path", d=_steps(desired, end_t, workers_top), fill="none", stroke=COLOURS["desired"], stroke_width=2),
    ]
    if max_workers is not None:
        y = _y(max_workers, workers_top)
        body.append(
            _el(
                "line",
                class_="max",
                x1=LEFT,
                y1=y,
                x2=WIDTH - RIGHT,
                y2=y,
                stroke=COLOURS["max"],
                stroke_dasharray="2 3",
            )
        )
    body += [_decision(e, end_t, workers_top) for e in ticks]
    svg = _el(
        "svg", "", xmlns="http://www.w3.org/2000/svg", width=WIDTH, height=HEIGHT, role="img", aria_label=f"pool {pool}"
    )
    return svg.replace("></svg>", ">" + "".join(body) + _axes(end_t, tasks_top, workers_top) + "</svg>")


def _legend() -> str:
    items = [
        ("waiting", "tasks waiting (left axis)"),
        ("in_flight", "tasks in flight (left axis)"),
        ("desired", "desired workers (right axis); filled dot: a change the scaler made, open dot: a tick that held"),
        ("running", "running workers (dashed)"),
        ("max", "max_workers (dotted)"),
    ]
    return (
        '<p class="legend">'
        + "".join(f'<span><i class="swatch" style="background:{COLOURS[k]}"></i>{text}</span>' for k, text in items)
        + " Hover a dot for the decision's reason.</p>"
    )


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(
    events: list[dict[str, Any]], summary: dict[str, Any], pools: Sequence[str], max_workers: dict[str, int]
) -> str:
    """The whole page as one string."""
    end_t = max([e["t"] for e in events] + [1.0])
    costs = pool_costs(events, pools)
    sections = [
        f'<section class="pool" data-pool="{html.escape(pool)}"><h2>pool {html.escape(pool)}</h2>'
        f"{_pool_svg(pool, events, end_t, max_workers.get(pool))}</section>"
        for pool in pools
    ]
    cost_rows = [
        [
            pool,
            f"{c['worker_seconds']:.0f}",
            f"{c['worker_seconds'] / 3600:.3f}",
            f"{c['estimated_cost_usd']:.5f}",
            f"{c['estimated_cost_usd'] / end_t * 3600:.4f}",
        ]
        for pool, c in costs.items()
    ]
    summary_rows = [[key, json.dumps(value)] for key, value in summary.items()]
    return "".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>celery-autoscaler demo report</title>',
            f"<script>{ERRORS}</script>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>celery-autoscaler demo: {len(pools)} pools over {end_t:.0f} s</h1>",
            _legend(),
            *sections,
            "<h2>Cost per pool (the scaler's WorkerSeconds and EstimatedCostUSD, summed over its ticks)</h2>",
            _table(cost_rows, ["pool", "worker-seconds", "worker-hours", "estimated USD", "USD per hour"]),
            "<h2>Summary (summary.json)</h2>",
            _table(summary_rows, ["", "value"]),
            f'<div id="tip" hidden></div><script>{SCRIPT}</script></body></html>',
        ]
    )


def write_report(
    events: list[dict[str, Any]], summary: dict[str, Any], pools: Sequence[str], max_workers: dict[str, int], path: Path
) -> None:
    path.write_text(render(events, summary, pools, max_workers), encoding="utf-8")
