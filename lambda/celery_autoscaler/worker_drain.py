"""The worker's side of fence and drain, one step per poll of the helper's thread (Celery + stdlib).

When the scaler wants k workers of a pool gone, it opens k slots: in the pool's drain hash on Redis
(:mod:`celery_autoscaler.drain_keys`, :class:`RedisDrainLink`), as k messages of the pool's slot
queue on RabbitMQ (:mod:`celery_autoscaler.drain_queues`, :class:`RabbitMQDrainLink`). At each poll
this worker marks itself present and then:

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

A broker that cannot be written or a consumer that is not there only logs: tasks go on. On
RabbitMQ a lost connection takes the worker's queues with it (the scaler then counts it nowhere);
the next poll connects again and declares its state again, and a worker that resumes drops its
state queue before it consumes again, so the scaler never counts a consuming worker as drained.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from celery.worker import state as worker_state

from celery_autoscaler.drain_keys import DRAINED, DRAINING, POLL_SCRIPT, WORKERS_TTL_MS, drain_key, workers_key
from celery_autoscaler.drain_queues import (
    MARKER_ARGUMENTS,
    SLOTS_ARGUMENTS,
    STATE_ARGUMENTS,
    WORKERS,
    marker_queue,
    slots_queue,
    state_queue,
)

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


class DrainLink(Protocol):
    """One worker's side of the broker: :class:`RedisDrainLink` or :class:`RabbitMQDrainLink`."""

    def poll(self, what: str) -> tuple[bool, str]:
        """Mark this worker present and do ``what``; (the drain exists, this worker's state).

        ``claim``: take a free slot if there is one; ``draining``/``drained``: say so; ``resume``:
        no longer draining; ``leave``: forget this worker; ``look``: only read.
        """
        ...


class RedisDrainLink:
    """The drain hash and workers set, through the pool's POLL_SCRIPT on the helper's redis client."""

    def __init__(self, client: Callable[[], Any], key_prefix: str, pool: str, hostname: str) -> None:
        self._client = client
        self._keys = [drain_key(key_prefix, pool), workers_key(key_prefix, pool)]
        self._hostname = hostname
        self._script: Any = None

    def poll(self, what: str) -> tuple[bool, str]:
        client = self._client()
        if self._script is None:
            self._script = client.register_script(POLL_SCRIPT)
        exists, state = self._script(keys=self._keys, args=[self._hostname, what, WORKERS_TTL_MS], client=client)
        state = state.decode() if isinstance(state, bytes) else str(state or "")
        return bool(exists), state


class RabbitMQDrainLink:
    """The drain queues, over a kombu connection of the helper's own (``connect`` makes it, unconnected).

    The worker is present while its exclusive ``workers`` queue exists, and draining or drained while
    that state's queue does; all of them go with the connection. Each poll is a few synchronous AMQP
    calls on the helper's 1 s thread, which also services the connection's heartbeats. Any failure
    closes the connection (the broker then drops this worker's queues) and raises; the next poll reconnects.
    """

    def __init__(self, connect: Callable[[], Any], pool: str, hostname: str) -> None:
        self._connect = connect
        self._pool = pool
        self._hostname = hostname
        self._connection: Any = None
        self._channel: Any = None
        self._state = ""

    def poll(self, what: str) -> tuple[bool, str]:
        if what == "leave":
            self.close()
            return False, ""
        try:
            channel = self._open()
            self._connection.heartbeat_check()
            exists = self._declare(channel, marker_queue(self._pool), MARKER_ARGUMENTS) > 0
            state = what if what in (DRAINING, DRAINED) else ""
            slots = slots_queue(self._pool)
            if what == "claim" and exists and self._declare(channel, slots, SLOTS_ARGUMENTS) > 0:
                claimed = channel.basic_get(queue=slots, no_ack=True) is not None
                state = DRAINING if claimed else ""  # RabbitMQ delivers each slot message once: this one is ours
            self._become(channel, state)
        except Exception:
            self.close()
            raise
        return exists, state

    def close(self) -> None:
        connection, self._connection, self._channel, self._state = self._connection, None, None, ""
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()

    def _open(self) -> Any:
        if self._channel is None:
            connection = self._connect()
            self._connection = connection
            connection.connect()
            channel = connection.channel()
            self._exclusive(channel, WORKERS)
            self._channel = channel
        return self._channel

    @staticmethod
    def _declare(channel: Any, queue: str, arguments: dict[str, Any]) -> int:
        """Declare ``queue`` as both sides do (creating it if missing); its ready messages."""
        return int(channel.queue_declare(queue=queue, durable=True, auto_delete=False, arguments=arguments)[1])

    def _exclusive(self, channel: Any, state: str) -> None:
        name = state_queue(state, self._pool, self._hostname)
        channel.queue_declare(queue=name, exclusive=True, auto_delete=False, arguments=STATE_ARGUMENTS)

    def _become(self, channel: Any, state: str) -> None:
        """The new state's queue first, then the old one's removal: the worker is never in neither."""
        if state == self._state:
            return
        if state:
            self._exclusive(channel, state)
        if self._state:
            channel.queue_delete(queue=state_queue(self._state, self._pool, self._hostname))
        self._state = state


