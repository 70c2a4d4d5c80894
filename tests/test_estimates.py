"""The estimators on synthetic counter sequences: what a pool's ticks would show, built by hand."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest

from celery_autoscaler.estimates import Estimates, EstimatorState, observe, record_raise
from celery_autoscaler.measurements import PoolLoad
from celery_autoscaler.policy import PoolState
from celery_autoscaler.state import decode_state, encode_state

TICK = 15.0
PRIOR = 55.0


def approx(value: float) -> object:
    """The state keeps six significant digits."""
    return pytest.approx(value, rel=1e-4)


def load(
    t: float,
    waiting: int,
    in_flight: int,
    completed: int | None = None,
    run_s: float | None = None,
    age: float | None = None,
) -> PoolLoad:
    return PoolLoad(waiting, in_flight, in_flight, age, measured_at=t, completed=completed, run_seconds=run_s)


def feed(
    readings: list[PoolLoad], state: EstimatorState | None = None, current: int = 5, running: int = 5
) -> tuple[list[Estimates], EstimatorState]:
    state = state or EstimatorState()
    out = []
    for reading in readings:
        estimates, state = observe(state, reading, current, running, reading.measured_at, PRIOR)
        out.append(estimates)
    return out, state


def steady_ticks(ticks: int, rate: float = 2.0, run_s: float = 2.0, start: int = 0) -> list[PoolLoad]:
    """Constant arrivals, all served: completions grow by rate x TICK per tick, the backlog stays."""
    per_tick = round(rate * TICK)
    return [
        load(TICK * (start + i), 1, 4, completed=per_tick * (start + i), run_s=per_tick * (start + i) * run_s)
        for i in range(ticks)
    ]


def test_steady_counters_give_the_rate_and_the_mean_run_time() -> None:
    estimates, _ = feed(steady_ticks(20))
    assert estimates[0].arrival_rate is None  # one reading: no interval yet
    assert estimates[0].mean_run_s is None
    last = estimates[-1]
    assert last.arrival_rate == approx(2.0)
    assert last.mean_run_s == approx(2.0)
    assert last.source == "counters"
    assert last.start_delay_s == PRIOR


def test_one_burst_tick_goes_to_the_backlog_not_the_rate_but_a_step_is_followed_in_two_ticks() -> None:
    ticks = steady_ticks(10)
    burst = ticks[-1]
    spiked = load(
        burst.measured_at + TICK, 601, 4, completed=(burst.completed or 0) + 30, run_s=(burst.completed or 0) * 2 + 60
    )
    estimates, state = feed([*ticks, spiked])
    assert estimates[-1].arrival_rate == approx(2.0), "600 tasks in one tick are backlog, not rate"
    # It was a step to 10/s: completions keep up at 10/s from now on, so the next tick follows it.
    t, done, run = spiked.measured_at, spiked.completed or 0, spiked.run_seconds or 0.0
    step = []
    for i in range(1, 4):
        done, run = done + 150, run + 300.0
        step.append(load(t + TICK * i, 601, 4, completed=done, run_s=run))
    estimates, _ = feed(step, state)
    assert [e.arrival_rate for e in estimates] == [approx(10.0)] * 3


def test_a_lost_tick_loses_nothing_because_the_counters_are_cumulative() -> None:
    every = feed(steady_ticks(20))[0][-1]
    lossy = [r for i, r in enumerate(steady_ticks(20)) if i % 3 != 1]  # every third reading lost
    some = feed(lossy)[0][-1]
    assert some.arrival_rate == approx(every.arrival_rate or 0.0)
    assert some.mean_run_s == approx(every.mean_run_s or 0.0)


def test_a_counter_reset_starts_over_without_a_negative_or_huge_estimate() -> None:
    before, state = feed(steady_ticks(10))
    # The stats key was deleted: the counters restart from what finished since.
    restarted = [load(TICK * (10 + i), 1, 4, completed=30 * i, run_s=60.0 * i) for i in range(1, 6)]
    after, _ = feed(restarted, state)
    assert after[0].arrival_rate == approx(2.0), "the reset interval is skipped, the old rate stays"
    assert all(e.arrival_rate is not None and 0 <= e.arrival_rate <= 2.5 for e in after)
    assert after[-1].mean_run_s == approx(before[-1].mean_run_s or 0.0)


def test_a_worker_that_never_reports_gives_a_lower_bound_never_a_negative_rate() -> None:
    # Two workers share the queue at 1/s each; only one has the helper, and the backlog drains.
    readings = [load(TICK * i, max(0, 100 - 15 * i), 4, completed=15 * i, run_s=30.0 * i) for i in range(10)]
    estimates, _ = feed(readings)
    assert all(e.arrival_rate is None or e.arrival_rate >= 0 for e in estimates)
    assert estimates[-1].mean_run_s == approx(2.0), "the reporting worker's run times are still right"


def test_mean_run_time_with_ten_percent_of_long_tasks_is_steady_where_a_per_tick_mean_swings() -> None:
    rng = random.Random(7)
    done, run, readings, per_tick_means = 0, 0.0, [], []
    for i in range(200):
        tasks = [180.0 if rng.random() < 0.1 else 2.0 for _ in range(10)]
        done, run = done + len(tasks), run + sum(tasks)
        per_tick_means.append(sum(tasks) / len(tasks))
        readings.append(load(TICK * i, 0, 20, completed=done, run_s=run))
    estimates, _ = feed(readings)
    late = [e.mean_run_s or 0.0 for e in estimates[100:]]
    assert max(per_tick_means) - min(per_tick_means) > 60
    assert max(late) - min(late) < 15
    assert 12 < sum(late) / len(late) < 28  # the true mean is 0.1 x 180 + 0.9 x 2 = 19.8 s


def test_an_idle_pause_keeps_the_learned_run_time() -> None:
    _, state = feed(steady_ticks(40, run_s=20.0))
    idle = [load(TICK * (40 + i), 0, 0, completed=30 * 39, run_s=30 * 39 * 20.0) for i in range(1, 1500)]
    estimates, _ = feed(idle, state)  # over 6 hours without a completion
    assert estimates[-1].mean_run_s == approx(20.0)


def test_start_delay_is_learned_from_raise_to_running_with_the_prior_until_then() -> None:
    state = record_raise(EstimatorState(at=0.0), now=0.0, desired=4, running=1)
    times = [TICK * i for i in range(1, 6)]
    running = [1, 1, 2, 4, 4]  # ECS reports all 4 running at t = 60
    estimates = []
    for t, up in zip(times, running, strict=True):
        e, state = observe(state, load(t, 0, 0), 4, up, t, PRIOR)
        estimates.append(e)
    assert [e.start_delay_s for e in estimates[:3]] == [PRIOR] * 3
    assert estimates[3].start_delay_s == approx(60 - TICK / 2)  # seen within a tick: half taken off
    assert estimates[0].starting_since == 0.0
    assert estimates[4].starting_since is None
    # A raise the desired count fell below before it was met is dropped, not timed.
    state = record_raise(state, now=100.0, desired=9, running=4)
    e, state = observe(state, load(115.0, 0, 0), 5, 5, 115.0, PRIOR)
    assert state.raises == ()
    assert e.start_delay_s == approx(52.5)
    assert record_raise(state, now=130.0, desired=5, running=6).raises == (), "nothing starts: nothing to time"


def test_fallbacks_without_counters_arrival_from_the_oldest_age_and_run_time_by_littles_law() -> None:
    # 2 tasks/s arrive; the workers keep 4 in flight and the queue holds 10 s of arrivals.
    readings = [load(TICK * i, 20, 4, age=10.0) for i in range(10)]
    estimates, _ = feed(readings)
    last = estimates[-1]
    assert last.source == "fallback"
    assert last.arrival_rate == approx(2.0)
    assert last.mean_run_s == approx(2.0)  # 4 in flight / 2 per second
    nothing, _ = feed([load(TICK * i, 0, 0) for i in range(3)])
    assert nothing[-1].arrival_rate == 0.0
    assert nothing[-1].mean_run_s is None


def test_the_state_stays_small_and_round_trips_through_the_store() -> None:
    readings = steady_ticks(5000)
    _, estimator = feed(readings)
    for i in range(10):
        estimator = record_raise(estimator, now=TICK * (5000 + i), desired=10 + i, running=0)
    state = PoolState(recommendations=tuple((TICK * i, 5) for i in range(40)), estimator=estimator)
    text = encode_state(state)
    assert len(text.encode()) < 4096, len(text)  # a DynamoDB item may hold 400 KB
    assert decode_state(text, version=3) == PoolState(**{**state.__dict__, "version": 3})
    assert json.loads(text)["estimator"] == json.loads(json.dumps(asdict(estimator)))
