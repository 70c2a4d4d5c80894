"""The load generator: a quiet start, a burst across priorities and two queues, a trickle, silence.

It publishes through the demo app's own Celery tasks (so the worker helper stamps the publish time,
as in a real web process) and records every task it sends in ``demo:sent``, which is what the
report checks the workers' ``demo:done`` records against.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import redis

from demo.events import EventLog
from demo.profiles import Profile

SENT_KEY = "demo:sent"
# Most traffic is normal priority; some urgent (0) and some bulk (9): priorities are real sub-lists.
PRIORITIES = (0, 3, 5, 5, 5, 5, 9)


class LoadGenerator:
    """Runs the profile's load in a thread; ``phase`` and ``sent`` are read by the live view."""

    def __init__(self, profile: Profile, results: redis.Redis, events: EventLog, seed: int = 7) -> None:
        self.profile = profile
        self.phase = "waiting"
        self.sent = 0
        self.done = threading.Event()
        self._results = results
        self._events = events
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-generator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _send(self, task: Any, duration: float) -> None:
        now = time.time()
        priority = self._rng.choice(PRIORITIES)
        result = task.apply_async(kwargs={"duration": duration, "enqueued_at": now}, priority=priority)
        queue = "reports" if task.name.endswith("build_report") else "default"
        record = {"queue": queue, "priority": priority, "sent_at": now}
        self._results.hset(SENT_KEY, result.id, json.dumps(record))
        self.sent += 1

    def _email(self) -> None:
        from jobs.tasks import send_email

        self._send(send_email, round(self._rng.uniform(0.2, 1.0), 3))

    def _report(self) -> None:
        from jobs.tasks import build_report

        self._send(build_report, round(self._rng.uniform(1.0, 4.0), 3))

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._events.emit("load_phase", phase=phase, sent=self.sent)

    def _run(self) -> None:
        profile = self.profile
        try:
            self._enter("quiet")
            if self._stop.wait(profile.quiet_s):
                return
            self._enter("burst")
            kinds = [self._email] * profile.burst_default + [self._report] * profile.burst_reports
            self._rng.shuffle(kinds)
            for send in kinds:
                send()
            self._enter("trickle")
            self._trickle(profile)
            self._enter("silence")
        finally:
            self._events.emit("load_done", sent=self.sent)
            self.done.set()

    def _trickle(self, profile: Profile) -> None:
        """Poisson arrivals at the profile's rates until the trickle's time is up."""
        rate = profile.trickle_default_per_s + profile.trickle_reports_per_s
        report_share = profile.trickle_reports_per_s / rate
        end = time.monotonic() + profile.trickle_s
        while not self._stop.is_set():
            pause = self._rng.expovariate(rate)
            if time.monotonic() + pause >= end or self._stop.wait(pause):
                return
            if self._rng.random() < report_share:
                self._report()
            else:
                self._email()
