"""Schedules in the simulator: a declared window's minimum holds inside it on every built-in trace."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from celery_autoscaler.measurements import PoolMeasurements
from celery_autoscaler.policy import PoolState
from celery_autoscaler.schedules import Schedule
from celery_autoscaler.sim import BUILTIN, SimSettings, builtin
from celery_autoscaler.sim.baselines import SIM_EPOCH_S, ScalerPolicy
from celery_autoscaler.sim.engine import run_pool
from celery_autoscaler.sim.simulate import DEFAULT_POOL

pytestmark = pytest.mark.unit

WINDOWS = (
    Schedule("every-40-min", "*/40 * * * *", min_workers=7, duration_s=600, lead_s=60),
    Schedule("berlin-night", "30 1 * * *", min_workers=12, duration_s=1200, time_zone="Europe/Berlin"),
)
POOL = replace(DEFAULT_POOL, schedules=WINDOWS)


class Recording(ScalerPolicy):
    """Our policy, remembering every (simulated time, desired count) it returned."""

    def __init__(self) -> None:
        super().__init__(POOL)
        self.decisions: list[tuple[float, int]] = []

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, PoolState]:
        desired, new_state = super().__call__(measurements, state, now)
        self.decisions.append((now, desired))
        return desired, new_state


def _minimum(now: float) -> int:
    """The windows above, read off the clock directly: minute 0/40 from 60 s before to 600 s after; 01:30
    Berlin (00:30 UTC in January) for 20 minutes."""
    second_of_hour = now % 3600.0
    into_40 = [(second_of_hour - start) for start in (0.0, 2400.0, 3600.0)]
    every_40 = any(-60.0 <= d < 600.0 for d in into_40) or second_of_hour >= 3540.0
    second_of_day = (now + SIM_EPOCH_S) % 86400.0
    night = 1800.0 <= second_of_day < 3000.0
    return max(7 if every_40 else 0, 12 if night else 0)


@pytest.mark.parametrize("name", BUILTIN)
def test_declared_minimum_holds_inside_its_window_on_every_trace(name: str) -> None:
    trace = builtin(name, hours=2, seed=11)
    policy = Recording()
    run_pool(trace.enqueue_s, trace.service_s, policy, POOL, SimSettings(), 11, trace.horizon_s)
    inside = [(t, d) for t, d in policy.decisions if _minimum(t)]
    assert len(inside) > 100
    assert all(d >= _minimum(t) for t, d in inside), [(t, d) for t, d in inside if d < _minimum(t)][:5]
    # The night window is 00:30-00:50 UTC of simulated Monday: it must have been seen at 12.
    assert any(d >= 12 for t, d in inside if 1800.0 <= t < 3000.0)


def test_recurring_traces_recur() -> None:
    cron = builtin("cron", hours=6, seed=2)
    storms = {int(t // 60) % 60 for t in cron.enqueue_s}
    per_minute = [sum(1 for t in cron.enqueue_s if int(t // 60) % 60 == m) for m in range(60)]
    assert max(per_minute) == per_minute[17] > 6 * 500  # every hour's storm lands at minute 17 (+/- 3 s)
    assert len(storms) == 60
    assert sum(per_minute) - per_minute[17] - per_minute[16] < 6 * 3600 * 0.2
    week = builtin("weekday", seed=2)
    assert week.horizon_s == 7 * 86400.0
    per_day = [sum(1 for t in week.enqueue_s if int(t // 86400) == d) for d in range(7)]
    assert min(per_day[:5]) > 10 * max(per_day[5:])  # Monday to Friday busy, the weekend quiet
    monday = [t for t in week.enqueue_s if t < 86400.0]
    assert 8.9 * 3600 < sorted(t for t in monday if t > 6 * 3600)[1000] < 9.1 * 3600
