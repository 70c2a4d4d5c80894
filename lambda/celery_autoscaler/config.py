"""Typed, validated scaler configuration.

The Terraform module writes one JSON document (the same schema as below) into the Lambda's
environment as ``CELERY_AUTOSCALER_CONFIG``. It is validated once at cold start so a bad value
fails loudly with the dotted path of the field instead of mis-scaling later.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from celery_autoscaler.schedules import CronError, Schedule, parse_cron, time_zone

DEFAULT_PRIORITY_SEP = "\x06\x16"
DEFAULT_PUBLISH_TIME_HEADER = "x_published_at"
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@\-]{1,200}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")


class ConfigError(ValueError):
    """A configuration value is wrong; ``field`` is its dotted path (``pools.default.max_workers``)."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path


@dataclass(frozen=True)
class BrokerConfig:
    """Where the Celery broker is and how Celery names its keys there.

    ``region`` and ``queue_name_prefix`` are SQS's: the transport options of those names (the region
    ``None``: the environment's, as kombu does).
    """

    url: str | None = None
    url_secret_arn: str | None = None
    management_url: str | None = None  # RabbitMQ: the management API, when not derived from the AMQP URL
    key_prefix: str = ""
    priority_sep: str = DEFAULT_PRIORITY_SEP
    publish_time_header: str = DEFAULT_PUBLISH_TIME_HEADER
    unacked_scan_interval_s: float = 60.0
    unacked_scan_cap: int = 10_000
    socket_timeout_s: float = 5.0
    region: str | None = None
    queue_name_prefix: str = ""


@dataclass(frozen=True)
class PoolConfig:
    """One ECS service of Celery workers consuming one or more queues: the unit that scales."""

    name: str
    service: str
    queues: tuple[str, ...]
    concurrency: int = 2
    min_workers: int = 0
    max_workers: int = 10
    target_utilisation: float = 1.0
    target_backlog_per_worker: float | None = None
    target_latency_s: float | None = None
    max_scale_out_step: int | None = None
    max_scale_in_percent: float = 100.0
    scale_in_window_s: float = 30.0
    idle_window_s: float = 120.0
    stale_after_s: float = 90.0
    fallback_count: int | None = None
    schedules: tuple[Schedule, ...] = ()

    @property
    def tasks_per_worker(self) -> float:
        """How much demand one worker is sized for: the backlog target, else concurrency x utilisation."""
        if self.target_backlog_per_worker is not None:
            return self.target_backlog_per_worker
        return self.concurrency * self.target_utilisation


@dataclass(frozen=True)
class ScalerConfig:
    """Everything one tick needs: the broker, the ECS cluster, the state table and the pools."""

    broker: BrokerConfig
    cluster: str
    pools: tuple[PoolConfig, ...]
    state_table: str | None = None
    tick_interval_s: float = 15.0
    ticks_per_invocation: int = 4
    dry_run: bool = False
    metrics_namespace: str = "CeleryAutoscaler"

    @property
    def queues(self) -> tuple[str, ...]:
        """Every configured queue once, in pool order."""
        return tuple(q for pool in self.pools for q in pool.queues)


_BROKER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "url": str,
    "url_secret_arn": str,
    "management_url": str,
    "key_prefix": str,
    "priority_sep": str,
    "publish_time_header": str,
    "unacked_scan_interval_s": (int, float),
    "unacked_scan_cap": int,
    "socket_timeout_s": (int, float),
    "region": str,
    "queue_name_prefix": str,
}
_POOL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "service": str,
    "queues": list,
    "concurrency": int,
    "min_workers": int,
    "max_workers": int,
    "target_utilisation": (int, float),
    "target_backlog_per_worker": (int, float),
    "target_latency_s": (int, float),
    "max_scale_out_step": int,
    "max_scale_in_percent": (int, float),
    "scale_in_window_s": (int, float),
    "idle_window_s": (int, float),
    "stale_after_s": (int, float),
    "fallback_count": int,
    "schedules": list,
}
_SCHEDULE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "cron": str,
    "time_zone": str,
    "min_workers": int,
    "lead_s": (int, float),
    "duration_s": (int, float),
}
_TOP_FIELDS: dict[str, type | tuple[type, ...]] = {
    "broker": dict,
    "cluster": str,
    "pools": dict,
    "state_table": str,
    "tick_interval_s": (int, float),
    "ticks_per_invocation": int,
    "dry_run": bool,
    "metrics_namespace": str,
}


