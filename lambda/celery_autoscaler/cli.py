"""``celery-autoscaler``: measure queues, or run one scaler tick, from a shell.

Exit codes: 0 ok, 1 the tick ran but some pool failed (ECS, state, or one of its queues unreadable;
for ``measure``: a queue unreadable), 2 bad config or arguments (the message names the field) or a
missing ``[tools]`` extra, 3 broker unreachable.

Subcommands register themselves through :data:`SUBCOMMANDS`: a new one is one function that adds
its parser (with ``set_defaults(run=...)``) plus one entry in that list. The base install (the worker
helper's) runs ``--version``; the subcommands need the ``[tools]`` extra, and each imports what it
needs only when it runs, so ``measure`` never loads the simulator.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery_autoscaler.config import (
    DEFAULT_PRIORITY_SEP,
    DEFAULT_PUBLISH_TIME_HEADER,
    BrokerConfig,
    ConfigError,
    PoolConfig,
    ScalerConfig,
    load_config,
)
from celery_autoscaler.probe import BrokerUnavailableError, probe_for

EXIT_OK = 0
EXIT_POOL_FAILED = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3

DISTRIBUTION = "celery-autoscaler"
TOOLS_EXTRA_MODULES = frozenset({"boto3", "botocore", "redis"})
"""Top-level modules of the ``[tools]`` extra: missing, they get an install hint instead of a traceback."""


def _unescape(value: str) -> str:
    r"""Let shells pass Celery's separator as ``\x06\x16`` (escapes decoded) or literally."""
    return codecs.decode(value, "unicode_escape") if "\\" in value else value


def _print_json(value: Any) -> None:
    from celery_autoscaler.telemetry import json_safe

    print(json.dumps(json_safe(value), indent=2, sort_keys=False, allow_nan=False))


# --- measure -------------------------------------------------------------------------------------


def run_measure(args: argparse.Namespace) -> int:
    """Read the named queues once, attributing unacked messages at once (not at the Lambda's cadence)."""
    url: str = args.broker_url
    if not args.priority_sep:
        raise ConfigError("--priority-sep", "must not be empty")
    broker = BrokerConfig(
        url=url,
        management_url=args.management_url,
        key_prefix=args.key_prefix,
        priority_sep=args.priority_sep,
        publish_time_header=args.publish_time_header,
        unacked_scan_interval_s=0,
        unacked_scan_cap=args.unacked_scan_cap,
        region=args.region,
        queue_name_prefix=args.queue_name_prefix,
    )
    probe = probe_for(broker, url, field="--broker-url")
    try:
        measured = probe.measure(args.queue)
    finally:
        probe.close()
    queues = {name: q.summary() for name, q in measured.queues.items()}
    for name, q in measured.queues.items():  # (the probe itself warns of undeclared queues and bad messages)
        if q.error is not None:
            print(f"celery-autoscaler: queue {name!r} unreadable: {q.error}", file=sys.stderr)
    status = EXIT_POOL_FAILED if any(q.error is not None for q in measured.queues.values()) else EXIT_OK
    if args.json:
        _print_json({"queues": queues, "unacked_total": measured.unacked_total})
        return status
    print(f"{'queue':<30} {'waiting':>8} {'unacked':>8} {'oldest_s':>9}")
    for name, row in queues.items():
        age = "-" if row["oldest_age_s"] is None else f"{row['oldest_age_s']:.1f}"
        unacked = "?" if row["unacked"] is None else str(row["unacked"])
        note = " unreadable" if row["error"] is not None else " (not declared)" if row["declared"] is False else ""
        print(f"{name:<30} {row['waiting']:>8} {unacked:>8} {age:>9}{note}")
    print(f"unacked in total: {measured.unacked_total}")
    return status


