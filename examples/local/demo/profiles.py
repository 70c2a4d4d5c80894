"""The two run profiles: the default (Fargate-like timings) and QUICK (same shape, compressed)."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def expected_s(self) -> float:
        """A rough length of the run for the progress bar: load, then the windows that end it."""
        return (
            self.quiet_s
            + self.trickle_s
            + self.idle_window_s
            + 2 * self.tick_interval_s
            + self.start_delay_s
            + self.scale_in_window_s / 2
        )


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
