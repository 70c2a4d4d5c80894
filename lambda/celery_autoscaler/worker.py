"""The helper users install in their own Celery app: ``celery_autoscaler.worker.install(app)``.

It imports Celery and the standard library only (never boto3 or redis), because it runs inside the
user's web, beat and worker processes. It does three things:

- stamps every published message with its publish time (header ``x_published_at``, epoch seconds,
  and the AMQP ``timestamp`` property for RabbitMQ), so the scaler can measure a queue's age;
- in a worker on ECS, turns on ECS task scale-in protection while tasks run and releases it after a
  short idle debounce, so scale-in never picks a busy worker and deployments are never blocked for long;
- in a worker whose pool is known (``CELERY_AUTOSCALER_POOL``, set by the module) on a Redis or
  RabbitMQ broker, takes part in fence and drain (:mod:`celery_autoscaler.worker_drain`), so scale-in stops only
  workers that have stopped consuming;
- in every worker, counts per queue the tasks finished and their run time and adds them to the
  broker's counters (:mod:`celery_autoscaler.counters`) once a second, so the scaler can size by run time;
- warns at worker start about settings that can lose or kill tasks when ECS stops the container.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from celery import Celery, signals
from celery.worker import state as worker_state

from celery_autoscaler.counters import COMPLETED_FIELD, RUN_MS_FIELD, stats_key
from celery_autoscaler.drain_queues import HEARTBEAT_S
from celery_autoscaler.worker_drain import SHUTTING_DOWN, DrainLink, RabbitMQDrainLink, RedisDrainLink, WorkerDrain

logger = logging.getLogger("celery_autoscaler.worker")

# The same default as config.DEFAULT_PUBLISH_TIME_HEADER (a test keeps them equal).
DEFAULT_PUBLISH_TIME_HEADER = "x_published_at"
ENV_AGENT_URI = "ECS_AGENT_URI"
ENV_PUBLISH_TIME_HEADER = "CELERY_AUTOSCALER_PUBLISH_TIME_HEADER"
ENV_PROTECTION = "CELERY_AUTOSCALER_SCALE_IN_PROTECTION"
ENV_PROTECTION_MINUTES = "CELERY_AUTOSCALER_PROTECTION_MINUTES"
ENV_MAX_PROTECTED_MINUTES = "CELERY_AUTOSCALER_MAX_PROTECTED_MINUTES"
ENV_STOP_TIMEOUT = "CELERY_AUTOSCALER_STOP_TIMEOUT"
ENV_RELEASE_AFTER_IDLE = "CELERY_AUTOSCALER_RELEASE_AFTER_IDLE_S"
ENV_POOL = "CELERY_AUTOSCALER_POOL"
PROTECTION_PATH = "/task-protection/v1/state"
MIN_PROTECTION_MINUTES = 1
MAX_PROTECTION_MINUTES = 2880  # the ECS agent's own limit (48 h)
FARGATE_DEFAULT_STOP_TIMEOUT_S = 30.0  # what ECS waits between SIGTERM and SIGKILL when unset
REDIS_DEFAULT_VISIBILITY_TIMEOUT_S = 3600.0
SQS_DEFAULT_VISIBILITY_TIMEOUT_S = 1800.0  # kombu's SQS Channel.default_visibility_timeout
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(raw: str) -> bool:
    return raw.strip().lower() not in _FALSE


def _parse_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


# Celery settings the Terraform module passes per pool as environment; install() applies them.
ENV_CELERY_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CELERY_TASK_ACKS_LATE": ("task_acks_late", _parse_bool),
    "CELERY_WORKER_PREFETCH_MULTIPLIER": ("worker_prefetch_multiplier", int),
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": ("worker_soft_shutdown_timeout", float),
    # SQS: region, queue_name_prefix, visibility_timeout and predefined_queues (the module's queues).
    "CELERY_BROKER_TRANSPORT_OPTIONS": ("broker_transport_options", _parse_object),
}


@dataclass(frozen=True)
class WorkerSettings:
    """The effective settings after keyword arguments, environment and caps were applied."""

    publish_time_header: str = DEFAULT_PUBLISH_TIME_HEADER
    protection: bool = True
    protection_minutes: int = 60
    max_protected_minutes: int = 120
    release_after_idle_s: float = 10.0
    renew_before_s: float = 300.0
    agent_uri: str | None = None
    agent_timeout_s: float = 2.0
    stop_timeout_s: float | None = None
    poll_interval_s: float = 1.0
    retry_interval_s: float = 10.0
    pool: str | None = None
    drain: bool = True

    @property
    def protection_url(self) -> str | None:
        """The agent endpoint, or None when protection is off or there is no agent (not on ECS)."""
        if not self.protection or not self.agent_uri:
            return None
        return self.agent_uri.rstrip("/") + PROTECTION_PATH


# Apps that called install(); weak so a discarded app (tests, reloads) is not kept alive.
_installed: weakref.WeakKeyDictionary[Celery, WorkerSettings] = weakref.WeakKeyDictionary()
# Replaced as a whole on install() so the publish handler never iterates a changing collection.
_publish_headers: frozenset[str] = frozenset()
_poller: Poller | None = None
_counters: TaskCounters | None = None
_start_lock = threading.Lock()
COUNTER_SOCKET_TIMEOUT_S = 5.0
"""The counters' own broker connection times out quickly: it shares the thread with protection."""


