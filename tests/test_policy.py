"""The pure policy: worked examples a user can check by hand, then properties over random inputs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.estimates import EstimatorState
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements
from celery_autoscaler.policy import Decision, PoolState, decide, erlang_c_slots

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
    assert "oldest 12 s > 10 s target; (840 + 0) / 4 tasks per worker (no run time yet) -> 20" in decision.reason


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
    assert desired[8] == 10  # t=120: at most 50 % of 20 removed
    assert desired[9] == 5
    assert desired[10] == 3  # ceil(8 / 4 x 1.1): need 2, with the 10 % scale-in tolerance kept
    assert desired[-1] == 3


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
    wait_target_s=st.none() | st.floats(0.5, 600),
    drain_time_s=st.floats(1, 300),
    scale_in_tolerance=st.floats(0, 0.5),
    start_delay_s=st.floats(0, 300),
)
histories = st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 50)), max_size=10).map(tuple)
estimators = st.builds(
    EstimatorState,
    at=st.none() | st.floats(900, 985),
    completed=st.none() | st.integers(0, 10_000),
    run_seconds=st.none() | st.floats(0, 100_000),
    backlog=st.none() | st.integers(0, 10_000),
    waiting=st.none() | st.integers(0, 10_000),
    rates=st.lists(st.tuples(st.floats(880, 985), st.floats(0, 100)), max_size=8).map(tuple),
    run_sum=st.floats(0, 100_000),
    count_sum=st.floats(0, 10_000),
    raises=st.lists(st.tuples(st.floats(800, 985), st.integers(1, 50)), max_size=4).map(tuple),
    start_samples=st.lists(st.floats(0, 300), max_size=5).map(tuple),
)
states = st.builds(
    PoolState,
    recommendations=histories,
    idle_since=st.none() | st.floats(0, 1000),
    consecutive_failures=st.integers(0, 5),
    estimator=st.just(EstimatorState()) | estimators,
)
loads = st.builds(
    PoolLoad,
    waiting=st.integers(0, 100_000),
    in_flight=st.none() | st.integers(0, 1000),
    unacked_total=st.integers(0, 1000),
    oldest_age_s=st.none() | st.floats(0, 3600),
    measured_at=st.floats(990, 1000),
    completed=st.none() | st.integers(0, 20_000),
    run_seconds=st.none() | st.floats(0, 200_000),
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
    """More waiting or in flight, with everything else (counters, history) the same."""
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


@settings(max_examples=400, deadline=None)
@given(
    pool=pools,
    state=states,
    load=loads,
    current=st.integers(0, 50),
    running=st.integers(0, 50),
    targets=st.tuples(st.floats(0.5, 600), st.floats(0.5, 600)),
)
def test_a_lower_wait_target_never_gives_fewer_workers(
    pool: PoolConfig, state: PoolState, load: PoolLoad, current: int, running: int, targets: tuple[float, float]
) -> None:
    low, high = sorted(targets)
    measurements = PoolMeasurements(current, running, load)
    strict = decide(measurements, replace(pool, wait_target_s=low), state, 1000.0)
    relaxed = decide(measurements, replace(pool, wait_target_s=high), state, 1000.0)
    assert strict.desired >= relaxed.desired


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.2, 20),
    run_s=st.floats(0.5, 30),
    running=st.integers(0, 5),
    burst=st.integers(0, 2000),
    elapsed=st.floats(1, 50),
    wait_target_s=st.none() | st.floats(1, 300),
)
def test_capacity_still_starting_is_not_sized_twice(
    rate: float, run_s: float, running: int, burst: int, elapsed: float, wait_target_s: float | None
) -> None:
    """A raise, then a tick while the workers it asked for still start: the backlog has changed by what
    arrived minus what the running workers took, as foreseen; no further raise (one for rounding)."""
    pool = replace(POOL, concurrency=2, max_workers=500, wait_target_s=wait_target_s, start_delay_s=55.0)
    t0 = 1000.0
    done0, ran0 = 10_000, 10_000 * run_s
    estimator = EstimatorState(
        at=t0 - 15,
        completed=done0,
        run_seconds=ran0,
        backlog=running * 2,
        waiting=0,
        rates=tuple((t0 - 15 * i, rate) for i in range(8, 0, -1)),
        run_sum=1000 * run_s,
        count_sum=1000.0,
    )
    in_flight = running * 2  # the running workers are busy
    served = min(rate, running * 2 / run_s) * 15  # what they finished during the last tick
    first = PoolLoad(
        burst, in_flight, in_flight, None, t0, completed=done0 + round(served), run_seconds=ran0 + round(served) * run_s
    )
    raise_ = decide(PoolMeasurements(running, running, first), pool, PoolState(estimator=estimator), t0)
    assume(raise_.desired > running)
    now = t0 + elapsed
    # The running workers work through the backlog at full speed meanwhile.
    finished = round(min(running * 2 / run_s * elapsed, burst + rate * elapsed))
    grown = burst + int(rate * elapsed) - finished
    later = PoolLoad(
        max(0, grown),
        in_flight,
        in_flight,
        None,
        now,
        completed=(first.completed or 0) + finished,
        run_seconds=(first.run_seconds or 0.0) + finished * run_s,
    )
    again = decide(PoolMeasurements(raise_.desired, running, later), pool, raise_.new_state, now)
    assert again.desired <= raise_.desired + 1, (raise_.reason, again.reason)


def steady_estimator(rate: float, run_s: float, waiting: int, in_flight: int) -> EstimatorState:
    """The estimators after seven ticks 15 s apart at ``rate`` tasks/s of ``run_s`` each, the last at t = 985
    with 1,000 tasks done (counters) and ``waiting`` + ``in_flight`` on the broker."""
    return EstimatorState(
        at=985.0,
        completed=1000,
        run_seconds=1000 * run_s,
        backlog=waiting + in_flight,
        waiting=waiting,
        rates=tuple((985.0 - 15 * i, rate) for i in range(7)),
        run_sum=100 * run_s,
        count_sum=100.0,
    )


def test_worked_example_of_the_readme() -> None:
    """The worked example of docs/how-it-scales.md by hand: 2 tasks/s of 2 s, 4 workers of 2 slots, 300 waiting."""
    pool = replace(POOL, concurrency=2, max_workers=50, scale_in_window_s=30)
    estimator = steady_estimator(rate=2.0, run_s=2.0, waiting=4, in_flight=8)
    load = PoolLoad(300, 8, 8, 9.0, 1000.0, completed=1030, run_seconds=2060.0)
    measurements = PoolMeasurements(current_desired=4, running=4, load=load)
    decision = decide(measurements, pool, PoolState(estimator=estimator), 1000.0)
    assert decision.estimates is not None
    assert decision.estimates.arrival_rate == pytest.approx(2.0)  # the burst tick is backlog, not rate
    assert decision.estimates.mean_run_s == pytest.approx(2.0)
    # R = 2 x 2 = 4 slots; base 4 + sqrt(4) = 6; spare 4 x 2 - 4 = 4 slots for the 55 s start:
    # work = 300 x 2 - 4 x 55 = 380 slot-s over 30 s = 12.67 slots; (6 + 12.67) / 2 = 9.33 -> 10.
    assert decision.desired == 10
    assert "= 9.33 workers -> 10" in decision.reason
    # With a 60 s p95 wait target (H = D = 55 s): max(380 / max(30, 60 - 55), (380 + 4 x 55 + sqrt(2 x 4 x 2 x 55))
    # / (60 + 55)) = max(12.67, 5.48) = 12.67 slots; 12.67 / 2 = 6.33 -> 7 (no base on top: the backlog term
    # already has the load queue behind it).
    assert erlang_c_slots(4.0, 2.0, 60.0) == 5
    relaxed = decide(measurements, replace(pool, wait_target_s=60.0), PoolState(estimator=estimator), 1000.0)
    assert relaxed.desired == 7
    # Nothing waiting, 4 in flight: R + sqrt(R) = 6 slots = 3 workers; W = 60 allows a queue:
    # (0 + 4 x 55 + sqrt(880)) / (60 + 55) = 2.17 slots = 1.09 workers -> 2.
    quiet = PoolLoad(0, 4, 4, None, 1000.0, completed=1030, run_seconds=2060.0)
    calm = PoolMeasurements(current_desired=4, running=4, load=quiet)
    assert "= 3.00 workers" in decide(calm, pool, PoolState(estimator=estimator), 1000.0).reason
    budget = decide(calm, replace(pool, wait_target_s=60.0), PoolState(estimator=estimator), 1000.0)
    assert "= 1.09 workers" in budget.reason
    assert budget.desired == 2


def test_a_wait_target_adds_the_slots_long_tasks_hold_to_what_drains_the_backlog() -> None:
    """A burst's long tasks fill every slot and hardly finish: with a wait target those slots serve no
    backlog, so they come on top of the slots that drain it (cron-long missed its target without this)."""
    pool = replace(POOL, concurrency=2, max_workers=100, wait_target_s=275.0, start_delay_s=55.0)
    estimator = steady_estimator(rate=0.12, run_s=8.5, waiting=500, in_flight=60)

    def tick(finished: int) -> Decision:
        load = PoolLoad(500, 60, 60, 120.0, 1000.0, completed=1000 + finished, run_seconds=8500.0 + 8.5 * finished)
        return decide(
            PoolMeasurements(current_desired=30, running=30, load=load), pool, PoolState(estimator=estimator), 1000.0
        )

    # 2 of 60 busy slots turned over in 15 s: held = 60 - sqrt(60) - 2 = 50.25 slots, 49.2 beyond R' = 0.12 x 8.5;
    # work = 500 x 8.5 + (50.25 - 60) x 55 = 3714 slot-s over 275 - 55 s = 16.9 slots; 66.1 / 2 -> 34 workers.
    stuck = tick(finished=2)
    assert "49.2 held + max(3714 / 220 s" in stuck.reason
    assert stuck.desired == 34
    # The same slots turning over at the run time's pace are short tasks draining the backlog: nothing on top,
    # 16.9 slots fit in the 30 workers the in-flight tasks occupy.
    turning = tick(finished=120)
    assert "0.0 held + max(" in turning.reason
    assert turning.desired == 30


def test_erlang_c_slots_matches_the_textbook() -> None:
    # M/M/c with offered load 4: c = 5 waits with probability 0.554, c = 6 with 0.285 (Erlang C tables).
    assert erlang_c_slots(4.0, 1.0, 0.0, quantile=1 - 0.56) == 5
    assert erlang_c_slots(4.0, 1.0, 0.0, quantile=1 - 0.30) == 6
    assert erlang_c_slots(0.0, 1.0, 10.0) == 0
    assert erlang_c_slots(50.0, 2.0, 1.0) > erlang_c_slots(50.0, 2.0, 10.0) > 50
