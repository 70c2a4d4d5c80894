"""Config validation: a bad value fails at start with a message that names the field."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from celery_autoscaler.config import (
    BROKER_SCHEMES,
    DEFAULT_PRIORITY_SEP,
    BrokerConfig,
    BrokerScheme,
    ConfigError,
    PoolConfig,
    ScalerConfig,
    load_config,
    parse_broker_url,
    parse_config,
)
from celery_autoscaler.probe import PROBES
from celery_autoscaler.schedules import Schedule

pytestmark = pytest.mark.unit  # the fast tier: make test-unit

VALID: dict[str, Any] = {
    "broker": {"url": "rediss://scaler:secret@redis.internal:6379/2", "key_prefix": "app:"},
    "cluster": "celery",
    "state_table": "celery-autoscaler-state",
    "pools": {
        "default": {"service": "workers", "queues": ["celery", "emails"], "concurrency": 4, "max_workers": 20},
        "reports": {"service": "reports", "queues": ["reports"], "target_latency_s": 30, "min_workers": 1},
    },
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    target = raw
    for key in parents:
        target = target[key]
    target[leaf] = value
    return raw


def test_valid_document_parses_with_defaults() -> None:
    config = parse_config(VALID)
    assert config.broker.priority_sep == DEFAULT_PRIORITY_SEP
    assert config.queues == ("celery", "emails", "reports")
    default, reports = config.pools
    assert default.tasks_per_worker == 4
    assert reports.min_workers == 1
    assert reports.target_latency_s == 30
    assert config.tick_interval_s == 15
    assert config.ticks_per_invocation == 4


def test_null_means_default() -> None:
    raw = with_change("pools.default.target_latency_s", None)
    assert parse_config(raw).pools[0].target_latency_s is None


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("pools.default.max_workers", 0, "pools.default.max_workers"),
        ("pools.reports.min_workers", 50, "pools.reports.min_workers"),
        ("pools.default.concurrency", "4", "pools.default.concurrency"),
        ("pools.default.concurrency", True, "pools.default.concurrency"),
        ("pools.default.queues", [], "pools.default.queues"),
        ("pools.default.queues", ["celery", "celery"], "pools.default.queues"),
        ("pools.default.queues", ["celery", ""], "pools.default.queues[1]"),
        ("pools.default.queues", ["celery", "emails\n"], "pools.default.queues[1]"),
        ("pools.reports.queues", ["emails"], "pools.reports.queues"),
        ("pools.default.target_utilisation", 1.5, "pools.default.target_utilisation"),
        ("pools.default.fallback_count", 99, "pools.default.fallback_count"),
        ("pools.default.scale_in_windw_s", 10, "pools.default.scale_in_windw_s"),
        ("pools.default.service", "", "pools.default.service"),
        ("broker.url", "kafka://guest@localhost//", "broker.url"),
        ("broker.url_secret_arn", "arn:aws:secretsmanager:eu-west-1:1:secret:x", "broker.url"),
        ("broker.priority_sep", "", "broker.priority_sep"),
        ("tick_interval_s", 0, "tick_interval_s"),
        ("ticks_per_invocation", 0, "ticks_per_invocation"),
        ("cluster", "", "cluster"),
        ("pools", {}, "pools"),
    ],
)
def test_bad_value_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change(path, value))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_secret_arn_instead_of_url() -> None:
    raw = copy.deepcopy(VALID)
    raw["broker"] = {"url_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-AbCdEf"}
    assert parse_config(raw).broker.url is None


def test_invalid_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^\(root\): not valid JSON"):
        load_config("{pools:")
    assert load_config(json.dumps(VALID)).cluster == "celery"


ROOT = Path(__file__).resolve().parent.parent
VARIABLES = (ROOT / "variables.tf").read_text()


def _object_block(start: str, end: str) -> dict[str, Any]:
    """``name = optional(type[, default])`` lines of one variable's object type, defaults decoded."""
    block = VARIABLES[VARIABLES.index(start) :]
    block = block[: block.index(end)]
    attributes: dict[str, Any] = {}
    for name, default in re.findall(r"^\s*(\w+)\s*=\s*optional\((?:\w+|\w+\(\w+\))(?:,\s*(.+?))?\)$", block, re.M):
        attributes[name] = json.loads(default) if default else None
    return attributes


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_terraform_scaling_settings_are_the_pool_schema_with_its_defaults() -> None:
    # worker_pools.NAME.scaling passes through to pools.NAME unchanged (main.tf merges it), so
    # its names and defaults must be PoolConfig's; concurrency and the task size (for the cost metrics)
    # are the pool's own, with the same defaults.
    scaling = _object_block("    scaling = optional(object({", "      schedules = optional(")
    pool_defaults = _defaults(PoolConfig)
    own = {"concurrency", "cpu", "memory", "architecture", "spot_weight"}  # the pool's own, outside scaling
    assert set(scaling) | {"schedules"} == set(pool_defaults) - own
    assert scaling == {name: pool_defaults[name] for name in scaling}
    assert pool_defaults["schedules"] == ()
    assert "      })), [])\n    }), {})" in VARIABLES
    # A schedule's attributes are Schedule's, with its defaults (required ones have none).
    schedule = _object_block("      schedules = optional(list(object({", "})), [])")
    required = re.findall(
        r"^\s+(\w+)\s+= (?:string|number)$", VARIABLES[VARIABLES.index("schedules = optional(") :], re.M
    )[:3]
    fields = {f.name: f.default for f in dataclasses.fields(Schedule)}
    assert set(schedule) | set(required) == set(fields)
    assert {k: v for k, v in schedule.items() if v is not None} == {
        k: v for k, v in fields.items() if k in schedule and v is not dataclasses.MISSING
    }
    pool = _object_block('variable "worker_pools"', "    scaling = optional(")
    assert {name: pool[name] for name in own} == {name: pool_defaults[name] for name in own}


@pytest.mark.parametrize(("variable", "cls"), [("broker", BrokerConfig), ("scaler", ScalerConfig)])
def test_terraform_defaults_are_the_scalers(variable: str, cls: type) -> None:
    # Attributes the module passes to the scaler carry its names and defaults (the rest are the module's own).
    attributes = _object_block(f'variable "{variable}"', "  nullable")
    shared = {name: attributes[name] for name in _defaults(cls) if name in attributes}
    assert shared == {name: _defaults(cls)[name] for name in shared}
    assert len(shared) >= 4


def test_module_test_keys_are_the_config_schema() -> None:
    # tests/module.tftest.hcl asserts the built config's keys equal these lists; they must be config.py's.
    hcl = (ROOT / "tests/module.tftest.hcl").read_text()
    run = hcl[hcl.index('run "scaler_config_matches_the_python_schema"') :]
    top, broker, pool = (set(re.findall(r'"(\w+)"', body)) for body in re.findall(r"toset\(\[(.*?)\]\)", run, re.S)[:3])
    assert top == {f.name for f in dataclasses.fields(ScalerConfig)}
    assert broker == {f.name for f in dataclasses.fields(BrokerConfig)} - {"url"}
    assert pool == {f.name for f in dataclasses.fields(PoolConfig)} - {"name"}


def test_time_zone_list_is_what_the_scaler_accepts() -> None:
    # Every zone the module lets through at plan loads in the scaler's zoneinfo, and the common ones are there.
    zones = set(re.findall(r'"([^"]+)"', (ROOT / "time_zones.tf").read_text().split("toset([")[1]))
    assert {"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"} <= zones
    assert zones <= zoneinfo.available_timezones()
    assert len(zones) > 500


SCHEDULE = {"cron": "0 9 * * mon-fri", "time_zone": "Europe/Berlin", "min_workers": 3, "duration_s": 28800}


