"""What a tick saw and did, as JSON log lines and CloudWatch EMF metrics on one stream.

Telemetry observes, never decides: nothing here feeds back into the policy. In Lambda, stdout goes
to CloudWatch Logs, where a JSON line with an ``_aws`` block becomes metrics (Embedded Metric
Format) without any PutMetricData call, and every other line stays searchable with Logs Insights.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from celery_autoscaler.tick import PoolOutcome

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, message, and every ``extra`` field as is."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(json_safe(line), default=str, separators=(",", ":"), allow_nan=False)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities) replaced by ``None``: always valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _number(value: float | int | None) -> bool:
    return value is not None and math.isfinite(value)


def emf_document(
    namespace: str, dimensions: dict[str, str], metrics: dict[str, tuple[float | int | None, str]], timestamp: float
) -> dict[str, Any] | None:
    """An EMF object for ``metrics`` (name -> (value, unit)); unknown (None) values are left out."""
    known = {name: (value, unit) for name, (value, unit) in metrics.items() if _number(value)}
    if not known:
        return None
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(timestamp * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in known.items()],
                }
            ],
        },
        **dimensions,
    }
    document.update({name: value for name, (value, _) in known.items()})
    return document


def _broker_unreadable(outcome: PoolOutcome) -> bool:
    """The pool's load could not be read this tick (broker down or untrusted, or one of its queues unreadable)."""
    load_missing = outcome.measurements is not None and outcome.measurements.load is None
    return load_missing or "broker" in outcome.faults or "queue" in outcome.faults


def _desired_set(outcome: PoolOutcome) -> int | None:
    """The count the tick set (or would set): fence and drain's when it is in use, else the decision's."""
    m, decision, drain = outcome.measurements, outcome.decision, outcome.drain
    if drain is not None and decision is not None:
        return drain.desired
    return decision.desired if decision else (m.current_desired if m else None)


class Telemetry:
    """Writes the tick's log lines and EMF documents to ``stream`` (stdout unless a test injects one)."""

    def __init__(self, namespace: str, stream: TextIO | None = None) -> None:
        self.namespace = namespace
        self.stream = stream if stream is not None else sys.stdout
        # A private logger (not in logging's registry): no duplicated handlers, no root-logger formats.
        self.logger = logging.Logger("celery_autoscaler", logging.INFO)
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(JsonFormatter())
        self.logger.addHandler(handler)

    def _emit(self, document: dict[str, Any] | None) -> None:
        if document is not None:
            self.stream.write(json.dumps(json_safe(document), separators=(",", ":"), allow_nan=False) + "\n")
            self.stream.flush()

    def tick_failed(self, exc: BaseException, *, now: float) -> None:
        """A tick that raised as a whole (a bug outside every pool): the traceback and ``ScalerBugs`` without a pool."""
        self.logger.error("tick failed", exc_info=exc, extra={"error": f"{type(exc).__name__}: {exc}"})
        self._emit(emf_document(self.namespace, {}, {"ScalerBugs": (1, "Count")}, now))

    def tick_done(self, *, now: float) -> None:
        """``Ticks`` = 1 (no dimensions) once per completed tick: its absence is what the scaler-silent alarm sees."""
        self._emit(emf_document(self.namespace, {}, {"Ticks": (1, "Count")}, now))

    def pool(self, outcome: PoolOutcome, *, dry_run: bool, now: float) -> None:
        """One log line and the EMF metrics for one pool at one tick."""
        m = outcome.measurements
        load = m.load if m is not None else None
        decision = outcome.decision
        queues = list(outcome.queues.values())  # empty when the broker could not be read
        line: dict[str, Any] = {
            "pool": outcome.pool,
            "service": outcome.service,
            "measurements": None if m is None else outcome.measured(),
            "decision": None if decision is None else {"desired": decision.desired},
            # Which estimates sized the pool and where they came from (counters, fallback or none).
            "estimates": None if decision is None or decision.estimates is None else decision.estimates.summary(),
            "reason": decision.reason if decision is not None else None,
            "acted": outcome.acted,
            "dry_run": dry_run,
            "conflict": outcome.conflict,
            "error": outcome.error,
            "faults": list(outcome.faults),
            "protected_tasks": outcome.protected_tasks,
            "unreadable_queues": {name: q.error for name, q in outcome.queues.items() if q.error is not None},
            "paused": outcome.paused(),
            "drain": outcome.drained(),
            "follow_up": outcome.follow_up,
            "pinned_at_max": decision is not None and decision.wanted is not None,
            "worker_seconds": outcome.worker_seconds,
            "estimated_cost_usd": outcome.cost_usd,
        }
        if outcome.traceback is not None:
            line["traceback"] = outcome.traceback
        level = logging.ERROR if outcome.error else logging.INFO
        self.logger.log(level, "pool tick", extra=line)

        pool_dims = {"Pool": outcome.pool}
        estimates = decision.estimates if decision is not None else None
        drain = outcome.drained()
        self._emit(
            emf_document(
                self.namespace,
                pool_dims,
                {
                    "QueueDepth": (load.waiting if load else None, "Count"),
                    "InFlight": (load.in_flight if load else None, "Count"),
                    "OldestTaskAgeSeconds": (load.oldest_age_s if load else None, "Seconds"),
                    "DesiredCount": (_desired_set(outcome), "Count"),
                    "RunningCount": (m.running if m else None, "Count"),
                    "ArrivalRate": (estimates.arrival_rate if estimates else None, "Count/Second"),
                    "MeanRunTimeSeconds": (estimates.mean_run_s if estimates else None, "Seconds"),
                    "StartDelaySeconds": (estimates.start_delay_s if estimates else None, "Seconds"),
                    "ScalingActions": (1 if outcome.acted else 0, "Count"),
                    "ScalerErrors": (1 if outcome.error else 0, "Count"),
                    "UnreadableQueues": (sum(q.error is not None for q in queues) if queues else None, "Count"),
                    "UndeclaredQueues": (sum(q.declared is False for q in queues) if queues else None, "Count"),
                    "Paused": (1 if outcome.pause is not None else 0, "Count"),
                    "DrainedWorkers": (drain["drained"] if drain is not None else None, "Count"),
                    "PinnedAtMax": (None if decision is None else int(decision.wanted is not None), "Count"),
                    "WorkerSeconds": (outcome.worker_seconds, "Seconds"),
                    "EstimatedCostUSD": (outcome.cost_usd, "None"),
                    "BrokerUnreadable": (1 if _broker_unreadable(outcome) else 0, "Count"),
                    # One metric per fault kind, only on ticks that had it (BrokerErrors, StateErrors, ScalerBugs...).
                    **{fault.metric: (1, "Count") for fault in outcome.faults if fault.metric is not None},
                },
                now,
            )
        )
        for name, q in outcome.queues.items():
            self._emit(
                emf_document(
                    self.namespace,
                    {"Pool": outcome.pool, "Queue": name},
                    {
                        "QueueDepth": (q.waiting, "Count"),
                        "InFlight": (q.unacked, "Count"),
                        "OldestTaskAgeSeconds": (q.oldest_age_s, "Seconds"),
                    },
                    now,
                )
            )
