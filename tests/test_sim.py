"""The simulator is correct where queueing theory gives the answer, and deterministic."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.measurements import PoolMeasurements
from celery_autoscaler.sim import BUILTIN, ServiceModel, SimSettings, builtin, read_csv, simulate, write_csv
from celery_autoscaler.sim.baselines import ScalerPolicy, Static
from celery_autoscaler.sim.command import PROBE_VIEWS, main
from celery_autoscaler.sim.engine import RunResult, run_pool
from celery_autoscaler.sim.simulate import DEFAULT_POOL
from celery_autoscaler.sim.traces import poisson

pytestmark = pytest.mark.unit  # the fast tier: make test-unit

ROOT = Path(__file__).resolve().parents[1]


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/servers with ``offered`` = arrival rate x mean service."""
    top = offered**servers / math.factorial(servers) * servers / (servers - offered)
    return top / (sum(offered**k / math.factorial(k) for k in range(servers)) + top)


def test_static_fleet_matches_erlang_c_over_20_seeds() -> None:
    # acks_late with prefetch 1 holds no task beyond a free process: the fleet is exactly M/M/s.
    rate, mean_s, workers, concurrency, horizon = 3.0, 1.0, 2, 2, 7200.0
    pool = PoolConfig(name="p", service="s", queues=("celery",), concurrency=concurrency, max_workers=workers)
    settings = SimSettings(acks_late=True, prefetch_multiplier=1)
    service = ServiceModel(mean_s=mean_s, exponential=True)
    waited, mean_waits = [], []
    for seed in range(20):
        rng = random.Random(seed)
        enq = poisson(rate, horizon, rng)
        svc = [service.draw(rng) for _ in enq]
        run = run_pool(enq, svc, Static(workers, "static"), pool, settings, seed, horizon)
        waited.append(sum(1 for w in run.waits if w > 0) / len(run.waits))
        mean_waits.append(sum(run.waits) / len(run.waits))
    servers, offered = workers * concurrency, rate * mean_s
    expected = erlang_c(servers, offered)
    measured = sum(waited) / len(waited)
    assert measured == pytest.approx(expected, rel=0.05)
    expected_wait = expected * mean_s / (servers - offered)
    assert sum(mean_waits) / len(mean_waits) == pytest.approx(expected_wait, rel=0.10)


@pytest.mark.parametrize("name", ["spiky", "diurnal-long"])
def test_littles_law_holds_for_the_scaler(name: str) -> None:
    trace = builtin(name, hours=3, seed=7)
    pool = PoolConfig(name="p", service="s", queues=("celery",), concurrency=2, max_workers=100)
    run = run_pool(trace.enqueue_s, trace.service_s, ScalerPolicy(pool), pool, SimSettings(), 7, trace.horizon_s)
    arrival_rate = len(run.waits) / run.horizon_s
    mean_wait = sum(run.waits) / len(run.waits)
    mean_backlog = run.backlog_area / run.horizon_s
    assert mean_backlog == pytest.approx(arrival_rate * mean_wait, rel=1e-6)
    assert run.max_backlog >= mean_backlog > 0


@pytest.mark.parametrize("name", BUILTIN)
def test_oracle_lower_bound_is_below_its_schedule(name: str) -> None:
    outcomes = simulate(builtin(name, hours=4, seed=3), compare=["oracle"], seed=3)
    assert 0 < outcomes["oracle-lower"].metrics["worker_seconds"] <= outcomes["oracle-upper"].metrics["worker_seconds"]


