"""The pure policy: worked examples a user can check by hand, then properties over random inputs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.policy import Decision, PoolState, decide

pytestmark = pytest.mark.unit  # the fast tier: make test-unit

POOL = PoolConfig(
    name="default",
    service="workers",
    queues=("celery",),
    concurrency=4,
    min_workers=0,
    max_workers=20,
    max_scale_in_percent=50,
    scale_in_window_s=120,
    idle_window_s=120,
    stale_after_s=90,
)


def measure(
    waiting: int,
    current: int,
    *,
    in_flight: int | None = 0,
    unacked_total: int | None = None,
    age: float | None = None,
    running: int | None = None,
    at: float = 1000.0,
) -> PoolMeasurements:
    load = PoolLoad(
        waiting=waiting,
        in_flight=in_flight,
        unacked_total=unacked_total if unacked_total is not None else (in_flight or 0),
        oldest_age_s=age,
        measured_at=at,
    )
    return PoolMeasurements(current_desired=current, running=current if running is None else running, load=load)


def run(loads: list[tuple[float, int]], pool: PoolConfig = POOL, start: int = 0) -> list[Decision]:
    """Feed (time, waiting) readings through decide, applying each decision like ECS would."""
    state, current, decisions = PoolState(), start, []
    for now, waiting in loads:
        decision = decide(measure(waiting, current, at=now), pool, state, now)
        decisions.append(decision)
        state, current = decision.new_state, decision.desired
    return decisions


def test_burst_from_zero_goes_straight_to_the_computed_count() -> None:
    decision = decide(measure(840, 0, age=12), replace(POOL, target_latency_s=10), PoolState(), 1000)
    assert decision.desired == 20  # ceil(840 / 4) = 210, clamped to max_workers
    assert decision.reason.startswith("burst: 840 waiting")
    assert "oldest 12 s > 10 s target -> 20" in decision.reason


def test_demand_counts_waiting_plus_in_flight_over_tasks_per_worker() -> None:
    assert decide(measure(10, 0, in_flight=3), POOL, PoolState(), 1000).desired == 4  # ceil(13 / 4)
    backlog = replace(POOL, target_backlog_per_worker=10)
    assert decide(measure(25, 0), backlog, PoolState(), 1000).desired == 3  # ceil(25 / 10)
    half = replace(POOL, target_utilisation=0.5)
    assert decide(measure(8, 0), half, PoolState(), 1000).desired == 4  # ceil(8 / (4 x 0.5))


def test_scale_out_is_capped_per_step_except_from_zero() -> None:
    capped = replace(POOL, max_scale_out_step=2)
    assert decide(measure(80, 0), capped, PoolState(), 1000).desired == 20
    assert decide(measure(80, 3), capped, PoolState(), 1000).desired == 5


def test_latency_target_forces_scale_out_when_depth_looks_small() -> None:
    pool = replace(POOL, target_latency_s=10)
    assert decide(measure(2, 1, age=30), pool, PoolState(), 1000).desired == 2
    # Workers asked for are still starting: waiting for them is better than piling on more.
    assert decide(measure(2, 2, age=30, running=1), pool, PoolState(), 1000).desired == 2


def test_unknown_in_flight_counts_every_unacked_message() -> None:
    decision = decide(measure(0, 0, in_flight=None, unacked_total=5), POOL, PoolState(), 1000)
    assert decision.desired == 2  # zero workers + 5 stranded unacked messages is demand


def test_scale_in_waits_for_the_window_then_steps_down_by_half() -> None:
    loads = [(0.0, 80)] + [(15.0 * i, 8) for i in range(1, 20)]
    desired = [d.desired for d in run(loads)]
    assert desired[0] == 20
    # The high reading stays in the 120 s window: no scale-in before t=120.
    assert all(d == 20 for d in desired[:8])
    assert desired[8] == 10  # t=120: window max is 2, at most 50 % of 20 removed
    assert desired[9] == 5
    assert desired[10] == 3
    assert desired[11] == 2
    assert desired[-1] == 2


def test_reaches_zero_only_after_the_idle_window() -> None:
    loads = [(0.0, 8)] + [(15.0 * i, 0) for i in range(1, 30)]
    decisions = run(loads)
    desired = [d.desired for d in decisions]
    first_zero = desired.index(0)
    assert loads[first_zero][0] - loads[1][0] >= POOL.idle_window_s
    assert all(d >= 1 for d in desired[:first_zero])
    assert decisions[first_zero].reason.startswith("idle")


def held_for(scheduled: int | None, unacked_total: int, ticks: int = 40) -> list[int]:
    """Desired counts of a pool with one worker and nothing waiting or in flight, tick after tick."""
    state, desired = PoolState(), []
    for now in range(0, 15 * ticks, 15):
        load = PoolLoad(0, 0, unacked_total, None, measured_at=float(now), scheduled=scheduled)
        decision = decide(PoolMeasurements(1, 1, load), POOL, state, float(now))
        state = decision.new_state
        desired.append(decision.desired)
    return desired


def test_held_eta_messages_keep_the_last_worker() -> None:
    assert set(held_for(scheduled=3, unacked_total=3)) == {1}  # a worker must stay to hold them
    assert set(held_for(scheduled=None, unacked_total=3)) == {1}  # unknown attribution: any unacked


def test_another_pools_unacked_messages_do_not_keep_this_pool_up() -> None:
    assert held_for(scheduled=0, unacked_total=5)[-1] == 0


@pytest.mark.parametrize("fallback", [None, 5])
def test_missing_or_stale_data_holds(fallback: int | None) -> None:
    pool = replace(POOL, fallback_count=fallback)
    missing = PoolMeasurements(current_desired=3, running=3, load=None)
    held = decide(missing, pool, PoolState(consecutive_failures=2), 1000)
    assert held.desired == (3 if fallback is None else 5)
    assert held.reason.startswith("hold: broker unreadable")
    assert held.new_state.consecutive_failures == 3
    stale = decide(measure(0, 3, at=800), pool, PoolState(), 1000)
    assert stale.desired == (3 if fallback is None else 5)
    assert "200 s old" in stale.reason


def test_decide_never_touches_the_store_version() -> None:
    assert decide(measure(10, 0), POOL, PoolState(version=7), 1000).new_state.version == 7


# --- properties -------------------------------------------------------------------------------

pools = st.builds(
    PoolConfig,
    name=st.just("p"),
    service=st.just("svc"),
    queues=st.just(("q",)),
    concurrency=st.integers(1, 16),
    min_workers=st.integers(0, 5),
    max_workers=st.integers(5, 50),
    target_utilisation=st.floats(0.1, 1.0),
    target_backlog_per_worker=st.none() | st.floats(1, 500),
    target_latency_s=st.none() | st.floats(1, 600),
    max_scale_out_step=st.none() | st.integers(1, 10),
    max_scale_in_percent=st.floats(1, 100),
    scale_in_window_s=st.floats(0, 600),
    idle_window_s=st.floats(0, 600),
    stale_after_s=st.just(90.0),
    fallback_count=st.none() | st.integers(0, 5),
)
histories = st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 50)), max_size=10).map(tuple)
states = st.builds(
    PoolState,
    recommendations=histories,
    idle_since=st.none() | st.floats(0, 1000),
    consecutive_failures=st.integers(0, 5),
)
loads = st.builds(
    PoolLoad,
    waiting=st.integers(0, 100_000),
    in_flight=st.none() | st.integers(0, 1000),
    unacked_total=st.integers(0, 1000),
    oldest_age_s=st.none() | st.floats(0, 3600),
    measured_at=st.floats(950, 1000),
)


@settings(max_examples=400, deadline=None)
@given(pool=pools, state=states, load=st.none() | loads, current=st.integers(0, 50), running=st.integers(0, 50))
def test_result_always_within_min_and_max(
    pool: PoolConfig, state: PoolState, load: PoolLoad | None, current: int, running: int
) -> None:
    decision = decide(PoolMeasurements(current, running, load), pool, state, 1000.0)
    assert pool.min_workers <= decision.desired <= pool.max_workers


@settings(max_examples=400, deadline=None)
@given(
    pool=pools,
    state=states,
    load=loads,
    more_waiting=st.integers(0, 10_000),
    more_in_flight=st.integers(0, 100),
    current=st.integers(0, 50),
)
def test_more_demand_never_gives_fewer_workers(
    pool: PoolConfig, state: PoolState, load: PoolLoad, more_waiting: int, more_in_flight: int, current: int
) -> None:
    busier = replace(
        load,
        waiting=load.waiting + more_waiting,
        in_flight=None if load.in_flight is None else load.in_flight + more_in_flight,
        unacked_total=load.unacked_total + more_in_flight,
    )
    base = decide(PoolMeasurements(current, current, load), pool, state, 1000.0)
    more = decide(PoolMeasurements(current, current, busier), pool, state, 1000.0)
    assert more.desired >= base.desired


@settings(max_examples=400, deadline=None)
@given(pool=pools, state=states, current=st.integers(0, 50), age=st.floats(91, 10_000))
def test_missing_or_stale_data_never_lowers_the_count(
    pool: PoolConfig, state: PoolState, current: int, age: float
) -> None:
    current = max(pool.min_workers, min(pool.max_workers, current))
    missing = decide(PoolMeasurements(current, current, None), pool, state, 1000.0)
    stale_load = PoolLoad(0, 0, 0, None, measured_at=1000.0 - age)
    stale = decide(PoolMeasurements(current, current, stale_load), pool, state, 1000.0)
    assert missing.desired >= current
    assert stale.desired >= current


@settings(max_examples=200, deadline=None)
@given(pool=pools, waiting=st.integers(1, 5000), in_flight=st.integers(0, 100), start=st.integers(0, 50))
def test_no_flapping_on_a_constant_load(pool: PoolConfig, waiting: int, in_flight: int, start: int) -> None:
    """Constant demand settles on one count and stays there: no up-down-up."""
    pool = replace(pool, target_latency_s=None)
    state, current, history = PoolState(), max(pool.min_workers, min(pool.max_workers, start)), []
    for tick in range(120):
        now = 15.0 * tick
        load = PoolLoad(waiting, in_flight, in_flight, None, measured_at=now)
        decision = decide(PoolMeasurements(current, current, load), pool, state, now)
        state, current = decision.new_state, decision.desired
        history.append(current)
    changes = [b - a for a, b in itertools.pairwise(history) if b != a]
    assert all(c > 0 for c in changes) or all(c < 0 for c in changes)
    assert history[-1] == history[-2]