def _typed(raw: dict[str, Any], schema: dict[str, type | tuple[type, ...]], path: str) -> dict[str, Any]:
    """Reject unknown keys and wrong types (bool is not an int here); null means 'use the default'."""
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        if key not in schema:
            raise ConfigError(f"{prefix}{key}", f"unknown field (known: {', '.join(sorted(schema))})")
        expected = schema[key]
        if value is None:
            continue
        is_bool_for_number = isinstance(value, bool) and expected is not bool
        if is_bool_for_number or not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{prefix}{key}", f"must be {names}, got {type(value).__name__}")
    return {k: v for k, v in raw.items() if v is not None}


def _require(condition: bool, field_path: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_path, message)


def _broker(raw: dict[str, Any]) -> BrokerConfig:
    values = _typed(raw, _BROKER_FIELDS, "broker")
    broker = BrokerConfig(**values)
    has_url, has_secret = broker.url is not None, broker.url_secret_arn is not None
    _require(has_url != has_secret, "broker.url", "give exactly one of broker.url and broker.url_secret_arn")
    if broker.url is not None:
        _require(
            broker.url.startswith(("redis://", "rediss://", "amqp://", "amqps://", "sqs://")),
            "broker.url",
            "must start with redis://, rediss://, amqp://, amqps:// or sqs://",
        )
    if broker.url_secret_arn is not None:
        _require(
            broker.url_secret_arn.startswith("arn:") and ":secretsmanager:" in broker.url_secret_arn,
            "broker.url_secret_arn",
            "must be a Secrets Manager secret ARN",
        )
    _require(broker.priority_sep != "", "broker.priority_sep", "must not be empty")
    _require(broker.publish_time_header != "", "broker.publish_time_header", "must not be empty")
    _require(broker.unacked_scan_interval_s >= 0, "broker.unacked_scan_interval_s", "must be >= 0")
    _require(broker.unacked_scan_cap >= 0, "broker.unacked_scan_cap", "must be >= 0")
    _require(broker.socket_timeout_s > 0, "broker.socket_timeout_s", "must be > 0")
    if broker.region is not None:
        _require(bool(_REGION.match(broker.region)), "broker.region", "must be an AWS region such as eu-west-1")
    return broker


def _pool(name: str, raw: Any) -> PoolConfig:
    path = f"pools.{name}"
    _require(isinstance(raw, dict), path, "must be an object")
    values = _typed(raw, _POOL_FIELDS, path)
    _require("service" in values, f"{path}.service", "is required")
    _require("queues" in values, f"{path}.queues", "is required")
    queues = values.pop("queues")
    schedules = tuple(_schedule(f"{path}.schedules[{i}]", item) for i, item in enumerate(values.pop("schedules", [])))
    _require(len(queues) > 0, f"{path}.queues", "must name at least one queue")
    for i, queue in enumerate(queues):
        _require(
            isinstance(queue, str) and bool(_QUEUE_NAME.match(queue)),
            f"{path}.queues[{i}]",
            f"must be a non-empty queue name of letters, digits and _.:@- (got {queue!r})",
        )
    _require(len(set(queues)) == len(queues), f"{path}.queues", "must not repeat a queue")
    pool = PoolConfig(name=name, queues=tuple(queues), schedules=schedules, **values)
    _require(pool.service != "", f"{path}.service", "must not be empty")
    _require(pool.concurrency >= 1, f"{path}.concurrency", "must be >= 1")
    _require(pool.min_workers >= 0, f"{path}.min_workers", "must be >= 0")
    _require(pool.max_workers >= 1, f"{path}.max_workers", "must be >= 1")
    _require(
        pool.min_workers <= pool.max_workers,
        f"{path}.min_workers",
        f"must be <= max_workers ({pool.min_workers} > {pool.max_workers})",
    )
    _require(0 < pool.target_utilisation <= 1, f"{path}.target_utilisation", "must be in (0, 1]")
    if pool.target_backlog_per_worker is not None:
        _require(pool.target_backlog_per_worker > 0, f"{path}.target_backlog_per_worker", "must be > 0")
    if pool.target_latency_s is not None:
        _require(pool.target_latency_s > 0, f"{path}.target_latency_s", "must be > 0")
    if pool.max_scale_out_step is not None:
        _require(pool.max_scale_out_step >= 1, f"{path}.max_scale_out_step", "must be >= 1")
    _require(0 < pool.max_scale_in_percent <= 100, f"{path}.max_scale_in_percent", "must be in (0, 100]")
    _require(pool.scale_in_window_s >= 0, f"{path}.scale_in_window_s", "must be >= 0")
    _require(pool.idle_window_s >= 0, f"{path}.idle_window_s", "must be >= 0")
    _require(pool.stale_after_s > 0, f"{path}.stale_after_s", "must be > 0")
    if pool.fallback_count is not None:
        _require(
            pool.min_workers <= pool.fallback_count <= pool.max_workers,
            f"{path}.fallback_count",
            "must be within [min_workers, max_workers]",
        )
    for i, schedule in enumerate(pool.schedules):
        _require(
            schedule.min_workers <= pool.max_workers,
            f"{path}.schedules[{i}].min_workers",
            f"must be <= max_workers ({schedule.min_workers} > {pool.max_workers})",
        )
    return pool


