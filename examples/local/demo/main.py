"""`make demo`: a broker, an AWS emulator, `terraform apply` of examples/local, real workers, the real scaler.

The broker is Redis, or with ``--broker rabbitmq`` (``make demo BROKER=rabbitmq``) a private RabbitMQ
node with its management plugin, on free loopback ports (stopped at the end). Redis also holds the
run's task records, whatever the broker.

Everything it starts it stops again, and only that: Redis is a private redis-server on a free
loopback port (its data in a temporary directory) unless ``--redis-url``/``DEMO_REDIS_URL`` names
one, where the demo then removes exactly the keys its run created; the emulator is our own unless
``--aws-endpoint`` names one that answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import redis

from celery_autoscaler.config import ScalerConfig, parse_config
from celery_autoscaler.drain import Drainer, TickSchedule, drainer_for
from celery_autoscaler.ecs import EcsActuator, ServiceStatus
from celery_autoscaler.probe import Probe, probe_for
from celery_autoscaler.secrets import broker_url
from celery_autoscaler.state import DynamoStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import run_tick
from demo.events import EventLog, read_events
from demo.html_report import write_report
from demo.loadgen import SENT_KEY, LoadGenerator, Schedule
from demo.profiles import DEFAULT, QUICK, Profile
from demo.report import DONE_KEY, READY_KEY, RUNS_KEY, build_summary, plot_timeline, task_records
from demo.runner import APP_DIR, TaskRunner, load_container
from demo.view import LiveView

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_DIR = ROOT / "examples" / "local"
sys.path.insert(0, str(ROOT / "tests"))  # the launchers the tests use: brokers.py, emulator.py
REGION = "us-east-1"


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


class DemoActuator:
    """ECS through the emulator, but ``running`` from what the runner really runs.

    moto reports running = desired the moment desired changes, which would tell the scaler workers
    are up before any exists; the real count (and pending/protected) comes from the runner instead.
    """

    def __init__(self, ecs: EcsActuator, runner: TaskRunner, pools_by_service: dict[str, str]) -> None:
        self._ecs = ecs
        self._runner = runner
        self._pools = pools_by_service

    def describe(self, services: Sequence[str]) -> dict[str, ServiceStatus]:
        result = self._ecs.describe(services)
        views = self._runner.snapshot()
        for name, status in result.items():
            if name in self._pools:
                view = views[self._pools[name]]
                result[name] = replace(status, running=view.running, pending=view.pending)
        return result

    def set_desired(self, service: str, count: int) -> None:
        self._ecs.set_desired(service, count)

    def protected_tasks(self, service: str) -> int | None:
        return self._runner.snapshot()[self._pools[service]].protected


# ---------------------------------------------------------------------------------------------- set-up


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class DemoRedis:
    """The run's Redis, and the keys its db held before the run (which the run must neither read nor remove)."""

    def __init__(self, url: str, existing: set[bytes]) -> None:
        self.url = url
        self.existing = existing

    def refuse_clashes(self, queues: Sequence[str]) -> None:
        """Stop before the load starts if the db already holds the demo's records or its queues."""
        ours = {name.encode() for name in (SENT_KEY, DONE_KEY, RUNS_KEY, READY_KEY, *queues)}
        clash = sorted(key.decode() for key in self.existing & ours)
        if clash:
            raise SystemExit(f"the Redis db already holds {clash}: point --redis-url at a db without them")


@contextlib.contextmanager
def demo_redis(url: str | None) -> Iterator[DemoRedis]:
    """A private redis-server for the run (stopped after), or the Redis at ``url``, left as it was found.

    On a given Redis the keys that did not exist when the run started are removed at the end (its
    queues, bindings, results and records): everything else in that db is never touched.
    """
    if url is None:
        from brokers import RedisServer

        with RedisServer() as server:
            log(f"started redis-server on 127.0.0.1:{server.port} (stopped at the end)")
            yield DemoRedis(server.url(0), set())
        return
    if not redis_answers(url):
        raise SystemExit("No Redis answers at --redis-url / DEMO_REDIS_URL (leave it unset for a private one).")
    client = redis.Redis.from_url(url)
    existing = set(client.scan_iter(count=1000))
    try:
        yield DemoRedis(url, existing)
    finally:
        created = [key for key in client.scan_iter(count=1000) if key not in existing]
        for start in range(0, len(created), 500):
            client.unlink(*created[start : start + 500])
        log(f"removed the {len(created)} keys this run created; the {len(existing)} keys found were left alone")
        client.close()


