"""Discrete-event simulation of one worker pool: Redis broker, ECS service, Fargate workers, a scaler.

What is modelled, and why it matters to the numbers:
- The broker is one FIFO list per pool. Workers hold up to ``concurrency x prefetch_multiplier``
  unacked messages. With ``acks_late=True`` (the module's default: every pool gets
  ``CELERY_TASK_ACKS_LATE=true`` and prefetch multiplier 1) a message stays unacked until its task
  ends, so the probe sees running and reserved tasks as in-flight. With ``acks_late=False``
  (Celery's default) a message is acked when it starts, so the probe sees *reserved* messages and
  running tasks not at all, exactly as the real probe does (``probe_sees_running`` is the what-if
  of a running-task counter kept by the worker helper). The worker helper's counters (tasks
  finished, their run time) are read at each tick as they stand (the real helper writes them once
  a second); ``worker_counters=False`` is a user without the helper. Consumers with room are served in effectively
  random order (kombu re-issues BRPOP every second), so a busy worker can prefetch a task while
  another worker idles.
- A worker starts after control-plane, provisioning, image-pull and app-start delays; Fargate bills
  per second from the image pull to the stop, at least ``min_billed_s``.
- Scale-in is ECS stopping tasks: pending ones first, then (with scale-in protection, as the worker
  helper sets it while busy and for ``protection_release_s`` after) only unprotected idle workers;
  a stop that protection blocks is retried when a worker's protection lapses. A stopped worker gets
  SIGTERM ``stop_signal_s`` later (it may take a message in between): warm shutdown returns its
  reserved messages to the head of the queue at once and lets running tasks finish, then the process
  exits ``exit_s`` later (billed; 0 unless set); any still running after ``stop_timeout_s`` are
  killed and counted.
- Fence and drain (``drain``, on for this product's policy): a lowering by k is first a drain
  request for k slots; a ready worker that has held nothing for ``protection_release_s`` (one ECS
  may stop today) claims a free slot at its next poll (within ``drain_poll_s``), stops consuming
  and drops its protection; every other worker is protected while the drain lasts. Each tick sets
  what the scaler's own :func:`celery_autoscaler.drain.plan` says: never fewer than the running
  workers not drained (so ECS can only stop pending and drained workers), with as many slots open
  as the decision still wants gone; the drain is over once the decision no longer lowers and ECS
  has stopped what was lowered (a drained worker still up then consumes again).
- The scaler is invoked every minute with jitter and ticks as the Lambda handler does, by the same
  :class:`celery_autoscaler.drain.TickSchedule`: ``ticks_per_invocation`` ticks, and a follow-up
  tick ``FOLLOW_UP_S`` after any of them that left workers asked to drain (ticks take no time here,
  and the follow-up after an invocation's last tick always fits its time); comparison policies run
  on their own fixed period instead.

Hot paths use plain lists of floats and ints (no per-task objects) and one heap of
``(time, kind, worker)`` tuples; arrivals (a pre-sorted stream) and the scaler's ticks (its
schedule) come beside the heap.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery_autoscaler.config import PoolConfig
from celery_autoscaler.drain import DrainStatus, Tick, TickSchedule, plan
from celery_autoscaler.measurements import PoolLoad, PoolMeasurements

# us-east-1 Linux Fargate list prices per hour: (per vCPU, per GB of memory). Spot is about 70 % off x86.
PRICES: dict[str, tuple[float, float]] = {
    "x86": (0.04048, 0.004445),
    "arm": (0.03238, 0.00356),
    "spot": (0.04048 * 0.3, 0.004445 * 0.3),
}

_PENDING, _READY, _DRAINING, _STOPPED = 0, 1, 2, 3
_DONE, _READY_EVENT, _SIGTERM, _KILL, _RELEASE, _SAMPLE, _POLL = 0, 1, 2, 3, 4, 5, 6
_CONSUMING, _DRAINED = 0, 1
_INF = math.inf


@dataclass(frozen=True)
class StartDelay:
    """Fargate task start, by phase (defaults give a median of about 55 s, as Fargate measures)."""

    control_s: tuple[float, float] = (1.0, 5.0)
    provisioning_s: tuple[float, float] = (10.0, 45.0)
    pull_median_s: float = 20.0
    pull_sigma: float = 0.35
    app_s: tuple[float, float] = (2.0, 5.0)

    def draw(self, rng: random.Random) -> tuple[float, float]:
        """Seconds until the image pull starts (billing starts), then seconds until the worker consumes."""
        before_pull = rng.uniform(*self.control_s) + rng.uniform(*self.provisioning_s)
        billed = self.pull_median_s * math.exp(rng.gauss(0.0, self.pull_sigma)) + rng.uniform(*self.app_s)
        return before_pull, billed

    def quantile(self, q: float, samples: int = 4000) -> float:
        """Start-to-ready delay quantile, estimated from a fixed-seed sample (deterministic)."""
        rng = random.Random(20240501)
        draws = sorted(sum(self.draw(rng)) for _ in range(samples))
        return draws[min(samples - 1, int(q * samples))]


@dataclass(frozen=True)
class SimSettings:
    """Everything about the world that is not the trace or the policy; defaults match the module's."""

    tick_interval_s: float = 15.0
    ticks_per_invocation: int = 4
    invocation_period_s: float = 60.0
    invocation_jitter_s: float = 5.0
    start_delay: StartDelay = field(default_factory=StartDelay)
    prefetch_multiplier: int = 1
    acks_late: bool = True
    probe_sees_running: bool = False
    age_lag_s: float | None = 0.0
    """How late the probe sees the oldest waiting task's age: 0 on Redis (the publish-time stamp), 60 on SQS
    (CloudWatch's one-minute metric: the current head's age as it was then), ``None`` for no age at all
    (RabbitMQ quorum queues, or RabbitMQ without the stamp). Counts are seen at once on every broker."""
    worker_counters: bool = True
    stop_timeout_s: float = 120.0
    exit_s: float = 0.0
    """Seconds a stopping worker's process takes to exit once it holds nothing (Celery's warm shutdown),
    billed but not consuming; ``make calibrate`` measures it (3-5 s for the demo's workers)."""
    stop_signal_s: tuple[float, float] = (0.5, 2.0)
    scale_in_protection: bool = True
    protection_release_s: float = 10.0
    vcpu: float = 0.25
    memory_gb: float = 0.5
    pricing: str = "x86"
    min_billed_s: float = 60.0
    slo_s: float = 60.0
    drain: bool = True
    drain_poll_s: float = 1.0
    drain_idle_s: float = 10.0

    @property
    def usd_per_worker_second(self) -> float:
        """What one worker costs per billed second at the configured size and price."""
        per_vcpu, per_gb = PRICES[self.pricing]
        return (self.vcpu * per_vcpu + self.memory_gb * per_gb) / 3600.0


