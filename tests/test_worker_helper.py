"""The worker-side helper against real Celery workers, real Redis and a fake ECS agent endpoint.

Covers publish-time stamping, scale-in protection (protect on the first task, renew during a long
task, release after idle), agent failures that must never fail a task, the start-up warnings and
the per-queue task counters.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from apps.worker_keys import DONE, PUBLISHED_AT, QUEUE, READY, STARTED
from apps.workers import WorkerProcess
from celery import Celery, signals
from conftest import redis_url_for
from demo.agent import PROTECTION_PATH, FakeEcsAgent
from waiting import wait_until

from celery_autoscaler import config, counters
from celery_autoscaler import worker as helper

DB = 6
pytestmark = pytest.mark.redis_db(DB)
BROKER = redis_url_for(DB)
TASK = "worker-task"  # the one ECS task whose agent these tests fake
# Short windows so renewals happen every few seconds: 1-minute protection renewed 57 s early.
FAST_PROTECTION = {
    "SAFE_BROKER_URL": BROKER,
    "SAFE_PROTECTION_MINUTES": "1",
    "SAFE_RENEW_BEFORE_S": "57",
    "SAFE_RELEASE_AFTER_IDLE_S": "1",
    "SAFE_POLL_S": "0.2",
}


@pytest.fixture
def producer(redis_db: redis.Redis) -> Iterator[Celery]:
    """The same app the workers run, imported in the test process as a plain producer.

    Importing it installs the helper; uninstalling afterwards keeps its stamp out of later tests.
    """
    from apps.worker_app import app

    assert app.conf.broker_url == BROKER, "run with SAFE_BROKER_URL unset (defaults to db 6)"
    helper.install(app)
    yield app
    helper.uninstall(app)


def _wait_ready(r: redis.Redis, worker: WorkerProcess) -> None:
    def ready() -> bool:
        assert not worker.exited(), worker.log()
        return bool(r.sismember(READY, worker.hostname))

    wait_until(ready, timeout=120, what=f"{worker.name} ready")


def _count(r: redis.Redis, key: str, task_id: str) -> int:
    return int(r.hget(key, task_id) or 0)


def test_fake_agent_speaks_the_protection_api() -> None:
    with FakeEcsAgent() as agent:

        def call(method: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(agent.uri_for(TASK) + PROTECTION_PATH, data=data, method=method)  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, answer = call("PUT", {"ProtectionEnabled": True, "ExpiresInMinutes": 5})
        assert status == 200
        assert answer["protection"]["ProtectionEnabled"] is True  # type: ignore[index]
        assert answer["protection"]["ExpirationDate"]  # type: ignore[index]
        assert call("GET")[1]["protection"]["ProtectionEnabled"] is True  # type: ignore[index]
        assert call("PUT", {"ProtectionEnabled": True, "ExpiresInMinutes": 3000})[0] == 400
        assert call("PUT", {"ProtectionEnabled": False})[1]["protection"]["ExpirationDate"] is None  # type: ignore[index]
        assert [r.method for r in agent.requests] == ["PUT", "GET", "PUT", "PUT"]


def test_settings_defaults_caps_and_environment() -> None:
    defaults = helper.resolve_settings(environ={})
    assert defaults.protection
    assert defaults.protection_minutes == 60
    assert defaults.agent_uri is None
    assert defaults.protection_url is None
    assert defaults.stop_timeout_s is None
    on_ecs = helper.resolve_settings(
        environ={"ECS_AGENT_URI": "http://169.254.170.2/api/abc", "CELERY_AUTOSCALER_PROTECTION_MINUTES": "9999"}
    )
    assert on_ecs.protection_url == "http://169.254.170.2/api/abc/task-protection/v1/state"
    assert on_ecs.protection_minutes == helper.MAX_PROTECTION_MINUTES
    assert on_ecs.stop_timeout_s == helper.FARGATE_DEFAULT_STOP_TIMEOUT_S  # unset on ECS = the Fargate default
    assert helper.resolve_settings(protection_minutes=0, environ={}).protection_minutes == 1
    assert helper.resolve_settings(renew_before_s=600, protection_minutes=5, environ={}).renew_before_s == 150
    off = helper.resolve_settings(environ={"CELERY_AUTOSCALER_SCALE_IN_PROTECTION": "false", "ECS_AGENT_URI": "x"})
    assert not off.protection
    assert off.protection_url is None
    assert helper.resolve_settings(environ={"CELERY_AUTOSCALER_STOP_TIMEOUT": "120"}).stop_timeout_s == 120
    assert helper.resolve_settings(environ={}).release_after_idle_s == 10
    released = helper.resolve_settings(environ={"CELERY_AUTOSCALER_RELEASE_AFTER_IDLE_S": "3"})
    assert released.release_after_idle_s == 3
    capped = helper.resolve_settings(environ={"CELERY_AUTOSCALER_MAX_PROTECTED_MINUTES": "30"})
    assert capped.max_protected_minutes == 30
    assert (
        helper.resolve_settings(environ={"CELERY_AUTOSCALER_PUBLISH_TIME_HEADER": "x_t"}).publish_time_header == "x_t"
    )
    module_env = {"CELERY_TASK_ACKS_LATE": "true", "CELERY_WORKER_PREFETCH_MULTIPLIER": "1"}
    assert helper.celery_settings_from_env({**module_env, "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "soon"}) == {
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
    }
    sqs_options = '{"region": "eu-west-1", "predefined_queues": {"jobs": {"url": "https://sqs/1/jobs"}}}'
    assert helper.celery_settings_from_env({"CELERY_BROKER_TRANSPORT_OPTIONS": sqs_options}) == {
        "broker_transport_options": {
            "region": "eu-west-1",
            "predefined_queues": {"jobs": {"url": "https://sqs/1/jobs"}},
        }
    }
    for broken in ("{not json", "[1, 2]"):
        assert helper.celery_settings_from_env({"CELERY_BROKER_TRANSPORT_OPTIONS": broken}) == {}
    with pytest.raises(ValueError, match="release_after_idle_s"):
        helper.resolve_settings(release_after_idle_s=0, environ={})


def test_helper_imports_with_celery_and_stdlib_only() -> None:
    code = "import sys, celery_autoscaler.worker; print(sorted({'boto3', 'botocore', 'redis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_publish_time_header_on_a_plain_producer(producer: Celery, redis_db: redis.Redis) -> None:
    receivers = len(signals.before_task_publish.receivers)
    helper.install(producer)  # a second install() must not stamp twice or add handlers
    assert len(signals.before_task_publish.receivers) == receivers
    before = time.time()
    producer.send_task("apps.worker_app.work", args=[0.1], queue="unconsumed")
    after = time.time()
    message = json.loads(redis_db.lindex("unconsumed", -1))  # type: ignore[arg-type]
    stamped = message["headers"]["x_published_at"]
    assert isinstance(stamped, float)
    assert before <= stamped <= after

    helper.uninstall(producer)
    producer.send_task("apps.worker_app.work", args=[0.1], queue="unconsumed")
    assert "x_published_at" not in json.loads(redis_db.lindex("unconsumed", 0))["headers"]  # type: ignore[arg-type]


def test_protect_on_first_task_renew_while_busy_release_when_idle(
    producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    from apps.worker_app import block, work

    with (
        FakeEcsAgent() as agent,
        WorkerProcess("protect", {**FAST_PROTECTION, "ECS_AGENT_URI": agent.uri_for(TASK)}, tmp_path) as w,
    ):
        _wait_ready(redis_db, w)
        assert agent.puts() == [], "an idle worker must not ask for protection"

        short = work.delay(1.0).id
        wait_until(lambda: _count(redis_db, DONE, short) == 1, timeout=60, what="short task done")
        wait_until(lambda: agent.enabled_flags() == [True, False], timeout=60, what="protect, then release")

        release_key = f"release-{uuid.uuid4().hex}"
        long = block.delay(release_key).id
        wait_until(lambda: _count(redis_db, STARTED, long) == 1, timeout=60, what="long task started")
        # Renewals: two more protect calls while the one long task is still running.
        wait_until(lambda: agent.enabled_flags()[2:5] == [True, True, True], timeout=60, what="renewals")
        assert _count(redis_db, DONE, long) == 0
        redis_db.rpush(release_key, "go")
        wait_until(lambda: _count(redis_db, DONE, long) == 1, timeout=60, what="long task done")
        wait_until(lambda: agent.enabled_flags()[-1] is False, timeout=60, what="release after the long task")

        flags = agent.enabled_flags()
        assert flags[:2] == [True, False]
        assert flags[-1] is False
        assert all(flags[2:-1]), f"protection dropped during the long task: {flags}"
        assert {body["ExpiresInMinutes"] for body in agent.puts() if body["ProtectionEnabled"]} == {1}
        assert agent.state(TASK)["protection"]["ProtectionEnabled"] is False
    print(f"\nagent saw ProtectionEnabled sequence {flags}")


@pytest.mark.parametrize("agent_mode", ["hang", "down"])
def test_agent_failures_never_fail_or_block_tasks(
    agent_mode: str, producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    from apps.worker_app import work

    with FakeEcsAgent(mode="hang") as agent:
        uri = agent.uri_for(TASK) if agent_mode == "hang" else "http://127.0.0.1:9"  # discard port: refused
        env = {**FAST_PROTECTION, "ECS_AGENT_URI": uri, "SAFE_AGENT_TIMEOUT_S": "0.5"}
        with WorkerProcess(f"agent-{agent_mode}", env, tmp_path) as w:
            _wait_ready(redis_db, w)
            ids = [work.delay(0.4).id for _ in range(6)]
            wait_until(lambda: all(_count(redis_db, DONE, i) == 1 for i in ids), timeout=120, what="all tasks done")
            wait_until(lambda: "ECS agent call" in w.log(), timeout=60, what="the agent failure logged")
        if agent_mode == "hang":
            assert agent.puts(), "the worker should have tried the agent"
    assert "Traceback" not in w.log()


def test_no_agent_logs_one_noop_and_retries_get_a_new_publish_time(
    producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    from apps.worker_app import retry_once

    # Settings that can lose tasks on ECS, to see the start-up warnings too.
    risky = {
        "SAFE_BROKER_URL": BROKER,
        "REMAP_SIGTERM": "SIGQUIT",
        "CELERY_WORKER_PREFETCH_MULTIPLIER": "4",
        "SAFE_TIME_LIMIT_S": "300",
        "CELERY_AUTOSCALER_STOP_TIMEOUT": "30",
    }
    with WorkerProcess("no-agent", risky, tmp_path) as w:
        _wait_ready(redis_db, w)
        retry_once.delay()
        wait_until(lambda: redis_db.llen(PUBLISHED_AT) == 2, timeout=60, what="the task and its retry ran")
    first, second = (float(v) for v in redis_db.lrange(PUBLISHED_AT, 0, -1))
    assert second > first, "a retry is a new publish: its header must be the newer time"
    log = w.log()
    assert log.count("scale-in protection off: no ECS_AGENT_URI") == 1
    assert "REMAP_SIGTERM=SIGQUIT with task_acks_late=False" in log
    assert "worker_prefetch_multiplier=4" in log
    assert "ECS agent call" not in log


def test_start_warnings_name_each_risky_setting() -> None:
    def app_with(limit: float | None, **conf: object) -> Celery:
        app = Celery("warnings", broker="redis://127.0.0.1:6379/6", set_as_current=False)
        # The default limit too: tasks other apps in this process registered (shared) count as well.
        app.conf.update(task_time_limit=limit, **conf)

        @app.task(name="job", time_limit=limit, shared=False)
        def job() -> None:
            """A task whose only role is its time limit."""

        return app

    on_ecs = helper.resolve_settings(agent_uri="http://127.0.0.1:1", stop_timeout_s=120, environ={})
    assert helper.settings_warnings(app_with(60, worker_prefetch_multiplier=1), on_ecs, {}) == []

    risky = app_with(600, worker_prefetch_multiplier=4)
    assert helper.longest_task_s(risky) == 600
    warnings = " | ".join(helper.settings_warnings(risky, on_ecs, {}))
    assert "tasks run up to 600 s but ECS SIGKILLs 120 s after SIGTERM" in warnings
    assert "worker_prefetch_multiplier=4" in warnings

    soft = app_with(60, task_acks_late=False, worker_soft_shutdown_timeout=130)
    warnings = " | ".join(helper.settings_warnings(soft, on_ecs, {"REMAP_SIGTERM": "SIGQUIT"}))
    assert "task_acks_late=False" in warnings
    assert "not below stop_timeout=120 s" in warnings

    redelivered = app_with(600, task_acks_late=True, broker_transport_options={"visibility_timeout": 300})
    assert "run twice" in " | ".join(helper.settings_warnings(redelivered, on_ecs, {}))
    on_sqs = app_with(2400, task_acks_late=True, broker_url="sqs://")  # kombu's SQS default: 1800 s
    assert "visibility_timeout=1800 s: SQS redelivers" in " | ".join(helper.settings_warnings(on_sqs, on_ecs, {}))
    longer = app_with(
        2400, task_acks_late=True, broker_url="sqs://", broker_transport_options={"visibility_timeout": 3600}
    )
    assert not any("run twice" in w for w in helper.settings_warnings(longer, on_ecs, {}))
    assert math.isinf(helper.longest_task_s(app_with(None)))


def test_monitor_retries_a_failing_agent_without_blocking() -> None:
    """The monitor's own state machine with a controlled clock: protect, renew, fail, recover, release."""
    busy = [True]
    now = [1000.0]
    with FakeEcsAgent() as agent:
        settings = helper.resolve_settings(
            agent_uri=agent.uri_for(TASK), protection_minutes=1, renew_before_s=50, release_after_idle_s=5, environ={}
        )
        monitor = helper.ProtectionMonitor(settings, busy=lambda: busy[0], clock=lambda: now[0])
        monitor.step()
        assert agent.enabled_flags() == [True]
        now[0] += 5
        monitor.step()  # still 55 s of protection left: no call
        assert agent.enabled_flags() == [True]
        now[0] += 6
        agent.mode = "error"
        monitor.step()  # renewal due, agent fails
        now[0] += 1
        monitor.step()  # waits retry_interval_s before the next try
        assert len(agent.puts()) == 2
        agent.mode = "ok"
        now[0] += settings.retry_interval_s
        monitor.step()
        assert agent.enabled_flags() == [True, True, True]
        busy[0] = False
        now[0] += 1
        monitor.step()  # idle for less than the debounce
        now[0] += 5
        monitor.step()
        assert agent.enabled_flags() == [True, True, True, False]
        assert monitor.protected_until is None


