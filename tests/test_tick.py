"""run_tick with real Redis (db 5, real Celery producers), moto ECS and DynamoDB, and parsed telemetry."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest
import redis
from celery import Celery
from conftest import redis_url_for
from moto import mock_aws
from moto_aws import (
    CLUSTER,
    REGION,
    aws_env,
    count_calls,
    create_services,
    create_state_table,
    free_port,
    metric_data_from_emf,
    raise_on_send,
)

from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.ecs import EcsActuator
from celery_autoscaler.policy import PoolState
from celery_autoscaler.probe.redis import RedisProbe
from celery_autoscaler.state import DynamoStateStore, InMemoryStateStore, StateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import Fault, TickResult, run_tick

DB = 5
T0 = 1_800_000_000.0
pytestmark = pytest.mark.redis_db(DB)


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def make_config(broker_url: str = redis_url_for(DB), **pool: Any) -> ScalerConfig:
    return parse_config(
        {
            "broker": {"url": broker_url, "unacked_scan_interval_s": 0},
            "cluster": CLUSTER,
            "state_table": "celery-autoscaler-state",
            "metrics_namespace": "Test/Autoscaler",
            "pools": {
                "default": {
                    "service": "worker-default",
                    "queues": ["celery", "mail"],
                    "concurrency": 4,
                    "max_workers": 10,
                    "scale_in_window_s": 60,
                    "idle_window_s": 120,
                    **pool,
                },
                "video": {"service": "worker-video", "queues": ["video"], "max_workers": 3},
            },
        }
    )


def publish(count: int, queue: str, published_at: float) -> None:
    """Real Celery producers: ``count`` tasks on ``queue``, with the publish-time header the probe reads."""
    app = Celery("producer", broker=redis_url_for(DB))
    try:
        for i in range(count):
            app.send_task("tasks.work", args=(i,), queue=queue, headers={"x_published_at": published_at})
    finally:
        app.close()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    aws_env(monkeypatch)
    with mock_aws():
        ecs = create_services(["worker-default", "worker-video"])
        create_state_table()
        yield ecs


@dataclass
class Rig:
    config: ScalerConfig
    clock: Clock
    probe: RedisProbe
    actuator: EcsActuator
    store: StateStore
    updates: list[dict[str, Any]]
    stream: io.StringIO

    def tick(self, *, dry_run: bool = False, store: StateStore | None = None) -> TickResult:
        telemetry = Telemetry(self.config.metrics_namespace, stream=self.stream)
        return run_tick(
            self.config,
            self.probe,
            self.actuator,
            store or self.store,
            self.clock.now,
            dry_run=dry_run,
            telemetry=telemetry,
        )

    def desired(self, service: str = "worker-default") -> int:
        return self.actuator.describe([service])[service].desired

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def make_rig(ecs: Any, config: ScalerConfig | None = None) -> Rig:
    config = config or make_config()
    clock = Clock()
    assert config.broker.url is not None
    probe = RedisProbe(config.broker, url=config.broker.url, clock=clock)
    assert config.state_table is not None
    return Rig(
        config=config,
        clock=clock,
        probe=probe,
        actuator=EcsActuator(config.cluster, client=ecs),
        store=DynamoStateStore(config.state_table),
        updates=count_calls(ecs, "UpdateService"),
        stream=io.StringIO(),
    )


@pytest.fixture
def rig(aws: Any, redis_db: redis.Redis) -> Iterator[Rig]:
    made = make_rig(aws)
    yield made
    made.probe.close()


def test_burst_scales_out_at_once_then_holds(rig: Rig) -> None:
    publish(30, "celery", T0 - 12)
    publish(6, "mail", T0 - 3)
    result = rig.tick()
    default = result.outcomes[0]
    assert default.measurements is not None
    assert default.measurements.load is not None
    assert default.measurements.load.waiting == 36
    assert default.decision is not None
    assert default.decision.desired == 9
    assert default.decision.reason.startswith("burst: 36 waiting")
    assert default.acted
    assert rig.desired() == 9
    assert rig.updates == [{"cluster": CLUSTER, "service": "worker-default", "desiredCount": 9}]
    assert result.outcomes[1].decision is not None
    assert result.outcomes[1].decision.desired == 0
    assert not result.outcomes[1].acted

    rig.clock.now += 15
    again = rig.tick()
    assert again.outcomes[0].decision is not None
    assert again.outcomes[0].decision.desired == 9
    assert not again.outcomes[0].acted
    assert len(rig.updates) == 1, "UpdateService only when the desired count differs"


def test_idle_pool_steps_down_and_reaches_zero_only_after_the_idle_window(rig: Rig, redis_db: redis.Redis) -> None:
    publish(40, "celery", T0)
    rig.tick()
    assert rig.desired() == 10
    redis_db.delete("celery")
    idle_from = rig.clock.now + 15
    history: list[tuple[float, int]] = []
    while rig.clock.now < T0 + 600:
        rig.clock.now += 15
        rig.tick()
        history.append((rig.clock.now, rig.desired()))
    counts = [count for _, count in history]
    assert counts == sorted(counts, reverse=True), "scale-in never goes back up on a constant idle load"
    assert counts[-1] == 0
    first_zero = next(t for t, count in history if count == 0)
    assert first_zero - idle_from >= rig.config.pools[0].idle_window_s
    # Nothing waiting and at most half the workers needed: the burst is over, so the drop is at once,
    # not a scale-in window later; only the last worker waits for the idle window.
    assert history[0][1] == 1
    assert all(call["desiredCount"] < 10 for call in rig.updates[1:])
    logs = [line for line in rig.lines() if line.get("pool") == "default"]
    scale_ins = [line for line in logs if line["decision"]["desired"] < line["measurements"]["current_desired"]]
    assert scale_ins, "scale-in decisions were logged"
    # ECS counts protected tasks on scale-in only; moto's services run no tasks, so none are protected.
    assert all(line["protected_tasks"] == 0 for line in scale_ins)
    assert all(line["protected_tasks"] is None for line in logs if line not in scale_ins)


@pytest.mark.usefixtures("redis_db")
def test_broker_down_holds_and_never_updates(aws: Any) -> None:
    config = make_config(broker_url=f"redis://127.0.0.1:{free_port()}/{DB}")
    rig = make_rig(aws, config)
    aws.update_service(cluster=CLUSTER, service="worker-default", desiredCount=3)
    rig.updates.clear()
    result = rig.tick()
    assert result.broker_error is not None
    assert "broker unavailable" in result.broker_error
    for outcome in result.outcomes:
        assert outcome.error is not None
        assert "broker unavailable" in outcome.error
        assert outcome.decision is not None
        assert outcome.decision.reason.startswith("hold: broker unreadable")
        assert not outcome.acted
    assert result.outcomes[0].decision is not None
    assert result.outcomes[0].decision.desired == 3
    assert rig.updates == []
    assert rig.store.load(["default"])["default"].consecutive_failures == 1
    metrics = [line for line in rig.lines() if "_aws" in line and line.get("Pool") == "default"]
    assert metrics[0]["ScalerErrors"] == 1
    assert "QueueDepth" not in metrics[0], "unknown values are left out, not reported as 0"


@pytest.mark.usefixtures("redis_db")
def test_dry_run_decides_and_logs_without_updating(rig: Rig) -> None:
    publish(8, "celery", T0)
    result = rig.tick(dry_run=True)
    assert result.outcomes[0].decision is not None
    assert result.outcomes[0].decision.desired == 2
    assert not result.outcomes[0].acted
    assert rig.updates == []
    assert rig.desired() == 0
    log = next(line for line in rig.lines() if line.get("pool") == "default")
    assert log["dry_run"] is True
    assert log["acted"] is False
    assert log["decision"] == {"desired": 2}


class SnapshotStore:
    """A second invocation that loaded its state before the first one saved (real store underneath)."""

    def __init__(self, store: StateStore, snapshot: dict[str, PoolState]) -> None:
        self.store, self.snapshot = store, snapshot

    def load(self, pools: Sequence[str]) -> dict[str, PoolState]:
        return {pool: self.snapshot[pool] for pool in pools}

    def save(self, pool: str, state: PoolState) -> PoolState:
        return self.store.save(pool, state)


def test_second_of_two_overlapping_ticks_stands_back_dynamodb(rig: Rig) -> None:
    publish(12, "celery", T0)
    loaded_by_second = rig.store.load(["default", "video"])
    first = rig.tick()
    second = rig.tick(store=SnapshotStore(rig.store, loaded_by_second))
    assert first.outcomes[0].acted
    assert second.outcomes[0].conflict
    assert not second.outcomes[0].acted
    assert second.outcomes[0].error is None
    assert rig.updates == [{"cluster": CLUSTER, "service": "worker-default", "desiredCount": 3}]
    log = [line for line in rig.lines() if line.get("pool") == "default"]
    assert [line["conflict"] for line in log] == [False, True]


def test_two_threads_ticking_at_once_only_one_acts(rig: Rig) -> None:
    publish(12, "celery", T0)
    store = InMemoryStateStore()
    both_loaded = threading.Barrier(2, timeout=60)

    class Racing:
        def load(self, pools: Sequence[str]) -> dict[str, PoolState]:
            states = store.load(pools)
            both_loaded.wait()
            return states

        def save(self, pool: str, state: PoolState) -> PoolState:
            return store.save(pool, state)

    results: list[TickResult] = []
    threads = [threading.Thread(target=lambda: results.append(rig.tick(store=Racing()))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = [result.outcomes[0] for result in results]
    assert sorted(o.acted for o in outcomes) == [False, True]
    assert sorted(o.conflict for o in outcomes) == [False, True]
    assert len(rig.updates) == 1


@pytest.mark.usefixtures("redis_db")
def test_missing_service_is_not_acted_on_and_its_failures_are_counted(aws: Any) -> None:
    aws.delete_service(cluster=CLUSTER, service="worker-video", force=True)
    rig = make_rig(aws)
    publish(5, "video", T0)
    publish(4, "celery", T0)
    result = rig.tick()
    default, video = result.outcomes
    assert default.acted
    assert default.error is None
    assert video.error is not None
    assert "'worker-video' in cluster 'celery' is INACTIVE" in video.error
    assert not video.acted
    assert video.decision is None
    assert [call["service"] for call in rig.updates] == ["worker-default"]
    assert rig.store.load(["video"])["video"].consecutive_failures == 1
    rig.probe.close()


@pytest.mark.usefixtures("redis_db")
def test_unknown_cluster_acts_on_nothing(aws: Any) -> None:
    rig = make_rig(aws, replace(make_config(), cluster="elsewhere"))
    publish(5, "celery", T0)
    result = rig.tick()
    assert result.errors == 2
    assert result.actions == 0
    assert all("cluster 'elsewhere'" in (o.error or "") for o in result.outcomes)
    assert rig.updates == []
    rig.probe.close()


def test_telemetry_one_log_line_per_pool_and_emf_per_pool_and_queue(rig: Rig) -> None:
    publish(10, "celery", T0 - 30)
    rig.tick()
    lines = rig.lines()
    logs = [line for line in lines if "_aws" not in line]
    assert [line["pool"] for line in logs] == ["default", "video"]
    default_log = logs[0]
    assert default_log["message"] == "pool tick"
    assert default_log["measurements"]["waiting"] == 10
    celery = default_log["measurements"]["queues"]["celery"]
    assert (celery["waiting"], celery["unacked"], celery["oldest_age_s"], celery["error"]) == (10, 0, 30.0, None)
    assert default_log["reason"].startswith("burst")
    assert default_log["acted"] is True
    # A first tick has no interval to estimate from: the start delay is the prior, the source says so.
    assert default_log["estimates"] == {
        "arrival_rate": None,
        "mean_run_s": None,
        "start_delay_s": 55.0,
        "source": "none",
    }

    emf = [line for line in lines if "_aws" in line]
    pool_doc = next(
        d for d in emf if d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Pool"]] and d["Pool"] == "default"
    )
    directive = pool_doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Test/Autoscaler"
    assert pool_doc["_aws"]["Timestamp"] == int(T0 * 1000)
    assert {m["Name"] for m in directive["Metrics"]} == {
        "QueueDepth",
        "InFlight",
        "OldestTaskAgeSeconds",
        "DesiredCount",
        "RunningCount",
        "StartDelaySeconds",
        "ScalingActions",
        "ScalerErrors",
        "UnreadableQueues",
        "UndeclaredQueues",
        "Paused",
        "BrokerUnreadable",
        "PinnedAtMax",
        "WorkerSeconds",
        "EstimatedCostUSD",
    }
    assert (pool_doc["Paused"], pool_doc["BrokerUnreadable"], pool_doc["PinnedAtMax"]) == (0, 0, 0)
    assert pool_doc["UnreadableQueues"] == 0
    assert (pool_doc["QueueDepth"], pool_doc["DesiredCount"], pool_doc["ScalingActions"]) == (10, 3, 1)
    queue_docs = {d["Queue"]: d for d in emf if d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Pool", "Queue"]]}
    assert set(queue_docs) == {"celery", "mail", "video"}
    assert queue_docs["celery"]["OldestTaskAgeSeconds"] == 30.0
    assert "OldestTaskAgeSeconds" not in queue_docs["mail"], "an empty queue has no age"


def test_put_metric_data_accepts_the_emf_values(rig: Rig) -> None:
    """The same names, units and dimensions are valid CloudWatch metrics (moto checks the API shape)."""
    publish(3, "celery", T0)
    rig.tick()
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    for doc in (line for line in rig.lines() if "_aws" in line):
        namespace, data = metric_data_from_emf(doc)
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data)
    listed = cloudwatch.list_metrics(Namespace="Test/Autoscaler", MetricName="QueueDepth")["Metrics"]
    assert {tuple(sorted(d["Name"] for d in m["Dimensions"])) for m in listed} == {("Pool",), ("Pool", "Queue")}


def emf_for(rig: Rig, pool: str) -> list[dict[str, Any]]:
    """The pool-level EMF documents of ``pool``, one per tick."""
    return [
        line
        for line in rig.lines()
        if "_aws" in line and line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Pool"]] and line["Pool"] == pool
    ]


def test_a_corrupt_state_item_holds_its_pool_and_heals_without_an_early_scale_in(rig: Rig, aws: Any) -> None:
    aws.update_service(cluster=CLUSTER, service="worker-video", desiredCount=3)
    boto3.client("dynamodb", region_name=REGION).put_item(
        TableName="celery-autoscaler-state",
        Item={"pool": {"S": "video"}, "version": {"N": "4"}, "state": {"S": "{truncated"}},
    )
    publish(8, "celery", T0)
    first = rig.tick()
    default, video = first.outcomes
    assert default.acted, "the other pool decides normally"
    assert not video.acted
    assert video.decision is None
    assert video.faults == (Fault.STATE,)
    assert video.error is not None
    assert "state unreadable (state item is not JSON" in video.error
    assert "holding at 3, not acting; state reset to the current count" in video.error
    assert rig.desired("worker-video") == 3
    log = next(line for line in rig.lines() if line.get("pool") == "video")
    assert log["error"] == video.error
    assert log["faults"] == ["state"]
    assert emf_for(rig, "video")[0]["StateErrors"] == 1
    assert "StateErrors" not in emf_for(rig, "default")[0], "fault metrics only on the pools that had the fault"

    healed = rig.store.load(["video"])["video"]
    assert healed == PoolState(recommendations=((T0, 3),), last_desired=3, consecutive_failures=1, version=5), (
        "numbered after the corrupt item's version"
    )
    # One task waits on "video" (so the scale-in window applies: nothing waiting would be a burst's end):
    # a fresh state would scale it in at once; the seeded window holds 3 for 30 s.
    publish(1, "video", rig.clock.now)
    rig.clock.now += 15
    second = rig.tick().outcomes[1]
    assert second.error is None
    assert second.decision is not None
    assert second.decision.desired == 3
    assert rig.desired("worker-video") == 3
    rig.clock.now += 15
    assert rig.tick().outcomes[1].acted, "after one full window the pool scales in as usual"
    assert rig.desired("worker-video") < 3


def test_a_bug_while_handling_one_pool_is_reported_on_it_and_the_others_act(rig: Rig) -> None:
    raise_on_send(
        rig.actuator.client,
        "UpdateService",
        lambda: RuntimeError("hook exploded"),
        applied=False,
        when=lambda params: params["service"] == "worker-video",
    )
    publish(8, "celery", T0)
    publish(2, "video", T0)
    default, video = rig.tick().outcomes
    assert default.acted
    assert rig.desired() == 2
    assert not video.acted
    assert video.faults == (Fault.BUG,)
    assert video.error == "scaler bug in pool 'video': RuntimeError: hook exploded"
    log = next(line for line in rig.lines() if line.get("pool") == "video")
    assert log["level"] == "ERROR"
    assert "Traceback (most recent call last)" in log["traceback"]
    assert "set_desired" in log["traceback"]
    assert emf_for(rig, "video")[0]["ScalerBugs"] == 1
    assert rig.desired("worker-video") == 0


class BrokenProbe:
    """A probe with a bug: it raises something that is not BrokerUnavailableError."""

    def measure(self, queues: Sequence[str]) -> Any:
        raise KeyError("celery")


def test_a_bug_in_the_probe_holds_every_pool_and_never_scales_in(rig: Rig, aws: Any) -> None:
    aws.update_service(cluster=CLUSTER, service="worker-default", desiredCount=4)
    rig.updates.clear()
    telemetry = Telemetry(rig.config.metrics_namespace, stream=rig.stream)
    result = run_tick(rig.config, BrokenProbe(), rig.actuator, rig.store, rig.clock.now, telemetry=telemetry)
    assert result.broker_error == "scaler bug in the broker probe: KeyError: 'celery'"
    for outcome in result.outcomes:
        assert not outcome.acted
        assert outcome.decision is not None
        assert outcome.decision.reason.startswith("hold: broker unreadable")
        assert outcome.faults == (Fault.BUG,)
    assert rig.desired() == 4
    assert rig.updates == []
    logs = [line for line in rig.lines() if line.get("message") == "pool tick"]
    assert all("KeyError" in line["traceback"] for line in logs)
    assert emf_for(rig, "default")[0]["ScalerBugs"] == 1
