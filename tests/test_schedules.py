"""Cron parsing and occurrences in UTC and named zones, checked against a brute-force zoneinfo reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_autoscaler.schedules import (
    CronError,
    Schedule,
    next_after,
    parse_cron,
    previous,
    schedule_floor,
    time_zone,
)

pytestmark = pytest.mark.unit


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _field_matches(value: int, field: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    """An independent (slow, literal) reading of one cron field, for the reference."""
    for item in field.lower().split(","):
        span, _, step = item.partition("/")
        if span == "*":
            start, end = low, high
        else:
            first, _, last = span.partition("-")

            def num(text: str) -> int:
                return int(text) if text.isdigit() else names.index(text) + (1 if len(names) == 12 else 0)

            start = num(first)
            end = num(last) if last else (high if step else start)
        if start <= value <= end and (value - start) % int(step or 1) == 0:
            return True
    return False


MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _wall_matches(expr: str, wall: datetime) -> bool:
    minute, hour, dom, month, dow = expr.split()
    weekday = wall.isoweekday() % 7
    day_ok = _field_matches(wall.day, dom, 1, 31, ())
    sunday_as_7 = weekday == 0 and _field_matches(7, dow, 0, 7, DAY_NAMES)
    week_ok = _field_matches(weekday, dow, 0, 7, DAY_NAMES) or sunday_as_7
    days = (day_ok and week_ok) if dom.startswith("*") or dow.startswith("*") else (day_ok or week_ok)
    return (
        _field_matches(wall.minute, minute, 0, 59, ())
        and _field_matches(wall.hour, hour, 0, 23, ())
        and _field_matches(wall.month, month, 1, 12, MONTH_NAMES)
        and days
    )


def reference(expr: str, zone_name: str, start: float, end: float) -> list[float]:
    """Occurrences in [start, end) by brute force: every UTC minute whose wall time in the zone matches,
    plus matching wall minutes the zone skips, at their fold-0 instant (PEP 495), straight from zoneinfo."""
    zone = ZoneInfo(zone_name)
    found: set[float] = set()
    t = start - start % 60
    while t < end:
        if t >= start and _wall_matches(expr, datetime.fromtimestamp(t, zone)):
            found.add(t)
        t += 60
    wall = datetime.fromtimestamp(start, zone).replace(tzinfo=None, second=0) - timedelta(hours=3)
    last = datetime.fromtimestamp(end, zone).replace(tzinfo=None) + timedelta(hours=3)
    while wall < last:
        exists = any(
            datetime.fromtimestamp(wall.replace(tzinfo=zone, fold=f).timestamp(), zone).replace(tzinfo=None) == wall
            for f in (0, 1)
        )
        if not exists and _wall_matches(expr, wall):
            at = wall.replace(tzinfo=zone, fold=0).timestamp()
            if start <= at < end:
                found.add(at)
        wall += timedelta(minutes=1)
    return sorted(found)


def occurrences(expr: str, zone_name: str, start: float, end: float) -> list[float]:
    cron, zone = parse_cron(expr), time_zone(zone_name)
    out, t = [], start - 1
    while (nxt := next_after(cron, zone, t)) is not None and nxt < end:
        out.append(nxt)
        t = nxt
    return out


# Europe/Berlin: 2024-03-31 02:00 -> 03:00 and 2024-10-27 03:00 -> 02:00; America/New_York: 2024-03-10
# 02:00 -> 03:00 and 2024-11-03 02:00 -> 01:00; Australia/Lord_Howe moves by 30 minutes.
DST_DAYS = [
    ("Europe/Berlin", "2024-03-30T18:00"),
    ("Europe/Berlin", "2024-10-26T18:00"),
    ("America/New_York", "2024-03-09T22:00"),
    ("America/New_York", "2024-11-02T22:00"),
    ("Australia/Lord_Howe", "2024-04-06T10:00"),
    ("UTC", "2024-02-28T12:00"),
]
EXPRESSIONS = ["30 2 * * *", "*/15 * * * *", "0 1-3 * * *", "0,30 2 * * sun", "59 1 * * 7", "15 */2 * mar,oct,apr *"]


@pytest.mark.parametrize(("zone", "start"), DST_DAYS)
@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_occurrences_across_dst_changes_match_zoneinfo(zone: str, start: str, expr: str) -> None:
    begin = _ts(start)
    end = begin + 36 * 3600
    expected = reference(expr, zone, begin, end)
    assert occurrences(expr, zone, begin, end) == expected
    # previous() walks the same occurrences backwards.
    cron, tz = parse_cron(expr), time_zone(zone)
    for later, earlier in zip(expected[1:], expected, strict=False):
        assert previous(cron, tz, later - 1) == earlier
        assert previous(cron, tz, later) == later


def test_berlin_spring_and_autumn_in_words() -> None:
    cron, berlin = parse_cron("30 2 * * *"), time_zone("Europe/Berlin")
    # Spring: 02:30 is skipped; it happens when it would have, 01:30 UTC (03:30 CEST).
    assert next_after(cron, berlin, _ts("2024-03-30T12:00")) == _ts("2024-03-31T01:30")
    # Autumn: 02:30 is shown twice, at 00:30 UTC (CEST) and 01:30 UTC (CET).
    first = next_after(cron, berlin, _ts("2024-10-26T12:00"))
    assert first == _ts("2024-10-27T00:30")
    assert next_after(cron, berlin, first) == _ts("2024-10-27T01:30")
    assert next_after(cron, berlin, _ts("2024-10-27T01:30")) == _ts("2024-10-28T01:30")


def test_rare_dates_and_both_day_fields() -> None:
    utc = time_zone("UTC")
    assert next_after(parse_cron("0 0 29 feb *"), utc, _ts("2024-03-01T00:00")) == _ts("2028-02-29T00:00")
    # Day of month 13 OR Friday (Vixie cron), from Thursday 2024-09-12.
    either = parse_cron("0 12 13 * fri")
    assert next_after(either, utc, _ts("2024-09-12T00:00")) == _ts("2024-09-13T12:00")
    assert next_after(either, utc, _ts("2024-09-13T12:00")) == _ts("2024-09-20T12:00")
    assert next_after(parse_cron("0 0 31 2 *"), utc, 0.0) is None
    assert previous(parse_cron("0 9 * * mon-fri"), utc, _ts("2024-09-15T12:00")) == _ts("2024-09-13T09:00")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "needs 5 fields"),
        ("60 * * * *", "minute: '60' is outside 0-59"),
        ("* 24 * * *", "hour: '24' is outside 0-23"),
        ("* * 0 * *", "day of month: '0' is outside 1-31"),
        ("* * * 13 *", "month: '13' is outside 1-12"),
        ("* * * * 8", "day of week: '8' is outside 0-7"),
        ("*/0 * * * *", "minute: step must be >= 1"),
        ("5-1 * * * *", "minute: range '5-1' runs backwards"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("* * * * mon-", "day of week: 'mon-' is not a value, range or step"),
        ("1,,2 * * * *", "minute: '' is not a value"),
    ],
)
def test_bad_expressions_say_which_field(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("*", r"\*")):
        parse_cron(expr)


def test_unknown_time_zone() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Europe/Berlinn'"):
        time_zone("Europe/Berlinn")


def _item(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        value.map(str),
        st.tuples(value, value).map(lambda p: f"{min(p)}-{max(p)}"),
        st.integers(1, 12).map(lambda s: f"*/{s}"),
        st.tuples(value, value, st.integers(1, 5)).map(lambda p: f"{min(p[:2])}-{max(p[:2])}/{p[2]}"),
    )


def _cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    return st.lists(_item(low, high), min_size=1, max_size=3).map(",".join)


EXPRESSION = st.tuples(
    _cron_field(0, 59), _cron_field(0, 23), st.just("*"), st.sampled_from(["*", "3,10", "mar-nov"]), _cron_field(0, 7)
).map(" ".join)


@settings(max_examples=40, deadline=None)
@given(
    expr=EXPRESSION,
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "UTC"]),
    start=st.sampled_from([s for z, s in DST_DAYS[:4]]),
    offset_h=st.floats(0, 24),
)
def test_next_occurrence_is_the_references_first(expr: str, zone: str, start: str, offset_h: float) -> None:
    t = _ts(start) + offset_h * 3600
    expected = reference(expr, zone, t + 1e-6, t + 2 * 86400)
    found = next_after(parse_cron(expr), time_zone(zone), t)
    if expected:
        assert found == expected[0]
    else:
        assert found is None or found >= t + 2 * 86400


@settings(max_examples=200, deadline=None)
@given(t=st.floats(_ts("2024-03-04T00:00"), _ts("2024-03-18T00:00")))
def test_window_minimum_holds_inside_and_never_outside(t: float) -> None:
    """Mon-Fri 08:58-17:00 Berlin time: floor 4 exactly inside, the all-day 2 outside (the clock read independently)."""
    schedule = Schedule("b", "0 9 * * mon-fri", 4, 8 * 3600, lead_s=120, time_zone="Europe/Berlin")
    lower = Schedule("all-day", "0 0 * * *", 2, 86400)
    wall = datetime.fromtimestamp(t, ZoneInfo("Europe/Berlin"))
    minutes = wall.hour * 60 + wall.minute + wall.second / 60
    inside = wall.isoweekday() <= 5 and 9 * 60 - 2 <= minutes < 17 * 60
    assert schedule_floor((schedule, lower), t) == ((4, "b") if inside else (2, "all-day"))
