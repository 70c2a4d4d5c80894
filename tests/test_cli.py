"""The ``celery-autoscaler`` console script as a subprocess: real exit codes, real Redis (db 5), moto server."""

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
import requests
from celery_apps import publish
from conftest import ROOT, redis_url_for
from moto_aws import (
    CLUSTER,
    ENDPOINT_VARS,
    REGION,
    client,
    create_services,
    create_state_table,
    desired_count,
    free_port,
    moto_server,
)

from celery_autoscaler.cli import SUBCOMMANDS

DB = 5
BROKER = redis_url_for(DB)
SCRIPT = str(Path(sys.executable).parent / "celery-autoscaler")
pytestmark = pytest.mark.redis_db(DB)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server on loopback: the subprocess reaches it through AWS_ENDPOINT_URL, as users would."""
    with moto_server() as url:
        yield url


@pytest.fixture
def env(moto_url: str) -> dict[str, str]:
    requests.post(f"{moto_url}/moto-api/reset", timeout=30).raise_for_status()
    values = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS and not k.startswith("AWS_PROFILE")}
    values.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
    )
    return values


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_measure_json_counts_waiting_priorities_and_unacked(redis_db: redis.Redis) -> None:
    publish(BROKER, 5, "celery")
    publish(BROKER, 3, "celery", priority=9)
    publish(BROKER, 2, "mail")
    # Do what a consumer does when it reserves a message: move it into the unacked hash.
    raw = redis_db.rpop("mail")
    assert raw is not None
    redis_db.hset("unacked", "tag-1", json.dumps([json.loads(raw), "", "mail"]))
    run = cli("measure", "--broker-url", redis_url_for(DB), "--queue", "celery", "--queue", "mail", "--json")
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    counts = {name: (q["waiting"], q["unacked"], q["error"]) for name, q in body["queues"].items()}
    assert counts == {"celery": (8, 0, None), "mail": (1, 1, None)}
    assert body["unacked_total"] == 1


def test_measure_with_key_prefix_and_separator(redis_db: redis.Redis) -> None:
    redis_db.lpush("app1:jobs", b"{}")
    redis_db.lpush("app1:jobs:3", b"{}", b"{}")
    run = cli(
        "measure",
        "--broker-url",
        redis_url_for(DB),
        "--queue",
        "jobs",
        "--key-prefix",
        "app1:",
        "--priority-sep",
        ":",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["queues"]["jobs"]["waiting"] == 3


def test_measure_human_table(redis_db: redis.Redis) -> None:
    publish(BROKER, 2, "celery")
    run = cli("measure", "--broker-url", redis_url_for(DB), "--queue", "celery")
    assert run.returncode == 0, run.stderr
    assert "celery" in run.stdout
    assert "unacked in total: 0" in run.stdout


def test_measure_unreachable_broker_exits_3() -> None:
    run = cli("measure", "--broker-url", f"redis://127.0.0.1:{free_port()}/0", "--queue", "celery", "--json")
    assert run.returncode == 3
    assert "broker unreachable" in run.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:notaport/0"])
def test_measure_bad_url_exits_2_naming_the_option(url: str) -> None:
    run = cli("measure", "--broker-url", url, "--queue", "celery", "--json")
    assert run.returncode == 2
    assert "--broker-url" in run.stderr


def write_config(tmp_path: Path, broker_url: str = redis_url_for(DB), **extra: Any) -> Path:
    doc = {
        "broker": {"url": broker_url},
        "cluster": CLUSTER,
        "state_table": "celery-autoscaler-state",
        "pools": {"default": {"service": "worker-default", "queues": ["celery"], "concurrency": 2}},
        **extra,
    }
    path = tmp_path / "scaler.json"
    path.write_text(json.dumps(doc))
    return path


def create_aws(env: dict[str, str]) -> Any:
    create_state_table(endpoint_url=env["AWS_ENDPOINT_URL"])
    return create_services(["worker-default"], endpoint_url=env["AWS_ENDPOINT_URL"])


def stored_state(env: dict[str, str]) -> dict[str, Any]:
    """The state table's raw answer for the pool (``Item`` is missing when nothing was saved)."""
    table = client("dynamodb", env["AWS_ENDPOINT_URL"])
    return dict(table.get_item(TableName="celery-autoscaler-state", Key={"pool": {"S": "default"}}))


