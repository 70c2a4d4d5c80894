"""The live terminal view: per pool waiting, in flight, oldest age, desired, running, last decision.

On a terminal it redraws in place (rich); otherwise (CI, the e2e test) it prints one line per pool
per tick, so a log still tells the story.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from demo.runner import PoolView


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}{suffix}"
    return f"{value}{suffix}"


class LiveView:
    """Holds the latest tick per pool and the runner's counts; ``refresh`` redraws."""

    def __init__(self, pools: list[str], expected_s: float, console: Console | None = None) -> None:
        # Without a terminal, plain lines one per pool per tick: wide, so a reason stays on one line.
        self.console = console or Console()
        if not self.console.is_terminal:
            self.console.width = 200
        self.pools = pools
        self.latest: dict[str, dict[str, Any]] = {}
        self.phase = "starting"
        self.sent = 0
        self.completed = 0
        self._started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._bar = self._progress.add_task("run", total=expected_s, status="")
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live = Live(self._render({}), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def tick(self, outcomes: list[dict[str, Any]]) -> None:
        """Remember a tick; without a terminal, print it as plain lines."""
        for outcome in outcomes:
            self.latest[outcome["pool"]] = outcome
            if self._live is None:
                self.console.print(
                    f"[{time.monotonic() - self._started:6.1f} s] {outcome['pool']:>8}: "
                    f"desired {_fmt(outcome.get('desired'))}, running {_fmt(outcome.get('running'))} - "
                    f"{outcome.get('error') or outcome.get('reason')}",
                    highlight=False,
                )

    def refresh(self, views: dict[str, PoolView], done: bool = False) -> None:
        elapsed = time.monotonic() - self._started
        status = f"{self.phase} · sent {self.sent} · done {self.completed}"
        total = self._progress.tasks[0].total or 1.0
        self._progress.update(self._bar, completed=total if done else min(elapsed, total * 0.99), status=status)
        if self._live is not None:
            self._live.update(self._render(views))

    def _render(self, views: dict[str, PoolView]) -> Group:
        table = Table(expand=True)
        for column in ("pool", "waiting", "in flight", "oldest", "desired", "running"):
            table.add_column(column, justify="left" if column == "pool" else "right", no_wrap=column != "running")
        table.add_column("last decision", ratio=1)
        for pool in self.pools:
            last = self.latest.get(pool, {})
            view = views.get(pool)
            running = "-" if view is None else str(view.running)
            if view is not None:
                extra = [f"+{view.pending} starting"] if view.pending else []
                extra += [f"{view.stopping} stopping"] if view.stopping else []
                extra += [f"{view.protected} protected"] if view.protected else []
                running += f" ({', '.join(extra)})" if extra else ""
            table.add_row(
                pool,
                _fmt(last.get("waiting")),
                _fmt(last.get("in_flight")),
                _fmt(last.get("oldest_age_s"), " s"),
                _fmt(last.get("desired")),
                running,
                last.get("error") or last.get("reason") or "waiting for the first tick",
            )
        return Group(table, self._progress)