class SettingsArguments(TypedDict, total=False):
    """The keyword arguments of :func:`install` and :func:`resolve_settings`.

    A missing (or ``None``) value comes from the environment the Terraform module sets where there is
    such a variable, else from the :class:`WorkerSettings` default.
    """

    publish_time_header: str | None
    protection: bool | None
    protection_minutes: int | None
    max_protected_minutes: int | None
    release_after_idle_s: float | None
    renew_before_s: float
    agent_uri: str | None
    agent_timeout_s: float
    stop_timeout_s: float | None
    poll_interval_s: float
    pool: str | None
    drain: bool


def install(app: Celery, *, apply_env_settings: bool = True, **arguments: Unpack[SettingsArguments]) -> WorkerSettings:
    """Enable publish-time stamping, scale-in protection and start-up warnings for ``app``.

    Safe to call more than once (the last call's settings win, handlers are connected once) and in
    any process: producers only get the stamping, workers also get protection and warnings.
    With ``apply_env_settings`` the Celery settings in ``ENV_CELERY_SETTINGS`` found in the
    environment override the app's own (lazily: a later ``config_from_object`` keeps them).
    """
    if apply_env_settings:
        app.conf.update(celery_settings_from_env(os.environ))
    settings = resolve_settings(environ=os.environ, **arguments)
    _installed[app] = settings
    _refresh_publish_headers()
    # dispatch_uid makes a second install() (or a second app) reuse the same connection.
    signals.before_task_publish.connect(_stamp_publish_time, weak=False, dispatch_uid="celery_autoscaler.publish_time")
    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="celery_autoscaler.worker_ready")
    signals.task_received.connect(_on_task_received, weak=False, dispatch_uid="celery_autoscaler.task_received")
    signals.worker_shutting_down.connect(_on_shutting_down, weak=False, dispatch_uid="celery_autoscaler.shutdown")
    return settings


def uninstall(app: Celery) -> None:
    """Undo :func:`install` for ``app``: its process stops stamping unless another installed app stamps.

    The stamp applies to every publish in the process (Celery's signal does not say which app
    publishes), so a process that hosts several apps, such as a test session, needs a way back.
    """
    _installed.pop(app, None)
    _refresh_publish_headers()


def _refresh_publish_headers() -> None:
    global _publish_headers
    _publish_headers = frozenset(s.publish_time_header for s in _installed.values())


