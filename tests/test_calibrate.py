"""`make calibrate`'s logic that is not timed: one trace reaches the demo and the simulator alike, and the
settings the simulator gets are the ones the run's event log shows (never fitted to its results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calibrate import PHASES, calibration_trace, measure, sim_settings
from demo.loadgen import QUEUES, replay
from demo.profiles import DEFAULT

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.sim.traces import read_csv, write_csv

pytestmark = pytest.mark.unit


def test_the_trace_reaches_the_load_generator_and_the_simulator_identically(tmp_path: Path) -> None:
    trace = calibration_trace()
    assert trace == calibration_trace()  # the same seed, the same trace
    write_csv(trace, tmp_path / "trace.csv")
    back = read_csv(tmp_path / "trace.csv")
    assert (back.enqueue_s, back.service_s, [back.queues[q] for q in back.queue]) == (
        trace.enqueue_s,
        trace.service_s,
        [trace.queues[q] for q in trace.queue],
    )
    schedule = replay(back, PHASES)
    rows = [(s.at_s, s.queue, s.duration_s) for s in schedule.sends]
    assert rows == list(zip(trace.enqueue_s, [QUEUES[q] for q in trace.queue], trace.service_s, strict=True))
    assert {s.priority for s in schedule.sends} == {5}  # one FIFO per queue, as the simulator's broker
    assert schedule.length_s == trace.horizon_s


def test_a_queue_the_demo_app_does_not_consume_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("enqueue_s,queue,service_s\n1.0,default,0.5\n2.0,emails,0.5\n")
    with pytest.raises(ValueError, match="emails"):
        replay(read_csv(tmp_path / "t.csv"))


def test_a_profile_plays_as_a_schedule_with_its_phases() -> None:
    schedule = DEFAULT.schedule()
    assert schedule == DEFAULT.schedule()
    burst = [s for s in schedule.sends if s.at_s == DEFAULT.quiet_s]
    assert len(burst) == DEFAULT.burst_default + DEFAULT.burst_reports
    assert [name for _, name in schedule.phases] == ["quiet", "burst", "trickle", "silence"]
    assert schedule.length_s == DEFAULT.quiet_s + DEFAULT.trickle_s


def _write_run(run: Path) -> None:
    """A two-worker run of pool a: raised to 1 at t=15 and to 2 at t=30, the first worker asked for at 15
    but started after the second raise (whose count the runner saw before the tick's line was written);
    both stopped after the tick at 90 lowered the count to 0."""
    start_wall = 1_000_000.0
    events = [
        {
            "t": 0.0,
            "kind": "run_started",
            "tick_interval_s": 15.0,
            "workers": {"a": {"prefetch_multiplier": 1, "acks_late": True, "stop_timeout_s": 60.0, "concurrency": 2}},
            "helper": {"release_after_idle_s": 3.0, "poll_interval_s": 1.0},
        },
        {"t": 1.0, "kind": "load_started", "started_at": start_wall},
        {"t": 16.2, "kind": "tick", "pool": "a", "acted": True, "current_desired": 0, "desired": 1},
        {"t": 16.5, "kind": "runner_desired", "pool": "a", "desired": 1, "previous": 0},
        {"t": 16.9, "kind": "task_pending", "pool": "a", "task": "a-1"},
        {"t": 31.0, "kind": "runner_desired", "pool": "a", "desired": 2, "previous": 1},
        {"t": 31.3, "kind": "tick", "pool": "a", "acted": True, "current_desired": 1, "desired": 2},
        {"t": 31.8, "kind": "task_pending", "pool": "a", "task": "a-2"},
        {"t": 37.5, "kind": "task_started", "pool": "a", "task": "a-1"},
        {"t": 52.4, "kind": "task_started", "pool": "a", "task": "a-2"},
        {"t": 91.1, "kind": "tick", "pool": "a", "acted": True, "current_desired": 2, "desired": 0},
        {"t": 91.3, "kind": "runner_desired", "pool": "a", "desired": 0, "previous": 2},
        {"t": 91.6, "kind": "task_stopping", "pool": "a", "task": "a-1"},
        {"t": 91.7, "kind": "task_stopping", "pool": "a", "task": "a-2"},
        {"t": 93.6, "kind": "task_exited", "pool": "a", "task": "a-1"},
        {"t": 94.7, "kind": "task_exited", "pool": "a", "task": "a-2"},
        {"t": 101.0, "kind": "run_finished"},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    tasks = {
        "sent": {
            "x": {"queue": "default", "sent_at": start_wall + 20.5, "at_s": 20.0},
            "y": {"queue": "default", "sent_at": start_wall + 20.0, "at_s": 20.0},
        },
        "done": {
            "x": {"started_at": start_wall + 40.5, "finished_at": start_wall + 41.0},
            "y": {"started_at": start_wall + 40.0, "finished_at": start_wall + 42.0},
        },
        "runs": {"x": 1, "y": 1},
        "ready": {"a-1@host": start_wall + 36.5 + 4.0, "a-2@host": start_wall + 51.4 + 6.0},
    }
    (run / "tasks.json").write_text(json.dumps(tasks))
    summary = {
        "worker_seconds": 98.5,
        "peak_workers": {"a": 2},
        "tasks_sent": 2,
        "tasks_completed": 2,
        "scaled_to_zero": {"a": True},
    }
    (run / "summary.json").write_text(json.dumps(summary))


def test_the_simulator_gets_the_delays_the_run_showed(tmp_path: Path) -> None:
    _write_run(tmp_path)
    pool = PoolConfig(name="a", service="svc-a", queues=("default",), concurrency=2)
    measured = measure(tmp_path, (pool,))
    # Times count from the load's start; the trace is as played (send order), with the real run times.
    assert measured.trace.enqueue_s == pytest.approx([20.0, 20.5])
    assert measured.trace.service_s == pytest.approx([2.0, 0.5])
    assert measured.end_s == pytest.approx(100.0)
    assert measured.demo["wait_p50_s"] == pytest.approx(20.0)
    # a-1 answers the raise at 16.2, although it started after the raise at 31.3.
    assert measured.launch_s["a"] == pytest.approx([37.5 - 16.2, 52.4 - 31.3])
    assert measured.boot_s["a"] == pytest.approx([4.0, 6.0])
    assert measured.observe_s == pytest.approx([0.3, 0.0, 0.2])
    assert measured.exit_s == pytest.approx([2.0, 3.0])
    assert measured.tick_lag_s == pytest.approx([0.2, 0.3, 0.1])

    settings = sim_settings(measured, pool, 15.0)
    # One tick per "invocation", every 15 s, each late by up to the lateness the run's ticks showed.
    assert (settings.invocation_period_s, settings.ticks_per_invocation) == (15.0, 1)
    assert settings.invocation_jitter_s == pytest.approx(0.3)
    assert settings.start_delay.provisioning_s == pytest.approx((52.4 - 31.3, 37.5 - 16.2))
    assert settings.start_delay.pull_median_s == pytest.approx(5.0)
    assert settings.stop_signal_s == pytest.approx((0.0, 0.3))
    assert (settings.stop_timeout_s, settings.protection_release_s, settings.min_billed_s) == (60.0, 3.0, 0.0)
    assert settings.drain is False  # no tick of this run drained
