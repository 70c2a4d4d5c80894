"""An operator's pause of one pool, kept in the pool's state item so it outlives any deploy of the scaler.

``celery-autoscaler pause POOL [--count N] [--for DURATION]`` writes it and ``resume`` removes it,
both with the state table's conditional write on the same item the scaler saves, so a tick that read
the item before the pause was written cannot save (and so cannot act) after it: the pause wins.

While a pause is active the scaler keeps measuring and logging but holds the pool's desired count,
or sets exactly ``count`` (not clamped to ``[min_workers, max_workers]``: the operator's number wins,
and the CLI warns when it is outside them). A pause with ``until`` lapses by itself at that time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNIT_S = (86400, 3600, 60, 1)


@dataclass(frozen=True)
class Pause:
    """Who paused the pool, when, until when (``None``: until resumed) and at which count (``None``: hold)."""

    since: float
    by: str
    until: float | None = None
    count: int | None = None

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def describe(self) -> str:
        """``paused by ops since 08:00:00Z until 09:00:00Z``: the words every log line and reason carries."""
        text = f"paused by {self.by} since {_clock(self.since)}"
        return text + (f" until {_clock(self.until)}" if self.until is not None else " until resumed")

    @classmethod
    def from_json(cls, body: Any) -> Pause | None:
        """The pause stored as ``body`` (``None``: not paused); ``ValueError`` naming the field if malformed."""
        if body is None:
            return None
        if not isinstance(body, dict):
            raise ValueError("is not an object")
        since: Any = body.get("since")
        by, until, count = body.get("by"), body.get("until"), body.get("count")
        if not _is_number(since):
            raise ValueError("field 'since' is not a time")
        if not isinstance(by, str):
            raise ValueError("field 'by' is not a string")
        if until is not None and not _is_number(until):
            raise ValueError("field 'until' is not a time")
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            raise ValueError("field 'count' is not a count")
        return cls(since=float(since), by=by, until=None if until is None else float(until), count=count)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` or a bare number of seconds; ValueError otherwise."""
    if text.isdigit():
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if match is None or not any(match.groups()):
            raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 2h, 1d or 1h30m")
        seconds = float(sum(int(part or 0) * unit for part, unit in zip(match.groups(), _UNIT_S, strict=True)))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds
