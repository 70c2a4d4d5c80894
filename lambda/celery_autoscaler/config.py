"""Typed, validated scaler configuration.

The Terraform module writes one JSON document (the same schema as below) into the Lambda's
environment as ``CELERY_AUTOSCALER_CONFIG``. It is validated once at cold start so a bad value
fails loudly with the dotted path of the field instead of mis-scaling later.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from celery_autoscaler.schedules import CronError, Schedule, parse_cron, time_zone

DEFAULT_PRIORITY_SEP = "\x06\x16"
DEFAULT_PUBLISH_TIME_HEADER = "x_published_at"
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:@\-]{1,200}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""Safe as a DynamoDB key, a CloudWatch dimension value and a log field; every module pool name fits."""
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+")
_METRICS_NAMESPACE = re.compile(r"[^:]{1,255}")


class ConfigError(ValueError):
    """A configuration value is wrong; ``field`` is its dotted path (``pools.default.max_workers``)."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


# --- broker URLs ---------------------------------------------------------------------------------


_MAX_REDIS_DB = 2**31 - 1


def _any_path(path: str, query: dict[str, list[str]]) -> str | None:
    return None


def _redis_path(path: str, query: dict[str, list[str]]) -> str | None:
    """Redis selects a database by the path (``/2``) or ``?db=2``: a non-negative integer."""
    dbs = [path[1:]] if path not in ("", "/") else []
    dbs += query.get("db", [])
    for db in dbs:
        if not (db.isascii() and db.isdigit() and len(db) <= 10 and int(db) <= _MAX_REDIS_DB):
            return f"db must be a whole number from 0 to {_MAX_REDIS_DB} (the path /N or ?db=N)"
    return None


@dataclass(frozen=True)
class BrokerScheme:
    """How URLs of one scheme are checked; a new broker is one entry in :data:`BROKER_SCHEMES`."""

    default_port: int | None
    host_required: bool = True
    check_path: Callable[[str, dict[str, list[str]]], str | None] = _any_path
    """The problem with the path and query in words (never quoting them), or None."""


BROKER_SCHEMES: dict[str, BrokerScheme] = {
    "redis": BrokerScheme(default_port=6379, check_path=_redis_path),
    "rediss": BrokerScheme(default_port=6379, check_path=_redis_path),
    # The path is the RabbitMQ vhost ("//" is "/").
    "amqp": BrokerScheme(default_port=5672),
    "amqps": BrokerScheme(default_port=5671),
    # kombu's SQS: "sqs://" or "sqs://KEY:SECRET@" (the environment's endpoint), or an endpoint host.
    "sqs": BrokerScheme(default_port=None, host_required=False),
}


@dataclass(frozen=True)
class BrokerUrl:
    """The checked parts of a broker URL (no credentials: the URL itself is never logged)."""

    scheme: str
    host: str
    port: int | None


def parse_broker_url(url: str, field_path: str) -> BrokerUrl:
    """Check ``url`` against its scheme's rules, or raise :class:`ConfigError` without quoting it."""
    if url == "" or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(field_path, "must be a URL without whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [IPv6] host
        raise ConfigError(field_path, "cannot be parsed as a URL") from None
    name = parts.scheme if "://" in url else ""
    scheme = BROKER_SCHEMES.get(name)
    if scheme is None:
        given = f"{name}://" if name else "(none)"
        supported = ", ".join(f"{known}://" for known in sorted(BROKER_SCHEMES))
        raise ConfigError(field_path, f"unsupported scheme {given} (supported: {supported})")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None:
        port = scheme.default_port
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(field_path, "port must be a number from 1 to 65535")
    host = parts.hostname or ""
    if scheme.host_required and host == "":
        raise ConfigError(field_path, "has no host")
    problem = scheme.check_path(parts.path, parse_qs(parts.query))
    if problem is not None:
        raise ConfigError(field_path, problem)
    return BrokerUrl(scheme=parts.scheme, host=host, port=port)


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
class PricesConfig:
    """Fargate prices in USD for the cost metrics: configuration, never fetched at run time.

    Defaults: us-east-1 Linux on-demand prices (2024); Fargate Spot as a discount off them (AWS quotes
    "up to 70%", and the real Spot price moves), so ``EstimatedCostUSD`` is an estimate.
    """

    x86_64_vcpu_hour_usd: float = 0.04048
    x86_64_gb_hour_usd: float = 0.004445
    arm64_vcpu_hour_usd: float = 0.03238
    arm64_gb_hour_usd: float = 0.00356
    spot_discount_percent: float = 70.0

    def task_hour_usd(self, cpu: int, memory: int, architecture: str, spot_weight: float) -> float:
        """One task's blended price per hour: ``cpu`` in CPU units (1024 = 1 vCPU), ``memory`` in MiB."""
        arm = architecture == "ARM64"
        vcpu_price = self.arm64_vcpu_hour_usd if arm else self.x86_64_vcpu_hour_usd
        gb_price = self.arm64_gb_hour_usd if arm else self.x86_64_gb_hour_usd
        on_demand = cpu / 1024 * vcpu_price + memory / 1024 * gb_price
        return on_demand * (1 - spot_weight / 100 * self.spot_discount_percent / 100)


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
    learned_prewarm: bool = True
    prewarm_confidence: int = 3
    prewarm_margin_s: float = 0.0
    prewarm_max_misses: int = 2
    wait_target_s: float | None = None
    drain_time_s: float = 30.0
    scale_in_tolerance: float = 0.1
    start_delay_s: float = 55.0
    cpu: int = 256
    memory: int = 512
    architecture: str = "X86_64"
    spot_weight: float = 0.0

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
    prices: PricesConfig = PricesConfig()

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
    "wait_target_s": (int, float),
    "drain_time_s": (int, float),
    "scale_in_tolerance": (int, float),
    "start_delay_s": (int, float),
    "schedules": list,
    "learned_prewarm": bool,
    "prewarm_confidence": int,
    "prewarm_margin_s": (int, float),
    "prewarm_max_misses": int,
    "cpu": int,
    "memory": int,
    "architecture": str,
    "spot_weight": (int, float),
}
_PRICE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "x86_64_vcpu_hour_usd": (int, float),
    "x86_64_gb_hour_usd": (int, float),
    "arm64_vcpu_hour_usd": (int, float),
    "arm64_gb_hour_usd": (int, float),
    "spot_discount_percent": (int, float),
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
    "prices": dict,
}


