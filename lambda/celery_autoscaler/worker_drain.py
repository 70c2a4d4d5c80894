"""The worker's side of fence and drain, one step per poll of the helper's thread (Celery + stdlib).

When the scaler wants k workers of a pool gone, it opens k slots in the pool's drain hash
(:mod:`celery_autoscaler.drain_keys`). At each poll this worker marks itself present and then:

- consuming and idle (holding nothing for the protection debounce): it may claim a slot, atomically;
  once it has one it stops consuming (Celery's own ``cancel_task_queue``, run on the consumer's
  event loop), finishes whatever it held, releases its ECS scale-in protection and reports itself
  ``drained``: ECS may now stop it, and it can take no task in the second before SIGTERM;
- consuming and not claimed while a drain exists: it keeps (or takes) protection, so ECS cannot
  pick it instead of a drained worker;
- claimed but the drain is gone (the scaler ended it, or stopped ticking for ``DRAIN_TTL_MS``):
  it **resumes**: it takes protection again first, then consumes again (an agent that fails is
  logged, as for any worker). It never takes a task while it is draining or drained, and it does
  not exit: an exit would make ECS start a replacement for a count that was not lowered.

A broker that cannot be written or a consumer that is not there only logs: tasks go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from celery.worker import state as worker_state

from celery_autoscaler.drain_keys import DRAINED, DRAINING, POLL_SCRIPT, WORKERS_TTL_MS, drain_key, workers_key

logger = logging.getLogger("celery_autoscaler.worker")

CONSUMING, CLAIMED, DRAINED_STATE = "consuming", DRAINING, DRAINED
SHUTTING_DOWN = threading.Event()
"""Set by the helper's ``worker_shutting_down`` handler, which then wakes the poll: a stopping worker
leaves at once, so the scaler never counts it as a drained worker that ECS still has to stop."""


def holdings() -> int:
    """Messages this worker holds: running, reserved (prefetched) and scheduled (ETA/countdown)."""
    held = set(worker_state.reserved_requests) | set(worker_state.active_requests)
    held |= set(getattr(worker_state, "scheduled_requests", ()))
    return len(held)


def shutting_down() -> bool:
    """Celery's warm or cold shutdown has begun (SIGTERM, SIGQUIT): the worker is going anyway."""
    stopping = worker_state.should_stop not in (None, False) or worker_state.should_terminate not in (None, False)
    return stopping or SHUTTING_DOWN.is_set()


class Protection(Protocol):
    """What the drain needs from scale-in protection: the helper's ProtectionMonitor, or :class:`NoProtection`."""

    def release_now(self) -> bool:
        """Release at once; True when the worker is unprotected."""
        ...

    def protect_now(self) -> bool:
        """Protect at once; True when the worker is protected."""
        ...


class NoProtection:
    """Protection off (or not on ECS): nothing to release or take."""

    def release_now(self) -> bool:
        return True

    def protect_now(self) -> bool:
        return True


class WorkerDrain:
    """One worker's drain state; :meth:`step` runs once per poll on the helper's thread.

    ``client`` gives the redis client of the helper's own broker connection (None: not Redis, the
    drain stays off); ``consumer`` is the Celery consumer (``worker_ready``'s sender).
    """

    def __init__(
        self,
        consumer: Any,
        pool: str,
        key_prefix: str,
        client: Callable[[], Any],
        idle_s: float,
        protection: Protection | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.hostname = str(consumer.hostname)
        self.drain_key = drain_key(key_prefix, pool)
        self.workers_key = workers_key(key_prefix, pool)
        self._client = client
        self.protection: Protection = protection if protection is not None else NoProtection()
        self._idle_s = idle_s
        self._clock = clock
        self._script: Any = None
        self._last_held = clock()
        self.state = CONSUMING
        self.drain_exists = False
        self._cancelled: list[str] = []
        self.enabled = True

    def holds_protection(self) -> bool:
        """While another worker's drain lasts, this one must stay protected (ECS may only pick drained ones)."""
        return self.drain_exists and self.state == CONSUMING

    def step(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        held = holdings()
        if held:
            self._last_held = now
        if shutting_down():
            if self.state != CONSUMING or self.drain_exists:
                self._poll("leave")
                self.drain_exists, self.enabled = False, False
            return
        if self.state == CONSUMING:
            idle = held == 0 and now - self._last_held >= self._idle_s
            exists, state = self._poll("claim" if idle else "look")
            self.drain_exists = exists
            if state == DRAINING:
                self._stop_consuming()
            return
        if self.state == CLAIMED and held == 0 and self.protection.release_now():
            self.state = DRAINED_STATE
            logger.info("celery-autoscaler: drained (holds nothing, protection released): ECS may stop this worker")
        exists, _ = self._poll(self.state)
        self.drain_exists = exists
        if not exists:
            self._resume()

    def _poll(self, what: str) -> tuple[bool, str]:
        client = self._client()
        if client is None:
            self.enabled = False
            logger.info("celery-autoscaler: fence and drain off: the broker is not Redis")
            return False, ""
        if self._script is None:
            self._script = client.register_script(POLL_SCRIPT)
        exists, state = self._script(
            keys=[self.drain_key, self.workers_key], args=[self.hostname, what, WORKERS_TTL_MS], client=client
        )
        state = state.decode() if isinstance(state, bytes) else str(state or "")
        return bool(exists), state

    def _stop_consuming(self) -> None:
        """Cancel every task queue on the consumer's own event loop (Celery's ``cancel_consumer`` does the same)."""
        self.state = CLAIMED
        task_consumer = getattr(self.consumer, "task_consumer", None)
        names = [q.name for q in getattr(task_consumer, "queues", ())]
        self._cancelled = names
        for name in names:
            self.consumer.call_soon(self.consumer.cancel_task_queue, name)
        logger.info("celery-autoscaler: claimed a drain slot: stopped consuming from %s", ", ".join(names))

    def _resume(self) -> None:
        """The drain is over and ECS did not stop this worker: protect first, then consume again."""
        if not self.protection.protect_now():
            logger.warning("celery-autoscaler: drain over but protection could not be taken: consuming unprotected")
        for name in self._cancelled:
            self.consumer.call_soon(self.consumer.add_task_queue, name)
        logger.info("celery-autoscaler: drain over: consuming again from %s", ", ".join(self._cancelled))
        self.state, self._cancelled = CONSUMING, []
        self._last_held = self._clock()
