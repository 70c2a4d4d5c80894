"""The Lambda entry point: a few ticks per invocation, spaced ``tick_interval_s`` apart.

EventBridge invokes once a minute; running ``ticks_per_invocation`` ticks inside one invocation
sees a burst within seconds instead of a minute. A tick that asks workers to drain gets a follow-up
tick a few seconds later for those pools (:class:`celery_autoscaler.drain.TickSchedule`, which the
local demo and the simulator use too): it is not one of the ``ticks_per_invocation``. Everything
built here (config, broker URL, clients) is made once per container, at the first invocation, and
reused while the Lambda stays warm.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_autoscaler.config import ConfigError, ScalerConfig, load_config
from celery_autoscaler.drain import Drainer, TickSchedule, drainer_for
from celery_autoscaler.ecs import Actuator, EcsActuator
from celery_autoscaler.probe import Probe, probe_for
from celery_autoscaler.secrets import broker_url
from celery_autoscaler.state import DynamoStateStore, StateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import PoolOutcome, TickResult, run_tick

CONFIG_ENV = "CELERY_AUTOSCALER_CONFIG"
SAFETY_MARGIN_S = 3.0
"""Time kept in hand after the last tick so the invocation never hits its timeout mid-tick."""


@dataclass(frozen=True)
class Runtime:
    """What one warm Lambda container reuses across invocations."""

    config: ScalerConfig
    probe: Probe
    actuator: Actuator
    store: StateStore
    telemetry: Telemetry
    drainer: Drainer | None = None


@functools.cache
def runtime() -> Runtime:
    """Validate the config and build the clients once; a :class:`ConfigError` names the bad field."""
    text = os.environ.get(CONFIG_ENV)
    if text is None:
        raise ConfigError(CONFIG_ENV, "environment variable is not set")
    config = load_config(text)
    if config.state_table is None:
        raise ConfigError("state_table", "is required in Lambda: the state table makes overlapping ticks safe")
    url = broker_url(config.broker)
    return Runtime(
        config=config,
        probe=probe_for(config.broker, url),
        drainer=drainer_for(config.broker, url),
        actuator=EcsActuator(config.cluster),
        store=DynamoStateStore(config.state_table),
        telemetry=Telemetry(config.metrics_namespace),
    )


def summary(ticks: Sequence[TickResult | str], dry_run: bool, follow_ups: int = 0) -> dict[str, Any]:
    """A small JSON answer: totals, every failure (tick, pool, faults, error), and each pool's last decision.

    A ``str`` in ``ticks`` is the error of a tick that failed as a whole (a bug outside every pool).
    ``ticks`` counts the follow-ups too (``follow_ups`` says how many there were).
    """
    results = [t for t in ticks if isinstance(t, TickResult)]
    last: dict[str, PoolOutcome] = {o.pool: o for r in results for o in r.outcomes}
    failures: list[dict[str, Any]] = []
    for number, tick in enumerate(ticks):
        if isinstance(tick, str):
            failures.append({"tick": number, "pool": None, "faults": ["bug"], "error": tick})
            continue
        failed = (o for o in tick.outcomes if o.error)
        failures += [{"tick": number, "pool": o.pool, "faults": list(o.faults), "error": o.error} for o in failed]
    return {
        "ticks": len(ticks),
        "follow_ups": follow_ups,
        "dry_run": dry_run,
        "actions": sum(r.actions for r in results),
        "errors": len(failures),
        "failures": failures,
        "pools": {
            o.pool: {
                "desired": o.decision.desired if o.decision else None,
                "reason": o.decision.reason if o.decision else None,
                "acted": o.acted,
                "error": o.error,
            }
            for o in last.values()
        },
    }


def run_invocation(
    rt: Runtime,
    event: Mapping[str, Any],
    remaining_ms: Callable[[], int] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run up to ``ticks_per_invocation`` ticks and their follow-ups; stop early when another one would not
    fit the time left (the longest tick so far plus ``SAFETY_MARGIN_S``).

    A tick that fails as a whole (a bug outside every pool's handling) is logged with its traceback
    and counted; the remaining ticks still run.
    """
    config = rt.config
    dry_run = bool(event.get("dry_run")) or config.dry_run
    schedule = TickSchedule(clock(), config.tick_interval_s, config.ticks_per_invocation)
    longest = 0.0
    ticks: list[TickResult | str] = []
    follow_ups = 0
    while (tick := schedule.next(longest)) is not None:
        if ticks:
            wait = max(0.0, tick.at - clock())
            if remaining_ms is not None and remaining_ms() / 1000 < wait + longest + SAFETY_MARGIN_S:
                break
            sleep(wait)
        began = clock()
        draining: tuple[str, ...] = ()
        try:
            result = run_tick(
                config,
                rt.probe,
                rt.actuator,
                rt.store,
                began,
                dry_run=dry_run,
                telemetry=rt.telemetry,
                drainer=rt.drainer,
                follow_up=tick.follow_up,
            )
            ticks.append(result)
            draining = result.draining
        except Exception as exc:  # a bug outside every pool: the next tick may still work
            ticks.append(f"tick failed: {type(exc).__name__}: {exc}")
            rt.telemetry.tick_failed(exc, now=began)
        follow_ups += tick.follow_up is not None
        ended = clock()
        longest = max(longest, ended - began)
        schedule.ran(tick, ended, draining)
    return summary(ticks, dry_run, follow_ups)


def lambda_handler(event: Mapping[str, Any] | None, context: Any) -> dict[str, Any]:
    """AWS Lambda entry point (EventBridge schedule; ``{"dry_run": true}`` to decide without acting)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return run_invocation(runtime(), event or {}, remaining)