def test_monitor_caps_one_busy_period_then_protects_again_after_idle() -> None:
    """A worker that never goes idle must not block deployments forever: protection lapses at the cap."""
    busy = [True]
    now = [0.0]
    with FakeEcsAgent() as agent:
        settings = helper.resolve_settings(
            agent_uri=agent.uri_for(TASK),
            protection_minutes=2,
            max_protected_minutes=3,
            renew_before_s=30,
            release_after_idle_s=5,
            environ={},
        )
        monitor = helper.ProtectionMonitor(settings, busy=lambda: busy[0], clock=lambda: now[0])
        for _ in range(40):  # 400 s of continuous work, one poll every 10 s
            monitor.step()
            now[0] += 10
        # 2 min at 0 s; renewals at 90 s and 120 s get only what is left of the 3 min cap (1 min each),
        # so protection ends at 180 s exactly; then no more calls while the work goes on.
        assert [body.get("ExpiresInMinutes") for body in agent.puts()] == [2, 1, 1]
        assert monitor.protected_until is None
        busy[0] = False
        monitor.step()
        now[0] += 10
        monitor.step()  # idle past the debounce: the lapsed period ends (nothing to release)
        busy[0] = True
        monitor.step()
        assert [body.get("ExpiresInMinutes") for body in agent.puts()] == [2, 1, 1, 2]