class SimPolicy(Protocol):
    """A scaling policy as the engine drives it: same call shape as ``decide`` minus the pool config.

    ``interval_s`` is ``None`` for the scaler's own schedule (a Lambda every minute, N ticks inside);
    otherwise the policy is called every ``interval_s``. ``initial_count`` workers are warm at t=0.
    """

    name: str
    interval_s: float | None
    initial_count: int

    def initial_state(self) -> Any:
        """The state threaded through the first call."""
        ...

    def __call__(self, measurements: PoolMeasurements, state: Any, now: float) -> tuple[int, Any]:
        """Return the desired count and the state for the next call."""
        ...


@dataclass
class RunResult:
    """Raw outcome of one pool under one policy; :func:`summarise` turns it into the reported numbers."""

    enqueue_s: list[float]
    waits: list[float]
    worker_seconds: float
    scaling_actions: int
    tasks_killed: int
    max_backlog: int
    backlog_area: float
    horizon_s: float
    workers_launched: int
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)
    peak_workers: int = 0
    """The most workers up (ready or draining) at once."""


def schedules(policy: SimPolicy, settings: SimSettings, horizon_s: float, rng: random.Random) -> Iterator[TickSchedule]:
    """When the policy is evaluated: the scaler as the Lambda handler ticks (one schedule per invocation,
    every ``invocation_period_s`` with jitter, ``ticks_per_invocation`` ticks and their follow-ups), or a
    comparison policy every ``interval_s`` from a random phase."""
    if policy.interval_s is not None:
        yield TickSchedule(rng.uniform(0.0, policy.interval_s), policy.interval_s)
        return
    start = 0.0
    while start < horizon_s:
        first = start + rng.uniform(0.0, settings.invocation_jitter_s)
        yield TickSchedule(first, settings.tick_interval_s, settings.ticks_per_invocation)
        start += settings.invocation_period_s


