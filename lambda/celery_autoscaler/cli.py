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
        help="broker URL: redis:// or rediss:// (db in the path), amqp:// or amqps:// (vhost in the path)",
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
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_measure)


# --- evaluate ------------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    """One real tick against AWS (or ``AWS_ENDPOINT_URL*``), printing what each pool saw and decided."""
    from celery_autoscaler.ecs import EcsActuator
    from celery_autoscaler.secrets import broker_url
    from celery_autoscaler.state import DynamoStateStore, InMemoryStateStore, ReadOnlyStateStore, StateStore
    from celery_autoscaler.tick import run_tick

    try:
        text = Path(args.config).read_text()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {args.config}: {exc.strerror}") from exc
    config = load_config(text)
    dry_run = bool(args.dry_run or config.dry_run)
    store: StateStore = InMemoryStateStore() if config.state_table is None else DynamoStateStore(config.state_table)
    if dry_run:
        store = ReadOnlyStateStore(store)
    probe = probe_for(config.broker, broker_url(config.broker))
    try:
        result = run_tick(config, probe, EcsActuator(config.cluster), store, time.time(), dry_run=dry_run)
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


SUBCOMMANDS: list[Callable[[Any], None]] = [add_measure, add_evaluate, add_simulate]
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