@dataclass(frozen=True)
class _Range:
    """Where a number may lie; ``low_open`` excludes ``low`` itself."""

    low: int
    high: int
    low_open: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float):
            return False
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    def __str__(self) -> str:
        if self.low_open:
            return f"in ({self.low}, {self.high}]"
        return f"from {self.low} to {self.high}"


MAX_WORKERS = 5000
"""ECS runs at most 5000 tasks per service."""
DAY_S = 86_400
WEEK_S = 7 * DAY_S
MAX_WINDOW_TICKS = 4000
"""The state item keeps one recommendation per tick of the scale-in window: 4000 stay near 120 KB (DynamoDB: 400 KB)."""

_BROKER_RANGES = {
    "unacked_scan_interval_s": _Range(0, 3600),
    "unacked_scan_cap": _Range(0, 1_000_000),
    "socket_timeout_s": _Range(0, 60, low_open=True),
}
_POOL_RANGES = {
    "concurrency": _Range(1, 10_000),
    "min_workers": _Range(0, MAX_WORKERS),
    "max_workers": _Range(1, MAX_WORKERS),
    "target_utilisation": _Range(0, 1, low_open=True),
    "target_backlog_per_worker": _Range(0, 1_000_000, low_open=True),
    "target_latency_s": _Range(0, DAY_S, low_open=True),
    "max_scale_out_step": _Range(1, MAX_WORKERS),
    "max_scale_in_percent": _Range(0, 100, low_open=True),
    "scale_in_window_s": _Range(0, 3600),
    "idle_window_s": _Range(0, DAY_S),
    "stale_after_s": _Range(0, 3600, low_open=True),
    "fallback_count": _Range(0, MAX_WORKERS),
}
_TOP_RANGES = {
    "tick_interval_s": _Range(0, 900, low_open=True),
    "ticks_per_invocation": _Range(1, 900),
}


def _typed(
    raw: dict[str, Any],
    schema: dict[str, type | tuple[type, ...]],
    ranges: dict[str, _Range],
    path: str,
) -> dict[str, Any]:
    """Reject unknown keys, wrong types (bool is not an int here) and numbers out of range.

    ``null`` means 'use the default'. Only finite numbers pass, and big integers are refused by
    their range before anything converts them to float.
    """
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
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{key}", "must be a finite number")
        if key in ranges and value not in ranges[key]:
            raise ConfigError(f"{prefix}{key}", f"must be {ranges[key]}")
    return {k: v for k, v in raw.items() if v is not None}


def _require(condition: bool, field_path: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_path, message)


def _broker(raw: dict[str, Any]) -> BrokerConfig:
    values = _typed(raw, _BROKER_FIELDS, _BROKER_RANGES, "broker")
    broker = BrokerConfig(**values)
    has_url, has_secret = broker.url is not None, broker.url_secret_arn is not None
    _require(has_url != has_secret, "broker.url", "give exactly one of broker.url and broker.url_secret_arn")
    if broker.url is not None:
        parse_broker_url(broker.url, "broker.url")
    if broker.url_secret_arn is not None:
        _require(
            bool(_SECRET_ARN.fullmatch(broker.url_secret_arn)),
            "broker.url_secret_arn",
            "must be a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
        )
    _require(broker.priority_sep != "", "broker.priority_sep", "must not be empty")
    _require(broker.publish_time_header != "", "broker.publish_time_header", "must not be empty")
    if broker.region is not None:
        _require(bool(_REGION.fullmatch(broker.region)), "broker.region", "must be an AWS region such as eu-west-1")
    return broker


