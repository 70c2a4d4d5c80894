"""Learned pre-warm: find bursts that come back at the same time every hour, day or week, and raise the
pool before the next one by the start delay, so a recurring storm waits no cold start.

Pure, like the policy that calls it, and compact (the state is a few hundred bytes of JSON, whatever
the history):

- **Onset**: a tick whose arrival rate rises above ``ONSET_FACTOR`` x the usual level +
  ``ONSET_FLOOR_PER_S`` while the previous tick's was below it. The usual level is a moving average
  of the per-tick rates (half-life ``LEVEL_HALF_LIFE_S``). The onset is dated by the oldest waiting
  task when it came since the last tick, else half a tick back.
- **Recurrence**: each onset not explained by a known recurrence starts one candidate per period
  (hourly, daily, weekly). An onset within ``tolerance(period)`` of a candidate's next expected time
  is a hit; a candidate whose expected time passes without one is a miss (one hit fewer), and is dropped
  after ``max_misses`` misses in a row. At most ``MAX_CANDIDATES`` are kept (the weakest goes).
- **Pre-warm**: a candidate with ``confidence`` hits and fewer than ``max_misses`` misses raises the
  pool from ``lead_s`` before its next expected onset (the learned start delay + a margin + a tick)
  until the onset is seen (the sizing rule then owns the burst) or its tolerance has passed (a miss),
  to the median of what its last bursts needed: the tasks that arrived above the usual level in the
  ``PEAK_WINDOW_S`` after each onset, drained in the sizing rule's drain time, but no more than the
  sizing rule asked for in that window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import median_low
from typing import Any

PERIODS_S = (3600.0, 86_400.0, 604_800.0)
ONSET_FACTOR = 5.0
ONSET_FLOOR_PER_S = 1.0
LEVEL_HALF_LIFE_S = 300.0
PEAK_WINDOW_S = 300.0
PEAKS_KEPT = 3
MAX_CANDIDATES = 8


def tolerance(period_s: float) -> float:
    """How far from its expected time an onset still counts as the same recurrence."""
    return max(90.0, 0.005 * period_s)


@dataclass(frozen=True)
class Candidate:
    """A possible recurrence: onsets ``period_s`` apart, the last at ``last_s`` (advanced by a period on a miss)."""

    period_s: float
    last_s: float
    hits: int = 1
    misses: int = 0
    peaks: tuple[int, ...] = ()

    @property
    def expected_s(self) -> float:
        return self.last_s + self.period_s


@dataclass(frozen=True)
class RecurrenceState:
    """What learning keeps between ticks (inside ``PoolState``).

    ``level`` is the usual arrival rate; ``above`` whether the last tick's rate was over the onset
    threshold; ``onset_s`` the latest onset, ``tasks`` how many arrived above the usual level since and
    ``peak`` the most workers the sizing rule asked for since.
    """

    at: float | None = None
    level: float | None = None
    above: bool = False
    onset_s: float | None = None
    tasks: float = 0.0
    peak: int = 0
    candidates: tuple[Candidate, ...] = ()

    @classmethod
    def from_json(cls, body: dict[str, Any] | None) -> RecurrenceState:
        """The state from its stored JSON (``dataclasses.asdict`` form); missing: start afresh.

        Raises ``TypeError``/``ValueError`` on a body that is not one (the store calls that corrupt).
        """
        if not body:
            return cls()
        candidates = tuple(
            Candidate(
                period_s=float(c["period_s"]),
                last_s=float(c["last_s"]),
                hits=int(c["hits"]),
                misses=int(c["misses"]),
                peaks=tuple(int(n) for n in c["peaks"]),
            )
            for c in body.get("candidates", [])
        )
        if any(c.period_s not in PERIODS_S or c.hits < 0 or c.misses < 0 for c in candidates):
            raise ValueError("a candidate has an unknown period or a negative count")
        optional = {key: None if body.get(key) is None else float(body[key]) for key in ("at", "level", "onset_s")}
        return cls(
            **optional,
            above=bool(body.get("above", False)),
            tasks=float(body.get("tasks", 0.0)),
            peak=int(body.get("peak", 0)),
            candidates=candidates[:MAX_CANDIDATES],
        )


def _record_peak(state: RecurrenceState, now: float, tasks_per_worker: float | None) -> RecurrenceState:
    """Once the window after an onset is over, give the workers its burst needed to the candidates it fed."""
    if state.onset_s is None or now - state.onset_s < PEAK_WINDOW_S:
        return state
    onset = state.onset_s
    candidates = state.candidates
    if tasks_per_worker:
        # Drained in the drain time, but no more than the sizing rule asked for: a step up in load
        # (the office opening) needs its steady size, not its first minutes drained at once.
        need = min(math.ceil(state.tasks / tasks_per_worker), state.peak)
        candidates = tuple(
            replace(c, peaks=(*c.peaks, need)[-PEAKS_KEPT:]) if c.last_s == onset else c for c in candidates
        )
    return replace(state, onset_s=None, tasks=0.0, peak=0, candidates=candidates)


def _misses(candidates: tuple[Candidate, ...], now: float, max_misses: int) -> tuple[Candidate, ...]:
    """Count a miss for each candidate whose expected onset passed unseen; drop those missed too often."""
    kept = []
    for c in candidates:
        while now > c.expected_s + tolerance(c.period_s):
            c = replace(c, last_s=c.expected_s, hits=max(0, c.hits - 1), misses=c.misses + 1)
        if c.misses < max_misses:
            kept.append(c)
    return tuple(kept)


def _onset(candidates: tuple[Candidate, ...], onset: float) -> tuple[Candidate, ...]:
    """Match an onset to the candidates it confirms; if none, start one per period from it."""
    matched = False
    updated = []
    for c in candidates:
        if abs(onset - c.expected_s) <= tolerance(c.period_s):
            c = replace(c, last_s=onset, hits=c.hits + 1, misses=0)
            matched = True
        updated.append(c)
    if not matched:
        updated.extend(Candidate(period, onset) for period in PERIODS_S)
    updated.sort(key=lambda c: (c.hits, c.last_s), reverse=True)
    return tuple(updated[:MAX_CANDIDATES])


def observe(
    state: RecurrenceState,
    now: float,
    rate: float | None,
    oldest_age_s: float | None,
    sized: int,
    tasks_per_worker: float | None,
    max_misses: int,
) -> RecurrenceState:
    """Learn from one tick: this tick's arrival rate (per second, ``None`` if unknown), the oldest waiting
    task's age, the count the sizing rule asked for, and how many tasks one worker drains in the sizing
    rule's drain time (``None``: unknown)."""
    dt = now - state.at if state.at is not None else 0.0
    state = _record_peak(state, now, tasks_per_worker)
    candidates = _misses(state.candidates, now, max_misses)
    level, above, onset_s, tasks = state.level, state.above, state.onset_s, state.tasks
    peak = max(state.peak, sized) if onset_s is not None else 0
    if rate is not None and dt > 0:
        threshold = ONSET_FACTOR * (level or 0.0) + ONSET_FLOOR_PER_S
        now_above = rate > threshold
        if now_above and not above and level is not None and onset_s is None:
            ago = min(oldest_age_s, dt) if oldest_age_s is not None else dt / 2.0
            onset_s, tasks, peak = round(now - ago, 1), 0.0, sized
            candidates = _onset(candidates, onset_s)
        if onset_s is not None:
            tasks = round(tasks + max(0.0, rate - (level or 0.0)) * dt, 1)
        weight = 0.5 ** (dt / LEVEL_HALF_LIFE_S)
        level = rate if level is None else round(weight * level + (1.0 - weight) * rate, 4)
        above = now_above
    return RecurrenceState(
        at=now, level=level, above=above, onset_s=onset_s, tasks=tasks, peak=peak, candidates=candidates
    )


def prewarm_floor(
    state: RecurrenceState, now: float, lead_s: float, confidence: int, max_misses: int
) -> tuple[int, str | None]:
    """The count to hold now for the next predicted onset, and which recurrence predicts it (``0, None``: none)."""
    best, why = 0, None
    for c in state.candidates:
        if c.hits < confidence or c.misses >= max_misses or not c.peaks:
            continue
        expected = c.expected_s
        if expected - lead_s <= now <= expected + tolerance(c.period_s):
            count = median_low(c.peaks)
            if count > best:
                best = count
                why = f"onset every {c.period_s / 3600:g} h seen {c.hits} times, next in {expected - now:.0f} s"
    return best, why
