"""The floor step of the policy: declared schedules and learned pre-warm only raise what sizing asks for."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.policy import PoolState, decide
from celery_autoscaler.recurrence import Candidate, RecurrenceState
from celery_autoscaler.schedules import Schedule
from celery_autoscaler.sim import SimSettings, builtin
from celery_autoscaler.sim.baselines import ScalerPolicy
from celery_autoscaler.sim.engine import run_pool
from celery_autoscaler.sim.simulate import DEFAULT_POOL
from celery_autoscaler.state import decode_state, encode_state

pytestmark = pytest.mark.unit

MONDAY = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
REPORT = Schedule("report", "5 * * * *", min_workers=6, duration_s=300, lead_s=90)
"""The hourly report at minute 5: 6 workers from 00:03:30 to 00:10:00 past every hour."""
BUSINESS = Schedule("business", "0 9 * * mon-fri", min_workers=3, duration_s=8 * 3600, time_zone="America/New_York")
POOL = PoolConfig(name="default", service="workers", queues=("celery",), max_workers=20, schedules=(REPORT, BUSINESS))
BARE = replace(POOL, schedules=())


def _in_report_window(now: float) -> bool:
    return 210 <= (now - MONDAY) % 3600 < 600


def _measure(now: float, waiting: int, in_flight: int, current: int, readable: bool) -> PoolMeasurements:
    load = PoolLoad(waiting=waiting, in_flight=in_flight, unacked_total=in_flight, oldest_age_s=None, measured_at=now)
    return PoolMeasurements(current_desired=current, running=current, load=load if readable else None)


@settings(max_examples=300, deadline=None)
@given(
    offset=st.floats(0, 14 * 86400),
    waiting=st.integers(0, 200),
    in_flight=st.integers(0, 40),
    current=st.integers(0, 20),
    readable=st.booleans(),
    recent=st.lists(st.integers(0, 20), max_size=4),
)
def test_schedule_minimum_holds_inside_its_window_and_never_outside(
    offset: float, waiting: int, in_flight: int, current: int, readable: bool, recent: list[int]
) -> None:
    now = MONDAY + offset
    state = PoolState(recommendations=tuple((now - 5.0 * (i + 1), r) for i, r in enumerate(recent)))
    measurements = _measure(now, waiting, in_flight, current, readable)
    floored = decide(measurements, POOL, state, now)
    sized = decide(measurements, BARE, state, now)
    # Never lower than the rule asks; the state to remember is the rule's either way.
    assert floored.desired >= sized.desired
    assert floored.new_state.recommendations == sized.new_state.recommendations
    wall = datetime.fromtimestamp(now, ZoneInfo("America/New_York"))
    business = wall.isoweekday() <= 5 and 9 <= wall.hour < 17
    minimum = max(6 if _in_report_window(now) else 0, 3 if business else 0)
    if minimum:
        assert floored.desired == max(sized.desired, minimum)
        assert floored.desired == sized.desired or "minimum ->" in floored.reason
    else:
        assert (floored.desired, floored.reason) == (sized.desired, sized.reason)


def test_floor_in_words() -> None:
    at = MONDAY + 4 * 3600 + 4 * 60  # Monday 04:04 UTC: the report's window, before business hours in New York
    decision = decide(_measure(at, 0, 0, 1, True), POOL, PoolState(), at)
    assert decision.desired == 6
    assert decision.reason.endswith("; schedule 'report' minimum -> 6")
    # Broker unreadable: the hold keeps the count, the schedule still raises it.
    held = decide(_measure(at, 0, 0, 2, False), POOL, PoolState(), at)
    assert (held.desired, held.reason) == (6, "hold: broker unreadable -> 2; schedule 'report' minimum -> 6")
    # Never past max_workers.
    capped = decide(_measure(at, 0, 0, 1, True), replace(POOL, max_workers=4), PoolState(), at)
    assert capped.desired == 4


CONFIDENT = RecurrenceState(
    at=MONDAY - 15.0,
    level=0.1,
    candidates=(Candidate(period_s=3600.0, last_s=MONDAY - 3600.0 + 600.0, hits=4, peaks=(30, 40, 35)),),
)
"""An hourly onset at minute 10 seen 4 times, its bursts needing 30-40 workers: next expected at MONDAY + 600 s."""


@settings(max_examples=300, deadline=None)
@given(
    offset=st.floats(-600, 1200),
    waiting=st.integers(0, 3000),
    in_flight=st.integers(0, 200),
    current=st.integers(0, 60),
    readable=st.booleans(),
)
def test_prewarm_never_lowers_what_the_sizing_rule_asks(
    offset: float, waiting: int, in_flight: int, current: int, readable: bool
) -> None:
    now = MONDAY + offset
    pool = replace(BARE, max_workers=60)
    state = PoolState(recurrence=replace(CONFIDENT, at=now - 15.0))  # the previous tick, 15 s ago
    measurements = _measure(now, waiting, in_flight, current, readable)
    learned = decide(measurements, pool, state, now)
    sized = decide(measurements, replace(pool, learned_prewarm=False), state, now)
    assert learned.desired >= sized.desired
    assert learned.new_state.recommendations == sized.new_state.recommendations
    # Inside the lead (start delay 55 s + margin 0 s + the 15 s tick) up to the 90 s tolerance: the median 35.
    window = 600.0 - 70.0 <= offset <= 600.0 + 90.0
    if window and not (readable and waiting + in_flight > 0):  # a burst that arrives ends the pre-warm
        assert learned.desired == max(sized.desired, 35)
    if not window:
        assert learned.desired == sized.desired


def test_learned_state_of_a_week_is_compact_and_round_trips() -> None:
    trace = builtin("cron", hours=7 * 24, seed=3)
    policy = Recording(DEFAULT_POOL)
    run_pool(trace.enqueue_s, trace.service_s, policy, DEFAULT_POOL, SimSettings(), 3, trace.horizon_s)
    state = policy.last_state
    assert any(c.hits >= 100 for c in state.recurrence.candidates)  # the hourly storm, learned
    encoded = encode_state(state)
    recurrence = json.dumps(asdict(state.recurrence), separators=(",", ":"))
    assert len(recurrence) < 1000, recurrence
    assert len(encoded) < 4000, encoded
    assert decode_state(encoded, state.version).recurrence == state.recurrence


class Recording(ScalerPolicy):
    """Our policy, keeping the last state it returned."""

    last_state = PoolState()

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, PoolState]:
        desired, self.last_state = super().__call__(measurements, state, now)
        return desired, self.last_state
