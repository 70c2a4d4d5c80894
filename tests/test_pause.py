"""Pause, resume and status: the CLI writes the pause into the pool's state item (moto DynamoDB), real
ticks (real Redis, real Celery producers, moto ECS) honour it, race it and let it lapse."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import redis_url_for
from moto_aws import CLUSTER
from test_tick import DB, Rig, emf_for, make_rig, publish
from test_tick import aws as aws  # the moto ECS services and state table (a fixture)

from celery_autoscaler.cli import main
from celery_autoscaler.config import parse_config
from celery_autoscaler.pause import parse_duration
from celery_autoscaler.policy import PoolState
from celery_autoscaler.state import DynamoStateStore, StoredState
from celery_autoscaler.tick import TickResult

pytestmark = pytest.mark.redis_db(DB)

RAW_CONFIG: dict[str, Any] = {
    "broker": {"url": redis_url_for(DB), "unacked_scan_interval_s": 0},
    "cluster": CLUSTER,
    "state_table": "celery-autoscaler-state",
    "metrics_namespace": "Test/Autoscaler",
    "pools": {
        "default": {"service": "worker-default", "queues": ["celery", "mail"], "concurrency": 4, "max_workers": 10},
        "video": {"service": "worker-video", "queues": ["video"], "max_workers": 3},
    },
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RAW_CONFIG))
    return path


@pytest.fixture
def rig(aws: Any, redis_db: redis.Redis) -> Iterator[Rig]:
    """test_tick's rig on the wall clock: the CLI stamps pauses with the real time."""
    made = make_rig(aws, parse_config(RAW_CONFIG))
    made.clock.now = time.time()
    yield made
    made.probe.close()


def cli(*args: str) -> int:
    return main(list(args))


def pool_log(rig: Rig, pool: str = "default") -> list[dict[str, Any]]:
    return [line for line in rig.lines() if line.get("pool") == pool and "_aws" not in line]