def resolve_settings(
    *, environ: Mapping[str, str] | None = None, **arguments: Unpack[SettingsArguments]
) -> WorkerSettings:
    """Merge arguments, environment and defaults; cap what the agent would reject.

    Programming errors (empty header, negative durations) raise ValueError; a bad environment value
    only logs and falls back, because it must not stop a web process from importing its Celery app.
    """
    env = os.environ if environ is None else environ
    defaults = WorkerSettings()
    publish_time_header = arguments.get("publish_time_header")
    if publish_time_header is None:
        publish_time_header = env.get(ENV_PUBLISH_TIME_HEADER) or defaults.publish_time_header
    if not publish_time_header:
        raise ValueError("publish_time_header must not be empty")
    release_after_idle_s = arguments.get("release_after_idle_s")
    if release_after_idle_s is None:
        release_after_idle_s = _env_number(env, ENV_RELEASE_AFTER_IDLE) or defaults.release_after_idle_s
    renew_before_s = arguments.get("renew_before_s", defaults.renew_before_s)
    agent_timeout_s = arguments.get("agent_timeout_s", defaults.agent_timeout_s)
    poll_interval_s = arguments.get("poll_interval_s", defaults.poll_interval_s)
    for name, value in (
        ("release_after_idle_s", release_after_idle_s),
        ("renew_before_s", renew_before_s),
        ("agent_timeout_s", agent_timeout_s),
        ("poll_interval_s", poll_interval_s),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    protection = arguments.get("protection")
    if protection is None:
        protection = _parse_bool(env.get(ENV_PROTECTION, "true"))
    protection_minutes = arguments.get("protection_minutes")
    if protection_minutes is None:
        protection_minutes = int(_env_number(env, ENV_PROTECTION_MINUTES) or defaults.protection_minutes)
    minutes = min(max(int(protection_minutes), MIN_PROTECTION_MINUTES), MAX_PROTECTION_MINUTES)
    if minutes != protection_minutes:
        logger.warning("protection_minutes=%s capped to %s (ECS accepts 1..2880)", protection_minutes, minutes)
    max_protected_minutes = arguments.get("max_protected_minutes")
    if max_protected_minutes is None:
        max_protected_minutes = int(_env_number(env, ENV_MAX_PROTECTED_MINUTES) or defaults.max_protected_minutes)
    if max_protected_minutes < 1:
        raise ValueError(f"max_protected_minutes must be >= 1, got {max_protected_minutes!r}")
    window_s = minutes * 60.0
    if renew_before_s >= window_s:
        # Renewing at least as early as the window is long would call the agent on every poll.
        renew_before_s = window_s / 2
    agent_uri = arguments.get("agent_uri")
    uri = agent_uri if agent_uri is not None else env.get(ENV_AGENT_URI) or None
    if uri and not uri.startswith(("http://", "https://")):
        logger.warning("%s=%r is not an http(s) URL: scale-in protection is off", ENV_AGENT_URI, uri)
        uri = None
    stop_timeout_s = arguments.get("stop_timeout_s")
    if stop_timeout_s is None:
        stop_timeout_s = _env_number(env, ENV_STOP_TIMEOUT)
    if stop_timeout_s is None and uri:
        stop_timeout_s = FARGATE_DEFAULT_STOP_TIMEOUT_S
    pool = arguments.get("pool")
    return WorkerSettings(
        pool=pool if pool is not None else env.get(ENV_POOL) or None,
        drain=arguments.get("drain", defaults.drain),
        publish_time_header=publish_time_header,
        protection=protection,
        protection_minutes=minutes,
        max_protected_minutes=int(max_protected_minutes),
        release_after_idle_s=float(release_after_idle_s),
        renew_before_s=float(renew_before_s),
        agent_uri=uri,
        agent_timeout_s=float(agent_timeout_s),
        stop_timeout_s=stop_timeout_s,
        poll_interval_s=float(poll_interval_s),
    )


def celery_settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The Celery settings found in ``ENV_CELERY_SETTINGS`` variables; unparsable values are logged and skipped."""
    found: dict[str, Any] = {}
    for variable, (setting, parse) in ENV_CELERY_SETTINGS.items():
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        try:
            found[setting] = parse(raw)
        except ValueError:
            logger.warning("%s=%r is not valid for %s; ignored", variable, raw, setting)
    return found


def _env_number(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; ignored", name, raw)
        return None
    return value if value > 0 else None


def _stamp_publish_time(
    sender: Any = None, headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None, **_: Any
) -> None:
    """Set the publish time on every message, overwriting an older value.

    A retry, a restored chain link or a copied header is a new publish: the scaler's "waiting since"
    means since this message entered the queue, so the newest time is the right one. The AMQP
    ``timestamp`` property (whole seconds: py-amqp cannot send a datetime) is what RabbitMQ reports
    as a queue head's ``head_message_timestamp``; other transports keep it as a harmless property.
    """
    if headers is None:
        return
    now = time.time()
    for name in _publish_headers:
        headers[name] = now
    if properties is not None and _publish_headers:
        properties["timestamp"] = int(now)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """In the worker's main process: log warnings, then start the helper's one thread once."""
    global _poller
    app = getattr(sender, "app", None)
    settings = _installed.get(app) if app is not None else None
    if app is None or settings is None:
        return
    for warning in settings_warnings(app, settings, os.environ):
        logger.warning("celery-autoscaler: %s", warning)
    counters = _task_counters(app)
    steps: list[Callable[[], None]] = [counters.flush]
    url = settings.protection_url
    drain: WorkerDrain | None = None
    if settings.pool and settings.drain:
        link = _drain_link(app, counters, settings.pool, str(sender.hostname))
        if link is not None:
            drain = WorkerDrain(sender, link, settings.release_after_idle_s)
            _wake_event_loop(sender, settings.poll_interval_s)
            logger.info("celery-autoscaler: fence and drain on for pool %r", settings.pool)
    if url is None:
        reason = "disabled" if not settings.protection else f"no {ENV_AGENT_URI} (not on ECS)"
        logger.info("celery-autoscaler: scale-in protection off: %s", reason)
    else:
        hold = drain.holds_protection if drain is not None else (lambda: False)
        monitor = ProtectionMonitor(settings, busy=lambda: len(worker_state.active_requests) > 0 or hold())
        if drain is not None:
            drain.protection = monitor
        steps.insert(0, monitor.step)
        logger.info(
            "celery-autoscaler: scale-in protection on (%s, %s min renewed while busy up to %s min, "
            "released after %.0f s idle)",
            url,
            settings.protection_minutes,
            settings.max_protected_minutes,
            settings.release_after_idle_s,
        )
    if drain is not None:
        steps.insert(0, drain.step)  # before protection: a drain decides whether this worker holds it
    with _start_lock:
        if _poller is None:
            _poller = Poller(settings.poll_interval_s, steps)
            _poller.start()


def _wake_event_loop(consumer: Any, interval_s: float) -> None:
    """Make Celery's event loop turn at least every ``interval_s`` (a no-op timer), in the main process.

    With no busy socket (an idle worker on RabbitMQ) the loop sleeps up to 10 s, and only then runs
    what the drain asked it to (stop or resume consuming) or notices a SIGTERM; a drained worker
    could then outlive a short ``stopTimeout``. Redis's transport turns the loop every second already.
    """
    timer = getattr(consumer, "timer", None)
    if timer is not None:
        timer.call_repeatedly(interval_s, _turn)


def _turn() -> None:
    """The no-op the event loop's timer runs (see :func:`_wake_event_loop`)."""


def _drain_link(app: Celery, counters: TaskCounters, pool: str, hostname: str) -> DrainLink | None:
    """This worker's side of the drain for the app's broker: Redis or RabbitMQ, else None (logged)."""
    probe = app.connection_for_write()
    driver = probe.transport.driver_type
    probe.release()
    if driver == "redis":
        return RedisDrainLink(counters.client, counters.key_prefix, pool, hostname)
    if driver == "amqp":
        timeouts = {"read_timeout": COUNTER_SOCKET_TIMEOUT_S, "write_timeout": COUNTER_SOCKET_TIMEOUT_S}
        return RabbitMQDrainLink(
            lambda: app.connection_for_write(
                heartbeat=HEARTBEAT_S, connect_timeout=COUNTER_SOCKET_TIMEOUT_S, transport_options=timeouts
            ),
            pool,
            hostname,
        )
    logger.info("celery-autoscaler: fence and drain off: the broker is %s, not Redis or RabbitMQ", driver)
    return None


def _on_shutting_down(**_: Any) -> None:
    """In the worker's main process at SIGTERM/SIGQUIT (a signal handler: no I/O here): poll now, to leave a drain."""
    SHUTTING_DOWN.set()
    if _poller is not None:
        _poller.wake()


def _task_counters(app: Celery) -> TaskCounters:
    global _counters
    with _start_lock:
        if _counters is None:
            _counters = TaskCounters(app)
        return _counters


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """In the worker's main process, as the consumer takes a message: count the task when it ends."""
    app = getattr(sender, "app", None)
    if request is None or app is None or app not in _installed:
        return
    counters = _task_counters(app)
    if counters.enabled:
        counters.watch(request)


class Poller:
    """The helper's one daemon thread in the worker's main process: every ``interval_s``, each step once.

    A step that fails only logs: a bug or an outage here must never take the worker down.
    """

    def __init__(self, interval_s: float, steps: list[Callable[[], None]]) -> None:
        self.interval_s = interval_s
        self.steps = steps
        self._thread = threading.Thread(target=self._run, name="celery-autoscaler", daemon=True)
        self._woken = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run the steps now instead of at the end of the interval."""
        self._woken.set()

    def _run(self) -> None:
        while True:  # steps first: a worker that starts during a drain takes protection at once
            for step in self.steps:
                try:
                    step()
                except Exception:
                    logger.exception("celery-autoscaler: %s failed", getattr(step, "__qualname__", step))
            self._woken.wait(self.interval_s)
            self._woken.clear()


class TaskCounters:
    """Per queue, tasks finished and their total run time, added to the broker's counters in batches.

    Counting happens in the worker's main process, in the result callbacks Celery already runs there
    for every task (an addition under a lock; prefork children are not involved). :meth:`flush`, on
    the helper's thread, adds what was counted since the last flush with one pipelined MULTI/EXEC
    of HINCRBYs over the app's own broker settings (a connection of its own, short socket timeouts).
    A failed write keeps the counts for the next flush and only logs. The counters exist for Redis
    brokers only: with another broker the helper logs that once and counts nothing.
    """

    def __init__(self, app: Celery) -> None:
        self._app = app
        self.key_prefix = str((app.conf.broker_transport_options or {}).get("global_keyprefix", "") or "")
        self._queues = {(q.exchange.name, q.routing_key): q.name for q in app.amqp.queues.values()}
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, int]] = {}
        self._connection: Any = None
        self._failing = False
        self.enabled = True

    def queue_of(self, delivery_info: Mapping[str, Any]) -> str:
        """The queue a message came from: the app's queue bound to its exchange and routing key, else the key."""
        exchange, routing_key = delivery_info.get("exchange") or "", delivery_info.get("routing_key") or ""
        return str(self._queues.get((exchange, routing_key), routing_key))

    def record(self, queue: str, run_s: float) -> None:
        with self._lock:
            count, run_ms = self._pending.get(queue, (0, 0))
            self._pending[queue] = (count + 1, run_ms + max(0, round(run_s * 1000.0)))

    def watch(self, request: Any) -> None:
        """Count ``request`` once when Celery reports it done (success, failure or retry), if it ran."""
        queue = self.queue_of(request.delivery_info or {})
        on_success, on_failure = request.on_success, request.on_failure
        counted = [False]

        def count(run_s: float | None) -> None:
            if counted[0] or request.time_start is None:
                return
            counted[0] = True
            self.record(queue, run_s if run_s is not None else time.time() - request.time_start)

        def success(failed__retval__runtime: tuple[bool, Any, float], **kwargs: Any) -> Any:
            failed, _, runtime = failed__retval__runtime
            if not failed:  # a failure goes on to on_failure, which counts it
                count(runtime)
            return on_success(failed__retval__runtime, **kwargs)

        def failure(*args: Any, **kwargs: Any) -> Any:
            count(None)
            return on_failure(*args, **kwargs)

        request.on_success, request.on_failure = success, failure

    def flush(self) -> None:
        """Add the counts since the last flush to the broker in one round trip; keep what was not written."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending or not self.enabled:
            return
        try:
            client = self.client()
            if client is None:
                return
            pipe = client.pipeline(transaction=True)
            for queue, (count, run_ms) in pending.items():
                key = stats_key(self.key_prefix, queue)
                pipe.hincrby(key, COMPLETED_FIELD, count)
                pipe.hincrby(key, RUN_MS_FIELD, run_ms)
            results = pipe.execute(raise_on_error=False)
        except Exception as exc:  # any broker or client error: keep the counts, reconnect next time
            self._close()
            self._keep(pending, f"{type(exc).__name__}: {exc}")
            return
        # A queue whose key holds something else (WRONGTYPE) fails alone; the others were added.
        failed = {
            queue: counts
            for (queue, counts), added in zip(
                pending.items(), zip(results[::2], results[1::2], strict=True), strict=True
            )
            if any(isinstance(result, Exception) for result in added)
        }
        if failed:
            self._keep(failed, "; ".join(str(e) for e in results if isinstance(e, Exception)))
            return
        if self._failing:
            logger.info("celery-autoscaler: task counters written again")
        self._failing = False

    def _keep(self, counts: dict[str, tuple[int, int]], error: str) -> None:
        """Put unwritten counts back for the next flush and log (a warning once per failing streak)."""
        with self._lock:
            for queue, (count, run_ms) in counts.items():
                old_count, old_ms = self._pending.get(queue, (0, 0))
                self._pending[queue] = (old_count + count, old_ms + run_ms)
        (logger.debug if self._failing else logger.warning)(
            "celery-autoscaler: writing task counters for %s failed (%s); kept for the next try",
            ", ".join(sorted(counts)),
            error,
        )
        self._failing = True

    def client(self) -> Any:
        """The redis client of the helper's own connection (counters and drain), or None for a non-Redis broker."""
        if self._connection is None:
            timeouts = {"socket_timeout": COUNTER_SOCKET_TIMEOUT_S, "socket_connect_timeout": COUNTER_SOCKET_TIMEOUT_S}
            connection = self._app.connection_for_write(transport_options=timeouts)
            driver = connection.transport.driver_type
            if driver != "redis":
                connection.release()
                self.enabled = False
                with self._lock:
                    self._pending.clear()
                logger.info("celery-autoscaler: task counters off: the broker is %s, not Redis", driver)
                return None
            connection.connect()
            self._connection = connection
        return self._connection.default_channel.client

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.release()
            self._connection = None


class ProtectionMonitor:
    """Keeps ECS scale-in protection on while the worker runs tasks; releases it when idle.

    Its :meth:`step` runs on the helper's thread in the worker's main process, which owns the state of
    every prefork child, so protection is one decision per container. Agent calls happen there, never on the task
    path: a slow or failing agent delays nothing and fails nothing, it only logs. One busy period is
    protected for at most ``max_protected_minutes``: a worker that never goes idle must not block a
    deployment forever, so after that the protection lapses until the worker has been idle.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        busy: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._busy = busy
        self._clock = clock
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the agent is link-local
        self.protected_until: float | None = None
        self._last_busy = clock()
        self._next_attempt = 0.0
        self._failing = False
        self._busy_since: float | None = None  # start of the busy period protection covers
        self._lapsed = False

    def step(self) -> None:
        """One poll: protect or renew while busy (up to the cap), release after the idle debounce."""
        now = self._clock()
        if now < self._next_attempt:
            return
        if self.protected_until is not None and now >= self.protected_until:
            self.protected_until = None  # the agent has let it expire too
        if self._busy():
            self._last_busy = now
            due = self.protected_until is None or now >= self.protected_until - self.settings.renew_before_s
            if due and not self._lapsed:
                if self._busy_since is None:
                    self._busy_since = now
                left_s = self.settings.max_protected_minutes * 60.0 - (now - self._busy_since)
                minutes = min(self.settings.protection_minutes, int(left_s // 60))
                if minutes >= 1:
                    self._put(enabled=True, now=now, minutes=minutes)
                else:
                    self._lapsed = True
                    logger.warning(
                        "celery-autoscaler: busy for %s min without a break: letting scale-in protection lapse "
                        "so deployments and scale-in can proceed",
                        self.settings.max_protected_minutes,
                    )
        elif now - self._last_busy >= self.settings.release_after_idle_s:
            if self.protected_until is not None:
                self._put(enabled=False, now=now)
            if self.protected_until is None:
                self._busy_since, self._lapsed = None, False

    def release_now(self) -> bool:
        """For a drained worker: release at once, not after the idle debounce; True when unprotected."""
        if self.protected_until is not None:
            self._put(enabled=False, now=self._clock())
        if self.protected_until is None:
            self._busy_since, self._lapsed = None, False
        return self.protected_until is None

    def protect_now(self) -> bool:
        """For a worker that resumes after a drain: protect before it consumes again; True when protected."""
        now = self._clock()
        self._last_busy = now
        if self.protected_until is None:
            self._put(enabled=True, now=now, minutes=self.settings.protection_minutes)
        return self.protected_until is not None

    def _put(self, *, enabled: bool, now: float, minutes: int = 0) -> None:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = minutes
        error = self._call(body)
        if error is None:
            self.protected_until = now + minutes * 60.0 if enabled else None
            if self._failing:
                logger.info("celery-autoscaler: ECS agent answers again")
            self._failing = False
            logger.debug("celery-autoscaler: protection %s", "on" if enabled else "released")
            return
        self._next_attempt = now + self.settings.retry_interval_s
        log = logger.debug if self._failing else logger.warning
        log(
            "celery-autoscaler: ECS agent call %s failed (%s); tasks go on, retry in %.0f s",
            body,
            error,
            self.settings.retry_interval_s,
        )
        self._failing = True

    def _call(self, body: dict[str, Any]) -> str | None:
        """PUT the state; return None on success, else a short reason."""
        url = self.settings.protection_url
        assert url is not None  # the monitor is only started with a URL
        request = urllib.request.Request(  # noqa: S310 - the scheme was checked to be http(s)
            url,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self.settings.agent_timeout_s) as response:
                payload = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read(500)!r}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad JSON
            return f"{type(exc).__name__}: {exc}"
        if not isinstance(payload, dict) or "protection" not in payload:
            return f"unexpected answer {str(payload)[:500]}"
        return None


def settings_warnings(app: Celery, settings: WorkerSettings, environ: Mapping[str, str]) -> list[str]:
    """Say which Celery settings can lose, kill or duplicate tasks when ECS stops this worker."""
    conf = app.conf
    acks_late = bool(conf.task_acks_late)
    soft_shutdown = environ.get("REMAP_SIGTERM", "").upper() == "SIGQUIT"
    soft_timeout = float(conf.worker_soft_shutdown_timeout or 0)
    prefetch = int(conf.worker_prefetch_multiplier or 0)
    longest = longest_task_s(app)
    stop = settings.stop_timeout_s
    limit = "without a time limit" if math.isinf(longest) else f"up to {longest:.0f} s"
    warnings: list[str] = []
    if soft_shutdown and not acks_late:
        warnings.append(
            "REMAP_SIGTERM=SIGQUIT with task_acks_late=False: on SIGTERM running tasks are cancelled after "
            "worker_soft_shutdown_timeout and LOST; set task_acks_late=True (idempotent tasks) or drop REMAP_SIGTERM"
        )
    if soft_shutdown and stop is not None and soft_timeout >= stop:
        warnings.append(
            f"worker_soft_shutdown_timeout={soft_timeout:.0f} s is not below stop_timeout={stop:.0f} s: ECS "
            "SIGKILLs the worker before it can requeue its running tasks"
        )
    if stop is not None and not soft_shutdown and longest > stop:
        outcome = "re-run after visibility_timeout" if acks_late else "LOST"
        warnings.append(
            f"tasks run {limit} but ECS SIGKILLs {stop:.0f} s after SIGTERM: a task still running then is "
            f"{outcome}; set task_time_limit below stop_timeout, raise stop_timeout (max 120 s on Fargate), or "
            "use REMAP_SIGTERM=SIGQUIT + worker_soft_shutdown_timeout + task_acks_late=True"
            + ("" if settings.protection_url else "; scale-in protection is off, so scale-in can hit busy workers")
        )
    if prefetch > 1 and stop is not None and longest > stop:
        warnings.append(
            f"worker_prefetch_multiplier={prefetch} with tasks that run {limit}: prefetched messages wait behind long "
            "tasks and keep a protected worker busy; set worker_prefetch_multiplier=1 for long tasks"
        )
    broker = str(conf.broker_url or "")
    sqs = broker.startswith("sqs")
    default = SQS_DEFAULT_VISIBILITY_TIMEOUT_S if sqs else REDIS_DEFAULT_VISIBILITY_TIMEOUT_S
    visibility = float(conf.broker_transport_options.get("visibility_timeout", default))
    if acks_late and (sqs or broker.startswith(("redis", "rediss", "sentinel"))) and longest > visibility:
        name = "SQS" if sqs else "Redis"
        warnings.append(
            f"task_acks_late=True with tasks that run {limit} and visibility_timeout={visibility:.0f} s: {name} "
            "redelivers still-running tasks after visibility_timeout, so they run twice"
        )
    return warnings


def longest_task_s(app: Celery) -> float:
    """The longest any of the app's own tasks may run: its hard limit, else its soft limit, else infinity."""
    conf = app.conf
    default = conf.task_time_limit or conf.task_soft_time_limit
    longest = 0.0
    for name, task in app.tasks.items():
        if name.startswith("celery."):
            continue
        limit = getattr(task, "time_limit", None) or getattr(task, "soft_time_limit", None) or default
        longest = max(longest, float(limit) if limit else math.inf)
    return longest
