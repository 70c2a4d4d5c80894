"""`make demo QUICK=1` end to end: terraform apply of examples/local on moto, real workers, the real scaler.

The demo runs as a user runs it (a subprocess of ``python -m demo.main --quick``) in this file's own
Redis db (8) of the tests' Redis, given as ``--redis-url``, where it must remove exactly the keys it
created. The checks read what the demo wrote: ``summary.json``, the event log, and ``tasks.json``
(the records the load generator and the tasks themselves left in Redis).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ROOT, redis_url_for

pytestmark = [pytest.mark.terraform, pytest.mark.slow, pytest.mark.redis_db(8)]

SUMMARY_KEYS = {
    "tasks_sent",
    "tasks_completed",
    "tasks_lost",
    "tasks_duplicated",
    "wait_p50_s",
    "wait_p95_s",
    "worker_seconds",
    "peak_workers",
    "scaled_to_zero",
    "scaler_errors",
    "scale_in_events",
}
POOLS = ("default", "reports")


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _changes(events: list[dict[str, Any]], pool: str) -> list[tuple[float, int, int]]:
    """Every desired count the scaler set for ``pool``: (t, before, after); with fence and drain the
    count set is the drain's (``drain.set``), not the policy's ``desired``."""
    return [
        (e["t"], e["current_desired"], e["drain"]["set"] if e["drain"] else e["desired"])
        for e in events
        if e["kind"] == "tick" and e["pool"] == pool and e["acted"]
    ]


# A key of someone else's in the demo's db: the demo must leave it as it was.
FOREIGN_KEY, FOREIGN_VALUE = "someone-else:config", b"keep me"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One QUICK run shared by the checks below (it takes a few minutes); db 8 is flushed after."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples" / "local")}
    env.pop("DEMO_AWS_ENDPOINT", None)  # always our own emulator
    command = [sys.executable, "-m", "demo.main", "--quick", "--out", str(out), "--redis-url", redis_url_for(8)]
    client = redis.Redis.from_url(redis_url_for(8))
    client.flushdb()
    client.set(FOREIGN_KEY, FOREIGN_VALUE)
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"demo failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        yield out
    finally:
        client.flushdb()
        client.close()


def test_the_demo_removes_exactly_the_keys_it_created(demo_run: Path) -> None:
    client = redis.Redis.from_url(redis_url_for(8))
    try:
        assert client.keys("*") == [FOREIGN_KEY.encode()]
        assert client.get(FOREIGN_KEY) == FOREIGN_VALUE
    finally:
        client.close()


def test_every_task_sent_completes_exactly_once(demo_run: Path) -> None:
    summary = json.loads((demo_run / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["tasks_sent"] > 500
    assert summary["tasks_completed"] == summary["tasks_sent"]
    assert summary["tasks_lost"] == 0
    assert summary["tasks_duplicated"] == 0
    # The same from the tasks' own records: each id sent ran once, and nothing else ran.
    records = json.loads((demo_run / "tasks.json").read_text())
    sent, runs = set(records["sent"]), records["runs"]
    assert len(sent) == summary["tasks_sent"]
    assert set(runs) == sent
    assert set(runs.values()) == {1}


def test_each_pool_scales_up_from_zero_and_back_to_zero(demo_run: Path) -> None:
    summary = json.loads((demo_run / "summary.json").read_text())
    events = _events(demo_run / "events.jsonl")
    for pool in POOLS:
        changes = _changes(events, pool)
        assert changes, f"the scaler never changed {pool}"
        _, first_before, first_after = changes[0]
        assert (first_before, first_after > 0) == (0, True), changes
        assert changes[-1][2] == 0, changes
        assert summary["peak_workers"][pool] > 0
        assert summary["scaled_to_zero"][pool] is True


def test_a_scale_in_happens_while_tasks_still_arrive(demo_run: Path) -> None:
    events = _events(demo_run / "events.jsonl")
    last_send = next(e["t"] for e in events if e["kind"] == "load_done")
    early_scale_ins = [
        (pool, t, before, after)
        for pool in POOLS
        for t, before, after in _changes(events, pool)
        if after < before and t < last_send
    ]
    assert early_scale_ins, "every scale-in came after the load had stopped"
    assert json.loads((demo_run / "summary.json").read_text())["scale_in_events"] >= len(early_scale_ins)


def test_no_scaler_or_runner_errors(demo_run: Path) -> None:
    summary = json.loads((demo_run / "summary.json").read_text())
    events = _events(demo_run / "events.jsonl")
    assert summary["scaler_errors"] == 0
    assert [e for e in events if e["kind"] in {"tick_failed", "runner_error", "task_killed"}] == []
    assert [e for e in events if e["kind"] == "task_exited" and not e["expected"]] == []
    ticks = [e for e in events if e["kind"] == "tick"]
    assert ticks
    assert [e for e in ticks if e["error"] or e["conflict"]] == []


def test_the_runner_ran_what_the_scaler_set(demo_run: Path) -> None:
    """The runner saw every desired count the scaler set and ran it, unless superseded first.

    A count may be superseded before it is reached only while the new workers it asked for were
    still starting, or while a busy worker's scale-in protection held it (ECS semantics).
    """
    events = _events(demo_run / "events.jsonl")
    end_t = events[-1]["t"]
    for pool in POOLS:
        changes = _changes(events, pool)
        seen = [e["desired"] for e in events if e["kind"] == "runner_desired" and e["pool"] == pool]
        assert seen == [after for _, _, after in changes], (seen, changes)
        running = [(e["t"], e["running"]) for e in events if e["kind"] == "runner_running" and e["pool"] == pool]
        held = [e["t"] for e in events if e["kind"] == "task_held_protected" and e["pool"] == pool]
        for index, (t, before, after) in enumerate(changes):
            until = changes[index + 1][0] if index + 1 < len(changes) else end_t
            in_effect = [count for when, count in running if when <= t][-1:]  # the count when it was set
            reached = after in in_effect or any(t <= when <= until and count == after for when, count in running)
            if reached:
                continue
            if after > before:
                launched = [e for e in events if e["kind"] == "task_pending" and e["pool"] == pool and t <= e["t"]]
                assert until < end_t, f"{pool}: {after} never reached"
                assert launched, f"{pool}: no worker started for {after}"
                assert launched[0]["t"] <= until, f"{pool}: no worker started for {after} before {until}"
            else:
                assert any(t <= when <= until for when in held), f"{pool}: scale-in to {after} never done"
        assert max(count for _, count in running) == max(after for _, _, after in changes)
        assert running[-1][1] == 0