def test_a_pause_holds_the_count_in_every_line_and_metric_until_resumed(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(12, "celery", rig.clock.now)
    assert cli("pause", "default", "--config", str(config_file), "--by", "oncall") == 0
    assert "default: paused by oncall since" in capsys.readouterr().out

    held = rig.tick().outcomes[0]
    assert (held.acted, held.decision and held.decision.desired, held.error) == (False, 0, None)
    assert held.decision is not None
    assert held.decision.reason.startswith("paused by oncall since ")
    assert held.decision.reason.endswith("until resumed: holding at 0, not scaling -> 0")
    assert rig.updates == []
    line = pool_log(rig)[-1]
    assert line["paused"]["by"] == "oncall"
    assert line["paused"]["until"] is None
    assert line["paused"]["count"] is None
    assert line["measurements"]["waiting"] == 12, "a paused pool is still measured"
    assert emf_for(rig, "default")[-1]["Paused"] == 1
    assert emf_for(rig, "video")[-1]["Paused"] == 0
    assert pool_log(rig, "video")[-1]["paused"] is None

    # A new deployment of the scaler (another config, a new store) reads the same item: still paused.
    redeployed = make_rig(rig.actuator.client, parse_config({**RAW_CONFIG, "tick_interval_s": 30}))
    redeployed.clock.now = rig.clock.now + 15
    assert redeployed.tick().outcomes[0].pause is not None
    redeployed.probe.close()
    assert rig.updates == []

    assert cli("resume", "default", "--config", str(config_file)) == 0
    assert "resumed (was paused by oncall" in capsys.readouterr().out
    rig.clock.now += 30
    resumed = rig.tick().outcomes[0]
    assert resumed.pause is None
    assert resumed.acted
    assert rig.updates == [{"cluster": CLUSTER, "service": "worker-default", "desiredCount": 3}]
    assert pool_log(rig)[-1]["paused"] is None
    assert emf_for(rig, "default")[-1]["Paused"] == 0


def test_a_pause_with_a_count_sets_exactly_that_count_even_outside_the_bounds(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("pause", "default", "--count", "12", "--config", str(config_file)) == 0
    assert "--count 12 is outside default's bounds [0, 10]; a pause sets it exactly" in capsys.readouterr().err
    first = rig.tick().outcomes[0]
    assert first.acted
    assert first.decision is not None
    assert first.decision.desired == 12
    assert "set to 12 by the operator" in first.decision.reason
    rig.clock.now += 15
    second = rig.tick().outcomes[0]
    assert not second.acted
    assert second.decision is not None
    assert second.decision.desired == 12
    assert rig.updates == [{"cluster": CLUSTER, "service": "worker-default", "desiredCount": 12}]


def test_two_scalers_ticking_at_once_on_a_paused_pool_never_update_it(rig: Rig, config_file: Path) -> None:
    publish(12, "celery", rig.clock.now)
    assert cli("pause", "default", "--config", str(config_file)) == 0
    store = DynamoStateStore(RAW_CONFIG["state_table"])
    both_loaded = threading.Barrier(2, timeout=60)

    class Racing:
        def load(self, pools: Sequence[str]) -> dict[str, StoredState]:
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
    assert sorted(o.conflict for o in outcomes) == [False, True]
    assert all(o.pause is not None and not o.acted for o in outcomes)
    assert rig.updates == []


def test_a_pause_written_after_a_tick_read_the_state_wins(rig: Rig, config_file: Path) -> None:
    """The tick read the item unpaused and wants 3 workers; the pause lands before it saves: it stands back."""
    publish(12, "celery", rig.clock.now)
    store = DynamoStateStore(RAW_CONFIG["state_table"])

    class PausedMeanwhile:
        def load(self, pools: Sequence[str]) -> dict[str, StoredState]:
            states = store.load(pools)
            assert cli("pause", "default", "--config", str(config_file)) == 0
            return states

        def save(self, pool: str, state: PoolState) -> PoolState:
            return store.save(pool, state)

    raced = rig.tick(store=PausedMeanwhile()).outcomes[0]
    assert raced.decision is not None
    assert raced.decision.desired == 3, "it decided on the unpaused state"
    assert raced.conflict
    assert not raced.acted
    rig.clock.now += 15
    assert rig.tick().outcomes[0].pause is not None
    assert rig.updates == []


def test_an_expired_pause_lapses_by_itself_and_is_forgotten(rig: Rig, config_file: Path) -> None:
    publish(12, "celery", rig.clock.now)
    assert cli("pause", "default", "--for", "30s", "--config", str(config_file)) == 0
    assert rig.tick().outcomes[0].pause is not None
    rig.clock.now += 31
    lapsed = rig.tick().outcomes[0]
    assert lapsed.pause is None
    assert lapsed.acted
    assert lapsed.decision is not None
    assert lapsed.decision.reason.endswith(": lapsed)")
    assert rig.updates == [{"cluster": CLUSTER, "service": "worker-default", "desiredCount": 3}]
    stored = DynamoStateStore(RAW_CONFIG["state_table"]).load(["default"])["default"]
    assert isinstance(stored, PoolState)
    assert stored.pause is None
    assert stored.last_reason == lapsed.decision.reason
    rig.clock.now += 15
    later = rig.tick().outcomes[0]
    assert later.decision is not None
    assert "lapsed" not in later.decision.reason
    assert [line["paused"] is not None for line in pool_log(rig)] == [True, False, False]


def test_status_prints_counts_bounds_last_decision_pause_and_inputs(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(12, "celery", rig.clock.now)
    rig.tick()
    assert cli("pause", "video", "--count", "1", "--for", "1h", "--config", str(config_file), "--by", "ops") == 0
    capsys.readouterr()
    assert cli("status", "--config", str(config_file)) == 0
    text = capsys.readouterr().out
    assert "default (service worker-default): 3 desired, 3 running, 0 pending; bounds 0..10" in text
    assert "  last decision: burst: 12 waiting, 0 in flight" in text
    kept = DynamoStateStore(RAW_CONFIG["state_table"]).load(["default"])["default"]
    assert isinstance(kept, PoolState)
    window_max = max(count for _, count in kept.recommendations)
    assert f"  policy inputs: 4 tasks per worker; max over the scale-in window {window_max};" in text
    assert "video (service worker-video): 0 desired" in text
    assert "  paused: paused by ops since " in text
    assert "  pause count: 1" in text
    assert text.count("  estimator state: {") == 2
    assert text.count("  last decision: ") == 2
    assert "no tick saved a reason yet" not in text

    assert cli("status", "--config", str(config_file), "--json") == 0
    rows = {row["pool"]: row for row in json.loads(capsys.readouterr().out)["pools"]}
    assert (rows["default"]["desired"], rows["default"]["max_workers"], rows["default"]["paused"]) == (3, 10, None)
    assert rows["default"]["last_reason"].startswith("burst: 12 waiting")
    assert rows["default"]["state"]["recommendations"][0][1] == window_max
    assert "estimator" in rows["default"]["state"], "the estimators' state the policy sizes from"
    pause = rows["video"]["paused"]
    assert (pause["by"], pause["count"], pause["active"]) == ("ops", 1, True)
    assert pause["until"] == pytest.approx(pause["since"] + 3600)


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "nope"], "POOL: no pool 'nope' in the config (pools: default, video)"),
        (["pause", "default", "--for", "soon"], "--for: 'soon' is not a duration"),
        (["pause", "default", "--count", "-1"], "--count: must be >= 0"),
        (["resume", "nope"], "POOL: no pool 'nope'"),
    ],
)
def test_bad_arguments_exit_2_naming_them(
    config_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli(*args, "--config", str(config_file)) == 2
    assert message in capsys.readouterr().err


def test_without_a_state_table_pause_and_status_say_what_they_need(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "local.json"
    path.write_text(json.dumps({k: v for k, v in RAW_CONFIG.items() if k != "state_table"}))
    for args in (["pause", "default"], ["status"]):
        assert cli(*args, "--config", str(path)) == 2
        assert "state_table: " in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "1.5h", "h", "1x", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