def test_header_default_matches_the_scaler_config() -> None:
    assert helper.DEFAULT_PUBLISH_TIME_HEADER == config.DEFAULT_PUBLISH_TIME_HEADER


def _stats(r: redis.Redis, queue: str = QUEUE) -> tuple[int, float]:
    """The helper's counters for ``queue``: tasks finished, their run time in seconds."""
    raw = r.hgetall(counters.stats_key("", queue))
    return int(raw.get(counters.COMPLETED_FIELD.encode(), 0)), int(raw.get(counters.RUN_MS_FIELD.encode(), 0)) / 1000


def test_counters_from_prefork_workers_match_the_tasks_they_ran(
    producer: Celery, redis_db: redis.Redis, tmp_path: Path
) -> None:
    from apps.worker_app import fail, retry_once, work

    durations = [0.05, 0.3, 0.8] * 4
    env = {"SAFE_BROKER_URL": BROKER}
    with WorkerProcess("count-a", env, tmp_path, concurrency=2) as a, WorkerProcess("count-b", env, tmp_path) as b:
        _wait_ready(redis_db, a)
        _wait_ready(redis_db, b)
        ids = [work.delay(d).id for d in durations]
        fail.delay()
        retry_once.delay()  # runs twice: the retried run and the retry each finish
        expected = len(durations) + 1 + 2
        wait_until(lambda: _stats(redis_db)[0] >= expected, timeout=120, what=f"{expected} tasks counted")
        assert all(_count(redis_db, DONE, i) == 1 for i in ids)
        wait_until(lambda: redis_db.llen(PUBLISHED_AT) == 2, timeout=60, what="the retry ran")
        completed, run_s = _stats(redis_db)
    assert completed == expected
    # Each task's run time as Celery's own trace measures it: at least its sleep, plus small overhead.
    assert sum(durations) <= run_s <= sum(durations) + 0.25 * expected, run_s
    assert "writing task counters" not in a.log() + b.log()