@contextlib.contextmanager
def demo_rabbitmq() -> Iterator[Any]:
    """A private RabbitMQ node with the management plugin for the run (the tests' launcher), stopped after."""
    from brokers import RabbitNode

    node = RabbitNode()
    broker = node.start()
    log(f"started a RabbitMQ node: AMQP and management on {broker.management_url} (stopped at the end)")
    try:
        yield broker
    finally:
        node.stop()


def emulator_answers(endpoint: str) -> bool:
    try:
        client = boto3.client("sts", endpoint_url=endpoint, region_name=REGION)
        client.get_caller_identity()
        return True
    except Exception:  # anything but an answer means "not there"
        return False


@contextlib.contextmanager
def ensure_emulator(endpoint: str | None, out: Path) -> Iterator[str]:
    """The emulator at ``endpoint`` if it answers, else our own patched moto on a free port."""
    if endpoint and emulator_answers(endpoint):
        log(f"using the AWS emulator at {endpoint}")
        yield endpoint
        return
    from emulator import EmulatorProcess  # the same launcher the Terraform tests use

    emulator = EmulatorProcess(log_path=out / "moto.log")
    started = emulator.start()
    log(f"started moto server at {started}")
    try:
        yield started
    finally:
        emulator.stop()


class Terraform:
    """terraform -chdir=examples/local with the state and .terraform kept in the run's output dir."""

    def __init__(self, out: Path, variables: dict[str, str]) -> None:
        self.out = out
        self.variables = variables
        self.env = {**os.environ, "TF_DATA_DIR": str(out / "terraform-data"), "TF_IN_AUTOMATION": "1"}

    def run(self, *args: str, capture: bool = False) -> str:
        command = ["terraform", f"-chdir={EXAMPLE_DIR}", *args]
        with (self.out / "terraform.log").open("a") as log_file:
            log_file.write(f"\n$ {' '.join(command)}\n")
            log_file.flush()
            result = subprocess.run(
                command,
                env=self.env,
                stdout=subprocess.PIPE if capture else log_file,
                stderr=log_file,
                text=True,
                check=False,
            )
        if result.returncode != 0:
            raise SystemExit(f"`terraform {args[0]}` failed; see {self.out / 'terraform.log'}")
        return result.stdout if capture else ""

    def var_args(self) -> list[str]:
        return [f"-var={name}={value}" for name, value in self.variables.items()]

    def init(self) -> None:
        """Providers as the CLI config says: ``make demo`` points TF_CLI_CONFIG_FILE at the offline mirror."""
        state = self.out / "terraform.tfstate"
        self.run("init", "-input=false", "-no-color", f"-backend-config=path={state}")

    def apply(self) -> None:
        self.run("apply", "-input=false", "-no-color", "-auto-approve", *self.var_args())

    def output(self, name: str) -> Any:
        return json.loads(self.run("output", "-no-color", "-json", name, capture=True))

    def destroy(self) -> None:
        self.run("destroy", "-input=false", "-no-color", "-auto-approve", "-refresh=false", *self.var_args())


@contextlib.contextmanager
def applied(terraform: Terraform) -> Iterator[Terraform]:
    terraform.init()
    log("terraform apply of examples/local (the module against the emulator)")
    started = time.monotonic()
    try:
        terraform.apply()
        log(f"applied in {time.monotonic() - started:.0f} s")
        yield terraform
    finally:
        log("terraform destroy")
        terraform.destroy()


# ----------------------------------------------------------------------------------------------- run