def test_same_seed_same_bytes_other_seed_other_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--trace", "spiky", "--hours", "2", "--compare", "aws,keda,oracle", "--json"]
    outputs = []
    for seed in ("5", "5", "6"):
        assert main([*args, "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out.encode())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_per_task_csv_round_trips(tmp_path: Path) -> None:
    trace = builtin("batch-long", hours=7, seed=2)
    path = tmp_path / "trace.csv"
    write_csv(trace, path)
    again = read_csv(path)
    assert again.enqueue_s == trace.enqueue_s
    assert again.service_s == trace.service_s
    assert [again.queues[q] for q in again.queue] == [trace.queues[q] for q in trace.queue]


def test_per_minute_csv_spreads_counts_over_each_minute(tmp_path: Path) -> None:
    path = tmp_path / "minutes.csv"
    path.write_text("minute,queue,count\n0,a,30\n1,b,0\n2,a,12\n2,b,5\n")
    trace = read_csv(path, ServiceModel(mean_s=3.0), seed=1)
    assert len(trace) == 47
    assert sorted(trace.queues) == ["a", "b"]
    assert all(0 <= t < 180 for t in trace.enqueue_s)
    assert sum(1 for t in trace.enqueue_s if t < 60) == 30
    assert trace.enqueue_s == sorted(trace.enqueue_s)


def test_scale_in_kills_long_tasks_only_without_protection() -> None:
    # A burst of 180 s tasks, then quiet: scale-in happens while some workers are still busy.
    trace = builtin("spiky-long", hours=2, seed=4)
    pool = PoolConfig(name="p", service="s", queues=("celery",), concurrency=2, max_workers=100)
    killed = {}
    for protection in (True, False):
        settings = SimSettings(scale_in_protection=protection, stop_timeout_s=30.0)
        run = run_pool(trace.enqueue_s, trace.service_s, ScalerPolicy(pool), pool, settings, 4, trace.horizon_s)
        killed[protection] = run.tasks_killed
    assert killed[True] == 0
    assert killed[False] > 0


def without_and_with_drain(name: str) -> dict[bool, RunResult]:
    """Three hours of a built-in trace, our policy with the defaults, without and with fence and drain."""
    trace = builtin(name, hours=3, seed=1)
    return {
        drain: run_pool(
            trace.enqueue_s,
            trace.service_s,
            ScalerPolicy(DEFAULT_POOL),
            DEFAULT_POOL,
            SimSettings(drain=drain),
            1,
            trace.horizon_s,
        )
        for drain in (False, True)
    }


@pytest.mark.parametrize("name", ["steady-long", "diurnal-long"])
def test_fence_and_drain_closes_the_scale_in_race(name: str) -> None:
    """ECS stops only drained workers: the tasks a stopping worker took in the race are no longer killed."""
    outcome = without_and_with_drain(name)
    assert outcome[False].tasks_killed > 0
    assert outcome[True].tasks_killed == 0
    assert outcome[True].worker_seconds <= outcome[False].worker_seconds * 1.03


@pytest.mark.parametrize("name", ["spiky", "cron"])
def test_fence_and_drain_costs_little_after_bursts(name: str) -> None:
    """The handler's follow-up tick lowers seconds after the workers drained, not a tick later
    (without it these traces billed 9-10 % more with the handshake than without)."""
    outcome = without_and_with_drain(name)
    assert outcome[True].worker_seconds <= outcome[False].worker_seconds * 1.03


def test_unknown_trace_or_policy_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", "no-such-trace.csv"]) == 2
    assert main(["--trace", "steady", "--hours", "0.1", "--compare", "hpa"]) == 2
    assert "unknown policy 'hpa'" in capsys.readouterr().err


def test_simulated_workers_and_scaler_defaults_are_the_modules() -> None:
    # The benchmark's default scenario claims to be the module's defaults: check it against the .tf files.
    variables = (ROOT / "variables.tf").read_text()
    pool_block = variables[variables.index('variable "worker_pools"') :]

    def default(field: str) -> str:
        found = re.search(rf"^\s*{field}\s*=\s*optional\(\w+,\s*([^)]+)\)", pool_block, re.M)
        assert found, field
        return found.group(1).strip()

    settings, scaler = SimSettings(), PoolConfig(name="p", service="s", queues=("celery",))
    assert int(default("concurrency")) == scaler.concurrency == DEFAULT_POOL.concurrency
    assert (int(default("cpu")) / 1024, int(default("memory")) / 1024) == (settings.vcpu, settings.memory_gb)
    assert float(default("stop_timeout")) == settings.stop_timeout_s
    assert default("shutdown") == '"warm"'
    assert (default("scale_in_protection") == "true") is settings.scale_in_protection is True
    assert float(default("scale_in_window_s")) == scaler.scale_in_window_s == DEFAULT_POOL.scale_in_window_s
    assert float(default("idle_window_s")) == scaler.idle_window_s == DEFAULT_POOL.idle_window_s
    assert float(default("max_scale_in_percent")) == scaler.max_scale_in_percent
    assert float(default("target_utilisation")) == scaler.target_utilisation
    assert float(default("stale_after_s")) == scaler.stale_after_s
    workers = (ROOT / "workers.tf").read_text()
    assert re.search(r'CELERY_TASK_ACKS_LATE\s*=\s*"true"', workers)
    assert settings.acks_late is True
    assert re.search(r'CELERY_WORKER_PREFETCH_MULTIPLIER\s*=\s*"1"', workers)
    assert settings.prefetch_multiplier == 1


def test_no_acks_late_hides_running_tasks_from_the_scaler(capsys: pytest.CaptureFixture[str]) -> None:
    # With acks_late off the probe sees no running task, so a pool busy with long tasks looks idle and is
    # sized too small: tasks wait. (Fence and drain keeps it from churning: only idle workers drain.)
    p95 = {}
    for flag in ("--acks-late", "--no-acks-late"):
        assert main(["--trace", "steady-long", "--hours", "2", "--json", flag]) == 0
        document = json.loads(capsys.readouterr().out)
        p95[flag] = document["policies"]["celery-autoscaler"]["wait_p95_s"]
    assert p95["--no-acks-late"] > 2 * p95["--acks-late"]


class AgeRecorder(Static):
    """One warm worker on the scaler's schedule that writes down the age each tick shows it."""

    interval_s = None

    def __init__(self) -> None:
        super().__init__(1, "recorder")
        self.ages: list[float | None] = []

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, None]:
        assert measurements.load is not None
        self.ages.append(measurements.load.oldest_age_s)
        return super().__call__(measurements, state, now)


def test_probe_view_shows_the_age_each_broker_lets_the_probe_see(capsys: pytest.CaptureFixture[str]) -> None:
    # One worker, a task a second of 30 s each: a backlog whose head ages; the fleet never changes, so
    # every view sees the same world and differs only in the age it is shown.
    enqueue = [float(i) for i in range(600)]
    pool = PoolConfig(name="p", service="s", queues=("celery",), concurrency=1)
    seen = {}
    for view, lag in PROBE_VIEWS.items():
        recorder = AgeRecorder()
        run_pool(enqueue, [30.0] * len(enqueue), recorder, pool, SimSettings(age_lag_s=lag), 3, 900.0)
        seen[view] = recorder.ages
    exact = [age for age in seen["redis"] if age is not None]
    assert len(exact) > 20
    assert seen["no-age"] == [None] * len(seen["redis"])
    assert seen["sqs"] == [None if a is None or a < 60.0 else a - 60.0 for a in seen["redis"]]  # a minute late
    assert main(["--trace", "steady", "--hours", "1", "--json", "--probe-view", "sqs"]) == 0
    assert json.loads(capsys.readouterr().out)["policies"]["celery-autoscaler"]


def test_wait_target_gives_our_policy_a_cheaper_fleet_within_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    def ours(*flags: str) -> dict[str, float]:
        assert main(["--trace", "diurnal", "--hours", "6", "--json", *flags]) == 0
        return dict(json.loads(capsys.readouterr().out)["policies"]["celery-autoscaler"])

    default, relaxed = ours(), ours("--wait-target-s", "20")
    assert relaxed["worker_seconds"] < default["worker_seconds"]
    assert relaxed["wait_p95_s"] <= 20
    assert main(["--trace", "steady", "--wait-target-s", "0"]) == 2
    assert "--wait-target-s must be > 0" in capsys.readouterr().err


def test_a_workers_exit_after_sigterm_is_billed_and_changes_nothing_else() -> None:
    """``exit_s`` (Celery's warm shutdown, which ``make calibrate`` measures) adds that much billing per
    worker stopped after it was up, and moves no task and no decision."""
    rng = random.Random(3)
    enqueue = poisson(2.0, 300.0, rng)
    service = [rng.uniform(0.5, 3.0) for _ in enqueue]
    pool = PoolConfig(name="p", service="s", queues=("celery",), concurrency=2, max_workers=20)
    runs = {
        exit_s: run_pool(
            enqueue, service, ScalerPolicy(pool), pool, SimSettings(min_billed_s=0.0, exit_s=exit_s), 5, 1200.0
        )
        for exit_s in (0.0, 4.0)
    }
    plain, tail = runs[0.0], runs[4.0]
    assert (tail.waits, tail.scaling_actions, tail.workers_launched) == (
        plain.waits,
        plain.scaling_actions,
        plain.workers_launched,
    )
    stopped = (tail.worker_seconds - plain.worker_seconds) / 4.0
    assert stopped == pytest.approx(round(stopped))
    assert 1 <= round(stopped) <= plain.workers_launched