def test_counters_skip_a_broker_that_is_not_redis(caplog: pytest.LogCaptureFixture) -> None:
    app = Celery("memory-broker", broker="memory://")
    task_counters = helper.TaskCounters(app)
    task_counters.record("celery", 1.0)
    with caplog.at_level("INFO", logger="celery_autoscaler.worker"):
        task_counters.flush()
        task_counters.record("celery", 1.0)
        task_counters.flush()
    assert not task_counters.enabled
    assert [r.getMessage() for r in caplog.records] == [
        "celery-autoscaler: task counters off: the broker is memory, not Redis"
    ]


def test_counters_kept_when_a_write_fails_and_a_bad_key_fails_alone(redis_db: redis.Redis) -> None:
    app = Celery("counter-writer", broker=BROKER)
    task_counters = helper.TaskCounters(app)
    redis_db.set(counters.stats_key("", "broken"), "not a hash")
    task_counters.record("broken", 1.0)
    task_counters.record("good", 0.5)
    task_counters.record("good", 0.25)
    task_counters.flush()
    assert _stats(redis_db, "good") == (2, 0.75)
    redis_db.delete(counters.stats_key("", "broken"))
    task_counters.record("broken", 2.0)
    task_counters.flush()
    assert _stats(redis_db, "broken") == (2, 3.0), "the failed write is kept and added with the next one"
    assert _stats(redis_db, "good") == (2, 0.75), "a queue written once is not written again"
    app.close()
