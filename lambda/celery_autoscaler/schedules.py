"""Declared schedules: 5-field cron expressions in UTC or a named IANA time zone, and the floor they set.

Pure and standard-library only (``zoneinfo``), so the policy, the config check and the simulator share it.

Cron syntax: ``minute hour day-of-month month day-of-week``; each field is ``*``, a value, a range
``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list of those; months ``jan``-``dec`` and days
``sun``-``sat`` by name (either case), Sunday also ``7``. As in Vixie cron, when both day fields are
restricted a day matches if either does.

Occurrences in a time zone are every instant at which the zone's clock shows a matching minute
(seconds 0): a minute the clock shows twice (clocks going back) occurs twice, and a minute the clock
skips (clocks going forward) occurs at the instant it would have shown it (PEP 495's ``fold=0``: 02:30
on Europe/Berlin's spring day is 03:30 CEST), so a window is never lost to a DST change.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()), ("month", 1, 12, MONTHS))
_DOW = ("day of week", 0, 7, DAYS)
_ITEM = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/([0-9]+))?$")
SEARCH_DAYS = 366 * 29
"""How far ``next_after``/``previous`` look: a 29 February that is a Monday recurs within 28 years."""
_MAX_SHIFT = timedelta(hours=3)
"""More than any UTC offset change at a DST transition: bounds the search inside one day."""


class CronError(ValueError):
    """The expression is not valid cron; the message says which field and why."""


def _value(text: str, names: tuple[str, ...], field: str) -> int:
    if text.isdigit():
        return int(text)
    if text in names:
        return names.index(text) + (1 if field == "month" else 0)
    raise CronError(f"{field}: {text!r} is not a number{' or a name' if names else ''}")


def _field(text: str, spec: tuple[str, int, int, tuple[str, ...]]) -> frozenset[int]:
    field, low, high, names = spec
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise CronError(f"{field}: {item!r} is not a value, range or step")
        span, step_text = match.groups()
        step = int(step_text) if step_text else 1
        if step < 1:
            raise CronError(f"{field}: step must be >= 1 (got {item!r})")
        if span == "*":
            start, end = low, high
        else:
            first, _, last = span.partition("-")
            start = _value(first, names, field)
            end = _value(last, names, field) if last else (high if step_text else start)
        if not low <= start <= high or not low <= end <= high:
            raise CronError(f"{field}: {item!r} is outside {low}-{high}")
        if start > end:
            raise CronError(f"{field}: range {item!r} runs backwards")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the matching values of each field (weekday 0 = Sunday)."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def matches_day(self, day: date) -> bool:
        """Whether ``day`` (a local calendar date) is one this expression runs on."""
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow


@lru_cache(maxsize=256)
def parse_cron(text: str) -> Cron:
    """Parse a 5-field cron expression, or raise :class:`CronError` saying what is wrong."""
    parts = text.strip().lower().split()
    if len(parts) != 5:
        raise CronError(f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    minutes, hours, days, months = (_field(p, spec) for p, spec in zip(parts, _FIELDS, strict=False))
    weekdays = frozenset(d % 7 for d in _field(parts[4], _DOW))
    return Cron(
        text=text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=days,
        months=months,
        weekdays=weekdays,
        any_day=parts[2].startswith("*"),
        any_weekday=parts[4].startswith("*"),
    )


@lru_cache(maxsize=64)
def time_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; :class:`CronError` if this system's time zone database does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


def _instants(wall: datetime, zone: ZoneInfo) -> list[float]:
    """The epoch seconds at which ``zone``'s clock shows the naive ``wall`` time (see the module docstring)."""
    found = []
    for fold in (0, 1):
        at = wall.replace(tzinfo=zone, fold=fold).timestamp()
        if datetime.fromtimestamp(at, zone).replace(tzinfo=None) == wall:
            found.append(at)
    if not found:  # skipped by a forward change: when it would have been, under the offset before
        found.append(wall.replace(tzinfo=zone, fold=0).timestamp())
    return sorted(set(found))


@lru_cache(maxsize=1024)
def _day_instants(cron: Cron, day: date, zone: ZoneInfo) -> tuple[float, ...]:
    """Every occurrence whose wall time falls on the local date ``day``, in order (cached: ticks repeat days)."""
    if not cron.matches_day(day):
        return ()
    midnight = datetime(day.year, day.month, day.day)
    start, end = midnight.replace(tzinfo=zone), (midnight + timedelta(days=1)).replace(tzinfo=zone)
    if start.utcoffset() == end.utcoffset() == (start + timedelta(hours=12)).utcoffset():
        # No offset change that day (all but two days a year): wall time maps to UTC by one offset.
        base = start.timestamp()
        return tuple(base + h * 3600.0 + m * 60.0 for h in cron.hours for m in cron.minutes)
    walls = (midnight.replace(hour=h, minute=m) for h in cron.hours for m in cron.minutes)
    return tuple(sorted({at for wall in walls for at in _instants(wall, zone)}))


def next_after(cron: Cron, zone: ZoneInfo, t: float) -> float | None:
    """The first occurrence strictly after epoch second ``t``, or ``None`` within :data:`SEARCH_DAYS`."""
    day = (datetime.fromtimestamp(t, zone) - _MAX_SHIFT).date()
    best: float | None = None
    for _ in range(SEARCH_DAYS):
        instants = _day_instants(cron, day, zone)
        i = bisect_right(instants, t)
        if i < len(instants) and (best is None or instants[i] < best):
            best = instants[i]
        midnight = datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
        if best is not None and midnight - _MAX_SHIFT.total_seconds() > best:
            return best
        day += timedelta(days=1)
    return best


def previous(cron: Cron, zone: ZoneInfo, t: float) -> float | None:
    """The last occurrence at or before epoch second ``t``, or ``None`` within :data:`SEARCH_DAYS`."""
    day = (datetime.fromtimestamp(t, zone) + _MAX_SHIFT).date()
    best: float | None = None
    for _ in range(SEARCH_DAYS):
        instants = _day_instants(cron, day, zone)
        i = bisect_right(instants, t)
        if i > 0 and (best is None or instants[i - 1] > best):
            best = instants[i - 1]
        end = (datetime(day.year, day.month, day.day) + timedelta(days=1)).replace(tzinfo=zone).timestamp()
        if best is not None and end + _MAX_SHIFT.total_seconds() < best:
            return best
        day -= timedelta(days=1)
    return best


@dataclass(frozen=True)
class Schedule:
    """A declared minimum: at least ``min_workers`` from ``lead_s`` before each occurrence of ``cron`` in
    ``time_zone`` until ``duration_s`` after it (a window; or "pre-warm N workers L s before" with a lead)."""

    name: str
    cron: str
    min_workers: int
    duration_s: float
    lead_s: float = 0.0
    time_zone: str = "UTC"

    def active(self, now: float) -> bool:
        """Whether ``now`` is inside one of this schedule's windows: [occurrence - lead, occurrence + duration)."""
        last = previous(parse_cron(self.cron), time_zone(self.time_zone), now + self.lead_s)
        return last is not None and now < last + self.duration_s


def schedule_floor(schedules: tuple[Schedule, ...], now: float) -> tuple[int, str | None]:
    """The highest minimum of the schedules active at ``now`` and the name of the one that sets it."""
    best, name = 0, None
    for schedule in schedules:
        if schedule.min_workers > best and schedule.active(now):
            best, name = schedule.min_workers, schedule.name
    return best, name