def test_schedules_parse_with_defaults() -> None:
    raw = with_change("pools.default.schedules", [SCHEDULE, {**SCHEDULE, "name": "rush", "lead_s": 90}])
    first, second = parse_config(raw).pools[0].schedules
    assert first == Schedule(
        name="schedules[0]", cron="0 9 * * mon-fri", min_workers=3, duration_s=28800, time_zone="Europe/Berlin"
    )
    assert (second.name, second.lead_s) == ("rush", 90)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"cron": "0 25 * * *"}, "cron", "hour: '25' is outside 0-23"),
        ({"cron": "0 9 * *"}, "cron", "needs 5 fields"),
        ({"time_zone": "Europe/Berlinn"}, "time_zone", "unknown time zone 'Europe/Berlinn'"),
        ({"lead_s": -1}, "lead_s", "must be >= 0"),
        ({"lead_s": 86_401}, "lead_s", "must be at most 86400 (a day)"),
        ({"lead_s": float("inf")}, "lead_s", "must be a finite number"),
        ({"duration_s": 604_801}, "duration_s", "must be at most 604800 (a week)"),
        ({"duration_s": 0}, "duration_s", "would end before it starts"),
        ({"min_workers": 0}, "min_workers", "must be >= 1"),
        ({"min_workers": 21}, "min_workers", "must be <= max_workers"),
        ({"cron": None}, "cron", "is required"),
        ({"every": 5}, "every", "unknown field"),
    ],
)
def test_bad_schedule_names_the_field(change: dict[str, Any], field: str, message: str) -> None:
    body = {k: v for k, v in {**SCHEDULE, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        parse_config(with_change("pools.default.schedules", [SCHEDULE, body]))
    assert caught.value.field == f"pools.default.schedules[1].{field}"


# --- broker URLs: one parser, a table of schemes ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("redis://redis.internal", ("redis", "redis.internal", 6379)),
        ("rediss://scaler:hunter2@cache.example:6380/15", ("rediss", "cache.example", 6380)),
        ("redis://:hunter2@10.0.0.5:6379/0?ssl_cert_reqs=none", ("redis", "10.0.0.5", 6379)),
        ("redis://[::1]:6379/2", ("redis", "::1", 6379)),
        ("redis://h:65535/?db=3", ("redis", "h", 65535)),
        ("REDIS://h/0", ("redis", "h", 6379)),
        ("amqp://guest:hunter2@rabbit.internal//", ("amqp", "rabbit.internal", 5672)),
        (
            "amqps://user:hunter2@b-1234.mq.eu-west-1.amazonaws.com:5671/prod",
            ("amqps", "b-1234.mq.eu-west-1.amazonaws.com", 5671),
        ),
        ("sqs://", ("sqs", "", None)),
        ("sqs://AKIDEXAMPLE:hunter2%2Fkey@", ("sqs", "", None)),
        ("sqs://localhost:9324", ("sqs", "localhost", 9324)),
    ],
)
def test_broker_url_parts(url: str, parts: tuple[str, str, int | None]) -> None:
    parsed = parse_broker_url(url, "broker.url")
    assert (parsed.scheme, parsed.host, parsed.port) == parts
    assert parse_config(with_change("broker.url", url)).broker.url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "without whitespace"),
        ("redis://:hunter2@host:6379/0 ", "without whitespace"),
        ("redis://:hun ter2@host:6379/0", "without whitespace"),
        ("redis://:hunter2@host:6379/0\n", "without whitespace"),
        ("redis://:hunter2@host\x00:6379/0", "control characters"),
        ("hunter2@host:6379", "unsupported scheme (none)"),
        ("http://:hunter2@host:6379/0", "unsupported scheme http://"),
        ("kafka://guest:hunter2@kafka:9092", "unsupported scheme kafka:// (supported: amqp://, amqps://, redis://"),
        ("amqp://guest:hunter2@:5672//", "has no host"),
        ("redis:/host:6379/0", "unsupported scheme (none)"),
        ("redis://:hunter2@host:0/0", "port must be a number from 1 to 65535"),
        ("redis://:hunter2@host:65536/0", "port must be a number from 1 to 65535"),
        ("redis://:hunter2@host:99999999999999999999/0", "port must be"),
        ("redis://:hunter2@host:hunter2/0", "port must be"),
        ("redis://:hunter2@host:-1/0", "port must be"),
        ("redis://:hunter2@:6379/0", "has no host"),
        ("redis://", "has no host"),
        ("redis://:hunter2@[::1/0", "cannot be parsed"),
        ("redis://:hunter2@host/hunter2", "db must be a whole number from 0 to 2147483647"),
        ("redis://:hunter2@host/-1", "db must be"),
        ("redis://:hunter2@host/0/1", "db must be"),
        ("redis://:hunter2@host/1.5", "db must be"),
        ("redis://:hunter2@host/2147483648", "db must be"),
        ("redis://:hunter2@host/99999999999999999999999", "db must be"),
        ("redis://:hunter2@host/\u0661", "db must be"),  # a non-ASCII digit
        ("redis://:hunter2@host/?db=x", "db must be"),
        ("sqs://AKIDEXAMPLE:hunter2@localhost:0", "port must be"),
    ],
)
def test_bad_broker_url_is_refused_without_quoting_it(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change("broker.url", url))
    assert caught.value.field == "broker.url"
    assert problem in caught.value.message
    assert "hunter2" not in str(caught.value)


