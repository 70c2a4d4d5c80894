"""Learned pre-warm, pure: onsets found, recurrences confirmed, predictions that stop coming true dropped."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_autoscaler.recurrence import PERIODS_S, RecurrenceState, observe, prewarm_floor, tolerance

pytestmark = pytest.mark.unit

TICK_S = 15.0
LEAD_S = 90.0


def drive(
    bursts: list[float], hours: float, *, confidence: int = 3, max_misses: int = 2
) -> tuple[RecurrenceState, list[tuple[float, int]]]:
    """Ticks every 15 s over ``hours``: 0.1 tasks/s, and 150/s in the tick a burst starts in (then 10/s for a
    minute); one worker drains 100 tasks. Returns the end state and each tick's floor."""
    state, floors = RecurrenceState(), []
    now = 0.0
    pending = sorted(bursts)
    while now < hours * 3600.0:
        now += TICK_S
        rate, age = 0.1, None
        if pending and pending[0] <= now:
            start = pending.pop(0)
            rate, age = 150.0, now - start
        elif any(0 < now - b < 60 for b in bursts):
            rate = 10.0
        state = observe(state, now, rate, age, 40 if rate > 1 else 1, 100.0, max_misses)
        floors.append((now, prewarm_floor(state, now, LEAD_S, confidence, max_misses)[0]))
    return state, floors


def hourly(count: int, minute: float = 17.0, jitter_s: float = 3.0, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [h * 3600.0 + minute * 60.0 + rng.uniform(-jitter_s, jitter_s) for h in range(count)]


def test_hourly_storm_is_prewarmed_after_three_and_let_go_after() -> None:
    bursts = hourly(6)
    _, floors = drive(bursts, 6)
    raised = [t for t, f in floors if f > 0]
    assert raised, "no pre-warm"
    # Nothing before the third storm; from then on, each raise is in the lead before a storm and ends with it.
    assert min(raised) > bursts[2]
    for t in raised:
        upcoming = min(b for b in bursts if b > t - TICK_S)
        assert upcoming - LEAD_S - TICK_S <= t <= upcoming + TICK_S
    assert {int(t // 3600) for t in raised} == {3, 4, 5}
    # The burst: 150/s for a tick, then 10/s for up to a minute: 2250-2850 tasks, 23-29 workers of 100.
    assert {f for _, f in floors if f} <= set(range(23, 30))


@settings(max_examples=25, deadline=None)
@given(
    seen=st.integers(3, 6),
    period=st.sampled_from(PERIODS_S[:2]),
    max_misses=st.integers(1, 3),
    jitter_s=st.floats(0, 20),
)
def test_a_prediction_that_stops_coming_true_is_dropped_within_max_misses(
    seen: int, period: float, max_misses: int, jitter_s: float
) -> None:
    rng = random.Random(seen)
    bursts = [600.0 + k * period + rng.uniform(-jitter_s, jitter_s) for k in range(seen)]
    last = bursts[-1]
    hours = (last + (max_misses + 2) * period) / 3600.0
    state, floors = drive(bursts, hours, max_misses=max_misses)
    # Pre-warms at most max_misses times after the load stopped, then never again.
    expected_times = [last + k * period for k in range(1, max_misses + 2)]
    raised_for = {min(expected_times, key=lambda e: abs(e - t)) for t, f in floors if f and t > last + 60}
    assert len(raised_for) <= max_misses
    # Onsets are kept to 0.1 s (round(now - ago, 1)): the expected time may be up to 0.05 s later than `last`'s.
    dropped_by = last + max_misses * period + tolerance(period) + 0.05
    assert all(f == 0 for t, f in floors if t > dropped_by)
    assert not [c for c in state.candidates if c.hits >= 3]


def test_random_minute_storms_rarely_predict() -> None:
    # spiky: one storm an hour at a random minute; over 4 days at most a handful of ticks pre-warm.
    rng = random.Random(5)
    bursts = [h * 3600.0 + rng.uniform(0, 3595) for h in range(96)]
    _, floors = drive(bursts, 96)
    assert sum(1 for _, f in floors if f) <= 20


def test_learned_state_stays_compact_over_a_week() -> None:
    # A week of an hourly storm plus a daily one: the JSON stays a few hundred bytes.
    bursts = sorted([*hourly(168), *(d * 86400.0 + 9 * 3600.0 + 1800.0 for d in range(7))])
    state, floors = drive(bursts, 168)
    size = len(json.dumps(asdict(state), separators=(",", ":")))
    assert size < 1200, size
    assert sum(1 for _, f in floors if f) > 100
