"""A Celery app for the probe tests: tasks that block until the test releases them.

The test process builds producers with :func:`make_app`; the worker subprocess imports ``app``,
configured from ``PROBE_APP_*`` environment variables, so both sides agree on names and routing.
The tasks signal through Redis lists: in the broker's db, or at ``signal_url`` (``PROBE_APP_SIGNAL_URL``)
when the broker is not Redis.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from brokers import redis_url_for
from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

STARTED, RELEASE, DONE = "probe:started", "probe:release", "probe:done"
"""Lists (in the broker's db) where blocking tasks record start and finish and wait for a release."""

ROUTED_QUEUES = (
    Queue("routed", Exchange("routed_ex", type="direct"), routing_key="rk.routed"),
    Queue("topicq", Exchange("topic_ex", type="topic"), routing_key="jobs.#"),
)
"""Queues behind named exchanges, to check the probe resolves kombu's binding tables."""


def make_app(
    broker_url: str,
    *,
    main: str = "probe",
    acks_late: bool = False,
    transport_options: dict[str, Any] | None = None,
    stamp_header: str | None = "x_published_at",
    signal_url: str | None = None,
    queue_arguments: dict[str, dict[str, Any]] | None = None,
) -> Celery:
    """A Celery app on ``broker_url`` with prefetch multiplier 1, so what a worker holds is exact.

    ``stamp_header`` names the publish-time header set (unless the caller set it) by a
    ``before_task_publish`` handler, as the autoscaler's worker helper does in users' producers;
    ``None`` publishes without it. ``queue_arguments`` declares more queues (name -> AMQP arguments such as
    ``x-max-priority`` or ``x-queue-type``), each on a direct exchange of its name.
    Task names start with ``main`` so differently stamped apps never share a handler.
    """
    app = Celery(main, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=acks_late,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options or {},
        task_queues=ROUTED_QUEUES
        + tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments)
            for name, arguments in (queue_arguments or {}).items()
        ),
        task_default_queue="celery",
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=f"{main}.block", shared=False)
    def block(tag: str) -> str:
        signals = redis.Redis.from_url(signal_url or broker_url)
        signals.rpush(STARTED, tag)
        signals.blpop([RELEASE], timeout=600)
        signals.rpush(DONE, tag)
        return tag

    @app.task(name=f"{main}.noop", shared=False)
    def noop() -> None:
        return None

    if stamp_header is not None:
        header = stamp_header

        def stamp(sender: str, headers: dict[str, Any], **_: Any) -> None:
            if sender.startswith(f"{main}."):
                headers.setdefault(header, time.time())

        before_task_publish.connect(stamp, weak=False, dispatch_uid=f"stamp-{main}-{header}")
    return app


app = make_app(
    os.environ.get("PROBE_APP_BROKER_URL") or redis_url_for(9),
    acks_late=os.environ.get("PROBE_APP_ACKS_LATE") == "1",
    transport_options=json.loads(os.environ.get("PROBE_APP_TRANSPORT_OPTIONS", "{}")),
    signal_url=os.environ.get("PROBE_APP_SIGNAL_URL"),
    queue_arguments=json.loads(os.environ.get("PROBE_APP_QUEUE_ARGUMENTS", "{}")),
)