def test_a_new_scheme_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "kafka://user:hunter2@kafka.internal"
    with pytest.raises(ConfigError, match="unsupported scheme kafka://"):
        parse_broker_url(url, "broker.url")
    monkeypatch.setitem(BROKER_SCHEMES, "kafka", BrokerScheme(default_port=9092))
    parsed = parse_broker_url(url, "broker.url")
    assert (parsed.scheme, parsed.host, parsed.port) == ("kafka", "kafka.internal", 9092)


def test_every_probe_scheme_has_url_rules() -> None:
    # probe_for parses the URL with parse_broker_url first: a probe for a scheme without rules is unreachable.
    assert set(PROBES) <= set(BROKER_SCHEMES)


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:secretsmanager:eu-west-1:1:secret:x",
        "arn:aws:secretsmanager:eu-west-1:123456789012:broker-AbCdEf",
        "arn:aws:ssm:eu-west-1:123456789012:parameter/broker",
        "celery/broker",
    ],
)
def test_secret_arn_must_be_a_secrets_manager_secret(arn: str) -> None:
    raw = with_change("broker.url_secret_arn", arn)
    del raw["broker"]["url"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.field == "broker.url_secret_arn"


# --- numbers: finite, bounded -------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_not_json(literal: str) -> None:
    text = json.dumps(VALID).replace('"max_workers": 20', f'"max_workers": {literal}')
    assert literal in text
    with pytest.raises(ConfigError, match=rf"^\(root\): not valid JSON: {re.escape(literal)} is not a number"):
        load_config(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_name_the_field(value: float) -> None:
    with pytest.raises(ConfigError, match=r"^pools\.reports\.target_latency_s: must be a finite number$"):
        parse_config(with_change("pools.reports.target_latency_s", value))


def test_an_exponent_too_big_for_a_float_names_the_field() -> None:
    # Python's json reads 1e400 as inf without calling parse_constant.
    text = json.dumps(VALID).replace('"target_latency_s": 30', '"target_latency_s": 1e400')
    with pytest.raises(ConfigError, match=r"^pools\.reports\.target_latency_s: must be a finite number$"):
        load_config(text)


def test_huge_integers_are_refused_by_their_bound() -> None:
    text = json.dumps(VALID).replace('"max_workers": 20', f'"max_workers": {10**300}')
    with pytest.raises(ConfigError, match=r"^pools\.default\.max_workers: must be from 1 to 5000$"):
        load_config(text)
    text = json.dumps(VALID).replace('"max_workers": 20', '"max_workers": ' + "9" * 5000)
    with pytest.raises(ConfigError, match=r"^\(root\): not valid JSON: Exceeds the limit"):
        load_config(text)


def test_deeply_nested_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^\(root\): not valid JSON"):
        load_config("[" * 100_000 + "]" * 100_000)


BOUNDED_BASE: dict[str, Any] = {
    "broker": {"url": "redis://redis.internal:6379/0"},
    "cluster": "celery",
    "pools": {"default": {"service": "workers", "queues": ["celery"], "max_workers": 5000}},
}


@pytest.mark.parametrize(
    ("path", "lowest", "highest", "below", "above"),
    [
        ("broker.unacked_scan_interval_s", 0, 3600, -0.5, 3600.5),
        ("broker.unacked_scan_cap", 0, 1_000_000, -1, 1_000_001),
        ("broker.socket_timeout_s", 0.001, 60, 0, 60.5),
        ("tick_interval_s", 0.05, 900, 0, 900.5),
        ("ticks_per_invocation", 1, 900, 0, 901),
        ("pools.default.concurrency", 1, 10_000, 0, 10_001),
        ("pools.default.min_workers", 0, 5000, -1, 5001),
        ("pools.default.max_workers", 1, 5000, 0, 5001),
        ("pools.default.target_utilisation", 0.01, 1, 0, 1.01),
        ("pools.default.target_backlog_per_worker", 0.5, 1_000_000, 0, 1_000_000.5),
        ("pools.default.target_latency_s", 0.5, 86_400, 0, 86_400.5),
        ("pools.default.max_scale_out_step", 1, 5000, 0, 5001),
        ("pools.default.max_scale_in_percent", 0.5, 100, 0, 100.5),
        ("pools.default.scale_in_window_s", 0, 3600, -0.5, 3600.5),
        ("pools.default.idle_window_s", 0, 86_400, -0.5, 86_400.5),
        ("pools.default.stale_after_s", 0.5, 3600, 0, 3600.5),
        ("pools.default.fallback_count", 0, 5000, -1, 5001),
    ],
)
def test_every_number_is_bounded(path: str, lowest: float, highest: float, below: float, above: float) -> None:
    def doc(value: float) -> dict[str, Any]:
        raw = copy.deepcopy(BOUNDED_BASE)
        *parents, leaf = path.split(".")
        target = raw
        for key in parents:
            target = target[key]
        target[leaf] = value
        return raw

    for value in (lowest, highest):
        parse_config(doc(value))
    for value in (below, above):
        with pytest.raises(ConfigError, match=r"must be (from|in) ") as caught:
            parse_config(doc(value))
        assert caught.value.field == path


def test_the_scale_in_window_holds_at_most_4000_ticks() -> None:
    # One recommendation per tick stays in the state item for the whole window (DynamoDB items: 400 KB).
    raw = copy.deepcopy(BOUNDED_BASE)
    raw["tick_interval_s"] = 0.5
    raw["pools"]["default"]["scale_in_window_s"] = 2000
    assert parse_config(raw).pools[0].scale_in_window_s == 2000
    raw["pools"]["default"]["scale_in_window_s"] = 2001
    with pytest.raises(ConfigError, match=r"^pools\.default\.scale_in_window_s: must be at most 4000 ticks"):
        parse_config(raw)


def test_terraform_upper_bounds_are_the_scalers() -> None:
    # tests/validations.tftest.hcl plans every setting at its upper bound (and fails one step above);
    # the scaler accepts exactly that document.
    hcl = (ROOT / "tests/validations.tftest.hcl").read_text()
    run = hcl[hcl.index('run "settings_at_their_upper_bounds"') :]
    run = run[: run.index("\n}\n")]
    values = {name: json.loads(number) for name, number in re.findall(r"\b(\w+)\s*=\s*([0-9.]+)\b", run)}
    pool_keys = {f.name for f in dataclasses.fields(PoolConfig)}
    pool = {k: v for k, v in values.items() if k in pool_keys}
    broker = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(BrokerConfig)}}
    top = {k: values[k] for k in ("tick_interval_s", "ticks_per_invocation")}
    assert len(pool) == 12
    assert len(broker) == 3
    raw = {
        "broker": {"url": "redis://redis.internal:6379/0", **broker},
        "cluster": "celery",
        "pools": {"default": {"service": "workers", "queues": ["celery"], **pool}},
        **top,
    }
    config = parse_config(raw)
    assert config.pools[0].max_workers == 5000
    for key, value in pool.items():
        if key != "target_utilisation" and key != "max_scale_in_percent":
            with pytest.raises(ConfigError):
                parse_config({**raw, "pools": {"default": {**raw["pools"]["default"], key: value + 1}}})


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "reports", "Reports.v2", "video_hd-1", "x" * 64, "9"])
def test_pool_names_that_are_keys_and_dimensions(name: str) -> None:
    raw = copy.deepcopy(VALID)
    raw["pools"][name] = raw["pools"].pop("reports")
    assert parse_config(raw).pools[1].name == name


@pytest.mark.parametrize("name", ["", " ", "a b", "x" * 65, "-a", ".a", ":a", "a/b", "a\n", "vidéo", "a*"])
def test_pool_names_that_are_not(name: str) -> None:
    raw = copy.deepcopy(VALID)
    raw["pools"][name] = raw["pools"].pop("reports")
    with pytest.raises(ConfigError, match=r"pool name .* must be 1-64 letters") as caught:
        parse_config(raw)
    assert caught.value.field == "pools"


@pytest.mark.parametrize("namespace", ["", "AWS/ECS", "a:b", "x" * 256])
def test_metrics_namespace_is_a_cloudwatch_namespace(namespace: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change("metrics_namespace", namespace))
    assert caught.value.field == "metrics_namespace"


@pytest.mark.parametrize(
    ("field", "value"),
    [("prewarm_confidence", 1), ("prewarm_max_misses", 0), ("prewarm_margin_s", -5), ("learned_prewarm", 1)],
)
def test_bad_prewarm_setting_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change(f"pools.default.{field}", value))
    assert caught.value.field == f"pools.default.{field}"
