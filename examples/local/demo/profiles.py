"""The two run profiles: the default (Fargate-like timings) and QUICK (same shape, compressed).

A profile's load becomes a :class:`~demo.loadgen.Schedule` (every task's send time, queue, run time and
priority, drawn from a seed), which the load generator plays exactly as it plays a replayed trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from demo.loadgen import Schedule, Send

# Most traffic is normal priority; some urgent (0) and some bulk (9): priorities are real sub-lists.
PRIORITIES = (0, 3, 5, 5, 5, 5, 9)


@dataclass(frozen=True)
class Profile:
    """Timings and load of one demo run; the scaler's windows go to Terraform as variables."""

    name: str
    start_delay_s: float  # how long a new task takes to start a worker (Fargate: ~20 s)
    tick_interval_s: float  # the scaler's tick, as in the Lambda
    scale_in_window_s: float
    idle_window_s: float
    quiet_s: float  # nothing sent at first: the pools must stay at 0
    burst_default: int  # short tasks sent at once to the default pool's queue
    burst_reports: int  # longer tasks sent at once to the reports pool's queue
    trickle_s: float  # then a steady trickle to both pools
    trickle_default_per_s: float
    trickle_reports_per_s: float
    settle_timeout_s: float  # after the load: wait at most this long for both pools to reach 0

    def expected_s(self, load_s: float) -> float:
        """A rough length of a run whose load lasts ``load_s``, for the progress bar: the load, then the windows."""
        return load_s + self.idle_window_s + 2 * self.tick_interval_s + self.start_delay_s + self.scale_in_window_s / 2

    def schedule(self, seed: int = 7) -> Schedule:
        """Quiet, a burst across priorities and both queues at once, a Poisson trickle, then silence."""
        rng = random.Random(seed)

        def send(at_s: float, queue: str) -> Send:
            low, high = (0.2, 1.0) if queue == "default" else (1.0, 4.0)
            return Send(at_s, queue, round(rng.uniform(low, high), 3), rng.choice(PRIORITIES))

        burst = ["default"] * self.burst_default + ["reports"] * self.burst_reports
        rng.shuffle(burst)
        sends = [send(self.quiet_s, queue) for queue in burst]
        rate = self.trickle_default_per_s + self.trickle_reports_per_s
        end = self.quiet_s + self.trickle_s
        at = self.quiet_s + rng.expovariate(rate)
        while at < end:
            sends.append(send(at, "reports" if rng.random() < self.trickle_reports_per_s / rate else "default"))
            at += rng.expovariate(rate)
        trickle_from = sends[len(burst)].at_s if len(sends) > len(burst) else end
        phases = ((0.0, "quiet"), (self.quiet_s, "burst"), (trickle_from, "trickle"), (end, "silence"))
        return Schedule(tuple(sends), phases)


DEFAULT = Profile(
    name="default",
    start_delay_s=20.0,
    tick_interval_s=15.0,
    scale_in_window_s=45.0,
    idle_window_s=45.0,
    quiet_s=30.0,
    burst_default=2400,
    burst_reports=160,
    trickle_s=210.0,
    trickle_default_per_s=2.0,
    trickle_reports_per_s=0.4,
    settle_timeout_s=240.0,
)

QUICK = Profile(
    name="quick",
    start_delay_s=5.0,
    tick_interval_s=5.0,
    scale_in_window_s=10.0,
    idle_window_s=10.0,
    quiet_s=5.0,
    burst_default=500,
    burst_reports=50,
    trickle_s=65.0,
    trickle_default_per_s=2.0,
    trickle_reports_per_s=0.4,
    settle_timeout_s=120.0,
)
