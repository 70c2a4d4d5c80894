"""The metrics on-call reads, from real ticks (real Redis, real Celery producers, moto ECS and DynamoDB):
cost per pool against a hand computation, pinned at max, broker unreadable; the config fields they need."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import redis_url_for
from moto_aws import CLUSTER, free_port
from test_tick import DB, T0, emf_for, make_rig, publish
from test_tick import aws as aws  # the moto ECS services and state table (a fixture)

from celery_autoscaler.config import ConfigError, PricesConfig, parse_config

pytestmark = pytest.mark.redis_db(DB)


def config(broker_url: str = redis_url_for(DB), **pools: dict[str, Any]) -> Any:
    return parse_config(
        {
            "broker": {"url": broker_url, "unacked_scan_interval_s": 0},
            "cluster": CLUSTER,
            "state_table": "celery-autoscaler-state",
            "tick_interval_s": 15,
            "pools": pools,
        }
    )


# Hand computations (us-east-1 defaults: x86 $0.04048/vCPU-h + $0.004445/GB-h, ARM $0.03238 + $0.00356,
# Spot 70 % off), for one 15 s tick:
#   x86  1 vCPU 2 GB, 3 running: 45 s; 0.04048 + 2 x 0.004445 = 0.04937 $/h; 45/3600 x 0.04937 = 0.000617125
#   ARM  0.5 vCPU 1 GB, 4 running: 60 s; 0.5 x 0.03238 + 0.00356 = 0.01975 $/h; 60/3600 x 0.01975 = 0.000329166...
#   Spot x86 0.25 vCPU 0.5 GB, all on Spot, 2 running: 30 s; (0.01012 + 0.0022225) x 0.3 = 0.00370275 $/h;
#        30/3600 x 0.00370275 = 0.0000308562...
HAND = {
    "x86": ({"cpu": 1024, "memory": 2048}, 3, 45.0, 0.000617125),
    "arm": ({"cpu": 512, "memory": 1024, "architecture": "ARM64"}, 4, 60.0, 0.0003291666667),
    "spot": ({"cpu": 256, "memory": 512, "spot_weight": 100}, 2, 30.0, 0.0000308562500),
}


@pytest.mark.usefixtures("redis_db")
@pytest.mark.parametrize("case", list(HAND))
def test_worker_seconds_and_cost_match_a_hand_computation(aws: Any, case: str) -> None:
    size, running, worker_seconds, cost = HAND[case]
    rig = make_rig(aws, config(default={"service": "worker-default", "queues": ["celery"], "min_workers": 1, **size}))
    aws.update_service(cluster=CLUSTER, service="worker-default", desiredCount=running)
    publish(running, "celery", T0)  # enough load to keep them all
    result = rig.tick()
    rig.probe.close()
    assert result.outcomes[0].measurements is not None
    assert result.outcomes[0].measurements.running == running
    doc = emf_for(rig, "default")[-1]
    assert doc["WorkerSeconds"] == worker_seconds
    assert doc["EstimatedCostUSD"] == pytest.approx(cost, rel=1e-9)
    units = {m["Name"]: m["Unit"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert (units["WorkerSeconds"], units["EstimatedCostUSD"]) == ("Seconds", "None")
    line = next(line for line in rig.lines() if line.get("message") == "pool tick")
    assert line["worker_seconds"] == worker_seconds
    assert line["estimated_cost_usd"] == pytest.approx(cost, rel=1e-9)


def test_half_on_spot_costs_the_blend() -> None:
    prices = PricesConfig()
    on_demand = prices.task_hour_usd(1024, 2048, "X86_64", 0)
    assert prices.task_hour_usd(1024, 2048, "X86_64", 50) == pytest.approx(on_demand * 0.65)
    assert PricesConfig(spot_discount_percent=0).task_hour_usd(1024, 2048, "X86_64", 100) == on_demand


@pytest.mark.usefixtures("redis_db")
def test_a_pool_capped_by_max_workers_says_so_and_reports_pinned_at_max(aws: Any) -> None:
    rig = make_rig(
        aws,
        config(
            default={"service": "worker-default", "queues": ["celery"], "concurrency": 2, "max_workers": 6},
            video={"service": "worker-video", "queues": ["video"]},
        ),
    )
    publish(252, "celery", T0)
    publish(1, "video", T0)
    outcomes = rig.tick().outcomes
    rig.probe.close()
    default, video = (o.decision for o in outcomes)
    assert default is not None
    assert video is not None
    assert default.desired == 6
    assert default.reason.endswith("-> 6 (at max_workers; 126 wanted)")
    assert default.wanted == 126
    assert "max_workers" not in video.reason
    assert video.wanted is None
    assert emf_for(rig, "default")[-1]["PinnedAtMax"] == 1
    assert emf_for(rig, "video")[-1]["PinnedAtMax"] == 0
    lines = [line for line in rig.lines() if line.get("message") == "pool tick"]
    assert [line["pinned_at_max"] for line in lines] == [True, False]


@pytest.mark.usefixtures("redis_db")
def test_broker_unreadable_is_one_for_every_pool_that_held_for_it(aws: Any) -> None:
    pools = {"default": {"service": "worker-default", "queues": ["celery"]}}
    down = make_rig(aws, config(f"redis://127.0.0.1:{free_port()}/{DB}", **pools))
    down.tick()
    down.probe.close()
    assert emf_for(down, "default")[-1]["BrokerUnreadable"] == 1
    up = make_rig(aws, config(**pools))
    up.clock.now += 15
    up.tick()
    up.probe.close()
    assert emf_for(up, "default")[-1]["BrokerUnreadable"] == 0


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"architecture": "arm"}, "pools.default.architecture", "must be X86_64 or ARM64"),
        ({"spot_weight": 101}, "pools.default.spot_weight", "must be a percentage in [0, 100]"),
        ({"cpu": 0}, "pools.default.cpu", "must be > 0"),
        ({"memory": "512"}, "pools.default.memory", "must be int"),
    ],
)
def test_bad_task_size_is_refused_naming_the_field(change: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        config(default={"service": "worker-default", "queues": ["celery"], **change})
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ({"x86_64_vcpu_hour_usd": -1}, "prices.x86_64_vcpu_hour_usd"),
        ({"spot_discount_percent": 120}, "prices.spot_discount_percent"),
        ({"gpu_hour_usd": 1}, "prices.gpu_hour_usd"),
    ],
)
def test_bad_prices_are_refused_naming_the_field(prices: dict[str, Any], field: str) -> None:
    raw = {"broker": {"url": redis_url_for(DB)}, "cluster": CLUSTER, "prices": prices}
    with pytest.raises(ConfigError) as raised:
        parse_config({**raw, "pools": {"default": {"service": "worker-default", "queues": ["celery"]}}})
    assert raised.value.field == field


def test_a_config_without_sizes_or_prices_gets_the_modules_defaults() -> None:
    pool = config(default={"service": "worker-default", "queues": ["celery"]}).pools[0]
    assert (pool.cpu, pool.memory, pool.architecture, pool.spot_weight) == (256, 512, "X86_64", 0)