@pytest.mark.usefixtures("redis_db")
def test_evaluate_runs_one_tick_against_the_endpoint(tmp_path: Path, env: dict[str, str]) -> None:
    ecs = create_aws(env)
    publish(BROKER, 9, "celery")
    run = cli("evaluate", "--config", str(write_config(tmp_path)), "--json", env=env)
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    (pool,) = body["pools"]
    assert (pool["pool"], pool["waiting"], pool["desired"], pool["acted"]) == ("default", 9, 5, True)
    assert pool["reason"].startswith("burst: 9 waiting")
    assert body["dry_run"] is False
    assert desired_count(ecs) == 5
    item = stored_state(env)
    assert item["Item"]["version"] == {"N": "1"}


@pytest.mark.usefixtures("redis_db")
def test_evaluate_dry_run_neither_scales_nor_writes_state(tmp_path: Path, env: dict[str, str]) -> None:
    ecs = create_aws(env)
    publish(BROKER, 4, "celery")
    run = cli("evaluate", "--config", str(write_config(tmp_path)), "--dry-run", env=env)
    assert run.returncode == 0, run.stderr
    assert "default: burst: 4 waiting" in run.stdout
    assert "[dry run]" in run.stdout
    assert desired_count(ecs) == 0
    item = stored_state(env)
    assert "Item" not in item


@pytest.mark.usefixtures("redis_db")
def test_evaluate_missing_service_exits_1(tmp_path: Path, env: dict[str, str]) -> None:
    create_aws(env)
    config = write_config(
        tmp_path, pools={"default": {"service": "worker-ghost", "queues": ["celery"]}}, state_table=None
    )
    run = cli("evaluate", "--config", str(config), "--json", env=env)
    assert run.returncode == 1
    assert "'worker-ghost' not found in cluster 'celery'" in json.loads(run.stdout)["pools"][0]["error"]


def test_evaluate_unreachable_broker_exits_3_and_holds(tmp_path: Path, env: dict[str, str]) -> None:
    ecs = create_aws(env)
    config = write_config(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    run = cli("evaluate", "--config", str(config), "--json", env=env)
    assert run.returncode == 3
    assert "broker unavailable" in run.stderr
    assert json.loads(run.stdout)["pools"][0]["reason"].startswith("hold: broker unreadable")
    assert desired_count(ecs) == 0


def test_evaluate_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, pools={"default": {"service": "w", "queues": ["celery"], "concurrency": 0}})
    run = cli("evaluate", "--config", str(config))
    assert run.returncode == 2
    assert "pools.default.concurrency" in run.stderr
    missing = cli("evaluate", "--config", str(tmp_path / "absent.json"))
    assert missing.returncode == 2
    assert "--config" in missing.stderr


def test_evaluate_bad_broker_url_exits_2_without_printing_it(tmp_path: Path, env: dict[str, str]) -> None:
    bad = "redis://:hunter2@127.0.0.1:70000/0"
    run = cli("evaluate", "--config", str(write_config(tmp_path, broker_url=bad)), env=env)
    assert run.returncode == 2
    assert "broker.url: port must be a number from 1 to 65535" in run.stderr
    secrets = client("secretsmanager", env["AWS_ENDPOINT_URL"])
    arn = secrets.create_secret(Name="celery/bad-broker", SecretString=bad)["ARN"]
    config = write_config(tmp_path)
    doc = json.loads(config.read_text())
    doc["broker"] = {"url_secret_arn": arn}
    config.write_text(json.dumps(doc))
    run = cli("evaluate", "--config", str(config), env=env)
    assert run.returncode == 2
    assert f"broker.url_secret_arn: secret {arn} does not hold a valid broker URL: port must be" in run.stderr
    assert "hunter2" not in run.stdout + run.stderr


def test_help_lists_subcommands_and_exit_codes() -> None:
    assert {add.__name__ for add in SUBCOMMANDS} >= {"add_measure", "add_evaluate"}
    run = subprocess.run(
        [sys.executable, "-m", "celery_autoscaler.cli", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert run.returncode == 0
    assert "measure" in run.stdout
    assert "evaluate" in run.stdout
    assert "exit codes" in run.stdout
