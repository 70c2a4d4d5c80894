"""Where the worker helper keeps its per-queue task counters in the broker.

Standard library only: the worker helper (which needs Celery only) writes these keys and the probe
reads them, so both import the names from here. Counters are cumulative (HINCRBY on one hash per
queue): a lost tick loses nothing, and a counter that goes down means the key was reset.
"""

from __future__ import annotations

STATS_KEY = "_celery_autoscaler.stats"
COMPLETED_FIELD = "completed"
"""Tasks from this queue that finished (success, failure or retry), all workers together."""
RUN_MS_FIELD = "run_ms"
"""Their total run time in milliseconds."""


def stats_key(key_prefix: str, queue: str) -> str:
    """The hash holding ``queue``'s counters, under Celery's ``global_keyprefix`` like kombu's own keys."""
    return f"{key_prefix}{STATS_KEY}.{queue}"
