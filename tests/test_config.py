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
    DEFAULT_PRIORITY_SEP,
    BrokerConfig,
    ConfigError,
    PoolConfig,
    ScalerConfig,
    load_config,
    parse_config,
)
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
    # its names and defaults must be PoolConfig's; concurrency is the pool's own, with the same default.
    scaling = _object_block("    scaling = optional(object({", "      schedules = optional(")
    pool_defaults = _defaults(PoolConfig)
    assert set(scaling) | {"schedules"} == set(pool_defaults) - {"concurrency"}
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
    assert pool["concurrency"] == pool_defaults["concurrency"]


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
