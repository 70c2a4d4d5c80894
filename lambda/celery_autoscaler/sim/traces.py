"""Task arrival traces: the built-in load shapes and users' own traces from CSV.

A trace is parallel lists sorted by enqueue time (no per-task objects, so a day at 5 tasks/s stays
cheap). Two CSV forms are read, told apart by the header:
- per task:   ``enqueue_s,queue,service_s``
- per minute: ``minute,queue,count`` (arrivals spread uniformly over the minute; service times
  drawn from the ``service`` model, since the file has none).
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DAY_S = 86_400.0
DEFAULT_QUEUE = "celery"


@dataclass(frozen=True)
class ServiceModel:
    """Task run times: lognormal with ``mean_s`` (coefficient of variation ``cv``), plus an optional
    fraction of long tasks of ``long_s`` each; ``exponential`` replaces the lognormal (for queueing checks).
    """

    mean_s: float = 2.0
    cv: float = 1.0
    long_fraction: float = 0.0
    long_s: float = 180.0
    exponential: bool = False

    def draw(self, rng: random.Random) -> float:
        """One service time in seconds."""
        if self.long_fraction and rng.random() < self.long_fraction:
            return self.long_s
        if self.exponential:
            return rng.expovariate(1.0 / self.mean_s)
        sigma = math.sqrt(math.log(1.0 + self.cv * self.cv))
        return rng.lognormvariate(math.log(self.mean_s) - sigma * sigma / 2.0, sigma)


@dataclass(frozen=True)
class Trace:
    """Tasks sorted by enqueue time; ``queue`` indexes ``queues``."""

    name: str
    enqueue_s: list[float]
    queue: list[int]
    service_s: list[float]
    queues: tuple[str, ...]
    horizon_s: float

    def __len__(self) -> int:
        return len(self.enqueue_s)

    def for_queues(self, names: tuple[str, ...]) -> tuple[list[float], list[float]]:
        """Enqueue and service times of the tasks on any of ``names`` (one pool's share)."""
        wanted = {i for i, q in enumerate(self.queues) if q in names}
        if len(wanted) == len(self.queues):
            return self.enqueue_s, self.service_s
        picked = [j for j, q in enumerate(self.queue) if q in wanted]
        return [self.enqueue_s[j] for j in picked], [self.service_s[j] for j in picked]

    def truncated(self, horizon_s: float) -> Trace:
        """The first ``horizon_s`` seconds of this trace."""
        end = sum(1 for t in self.enqueue_s if t < horizon_s)
        return Trace(
            self.name,
            self.enqueue_s[:end],
            self.queue[:end],
            self.service_s[:end],
            self.queues,
            min(self.horizon_s, horizon_s),
        )


def _from_times(name: str, times: list[float], service: ServiceModel, rng: random.Random, horizon_s: float) -> Trace:
    times.sort()
    return Trace(name, times, [0] * len(times), [service.draw(rng) for _ in times], (DEFAULT_QUEUE,), horizon_s)


def poisson(rate: float, horizon_s: float, rng: random.Random, start_s: float = 0.0) -> list[float]:
    """Poisson arrival times at ``rate`` per second in [start_s, horizon_s)."""
    times: list[float] = []
    t = start_s + rng.expovariate(rate)
    while t < horizon_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def steady(horizon_s: float, service: ServiceModel, seed: int, rate: float = 2.0) -> Trace:
    """Constant Poisson load."""
    rng = random.Random(f"{seed}:steady")
    return _from_times("steady", poisson(rate, horizon_s, rng), service, rng, horizon_s)


def diurnal(horizon_s: float, service: ServiceModel, seed: int, low: float = 0.2, high: float = 3.8) -> Trace:
    """A daily sine from ``low`` at midnight to ``high`` at noon (Poisson, by thinning)."""
    rng = random.Random(f"{seed}:diurnal")
    mid, amp = (low + high) / 2.0, (high - low) / 2.0
    times = [
        t
        for t in poisson(high, horizon_s, rng)
        if rng.random() * high < mid - amp * math.cos(2.0 * math.pi * t / DAY_S)
    ]
    return _from_times("diurnal", times, service, rng, horizon_s)


def spiky(
    horizon_s: float,
    service: ServiceModel,
    seed: int,
    background: float = 0.1,
    burst: tuple[int, int] = (500, 3000),
    burst_s: float = 5.0,
) -> Trace:
    """Quiet background with a burst of 500-3000 tasks within 5 s once an hour, at a random minute."""
    rng = random.Random(f"{seed}:spiky")
    times = poisson(background, horizon_s, rng)
    hour = 0.0
    while hour < horizon_s:
        at = hour + rng.uniform(0.0, 3600.0 - burst_s)
        times.extend(t for t in (at + rng.uniform(0.0, burst_s) for _ in range(rng.randint(*burst))) if t < horizon_s)
        hour += 3600.0
    return _from_times("spiky", times, service, rng, horizon_s)


def batch(
    horizon_s: float, service: ServiceModel, seed: int, rate: float = 5.0, window_s: float = 1800.0, per_day: int = 4
) -> Trace:
    """On/off: ``per_day`` windows of ``window_s`` at ``rate``, evenly spaced, nothing in between."""
    rng = random.Random(f"{seed}:batch")
    times: list[float] = []
    day = 0.0
    while day < horizon_s:
        for w in range(per_day):
            start = day + (w + 0.5) * DAY_S / per_day - window_s / 2.0
            if start < horizon_s:
                end = min(start + window_s, horizon_s)
                times.extend(poisson(rate, end, rng, start_s=start))
        day += DAY_S
    return _from_times("batch", times, service, rng, horizon_s)


def cron(
    horizon_s: float,
    service: ServiceModel,
    seed: int,
    background: float = 0.1,
    burst: tuple[int, int] = (500, 3000),
    burst_s: float = 5.0,
    minute: int = 17,
    jitter_s: float = 3.0,
) -> Trace:
    """``spiky`` with the burst at a fixed minute every hour (a cron job), starting within ``jitter_s`` of it."""
    rng = random.Random(f"{seed}:cron")
    times = poisson(background, horizon_s, rng)
    hour = 0.0
    while hour < horizon_s:
        at = hour + minute * 60.0 + rng.uniform(-jitter_s, jitter_s)
        times.extend(t for t in (at + rng.uniform(0.0, burst_s) for _ in range(rng.randint(*burst))) if t < horizon_s)
        hour += 3600.0
    return _from_times("cron", times, service, rng, horizon_s)


def weekday(
    horizon_s: float,
    service: ServiceModel,
    seed: int,
    night: float = 0.05,
    office: float = 4.0,
    lunch: float = 2.0,
    jitter_s: float = 60.0,
) -> Trace:
    """Business hours from simulated Monday 00:00: ``office`` tasks/s from about 09:00 (within ``jitter_s``)
    to 17:00 Monday to Friday, ``lunch`` from 12:00 to 13:00, ``night`` at other times and at weekends."""
    rng = random.Random(f"{seed}:weekday")
    times = poisson(night, horizon_s, rng)
    for number in range(math.ceil(horizon_s / DAY_S)):
        day = number * DAY_S
        if number % 7 >= 5:
            continue
        opens = day + 9 * 3600.0 + rng.uniform(-jitter_s, jitter_s)
        hours = ((opens, 12, office), (day + 12 * 3600.0, 13, lunch), (day + 13 * 3600.0, 17, office))
        for start, end_hour, rate in hours:
            times.extend(poisson(rate - night, min(day + end_hour * 3600.0, horizon_s), rng, start_s=start))
    return _from_times("weekday", times, service, rng, horizon_s)


_Shape = Callable[[float, ServiceModel, int], Trace]
_SHAPES: dict[str, _Shape] = {
    "steady": steady,
    "diurnal": diurnal,
    "spiky": spiky,
    "batch": batch,
    "cron": cron,
    "weekday": weekday,
}
DEFAULT_HOURS: dict[str, float] = {"weekday": 7 * 24.0}
"""A built-in's length when none is asked for: a day, a week for ``weekday``."""
LONG_MIX = ServiceModel(long_fraction=0.1)
BUILTIN = tuple([*_SHAPES, *(f"{name}-long" for name in _SHAPES)])
"""Built-in trace names; ``-long`` adds 10 % tasks of 180 s to the lognormal 2 s mean service."""


def builtin(name: str, hours: float | None = None, seed: int = 1) -> Trace:
    """A built-in trace by name (see :data:`BUILTIN`), ``hours`` long (default :data:`DEFAULT_HOURS`, else 24)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown trace {name!r} (built in: {', '.join(BUILTIN)})")
    shape, _, long = name.partition("-")
    service = LONG_MIX if long else ServiceModel()
    length = hours if hours is not None else DEFAULT_HOURS.get(shape, 24.0)
    trace = _SHAPES[shape](length * 3600.0, service, seed)
    return Trace(name, trace.enqueue_s, trace.queue, trace.service_s, trace.queues, trace.horizon_s)


def read_csv(path: Path | str, service: ServiceModel | None = None, seed: int = 1) -> Trace:
    """Read a per-task or per-minute CSV trace (told apart by the header)."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path}: empty trace")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    queues: dict[str, int] = {}
    enq: list[float] = []
    qidx: list[int] = []
    svc: list[float] = []
    if {"enqueue_s", "queue", "service_s"} <= set(header):
        e, q, s = (header.index(c) for c in ("enqueue_s", "queue", "service_s"))
        for row in body:
            enq.append(float(row[e]))
            qidx.append(queues.setdefault(row[q].strip(), len(queues)))
            svc.append(float(row[s]))
    elif {"minute", "queue", "count"} <= set(header):
        m, q, c = (header.index(col) for col in ("minute", "queue", "count"))
        model = service or ServiceModel()
        rng = random.Random(f"{seed}:csv")
        for row in body:
            minute, count, queue = float(row[m]), int(row[c]), row[q].strip()
            index = queues.setdefault(queue, len(queues))
            for _ in range(count):
                enq.append(minute * 60.0 + rng.uniform(0.0, 60.0))
                qidx.append(index)
                svc.append(model.draw(rng))
    else:
        raise ValueError(f"{path}: header must be 'enqueue_s,queue,service_s' or 'minute,queue,count', got {header}")
    order = sorted(range(len(enq)), key=enq.__getitem__)
    enq = [enq[j] for j in order]
    horizon = (math.floor(enq[-1] / 60.0) + 1) * 60.0 if enq else 60.0
    return Trace(path.stem, enq, [qidx[j] for j in order], [svc[j] for j in order], tuple(queues), horizon)


def write_csv(trace: Trace, path: Path | str) -> None:
    """Write the per-task form; floats are written with ``repr`` so reading back gives the same trace."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["enqueue_s", "queue", "service_s"])
    for t, q, s in zip(trace.enqueue_s, trace.queue, trace.service_s, strict=True):
        writer.writerow([repr(t), trace.queues[q], repr(s)])
    Path(path).write_text(out.getvalue())
