"""The dashboard's Logs Insights queries (modules/scaler/queries/, read by the module's dashboard) run
against the log lines real ticks write (real Redis, real Celery producers, moto ECS and DynamoDB), with
a small evaluator of the query language's ``fields`` and ``filter`` (what these queries use of it)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from moto_aws import free_port
from test_pause import RAW_CONFIG, cli
from test_tick import DB, make_rig, publish
from test_tick import aws as aws  # the moto ECS services and state table (a fixture)

from celery_autoscaler.config import parse_config

pytestmark = pytest.mark.redis_db(DB)
QUERIES = ROOT / "modules/scaler/queries"
TOKEN = re.compile(
    r'\s*(?:(?P<regex>/(?:[^/\\]|\\.)*/)|(?P<string>"[^"]*")|(?P<number>-?\d+(?:\.\d+)?)'
    r"|(?P<op>!=|=|<=|>=|<|>|\(|\))|(?P<word>[@\w.]+))"
)


def field(line: dict[str, Any], path: str) -> Any:
    """A discovered field as Logs Insights names it: nested JSON keys joined by dots; absent -> None."""
    value: Any = line
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def tokens(text: str) -> list[tuple[str, str]]:
    found, at = [], 0
    while at < len(text.rstrip()):
        match = TOKEN.match(text, at)
        assert match is not None, f"cannot read {text[at:]!r}"
        kind = match.lastgroup or ""
        found.append((kind, match.group(kind)))
        at = match.end()
    return found


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """``a = "x" and (b != c or d like /re/)``: and/or/not, parentheses, comparisons of fields and literals."""
    stream = tokens(text)

    def take() -> tuple[str, str]:
        return stream.pop(0)

    def operand(kind: str, value: str) -> Callable[[dict[str, Any]], Any]:
        if kind == "string":
            return lambda _: value[1:-1]
        if kind == "number":
            return lambda _: float(value)
        return lambda line: field(line, value)

    def comparison() -> Callable[[dict[str, Any]], bool]:
        kind, value = take()
        if value == "(":
            inner = disjunction()
            assert take()[1] == ")"
            return inner
        if value == "not":
            negated = comparison()
            return lambda line: not negated(line)
        left = operand(kind, value)
        op = take()[1]
        right_kind, right = take()
        if op == "like":
            pattern = re.compile(right[1:-1])
            return lambda line: isinstance(left(line), str) and bool(pattern.search(left(line)))
        value_of = operand(right_kind, right)
        compare: dict[str, Callable[[Any, Any], bool]] = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b}
        return lambda line: (
            left(line) is not None and value_of(line) is not None and compare[op](left(line), value_of(line))
        )

    def conjunction() -> Callable[[dict[str, Any]], bool]:
        parts = [comparison()]
        while stream and stream[0][1] == "and":
            take()
            parts.append(comparison())
        return lambda line: all(part(line) for part in parts)

    def disjunction() -> Callable[[dict[str, Any]], bool]:
        parts = [conjunction()]
        while stream and stream[0][1] == "or":
            take()
            parts.append(conjunction())
        return lambda line: any(part(line) for part in parts)

    predicate = disjunction()
    assert not stream, f"left over: {stream}"
    return predicate


def run_query(path: Path, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the query gives on ``lines`` (each line carries its @timestamp), newest first."""
    commands = [part.strip() for part in path.read_text().split("\n|")]
    rows = lines
    projection: list[tuple[str, str]] = []
    for command in commands:
        verb, _, rest = command.partition(" ")
        if verb == "fields":
            for item in rest.split(","):
                source, _, alias = item.strip().partition(" as ")
                projection.append((source.strip(), alias.strip() or source.strip()))
        elif verb == "filter":
            predicate = parse_filter(rest)
            rows = [line for line in rows if predicate(line)]
        elif verb == "sort":
            key, _, order = rest.partition(" ")
            rows = sorted(rows, key=lambda line: field(line, key), reverse=order == "desc")
        elif verb == "limit":
            rows = rows[: int(rest)]
        else:
            pytest.fail(f"{path.name}: the evaluator does not know {verb!r}")
    return [{alias: field(line, source) for source, alias in projection} for line in rows]


@pytest.fixture
def tick_lines(aws: Any, tmp_path: Path) -> list[dict[str, Any]]:
    """The 'pool tick' lines of real ticks: a burst (acts), steady ticks, a paused pool, then the broker down."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(RAW_CONFIG))
    rig = make_rig(aws, parse_config(RAW_CONFIG))
    rig.clock.now = time.time()
    publish(12, "celery", rig.clock.now)
    rig.tick()
    rig.clock.now += 15
    rig.tick()
    assert cli("pause", "video", "--count", "2", "--config", str(config_file)) == 0
    rig.clock.now += 15
    rig.tick()
    rig.probe.close()
    down = make_rig(aws, parse_config({**RAW_CONFIG, "broker": {"url": f"redis://127.0.0.1:{free_port()}/{DB}"}}))
    down.clock.now = rig.clock.now + 15
    down.tick()
    lines = []
    for stream in (rig, down):
        lines += [line for line in stream.lines() if "_aws" not in line]
    for line in lines:
        line["@timestamp"] = line["time"]
    return lines


@pytest.mark.usefixtures("redis_db")
def test_scaling_actions_lists_every_change_with_from_to_and_reason(tick_lines: list[dict[str, Any]]) -> None:
    rows = run_query(QUERIES / "scaling_actions.logsinsights", tick_lines)
    acted = [line for line in tick_lines if line.get("acted")]
    assert len(acted) == 2, "the burst of 'default' and the paused 'video' set to 2"
    assert [(r["pool"], r["from_workers"], r["to_workers"]) for r in rows] == [("video", 0, 2), ("default", 0, 3)]
    assert rows[1]["reason"].startswith("burst: 12 waiting")
    assert rows[0]["reason"].startswith("paused by ")
    assert all(row["time"] for row in rows)


@pytest.mark.usefixtures("redis_db")
def test_holds_and_errors_lists_the_broker_down_ticks_and_the_pause(tick_lines: list[dict[str, Any]]) -> None:
    rows = run_query(QUERIES / "holds_and_errors.logsinsights", tick_lines)
    kinds = sorted((row["pool"], row["level"], row["reason"].split(" ")[0]) for row in rows)
    # Broker down: default holds; video stays paused (the operator's count needs no reading) but errs too.
    assert kinds == [("default", "ERROR", "hold:"), ("video", "ERROR", "paused"), ("video", "INFO", "paused")]
    assert sorted(str(row["error"])[:18] for row in rows) == ["None", "broker unavailable", "broker unavailable"]
    assert rows[-1]["time"] < rows[0]["time"], "newest first"


def test_the_evaluator_reads_what_it_is_given() -> None:
    line = {"message": "pool tick", "a": {"b": 2}, "reason": "hold: x", "level": "INFO"}
    assert parse_filter('message = "pool tick" and a.b != 3')(line)
    assert not parse_filter('message = "pool tick" and (level = "ERROR" or reason like /^steady/)')(line)
    assert parse_filter("not missing = 1")(line)
