"""The local task runner: stands in for ECS, running real Celery workers to match desired counts.

The emulator stores each service's desired count but runs nothing (and reports running = desired at
once), so this runner does what ECS would: it polls ``describe_services``, starts the container the
service's task definition describes (its command, environment and Secrets Manager secrets, as a
local process in the venv instead of an image) per missing task after a start delay (Fargate takes
~20 s), and on scale-in stops surplus tasks with SIGTERM (Celery's warm shutdown), pending ones
first, then unprotected ones, never a task whose scale-in protection is on (ECS waits for it to
expire or be released). Tasks that ignore SIGTERM past ``stop_timeout_s`` get SIGKILL, as on ECS.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from demo.agent import FakeEcsAgent
from demo.events import EventLog

APP_DIR = Path(__file__).resolve().parents[2] / "django-celery-app"


@dataclass(frozen=True)
class Container:
    """The worker container of a pool's task definition, as the runner will run it."""

    command: tuple[str, ...]
    environment: dict[str, str]
    stop_timeout_s: float

    def settings(self) -> dict[str, Any]:
        """What the simulator needs to know of the container (never its secrets): the Celery settings the
        module sets and the stop timeout."""
        env = self.environment
        return {
            "concurrency": int(env["CELERY_CONCURRENCY"]),
            "prefetch_multiplier": int(env["CELERY_WORKER_PREFETCH_MULTIPLIER"]),
            "acks_late": env["CELERY_TASK_ACKS_LATE"].lower() == "true",
            "stop_timeout_s": self.stop_timeout_s,
        }


def load_container(ecs: Any, secrets: Any, cluster: str, service: str) -> Container:
    """Read the service's task definition like the ECS agent does, resolving secrets to values."""
    described = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    definition = ecs.describe_task_definition(taskDefinition=described["taskDefinition"])["taskDefinition"]
    container = definition["containerDefinitions"][0]
    environment = {item["name"]: item["value"] for item in container.get("environment", [])}
    for item in container.get("secrets", []):
        environment[item["name"]] = secrets.get_secret_value(SecretId=item["valueFrom"])["SecretString"]
    command = tuple(container["command"])
    if command[0] == "celery":  # the image's celery is this venv's
        command = (sys.executable, "-m", "celery", *command[1:])
    return Container(command, environment, float(container.get("stopTimeout", 30)))


@dataclass
class Task:
    """One ECS task of a pool: pending until its start delay passes, then a real worker process."""

    task_id: str
    pool: str
    created_at: float
    start_at: float
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started_at: float | None = None
    stopping_at: float | None = None
    exited_at: float | None = None
    killed: bool = False
    held: bool = False

    @property
    def pending(self) -> bool:
        return self.process is None and self.stopping_at is None

    @property
    def running(self) -> bool:
        return self.process is not None and self.stopping_at is None and self.exited_at is None


@dataclass
class PoolView:
    """What the runner last saw and did for one pool (read by the live view and the actuator)."""

    desired: int = 0
    running: int = 0
    pending: int = 0
    stopping: int = 0
    protected: int = 0
    peak_running: int = 0