def run(
    profile: Profile, schedule: Schedule, config: ScalerConfig, out: Path, events: EventLog, db: DemoRedis
) -> dict[str, Any]:
    """Start the runner and play the schedule, tick the scaler until the load is over and every pool is at 0."""
    ecs = boto3.client("ecs")
    secrets = boto3.client("secretsmanager")
    url = broker_url(config.broker, secrets)  # as the Lambda gets it: from the module's secret
    db.refuse_clashes(config.queues)
    results = redis.Redis.from_url(db.url)  # the task records, in Redis whatever the broker
    pools = {pool.name: pool.service for pool in config.pools}
    containers = {name: load_container(ecs, secrets, config.cluster, service) for name, service in pools.items()}
    runner = TaskRunner(
        ecs, config.cluster, pools, containers, events, out / "workers", start_delay_s=profile.start_delay_s
    )
    actuator = DemoActuator(EcsActuator(config.cluster, ecs), runner, {s: p for p, s in pools.items()})
    probe = probe_for(config.broker, url)
    drainer = drainer_for(config.broker, url)  # fence and drain, as the Lambda
    store = DynamoStateStore(config.state_table or "", boto3.client("dynamodb"))
    scaler_log = (out / "scaler.jsonl").open("w")  # the scaler's own JSON lines, as CloudWatch would get them
    telemetry = Telemetry(config.metrics_namespace, stream=scaler_log)

    # The load generator publishes through the demo app itself, as the web process would.
    os.environ["CELERY_BROKER_URL"] = url
    os.environ["DEMO_RESULTS_URL"] = db.url  # the workers (started with this environment) record there too
    sys.path.insert(0, str(APP_DIR))
    from demoapp.celery import worker_settings  # configures Celery and installs the worker helper

    load = LoadGenerator(schedule, results, events)
    view = LiveView(list(pools), profile.expected_s(schedule.length_s))
    events.emit(
        "run_started",
        profile=profile.name,
        pools=pools,
        tick_interval_s=config.tick_interval_s,
        start_delay_s=profile.start_delay_s,
        workers={name: container.settings() for name, container in containers.items()},
        helper={key: getattr(worker_settings, key) for key in ("release_after_idle_s", "poll_interval_s")},
    )
    runner.start()
    load.start()
    schedule = TickSchedule(time.monotonic(), config.tick_interval_s)  # the Lambda's ticks and follow-ups, without end
    settle_deadline: float | None = None
    try:
        with view:
            while True:
                due = schedule.next()
                if due is not None and time.monotonic() >= due.at:
                    draining = tick(config, probe, drainer, actuator, store, telemetry, events, view, due.follow_up)
                    schedule.ran(due, time.monotonic(), draining)
                view.phase, view.sent = load.phase, load.sent
                view.completed = int(results.hlen(DONE_KEY))
                views = runner.snapshot()
                view.refresh(views)
                if load.done.is_set():
                    settle_deadline = settle_deadline or time.monotonic() + profile.settle_timeout_s
                    at_zero = all(v.desired == 0 and v.running == 0 and v.stopping == 0 for v in views.values())
                    if at_zero or time.monotonic() > settle_deadline:
                        events.emit("run_finished", at_zero=at_zero)
                        view.refresh(views, done=True)
                        break
                time.sleep(0.5)
    finally:
        load.stop()
        runner.stop()
        probe.close()
        scaler_log.close()
    for error in runner.errors:
        log(f"runner: {error}")
    return {"pools": list(pools), "results": results}