def add_measure(subparsers: Any) -> None:
    parser = subparsers.add_parser("measure", help="print waiting, unacked and age of Celery queues")
    parser.add_argument(
        "--broker-url",
        required=True,
        help="broker URL: redis:// or rediss:// (db in the path), amqp:// or amqps:// (vhost in the path), "
        "sqs:// (kombu's form; credentials from the environment)",
    )
    parser.add_argument(
        "--management-url",
        help="RabbitMQ: the management API, http(s)://host[:port] (default: http://HOST:15672 for amqp://, "
        "https://HOST for amqps://, with the broker URL's credentials)",
    )
    parser.add_argument("--queue", action="append", required=True, help="queue name (repeat for more)")
    parser.add_argument("--key-prefix", default="", help="Celery's global_keyprefix (default none)")
    parser.add_argument(
        "--priority-sep",
        default=DEFAULT_PRIORITY_SEP,
        type=_unescape,
        help=r"priority separator; escapes allowed (default Celery's \x06\x16)",
    )
    parser.add_argument("--publish-time-header", default=DEFAULT_PUBLISH_TIME_HEADER)
    parser.add_argument(
        "--unacked-scan-cap",
        type=int,
        default=BrokerConfig.unacked_scan_cap,
        help="skip attribution above this many (default %(default)s)",
    )
    parser.add_argument("--region", help="SQS: the queues' region (default: the environment's, as kombu)")
    parser.add_argument("--queue-name-prefix", default="", help="SQS: kombu's queue_name_prefix (default none)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_measure)


def _read_config(path: str) -> ScalerConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
    return load_config(text)


# --- evaluate ------------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    """One real tick against AWS (or ``AWS_ENDPOINT_URL*``), printing what each pool saw and decided."""
    from celery_autoscaler.drain import drainer_for
    from celery_autoscaler.ecs import EcsActuator
    from celery_autoscaler.secrets import broker_url
    from celery_autoscaler.state import DynamoStateStore, InMemoryStateStore, ReadOnlyStateStore, StateStore
    from celery_autoscaler.tick import run_tick

    config = _read_config(args.config)
    dry_run = bool(args.dry_run or config.dry_run)
    store: StateStore = InMemoryStateStore() if config.state_table is None else DynamoStateStore(config.state_table)
    if dry_run:
        store = ReadOnlyStateStore(store)
    url = broker_url(config.broker)
    probe = probe_for(config.broker, url)
    try:
        actuator = EcsActuator(config.cluster)
        drainer = drainer_for(config.broker, url)
        result = run_tick(config, probe, actuator, store, time.time(), dry_run=dry_run, drainer=drainer)
    finally:
        probe.close()
    if args.json:
        _print_json(
            {
                "dry_run": dry_run,
                "broker_error": result.broker_error,
                "pools": [outcome.as_dict() for outcome in result.outcomes],
            }
        )
    else:
        for outcome in result.outcomes:
            verdict = "acted" if outcome.acted else ("dry run" if dry_run else "no change")
            reason = outcome.decision.reason if outcome.decision else "-"
            print(f"{outcome.pool}: {reason} [{verdict}]" + (f" ERROR {outcome.error}" if outcome.error else ""))
    if result.broker_error is not None:
        print(f"celery-autoscaler: {result.broker_error}", file=sys.stderr)
        return EXIT_BROKER
    return EXIT_POOL_FAILED if result.errors else EXIT_OK


def add_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser("evaluate", help="run one scaler tick with a config file and print the decisions")
    parser.add_argument("--config", required=True, help="the scaler's JSON config document")
    parser.add_argument("--dry-run", action="store_true", help="decide and print, but do not UpdateService")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_evaluate)


# --- pause, resume, status -----------------------------------------------------------------------

PAUSE_WRITE_ATTEMPTS = 5
"""A pause or resume re-reads and retries when a tick saved the item in between (a conditional write lost)."""


class StateCommandError(Exception):
    """The state table could not be read or written for a pause/resume/status; exits 1 with the message."""


def _state_table(config: ScalerConfig, command: str) -> Any:
    from celery_autoscaler.state import DynamoStateStore

    if config.state_table is None:
        raise ConfigError("state_table", f"{command} needs the state table the deployed scaler uses")
    return DynamoStateStore(config.state_table)


def _pool(config: ScalerConfig, name: str) -> PoolConfig:
    for pool in config.pools:
        if pool.name == name:
            return pool
    raise ConfigError("POOL", f"no pool {name!r} in the config (pools: {', '.join(p.name for p in config.pools)})")


def _rewrite_state(store: Any, pool: str, change: Callable[[Any], Any]) -> Any:
    """Apply ``change`` to the pool's stored state with a conditional write, re-reading on a lost race."""
    from dataclasses import replace

    from celery_autoscaler.state import StateConflictError, StateStoreError, UnreadableState

    for _ in range(PAUSE_WRITE_ATTEMPTS):
        stored = store.load([pool])[pool]
        if isinstance(stored, UnreadableState):
            raise StateCommandError(f"pool {pool!r}: {stored.reason}; the next tick repairs a corrupt item, retry then")
        try:
            return store.save(pool, replace(change(stored), version=stored.version))
        except StateConflictError:
            continue
        except StateStoreError as exc:
            raise StateCommandError(str(exc)) from exc
    raise StateCommandError(f"pool {pool!r}: the scaler saved the item {PAUSE_WRITE_ATTEMPTS} times in a row; retry")


