"""The load generator: plays a :class:`Schedule`, every task at its send time, on its queue, for its run time.

A schedule comes from a run profile (:meth:`demo.profiles.Profile.schedule`) or from a per-task trace
(:func:`replay`, the simulator's CSV form), so ``make demo`` and ``make calibrate`` send load one way.
It publishes through the demo app's own Celery tasks (so the worker helper stamps the publish time,
as in a real web process) and records every task it sends in ``demo:sent``, which is what the
report checks the workers' ``demo:done`` records against.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from celery_autoscaler.sim.traces import Trace
from demo.events import EventLog

SENT_KEY = "demo:sent"
QUEUES = ("default", "reports")
"""The demo app's queues: ``send_email`` goes to default, ``build_report`` to reports (its routes)."""
DEFAULT_PRIORITY = 5  # the demo app's CELERY_TASK_DEFAULT_PRIORITY


@dataclass(frozen=True)
class Send:
    """One task to publish: ``at_s`` seconds after the load starts, on ``queue``, sleeping ``duration_s``."""

    at_s: float
    queue: str
    duration_s: float
    priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True)
class Schedule:
    """Sends sorted by time, and the load's phases as (from_s, name); the last phase starts when the load ends."""

    sends: tuple[Send, ...]
    phases: tuple[tuple[float, str], ...]

    def __post_init__(self) -> None:
        unknown = sorted({s.queue for s in self.sends} - set(QUEUES))
        if unknown:
            raise ValueError(f"schedule: queue {unknown} is not one the demo app consumes ({', '.join(QUEUES)})")
        if any(b.at_s < a.at_s for a, b in zip(self.sends, self.sends[1:], strict=False)):
            raise ValueError("schedule: sends must be sorted by at_s")

    @property
    def length_s(self) -> float:
        """When the load is over: the last phase's start (or the last send, if later)."""
        return max(self.phases[-1][0] if self.phases else 0.0, self.sends[-1].at_s if self.sends else 0.0)


def replay(trace: Trace, phases: Sequence[tuple[float, str]] = ()) -> Schedule:
    """A per-task trace as a schedule: the same send times, queues and run times, all at the default priority.

    One priority because the simulator's broker is one FIFO list per pool; without ``phases`` the
    load is one phase, then silence after the last task.
    """
    sends = tuple(
        Send(at, trace.queues[q], service)
        for at, q, service in zip(trace.enqueue_s, trace.queue, trace.service_s, strict=True)
    )
    last = sends[-1].at_s if sends else 0.0
    return Schedule(sends, tuple(phases) or ((0.0, "load"), (last, "silence")))


class LoadGenerator:
    """Plays a schedule in a thread; ``phase`` and ``sent`` are read by the live view.

    ``started_at`` (wall clock) is the load's time 0, from which every ``at_s`` counts.
    """

    def __init__(self, schedule: Schedule, results: redis.Redis, events: EventLog) -> None:
        self.schedule = schedule
        self.phase = "waiting"
        self.sent = 0
        self.started_at: float | None = None
        self.done = threading.Event()
        self._results = results
        self._events = events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-generator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _send(self, send: Send) -> None:
        from jobs.tasks import build_report, send_email

        task: Any = build_report if send.queue == "reports" else send_email
        now = time.time()
        result = task.apply_async(kwargs={"duration": send.duration_s, "enqueued_at": now}, priority=send.priority)
        record = {"queue": send.queue, "priority": send.priority, "sent_at": now, "at_s": send.at_s}
        self._results.hset(SENT_KEY, result.id, json.dumps(record))
        self.sent += 1

    def _wait_until(self, start: float, at_s: float) -> bool:
        """Sleep until ``at_s`` after ``start`` (monotonic); True when stopped meanwhile."""
        pause = start + at_s - time.monotonic()
        return self._stop.wait(pause) if pause > 0 else self._stop.is_set()

    def _run(self) -> None:
        start = time.monotonic()
        self.started_at = time.time()
        self._events.emit("load_started", started_at=self.started_at)
        phases = list(self.schedule.phases)
        try:
            for send in self.schedule.sends:
                while phases and phases[0][0] <= send.at_s:
                    at_s, phase = phases.pop(0)
                    if self._wait_until(start, at_s):
                        return
                    self._enter(phase)
                if self._wait_until(start, send.at_s):
                    return
                self._send(send)
            for at_s, phase in phases:
                if self._wait_until(start, at_s):
                    return
                self._enter(phase)
        finally:
            self._events.emit("load_done", sent=self.sent)
            self.done.set()

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._events.emit("load_phase", phase=phase, sent=self.sent)