def _schedule(path: str, raw: Any) -> Schedule:
    """One declared window: a cron expression in a time zone, with a minimum, a lead and a duration."""
    _require(isinstance(raw, dict), path, "must be an object")
    values = _typed(raw, _SCHEDULE_FIELDS, path)
    for key in ("cron", "min_workers", "duration_s"):
        _require(key in values, f"{path}.{key}", "is required")
    values.setdefault("name", path.rpartition(".")[2])
    schedule = Schedule(**values)
    try:
        parse_cron(schedule.cron)
    except CronError as exc:
        raise ConfigError(f"{path}.cron", f"{schedule.cron!r} is not a 5-field cron expression: {exc}") from exc
    try:
        time_zone(schedule.time_zone)
    except CronError as exc:
        raise ConfigError(f"{path}.time_zone", f"{exc} (an IANA name such as Europe/Berlin, or UTC)") from exc
    _require(schedule.min_workers >= 1, f"{path}.min_workers", "must be >= 1")
    _require(schedule.lead_s >= 0, f"{path}.lead_s", "must be >= 0 (seconds before each occurrence)")
    _require(
        schedule.duration_s > 0,
        f"{path}.duration_s",
        "must be > 0: the window would end before it starts (it lasts duration_s after each occurrence)",
    )
    return schedule


def parse_config(raw: Any) -> ScalerConfig:
    """Build a :class:`ScalerConfig` from the decoded JSON document, or raise :class:`ConfigError`."""
    _require(isinstance(raw, dict), "(root)", "must be a JSON object")
    values = _typed(raw, _TOP_FIELDS, "")
    _require("broker" in values, "broker", "is required")
    _require("cluster" in values, "cluster", "is required")
    _require("pools" in values, "pools", "is required")
    broker = _broker(values.pop("broker"))
    pools_raw: dict[str, Any] = values.pop("pools")
    _require(len(pools_raw) > 0, "pools", "must define at least one pool")
    pools = tuple(_pool(name, body) for name, body in pools_raw.items())
    seen: dict[str, str] = {}
    for pool in pools:
        for queue in pool.queues:
            _require(
                queue not in seen,
                f"pools.{pool.name}.queues",
                f"queue {queue!r} is already consumed by pool {seen.get(queue)!r}",
            )
            seen[queue] = pool.name
    config = ScalerConfig(broker=broker, pools=pools, **values)
    _require(config.cluster != "", "cluster", "must not be empty")
    _require(config.tick_interval_s > 0, "tick_interval_s", "must be > 0")
    _require(config.ticks_per_invocation >= 1, "ticks_per_invocation", "must be >= 1")
    return config


def load_config(text: str) -> ScalerConfig:
    """Parse the JSON text of a config document; invalid JSON is a :class:`ConfigError` too."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("(root)", f"not valid JSON: {exc}") from exc
    return parse_config(raw)