def run_pause(args: argparse.Namespace) -> int:
    """Take one pool out of the scaler's hands: hold its count, or set exactly ``--count``, until resumed."""
    from dataclasses import replace

    from celery_autoscaler.pause import Pause, parse_duration

    config = _read_config(args.config)
    pool = _pool(config, args.pool)
    store = _state_table(config, "pause")
    now = time.time()
    try:
        until = None if args.duration is None else now + parse_duration(args.duration)
    except ValueError as exc:
        raise ConfigError("--for", str(exc)) from exc
    if args.count is not None and args.count < 0:
        raise ConfigError("--count", "must be >= 0")
    pause = Pause(since=now, by=args.by, until=until, count=args.count)
    _rewrite_state(store, pool.name, lambda state: replace(state, pause=pause))
    if args.count is not None and not pool.min_workers <= args.count <= pool.max_workers:
        print(
            f"celery-autoscaler: note: --count {args.count} is outside {pool.name}'s bounds "
            f"[{pool.min_workers}, {pool.max_workers}]; a pause sets it exactly",
            file=sys.stderr,
        )
    action = "holds its count" if args.count is None else f"is set to {args.count}"
    print(f"{pool.name}: {pause.describe()}; from the next tick it {action} and the scaler does not scale it")
    return EXIT_OK


def run_resume(args: argparse.Namespace) -> int:
    """Give the pool back to the scaler (a pool not paused stays as it is)."""
    from dataclasses import replace

    config = _read_config(args.config)
    pool = _pool(config, args.pool)
    store = _state_table(config, "resume")
    cleared: list[Any] = []

    def clear(state: Any) -> Any:
        cleared.append(state.pause)
        return replace(state, pause=None)

    _rewrite_state(store, pool.name, clear)
    was = f"was {cleared[-1].describe()}" if cleared[-1] is not None else "was not paused"
    print(f"{pool.name}: resumed ({was}); from the next tick the scaler decides its count again")
    return EXIT_OK


def _status_row(pool: PoolConfig, stored: Any, service: Any, now: float) -> dict[str, Any]:
    from dataclasses import asdict

    from celery_autoscaler.state import UnreadableState

    row: dict[str, Any] = {
        "pool": pool.name,
        "service": pool.service,
        "desired": service.desired if service is not None and service.error is None else None,
        "running": service.running if service is not None and service.error is None else None,
        "pending": service.pending if service is not None and service.error is None else None,
        "service_status": None if service is None else service.error or service.status,
        "min_workers": pool.min_workers,
        "max_workers": pool.max_workers,
        "tasks_per_worker": pool.tasks_per_worker,
    }
    if isinstance(stored, UnreadableState):
        return {**row, "state_error": stored.reason, "paused": None, "last_reason": None, "state": None}
    pause = stored.pause
    state = asdict(stored)
    window = [count for at, count in stored.recommendations if now - at < pool.scale_in_window_s]
    return {
        **row,
        "state_error": None,
        "paused": None if pause is None else {**asdict(pause), "active": pause.active(now), "text": pause.describe()},
        "last_desired": stored.last_desired,
        "last_action_at": stored.last_action_at,
        "last_reason": stored.last_reason,
        "window_max": max(window, default=None),
        "state": {k: v for k, v in state.items() if k not in ("pause", "last_reason")},
    }


def _clock(epoch: float | None) -> str:
    from datetime import UTC, datetime

    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_status(row: dict[str, Any]) -> None:
    counts = f"{row['desired']} desired, {row['running']} running, {row['pending']} pending"
    if row["desired"] is None:
        counts = f"ECS: {row['service_status']}"
    print(f"{row['pool']} (service {row['service']}): {counts}; bounds {row['min_workers']}..{row['max_workers']}")
    if row["state_error"] is not None:
        print(f"  state unreadable: {row['state_error']}")
        return
    paused = row["paused"]
    print(f"  paused: {'no' if paused is None else paused['text'] + ('' if paused['active'] else ' (expired)')}")
    if paused is not None and paused["count"] is not None:
        print(f"  pause count: {paused['count']}")
    print(f"  last decision: {row['last_reason'] or '- (no tick saved a reason yet)'}")
    state = row["state"]
    print(
        f"  policy inputs: {row['tasks_per_worker']:g} tasks per worker; max over the scale-in window "
        f"{row['window_max'] if row['window_max'] is not None else '-'}; idle since {_clock(state['idle_since'])}; "
        f"{state['consecutive_failures']} failed tick(s) in a row"
    )
    if state.get("estimator") is not None:  # what the estimators remember (rates, run times, start delays)
        print(f"  estimator state: {json.dumps(state['estimator'], separators=(',', ':'))}")