class WorkerDrain:
    """One worker's drain state; :meth:`step` runs once per poll on the helper's thread.

    ``link`` is this worker's side of the broker; ``consumer`` is the Celery consumer (``worker_ready``'s sender).
    """

    def __init__(
        self,
        consumer: Any,
        link: DrainLink,
        idle_s: float,
        protection: Protection | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self._link = link
        self.protection: Protection = protection if protection is not None else NoProtection()
        self._idle_s = idle_s
        self._clock = clock
        self._last_held = clock()
        self.state = CONSUMING
        self.drain_exists = False
        self._cancelled: list[str] = []
        self._stopped = threading.Event()
        """Set on the consumer's loop once the cancels ran: no message can come in after that."""
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
                self._link.poll("leave")
                self.drain_exists, self.enabled = False, False
            return
        if self.state == CONSUMING:
            idle = held == 0 and now - self._last_held >= self._idle_s
            exists, state = self._link.poll("claim" if idle else "look")
            self.drain_exists = exists
            if state == DRAINING:
                self._stop_consuming()
            return
        # The cancels first, then what is held: a message let in before them is held by then.
        if self.state == CLAIMED and self._stopped.is_set() and holdings() == 0 and self.protection.release_now():
            self.state = DRAINED_STATE
            logger.info("celery-autoscaler: drained (holds nothing, protection released): ECS may stop this worker")
        exists, _ = self._link.poll(self.state)
        self.drain_exists = exists
        if not exists:
            self._resume()

    def _stop_consuming(self) -> None:
        """Cancel every task queue on the consumer's own event loop (Celery's ``cancel_consumer`` does the same).

        The loop runs the cancels at its next turn; the worker counts as drained only after they ran.
        """
        self.state = CLAIMED
        task_consumer = getattr(self.consumer, "task_consumer", None)
        names = [q.name for q in getattr(task_consumer, "queues", ())]
        self._cancelled = names
        self._stopped.clear()

        def cancel() -> None:
            for name in names:
                self.consumer.cancel_task_queue(name)
            self._stopped.set()

        self.consumer.call_soon(cancel)
        logger.info("celery-autoscaler: claimed a drain slot: stopping consuming from %s", ", ".join(names))

    def _resume(self) -> None:
        """The drain is over and ECS did not stop this worker: protect first, then consume again."""
        if not self.protection.protect_now():
            logger.warning("celery-autoscaler: drain over but protection could not be taken: consuming unprotected")
        self._link.poll("resume")  # no longer counted as draining or drained before it takes a task
        for name in self._cancelled:
            self.consumer.call_soon(self.consumer.add_task_queue, name)
        logger.info("celery-autoscaler: drain over: consuming again from %s", ", ".join(self._cancelled))
        self.state, self._cancelled = CONSUMING, []
        self._last_held = self._clock()