def _pool(name: str, raw: Any) -> PoolConfig:
    _require(
        bool(_POOL_NAME.fullmatch(name)),
        "pools",
        f"pool name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    )
    path = f"pools.{name}"
    _require(isinstance(raw, dict), path, "must be an object")
    values = _typed(raw, _POOL_FIELDS, _POOL_RANGES, path)
    _require("service" in values, f"{path}.service", "is required")
    _require("queues" in values, f"{path}.queues", "is required")
    queues = values.pop("queues")
    schedules = tuple(_schedule(f"{path}.schedules[{i}]", item) for i, item in enumerate(values.pop("schedules", [])))
    _require(len(queues) > 0, f"{path}.queues", "must name at least one queue")
    for i, queue in enumerate(queues):
        _require(
            isinstance(queue, str) and bool(_QUEUE_NAME.fullmatch(queue)),
            f"{path}.queues[{i}]",
            f"must be a non-empty queue name of letters, digits and _.:@- (got {queue!r})",
        )
    _require(len(set(queues)) == len(queues), f"{path}.queues", "must not repeat a queue")
    pool = PoolConfig(name=name, queues=tuple(queues), schedules=schedules, **values)
    _require(pool.service != "", f"{path}.service", "must not be empty")
    _require(
        pool.min_workers <= pool.max_workers,
        f"{path}.min_workers",
        f"must be <= max_workers ({pool.min_workers} > {pool.max_workers})",
    )
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
    if pool.wait_target_s is not None:
        _require(pool.wait_target_s > 0, f"{path}.wait_target_s", "must be > 0")
    _require(pool.drain_time_s > 0, f"{path}.drain_time_s", "must be > 0")
    _require(0 <= pool.scale_in_tolerance < 1, f"{path}.scale_in_tolerance", "must be in [0, 1)")
    _require(pool.start_delay_s >= 0, f"{path}.start_delay_s", "must be >= 0")
    _require(pool.prewarm_confidence >= 2, f"{path}.prewarm_confidence", "must be >= 2 (onsets at the same period)")
    _require(pool.prewarm_margin_s >= 0, f"{path}.prewarm_margin_s", "must be >= 0")
    _require(pool.prewarm_max_misses >= 1, f"{path}.prewarm_max_misses", "must be >= 1")
    _require(pool.cpu > 0, f"{path}.cpu", "must be > 0 (CPU units: 1024 = 1 vCPU)")
    _require(pool.memory > 0, f"{path}.memory", "must be > 0 (MiB)")
    _require(pool.architecture in ("X86_64", "ARM64"), f"{path}.architecture", "must be X86_64 or ARM64")
    _require(0 <= pool.spot_weight <= 100, f"{path}.spot_weight", "must be a percentage in [0, 100]")
    return pool


def _schedule(path: str, raw: Any) -> Schedule:
    """One declared window: a cron expression in a time zone, with a minimum, a lead and a duration."""
    _require(isinstance(raw, dict), path, "must be an object")
    values = _typed(raw, _SCHEDULE_FIELDS, {}, path)
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
    _require(schedule.lead_s <= DAY_S, f"{path}.lead_s", f"must be at most {DAY_S} (a day)")
    _require(
        schedule.duration_s > 0,
        f"{path}.duration_s",
        "must be > 0: the window would end before it starts (it lasts duration_s after each occurrence)",
    )
    _require(schedule.duration_s <= WEEK_S, f"{path}.duration_s", f"must be at most {WEEK_S} (a week)")
    return schedule


def _prices(raw: dict[str, Any]) -> PricesConfig:
    prices = PricesConfig(**_typed(raw, _PRICE_FIELDS, {}, "prices"))
    for name in _PRICE_FIELDS:
        _require(getattr(prices, name) >= 0, f"prices.{name}", "must be >= 0")
    _require(prices.spot_discount_percent <= 100, "prices.spot_discount_percent", "must be <= 100")
    return prices


def parse_config(raw: Any) -> ScalerConfig:
    """Build a :class:`ScalerConfig` from the decoded JSON document, or raise :class:`ConfigError`."""
    _require(isinstance(raw, dict), "(root)", "must be a JSON object")
    values = _typed(raw, _TOP_FIELDS, _TOP_RANGES, "")
    _require("broker" in values, "broker", "is required")
    _require("cluster" in values, "cluster", "is required")
    _require("pools" in values, "pools", "is required")
    broker = _broker(values.pop("broker"))
    prices = _prices(values.pop("prices", {}))
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
    config = ScalerConfig(broker=broker, pools=pools, prices=prices, **values)
    _require(config.cluster != "", "cluster", "must not be empty")
    for pool in pools:
        _require(
            pool.scale_in_window_s <= MAX_WINDOW_TICKS * config.tick_interval_s,
            f"pools.{pool.name}.scale_in_window_s",
            f"must be at most {MAX_WINDOW_TICKS} ticks of tick_interval_s ({config.tick_interval_s:g} s)",
        )
    namespace = config.metrics_namespace
    _require(
        bool(_METRICS_NAMESPACE.fullmatch(namespace)) and not namespace.startswith("AWS/"),
        "metrics_namespace",
        "must be 1-255 characters without ':' and must not start with AWS/",
    )
    return config


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number (only finite numbers are allowed)")


def load_config(text: str) -> ScalerConfig:
    """Parse the JSON text of a config document; invalid JSON (NaN and Infinity included) is a :class:`ConfigError`."""
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise ConfigError("(root)", f"not valid JSON: {exc}") from exc
    return parse_config(raw)