class TaskRunner:
    """Polls desired counts every ``poll_s`` and reconciles real worker processes with them."""

    def __init__(
        self,
        ecs: Any,
        cluster: str,
        pools: dict[str, str],
        containers: dict[str, Container],
        events: EventLog,
        log_dir: Path,
        start_delay_s: float = 20.0,
        poll_s: float = 1.0,
    ) -> None:
        self._ecs = ecs
        self._cluster = cluster
        self._services = pools
        self._containers = containers
        self._events = events
        self._log_dir = log_dir
        self._start_delay_s = start_delay_s
        self._poll_s = poll_s
        self._tasks: dict[str, list[Task]] = {pool: [] for pool in pools}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="task-runner", daemon=True)
        self.views: dict[str, PoolView] = {pool: PoolView() for pool in pools}
        self.errors: list[str] = []
        self.agent = FakeEcsAgent(on_change=self._protection_changed)

    def start(self) -> None:
        self.agent.start()
        self._thread.start()

    def snapshot(self) -> dict[str, PoolView]:
        """A consistent copy of every pool's counts (the runner thread keeps updating the originals)."""
        with self._lock:
            return {name: replace(view) for name, view in self.views.items()}

    def _protection_changed(self, task_id: str, enabled: bool, expires: float | None) -> None:
        self._events.emit("protection", task=task_id, enabled=enabled, expires=expires)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.reconcile()
            except Exception as exc:  # keep the runner alive, as an agent would
                self.errors.append(repr(exc))
                self._events.emit("runner_error", error=repr(exc))

    def _desired_counts(self) -> dict[str, int]:
        by_service = {service: name for name, service in self._services.items()}
        names = list(by_service)
        response = self._ecs.describe_services(cluster=self._cluster, services=names)
        return {by_service[s["serviceName"]]: int(s["desiredCount"]) for s in response["services"]}

    def reconcile(self) -> None:
        """One pass: read desired counts, then start, stop and reap tasks for every pool."""
        desired = self._desired_counts()
        now = time.time()
        for name in self._services:
            self._reconcile_pool(name, desired.get(name, 0), now)

    def _reconcile_pool(self, name: str, desired: int, now: float) -> None:
        tasks = self._tasks[name]
        view = self.views[name]
        if desired != view.desired:
            self._events.emit("runner_desired", pool=name, desired=desired, previous=view.desired)
        self._reap(tasks, now)
        active = [t for t in tasks if t.stopping_at is None]
        for _ in range(desired - len(active)):
            task = Task(f"{name}-{next(self._ids)}", name, now, now + self._start_delay_s)
            tasks.append(task)
            self._events.emit("task_pending", pool=name, task=task.task_id)
        surplus = len(active) - desired
        if surplus > 0:
            self._stop_surplus(active, surplus, now)
        else:
            for task in active:
                task.held = False
        for task in tasks:
            if task.pending and task.start_at <= now:
                self._spawn(task, now)
        self._update_view(name, desired, now)

    def _stop_surplus(self, active: list[Task], surplus: int, now: float) -> None:
        """ECS order: tasks not yet started first, then unprotected running ones (newest first)."""
        pending = sorted((t for t in active if t.pending), key=lambda t: t.created_at, reverse=True)
        running = sorted((t for t in active if t.running), key=lambda t: t.started_at or 0.0, reverse=True)
        for task in pending[:surplus]:
            task.stopping_at = task.exited_at = now
            self._events.emit("task_cancelled", pool=task.pool, task=task.task_id)
            surplus -= 1
        for task in running:
            if surplus <= 0:
                break
            if self.agent.is_protected(task.task_id, now):
                if not task.held:  # ECS leaves a protected task running; say so once per task
                    task.held = True
                    self._events.emit("task_held_protected", pool=task.pool, task=task.task_id)
                continue
            assert task.process is not None
            task.process.send_signal(signal.SIGTERM)
            task.stopping_at = now
            self._events.emit("task_stopping", pool=task.pool, task=task.task_id)
            surplus -= 1

    def _spawn(self, task: Task, now: float) -> None:
        container = self._containers[task.pool]
        self._log_dir.mkdir(parents=True, exist_ok=True)
        task.log = (self._log_dir / f"{task.task_id}.log").open("wb")
        env = {**os.environ, **container.environment, "ECS_AGENT_URI": self.agent.uri_for(task.task_id)}
        # On ECS every task has its own hostname; here they share one, so name each worker.
        command = [*container.command, "--hostname", f"{task.task_id}@%h"]
        # Own session: a Ctrl-C in the terminal must not reach the workers; the runner stops them.
        task.process = subprocess.Popen(
            command, cwd=APP_DIR, env=env, stdout=task.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        task.started_at = now
        self._events.emit("task_started", pool=task.pool, task=task.task_id, pid=task.process.pid)

    def _reap(self, tasks: list[Task], now: float) -> None:
        for task in list(tasks):
            if task.exited_at is not None:
                tasks.remove(task)
                continue
            if task.process is None or task.process.poll() is None:
                if task.stopping_at is not None and task.process is not None:
                    overdue = now - task.stopping_at > self._containers[task.pool].stop_timeout_s
                    if overdue and not task.killed:
                        task.killed = True
                        task.process.kill()
                        self._events.emit("task_killed", pool=task.pool, task=task.task_id)
                continue
            task.exited_at = now
            if task.log is not None:
                task.log.close()
            expected = task.stopping_at is not None
            code = task.process.returncode
            self._events.emit("task_exited", pool=task.pool, task=task.task_id, code=code, expected=expected)
            if not expected:
                self.errors.append(f"{task.task_id} exited on its own with code {code}")
            tasks.remove(task)

    def _update_view(self, name: str, desired: int, now: float) -> None:
        tasks = self._tasks[name]
        running = [t for t in tasks if t.running]
        with self._lock:
            view = self.views[name]
            previous_running = view.running
            view.desired = desired
            view.running = len(running)
            view.pending = sum(1 for t in tasks if t.pending)
            view.stopping = sum(1 for t in tasks if t.stopping_at is not None)
            view.protected = sum(1 for t in running if self.agent.is_protected(t.task_id, now))
            view.peak_running = max(view.peak_running, view.running)
        if view.running != previous_running:
            self._events.emit("runner_running", pool=name, running=view.running, desired=desired)

    def stop(self, timeout_s: float = 150.0) -> None:
        """Stop polling, then stop every worker still up (SIGTERM, SIGKILL after ``timeout_s``)."""
        self._stop.set()
        self._thread.join()
        live = [t for tasks in self._tasks.values() for t in tasks if t.process is not None and t.exited_at is None]
        for task in live:
            assert task.process is not None
            if task.stopping_at is None:
                task.process.send_signal(signal.SIGTERM)
                task.stopping_at = time.time()
                self._events.emit("task_stopping", pool=task.pool, task=task.task_id, at_exit=True)
        deadline = time.time() + timeout_s
        for task in live:
            assert task.process is not None
            try:
                task.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                task.process.kill()
                task.process.wait()
                self._events.emit("task_killed", pool=task.pool, task=task.task_id)
            task.exited_at = time.time()
            self._events.emit(
                "task_exited", pool=task.pool, task=task.task_id, code=task.process.returncode, expected=True
            )
            if task.log is not None:
                task.log.close()
        self.agent.stop()