def ticks(plans: Iterator[TickSchedule]) -> Iterator[tuple[TickSchedule, Tick]]:
    """Every tick of the schedules in turn, with its schedule (the caller reports each with ``ran``
    before asking for the next, so a follow-up it asks for comes next)."""
    for schedule in plans:
        while (tick := schedule.next()) is not None:
            yield schedule, tick


def run_pool(
    enqueue_s: list[float],
    service_s: list[float],
    policy: SimPolicy,
    pool: PoolConfig,
    settings: SimSettings,
    seed: int,
    horizon_s: float,
    timeline: bool = False,
) -> RunResult:
    """Simulate ``policy`` scaling ``pool`` over tasks sorted by ``enqueue_s`` until ``horizon_s``."""
    n = len(enqueue_s)
    conc = pool.concurrency
    hold = conc * settings.prefetch_multiplier
    acks_late = settings.acks_late
    sees_running = acks_late or settings.probe_sees_running
    counters = settings.worker_counters
    protect = settings.scale_in_protection
    release_s = settings.protection_release_s
    stop_timeout = settings.stop_timeout_s
    drains = settings.drain and bool(getattr(policy, "drains", False))
    poll_rng = random.Random(f"{seed}:drain-poll")
    drain_idle = settings.drain_idle_s
    delay_rng = random.Random(f"{seed}:start-delay")
    victim_rng = random.Random(f"{seed}:victims")
    stream = ticks(schedules(policy, settings, horizon_s, random.Random(f"{seed}:ticks:{policy.name}")))
    due = next(stream, None)

    waits = [-1.0] * n
    heap: list[tuple[float, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    queue: deque[int] = deque()
    listeners: list[int] = []  # consumers blocked in BRPOP; Redis serves them in effectively random order
    pick = random.Random(f"{seed}:consumers").random

    w_state: list[int] = []
    w_pull: list[float] = []
    w_stop: list[float] = []
    w_run: list[int] = []
    w_res: list[deque[int]] = []
    w_idle: list[float] = []
    w_listen: list[bool] = []
    w_release: list[bool] = []
    w_drain: list[int] = []  # _CONSUMING, or _DRAINED: claimed a slot while idle, stopped consuming, unprotected
    alive: dict[int, None] = {}  # pending or ready (not draining), in launch order

    n_running = 0
    n_reserved = 0
    n_up = 0  # ECS runningCount: ready or draining
    peak_up = 0
    pending = 0  # arrived, not started
    max_backlog = 0
    area = 0.0
    last_t = 0.0
    killed = 0
    actions = 0
    blocked = False
    desired = policy.initial_count
    state = policy.initial_state()
    samples: list[tuple[float, int, int, int]] = []
    drain_open: int | None = None  # the pool's drain: None, or how many more workers may claim a slot
    ends: dict[tuple[float, int], float] = {}  # (end time, worker) -> run time of the task ending then
    completed = 0  # the worker helper's counters: tasks finished and their total run time
    run_total = 0.0

    def new_worker(t: float, ready: bool) -> int:
        nonlocal n_up
        w = len(w_state)
        if ready:
            w_state.append(_READY)
            w_pull.append(t)
            n_up += 1
        else:
            before_pull, billed = settings.start_delay.draw(delay_rng)
            w_state.append(_PENDING)
            w_pull.append(t + before_pull)
            push(heap, (t + before_pull + billed, _READY_EVENT, w))
        w_stop.append(_INF)
        w_run.append(0)
        w_res.append(deque())
        w_idle.append(-_INF)
        w_listen.append(False)
        w_release.append(False)
        w_drain.append(_CONSUMING)
        alive[w] = None
        return w

    def give(i: int, w: int, t: float) -> None:
        """Worker ``w`` receives task ``i``: starts it if a process is free, else reserves it."""
        nonlocal n_running, n_reserved, pending, area, last_t
        if w_run[w] < conc:
            w_run[w] += 1
            n_running += 1
            waits[i] = t - enqueue_s[i]
            area += pending * (t - last_t)
            last_t = t
            pending -= 1
            end = t + service_s[i]
            ends[(end, w)] = ends.get((end, w), 0.0) + service_s[i]
            push(heap, (end, _DONE, w))
        else:
            w_res[w].append(i)
            n_reserved += 1

    def has_room(w: int) -> bool:
        return w_drain[w] == _CONSUMING and len(w_res[w]) + (w_run[w] if acks_late else 0) < hold

    def refill(w: int, t: float) -> None:
        """A ready worker with room pulls from the queue, then waits in line for new messages."""
        while queue and has_room(w):
            give(queue.popleft(), w, t)
        if not w_listen[w] and has_room(w):
            w_listen[w] = True
            listeners.append(w)

    def feed(t: float) -> None:
        """Hand queued messages to consumers blocked in BRPOP.

        Kombu re-issues BRPOP every second, so which blocked consumer Redis serves first is
        effectively random, not the one idle longest.
        """
        while queue and listeners:
            j = int(pick() * len(listeners))
            w = listeners[j]
            if w_state[w] == _READY and has_room(w):
                give(queue.popleft(), w, t)
                if has_room(w):
                    continue
            listeners[j] = listeners[-1]
            listeners.pop()
            w_listen[w] = False

    def finish(w: int, t: float, exit_s: float = 0.0) -> None:
        nonlocal n_up
        if w_state[w] in (_READY, _DRAINING):
            n_up -= 1
        w_state[w] = _STOPPED
        w_stop[w] = t + exit_s

    def stop(w: int, t: float) -> None:
        """ECS stops a task: a pending one at once; a running one gets SIGTERM a moment later and
        may take a message in between (the scale-in race protection cannot close)."""
        del alive[w]
        if w_state[w] == _PENDING:
            finish(w, t)
        else:
            push(heap, (t + victim_rng.uniform(*settings.stop_signal_s), _SIGTERM, w))

    def drain(w: int, t: float) -> None:
        """SIGTERM: warm shutdown returns reserved messages at once and finishes running tasks."""
        nonlocal n_reserved
        w_state[w] = _DRAINING
        res = w_res[w]
        n_reserved -= len(res)
        queue.extendleft(reversed(res))
        res.clear()
        if w_run[w] == 0:
            finish(w, t, settings.exit_s)
        else:
            push(heap, (t + stop_timeout, _KILL, w))
        feed(t)

    def protected(w: int, t: float) -> bool:
        if w_drain[w] == _DRAINED:
            return False
        if drain_open is not None and w_drain[w] == _CONSUMING:
            return True  # every worker not draining holds protection while a drain lasts
        return w_run[w] > 0 or len(w_res[w]) > 0 or t < w_idle[w] + release_s

    def poll_soon(w: int, t: float) -> None:
        """The helper's once-a-second poll after the worker has been idle ``protection_release_s``."""
        at = max(t, w_idle[w] + drain_idle) if w_run[w] == 0 and not w_res[w] else t
        push(heap, (at + poll_rng.uniform(0.0, settings.drain_poll_s), _POLL, w))

    def poll(w: int, t: float) -> None:
        """A worker idle for ``protection_release_s`` claims a free slot, stops consuming and is unprotected."""
        nonlocal drain_open
        if not drain_open or w_state[w] != _READY or w_drain[w] != _CONSUMING:
            return
        if w_run[w] == 0 and not w_res[w] and t >= w_idle[w] + drain_idle:
            drain_open -= 1
            w_drain[w] = _DRAINED

    def end_drain(t: float) -> None:
        """The drain is over: a drained worker still up consumes again."""
        nonlocal drain_open
        drain_open = None
        for w in alive:
            if w_drain[w] != _CONSUMING:
                w_drain[w] = _CONSUMING
                if w_state[w] == _READY:
                    refill(w, t)
        feed(t)

    def drain_tick(wanted: int, t: float) -> tuple[int, bool]:
        """What the tick sets with the handshake (the scaler's own :func:`celery_autoscaler.drain.plan`),
        and whether workers asked to drain have not drained yet (the handler's follow-up tick is then due)."""
        nonlocal drain_open
        drained = sum(1 for w in alive if w_drain[w] == _DRAINED)
        # Every running worker polls (a simulated worker consumes and polls from the moment it is ready).
        status = DrainStatus(workers=n_up, active=drain_open is not None, open=drain_open or 0, drained=drained)
        step = plan(wanted, desired, n_up, status, t)
        if step.open is None:
            if drain_open is not None:
                end_drain(t)
        else:
            drain_open = step.open
            for w in alive if step.open else ():  # every idle worker sees open slots at its next poll
                if w_state[w] == _READY and w_drain[w] == _CONSUMING:
                    poll_soon(w, t)
        return step.desired, step.drains and step.pending > 0

    def reconcile(t: float) -> None:
        """The ECS service scheduler: start or stop tasks until the live count meets the desired count."""
        nonlocal blocked
        live = len(alive)
        if desired > live:
            for _ in range(desired - live):
                new_worker(t, ready=False)
            blocked = False
            return
        excess = live - desired
        blocked = False
        if excess <= 0:
            return
        for w in reversed([w for w in alive if w_state[w] == _PENDING][-excess:]):
            stop(w, t)
            excess -= 1
        if excess <= 0:
            return
        ready = [w for w in alive if w_state[w] == _READY]
        if protect:
            free = sorted((w for w in ready if not protected(w, t)), key=lambda w: (w_idle[w], w))
            for w in free[:excess]:
                stop(w, t)
            excess -= min(excess, len(free))
            blocked = excess > 0
            if blocked:
                for w in ready:
                    if w_run[w] == 0 and not w_res[w] and not w_release[w] and protected(w, t):
                        w_release[w] = True
                        push(heap, (w_idle[w] + release_s, _RELEASE, w))
        else:
            for w in victim_rng.sample(ready, min(excess, len(ready))):
                stop(w, t)

    for _ in range(desired):
        refill(new_worker(0.0, ready=True), 0.0)
    if timeline:
        push(heap, (0.0, _SAMPLE, 0))

    i = 0
    ta = enqueue_s[0] if n else _INF
    tk = due[1].at if due is not None else _INF
    while True:
        th = heap[0][0] if heap else _INF
        if ta <= th and ta <= tk:
            t = ta
            if t >= horizon_s:
                break
            area += pending * (t - last_t)
            last_t = t
            pending += 1
            if pending > max_backlog:
                max_backlog = pending
            if queue:
                queue.append(i)
            else:
                queue.append(i)
                feed(t)
            i += 1
            ta = enqueue_s[i] if i < n else _INF
        elif th <= tk:
            t, kind, w = pop(heap)
            if t >= horizon_s:
                break
            if kind == _DONE:
                st = w_state[w]
                ran = ends.pop((t, w), 0.0)
                if st == _STOPPED:
                    continue
                completed += 1
                run_total += ran
                w_run[w] -= 1
                n_running -= 1
                if st == _READY:
                    res = w_res[w]
                    if res:
                        n_reserved -= 1
                        give(res.popleft(), w, t)
                    refill(w, t)
                    if w_run[w] == 0 and not res:
                        w_idle[w] = t
                        if drain_open is not None:
                            poll_soon(w, t)
                        if blocked and not w_release[w]:
                            w_release[w] = True
                            push(heap, (t + release_s, _RELEASE, w))
                elif w_run[w] == 0:
                    finish(w, t, settings.exit_s)
            elif kind == _READY_EVENT:
                if w_state[w] == _PENDING:
                    w_state[w] = _READY
                    n_up += 1
                    peak_up = max(peak_up, n_up)
                    refill(w, t)
                    if drain_open is not None:
                        poll_soon(w, t)
            elif kind == _SIGTERM:
                if w_state[w] == _READY:
                    drain(w, t)
            elif kind == _KILL:
                if w_state[w] == _DRAINING:
                    killed += w_run[w]
                    n_running -= w_run[w]
                    w_run[w] = 0
                    finish(w, t)
            elif kind == _RELEASE:
                # ECS retries a blocked scale-in as protection lapses: this worker, if it is idle now.
                w_release[w] = False
                if blocked and w in alive and w_state[w] == _READY and not protected(w, t):
                    stop(w, t)
                    blocked = len(alive) > desired
            elif kind == _POLL:
                poll(w, t)
            else:
                samples.append((t, pending, n_up, desired))
                push(heap, (t + 60.0, _SAMPLE, 0))
        else:
            t = tk
            if t >= horizon_s or due is None:
                break
            in_flight = n_reserved + n_running if sees_running else n_reserved
            age_at = None if settings.age_lag_s is None else t - settings.age_lag_s
            load = PoolLoad(
                waiting=len(queue),
                in_flight=in_flight,
                unacked_total=in_flight,
                oldest_age_s=None
                if age_at is None or not queue or enqueue_s[queue[0]] > age_at
                else age_at - enqueue_s[queue[0]],
                measured_at=t,
                completed=completed if counters else None,
                run_seconds=run_total if counters else None,
            )
            wanted, state = policy(PoolMeasurements(current_desired=desired, running=n_up, load=load), state, t)
            pending_drain = False
            if drains:
                wanted, pending_drain = drain_tick(wanted, t)
            if wanted != desired:
                actions += 1
                desired = wanted
                reconcile(t)
            elif blocked:
                reconcile(t)
            schedule, tick = due
            schedule.ran(tick, t, (pool.name,) if pending_drain else ())
            due = next(stream, None)
            tk = due[1].at if due is not None else _INF

    area += pending * (horizon_s - last_t)
    for j in range(n):
        if waits[j] < 0.0 and enqueue_s[j] < horizon_s:
            waits[j] = horizon_s - enqueue_s[j]
    inside = waits[: sum(1 for e in enqueue_s if e < horizon_s)] if n else []
    billed = 0.0
    for w in range(len(w_state)):
        end = min(w_stop[w], horizon_s)
        if end > w_pull[w]:
            billed += max(settings.min_billed_s, end - w_pull[w])
    return RunResult(
        enqueue_s=enqueue_s[: len(inside)],
        waits=inside,
        worker_seconds=billed,
        scaling_actions=actions,
        tasks_killed=killed,
        max_backlog=max_backlog,
        backlog_area=area,
        horizon_s=horizon_s,
        workers_launched=len(w_state),
        timeline=samples,
        peak_workers=max(peak_up, policy.initial_count),
    )