def tick(
    config: ScalerConfig,
    probe: Probe,
    drainer: Drainer | None,
    actuator: DemoActuator,
    store: DynamoStateStore,
    telemetry: Telemetry,
    events: EventLog,
    view: LiveView,
    follow_up: tuple[str, ...] | None,
) -> tuple[str, ...]:
    """One scaler tick, exactly as the Lambda runs it; every pool's outcome goes to the event log.

    Returns the pools with workers still to drain (the schedule's follow-up is for them).
    """
    try:
        result = run_tick(
            config,
            probe,
            actuator,
            store,
            time.time(),
            dry_run=config.dry_run,
            telemetry=telemetry,
            drainer=drainer,
            follow_up=follow_up,
        )
    except Exception as exc:  # a failed tick is a scaler error to count, not a crash
        events.emit("tick_failed", error=repr(exc))
        return ()
    outcomes = [o.as_dict() for o in result.outcomes]
    for outcome in outcomes:
        events.emit("tick", **outcome)
    view.tick(outcomes)
    return result.draining


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short profile (under 3 minutes)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "demo-out", help="where summary.json, timeline.png, report.html go"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("DEMO_REDIS_URL"),
        help="a Redis db to use instead of a private redis-server (only the keys the run creates are removed)",
    )
    parser.add_argument(
        "--broker",
        choices=("redis", "rabbitmq"),
        default=os.environ.get("DEMO_BROKER", "redis"),
        help="the Celery broker: Redis, or a private RabbitMQ node (default %(default)s)",
    )
    parser.add_argument("--aws-endpoint", default=os.environ.get("DEMO_AWS_ENDPOINT"), help="an emulator to reuse")
    args = parser.parse_args(argv)
    if args.redis_url is not None and urlparse(args.redis_url).path.strip("/") in {"", "0"}:
        parser.error("--redis-url must name a db other than 0, where apps keep their queues")
    profile = QUICK if args.quick else DEFAULT
    started = time.monotonic()
    out: Path = args.out.resolve()
    summary = play(profile, profile.schedule(), out, args.broker, args.redis_url, args.aws_endpoint)
    log(
        f"done in {time.monotonic() - started:.0f} s: "
        f"{out / 'summary.json'}, {out / 'timeline.png'}, {out / 'report.html'}"
    )
    print(json.dumps(summary, indent=2))
    return 0


def play(
    profile: Profile,
    schedule: Schedule,
    out: Path,
    broker_kind: str = "redis",
    redis_url: str | None = None,
    aws_endpoint: str | None = None,
) -> dict[str, Any]:
    """One whole run of ``schedule`` with ``profile``'s timings: set up, run, report into ``out``, tear down.

    Leaves ``summary.json`` (returned), ``tasks.json``, ``events.jsonl``, ``scaler_config.json`` (the
    module's config document the scaler ran with), ``timeline.png`` and ``report.html``.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "timeline.png", "report.html", "events.jsonl", "scaler_config.json"):
        (out / stale).unlink(missing_ok=True)
    log(f"profile {profile.name}, broker {broker_kind}; output in {out}")

    with contextlib.ExitStack() as stack:
        db = stack.enter_context(demo_redis(redis_url))
        broker: dict[str, str] = {"broker_type": "redis", "broker_url": db.url}
        if broker_kind == "rabbitmq":
            rabbit = stack.enter_context(demo_rabbitmq())
            broker = {"broker_type": "rabbitmq", "broker_url": rabbit.amqp_url, "management_url": rabbit.management_url}
        endpoint = stack.enter_context(ensure_emulator(aws_endpoint, out))
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
        )
        terraform = Terraform(
            out,
            {
                "aws_endpoint": endpoint,
                **broker,
                "tick_interval_s": f"{profile.tick_interval_s:g}",
                "scale_in_window_s": f"{profile.scale_in_window_s:g}",
                "idle_window_s": f"{profile.idle_window_s:g}",
            },
        )
        stack.enter_context(applied(terraform))
        document = terraform.output("scaler_config")
        (out / "scaler_config.json").write_text(json.dumps(document, indent=2) + "\n")
        config = parse_config(document)
        events = EventLog(out / "events.jsonl")
        stack.callback(events.close)
        ran = run(profile, schedule, config, out, events, db)
        events.close()
        all_events = read_events(out / "events.jsonl")
        records = task_records(ran["results"])
        (out / "tasks.json").write_text(json.dumps(records) + "\n")
        summary = build_summary(records, all_events, ran["pools"])
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        max_workers = {pool.name: pool.max_workers for pool in config.pools}
        plot_timeline(all_events, ran["pools"], out / "timeline.png", max_workers, summary)
        write_report(all_events, summary, ran["pools"], max_workers, out / "report.html")
    return summary


if __name__ == "__main__":
    sys.exit(main())