def run_status(args: argparse.Namespace) -> int:
    """Every pool's counts (ECS), bounds (config), last decision, pause and policy inputs (state table)."""
    from celery_autoscaler.ecs import EcsActuator, EcsError

    config = _read_config(args.config)
    store = _state_table(config, "status")
    states = store.load([pool.name for pool in config.pools])
    try:
        services = EcsActuator(config.cluster).describe([pool.service for pool in config.pools])
    except EcsError as exc:
        raise StateCommandError(str(exc)) from exc
    now = time.time()
    rows = [_status_row(pool, states[pool.name], services.get(pool.service), now) for pool in config.pools]
    if args.json:
        _print_json({"pools": rows})
    else:
        for row in rows:
            _print_status(row)
    failed = any(row["state_error"] or row["desired"] is None for row in rows)
    return EXIT_POOL_FAILED if failed else EXIT_OK


def add_pause(subparsers: Any) -> None:
    import getpass

    parser = subparsers.add_parser("pause", help="take a pool out of the scaler's hands (state table; no deploy)")
    parser.add_argument("pool", metavar="POOL", help="the pool's name in the config")
    parser.add_argument("--config", required=True, help="the scaler's JSON config document (names the state table)")
    parser.add_argument("--count", type=int, help="set exactly this many workers (default: hold the current count)")
    parser.add_argument("--for", dest="duration", help="lapse by itself after this long (90s, 15m, 2h, 1d, 1h30m)")
    parser.add_argument("--by", default=getpass.getuser(), help="who paused it, shown in logs (default %(default)s)")
    parser.set_defaults(run=run_pause)


def add_resume(subparsers: Any) -> None:
    parser = subparsers.add_parser("resume", help="give a paused pool back to the scaler")
    parser.add_argument("pool", metavar="POOL", help="the pool's name in the config")
    parser.add_argument("--config", required=True, help="the scaler's JSON config document (names the state table)")
    parser.set_defaults(run=run_resume)


def add_status(subparsers: Any) -> None:
    parser = subparsers.add_parser("status", help="every pool's counts, bounds, last decision, pause and inputs")
    parser.add_argument("--config", required=True, help="the scaler's JSON config document")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_status)


# --- simulate ------------------------------------------------------------------------------------


def add_simulate(subparsers: Any) -> None:
    """Its options come from the simulator, which is imported only when ``simulate`` is parsed."""

    def populate(parser: argparse.ArgumentParser) -> None:
        from celery_autoscaler.sim.command import add_arguments, run

        add_arguments(parser)
        parser.set_defaults(run=run)

    subparsers.add_parser(
        "simulate", help="replay a task trace under this scaler and the alternatives", populate=populate
    )


SUBCOMMANDS: list[Callable[[Any], None]] = [add_measure, add_evaluate, add_pause, add_resume, add_status, add_simulate]
"""Each entry adds one subcommand's parser to the ``subparsers`` it is given."""


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that can add its arguments on first use (``populate``), so the module
    defining them is imported only when that subcommand is chosen (or its ``--help`` is shown)."""

    def __init__(self, *args: Any, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; same signature at run time
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)
        return super().parse_known_args(args, namespace)


class VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked (it costs an import)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import version

        print(f"{parser.prog} {version(DISTRIBUTION)}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-autoscaler",
        description="Scale Celery worker pools on ECS from their Redis queues.",
        epilog="exit codes: 0 ok, 1 a pool failed, 2 bad config, 3 broker unreachable",
    )
    parser.add_argument("--version", action=VersionAction, help="print the installed version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=SubcommandParser)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"celery-autoscaler: bad config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokerUnavailableError as exc:
        print(f"celery-autoscaler: broker unreachable: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except StateCommandError as exc:
        print(f"celery-autoscaler: {args.command}: {exc}", file=sys.stderr)
        return EXIT_POOL_FAILED
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in TOOLS_EXTRA_MODULES:
            raise
        print(
            f"celery-autoscaler: {args.command} needs {exc.name}, which this install lacks: "
            f"pip install '{DISTRIBUTION}[tools]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
