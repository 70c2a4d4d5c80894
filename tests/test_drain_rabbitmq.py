"""Fence and drain on RabbitMQ, the scaler's side against a private RabbitMQ node (its own vhost per test).

The workers' side here is the helper's own :class:`RabbitMQDrainLink`, each on its own kombu
connection, called the way the helper's thread calls it; tests/test_safe_scale_in.py runs it in
real Celery workers.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from amqp.exceptions import ConnectionForced
from brokers import RabbitBroker, Vhost, create_vhost
from kombu import Connection
from test_drain import Service
from waiting import wait_until

from celery_autoscaler.config import BrokerConfig, ScalerConfig, parse_config
from celery_autoscaler.drain import DrainError, DrainPlan, DrainStatus, drainer_for
from celery_autoscaler.drain_keys import DRAIN_TTL_MS
from celery_autoscaler.drain_queues import HEARTBEAT_S, MARKER_ARGUMENTS, marker_queue, slots_queue, state_queue
from celery_autoscaler.drain_rabbitmq import RabbitMQDrainer
from celery_autoscaler.probe.rabbitmq import RabbitMQProbe
from celery_autoscaler.state import InMemoryStateStore
from celery_autoscaler.telemetry import Telemetry
from celery_autoscaler.tick import PoolOutcome, run_tick
from celery_autoscaler.worker_drain import RabbitMQDrainLink, WorkerDrain

NOW = 1_800_000_000.0
POOL = "default.eu"  # a dot in the pool's name: names must still parse back


@pytest.fixture
def vhost(rabbitmq: RabbitBroker) -> Iterator[Vhost]:
    made = create_vhost(rabbitmq, f"drain/{uuid.uuid4().hex[:8]}")
    yield made
    rabbitmq.management_request("DELETE", f"/api/vhosts/{made.path}")


def drainer(vhost: Vhost) -> RabbitMQDrainer:
    made = drainer_for(BrokerConfig(management_url=vhost.broker.management_url), vhost.amqp_url)
    assert isinstance(made, RabbitMQDrainer)
    return made


def link(vhost: Vhost, hostname: str, pool: str = POOL) -> RabbitMQDrainLink:
    """One worker's side, on a connection of its own as the helper makes it."""
    return RabbitMQDrainLink(lambda: Connection(vhost.amqp_url, heartbeat=HEARTBEAT_S), pool, hostname)


def test_rabbitmq_urls_get_the_rabbitmq_drainer() -> None:
    broker = BrokerConfig()
    for url in ("amqp://u:p@rabbit:5672/celery", "amqps://u:p@b-1.mq.eu-west-1.amazonaws.com:5671//"):
        assert isinstance(drainer_for(broker, url), RabbitMQDrainer)


def test_workers_claim_slots_atomically_and_the_scaler_counts_them(vhost: Vhost) -> None:
    scaler = drainer(vhost)
    a, b, c = (link(vhost, f"{name}@host") for name in "abc")
    other = link(vhost, "x@host", pool="default")  # a pool whose name is a prefix of this one's
    try:
        assert scaler.status([POOL]) == {POOL: DrainStatus(workers=0)}
        assert [w.poll("look") for w in (a, b, c, other)] == [(False, "")] * 4
        assert scaler.status([POOL, "default"]) == {POOL: DrainStatus(workers=3), "default": DrainStatus(workers=1)}

        scaler.apply(POOL, DrainPlan(desired=3, open=2), NOW)
        listed = vhost.listed()
        assert listed[marker_queue(POOL)]["arguments"]["x-message-ttl"] == DRAIN_TTL_MS, "an abandoned drain ends"
        assert listed[slots_queue(POOL)]["messages_ready"] == 2
        assert scaler.status([POOL])[POOL] == DrainStatus(workers=3, active=True, open=2, since=NOW)
        assert [w.poll("claim") for w in (a, b, c)] == [(True, "draining"), (True, "draining"), (True, "")]
        assert a.poll("drained") == (True, "drained")
        assert other.poll("claim") == (False, ""), "another pool's drain is not this one's"
        status = scaler.status([POOL])[POOL]
        assert (status.workers, status.active, status.open, status.draining, status.drained) == (3, True, 0, 1, 1)

        scaler.apply(POOL, DrainPlan(desired=2, open=0, lowering=True), NOW + 5)
        status = scaler.status([POOL])[POOL]
        assert (status.since, status.lowered_at, status.drained) == (NOW, NOW + 5, 1), "times survive a refresh"
        scaler.apply(POOL, DrainPlan(desired=2, open=1), NOW + 10)
        assert scaler.status([POOL])[POOL].lowered_at == NOW + 5
        scaler.apply(POOL, DrainPlan(desired=2, open=None), NOW + 15)
        assert a.poll("drained") == (False, "drained"), "an ended drain is gone for every worker"
        assert scaler.status([POOL])[POOL] == DrainStatus(workers=3)
        assert vhost.listed()[slots_queue(POOL)]["messages_ready"] == 0, "its slots went with it"
        assert a.poll("resume") == (False, "")
        assert state_queue("drained", POOL, "a@host") not in vhost.listed()
    finally:
        for w in (a, b, c, other):
            w.close()
    assert scaler.status([POOL])[POOL] == DrainStatus(workers=0), "a closed connection takes its queues along"


def test_each_slot_goes_to_one_worker_when_many_claim_at_once(vhost: Vhost) -> None:
    scaler = drainer(vhost)
    workers = [link(vhost, f"w{i}@host") for i in range(8)]
    claimed: list[str] = []
    try:
        for w in workers:
            w.poll("look")
        scaler.status([POOL])
        scaler.apply(POOL, DrainPlan(desired=8, open=3), NOW)
        start = threading.Barrier(len(workers))

        def claim(w: RabbitMQDrainLink) -> None:
            start.wait(timeout=60)
            claimed.append(w.poll("claim")[1])

        threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(claimed) == [""] * 5 + ["draining"] * 3
        assert scaler.status([POOL])[POOL].draining == 3
    finally:
        for w in workers:
            w.close()


def test_reading_and_refreshing_a_drain_never_hides_it_from_a_worker(vhost: Vhost) -> None:
    """The marker has two copies: the scaler's read takes one and puts it back, a refresh replaces the oldest."""
    scaler = drainer(vhost)
    worker = link(vhost, "w@host")
    worker.poll("look")
    scaler.status([POOL])
    scaler.apply(POOL, DrainPlan(desired=1, open=0), NOW)
    stop = threading.Event()
    seen: list[bool] = []

    def look() -> None:
        while not stop.is_set():
            seen.append(worker.poll("look")[0])

    looking = threading.Thread(target=look)
    looking.start()
    try:
        for i in range(40):
            assert scaler.status([POOL])[POOL].active
            scaler.apply(POOL, DrainPlan(desired=1, open=0), NOW + i)
        wait_until(lambda: len(seen) >= 40, timeout=60, what="the worker's polls")
    finally:
        stop.set()
        looking.join(timeout=60)
        worker.close()
    assert all(seen), f"{seen.count(False)} of {len(seen)} polls saw no drain"


def test_a_drain_the_scaler_stops_refreshing_ends_for_every_worker(
    vhost: Vhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker's TTL (``DRAIN_TTL_MS``, 60 s; 2 s here, both sides declare the same arguments)."""
    monkeypatch.setitem(MARKER_ARGUMENTS, "x-message-ttl", 2000)
    scaler, worker = drainer(vhost), link(vhost, "w@host")
    try:
        worker.poll("look")
        scaler.status([POOL])
        scaler.apply(POOL, DrainPlan(desired=1, open=1), NOW)
        assert worker.poll("claim") == (True, "draining")
        wait_until(lambda: worker.poll("draining") == (False, "draining"), timeout=60, what="the drain to expire")
        assert not scaler.status([POOL])[POOL].active
    finally:
        worker.close()


def test_a_worker_whose_connection_dies_counts_for_nothing_and_comes_back_as_it_was(
    vhost: Vhost, rabbitmq: RabbitBroker
) -> None:
    scaler = drainer(vhost)
    gone, alive = link(vhost, "gone@host"), link(vhost, "alive@host")
    try:
        for w in (gone, alive):
            w.poll("look")
        scaler.status([POOL])
        scaler.apply(POOL, DrainPlan(desired=2, open=1), NOW)
        assert gone.poll("claim") == (True, "draining")
        assert gone.poll("drained") == (True, "drained")
        assert scaler.status([POOL])[POOL].drained == 1

        def connections() -> list[str]:
            rows = rabbitmq.management_get(f"/api/vhosts/{vhost.path}/connections")
            assert isinstance(rows, list)
            return [row["name"] for row in rows]

        wait_until(lambda: len(connections()) == 2, timeout=60, what="both connections listed")
        for name in connections():  # the broker drops both, as after missed heartbeats
            rabbitmq.management_request("DELETE", f"/api/connections/{quote(name, safe='')}")
        wait_until(lambda: scaler.status([POOL])[POOL].workers == 0, timeout=60, what="both workers forgotten")
        assert scaler.status([POOL])[POOL].drained == 0
        for w, state in ((gone, "drained"), (alive, "look")):
            with pytest.raises(ConnectionForced):  # the helper's thread logs it; the worker goes on
                w.poll(state)
        assert gone.poll("drained") == (True, "drained"), "the next poll connects and says its state again"
        assert alive.poll("look") == (True, "")
        status = scaler.status([POOL])[POOL]
        assert (status.workers, status.drained) == (2, 1)
    finally:
        gone.close()
        alive.close()


def test_a_user_without_the_drain_permissions_gets_a_drain_error_without_its_password(
    vhost: Vhost, rabbitmq: RabbitBroker
) -> None:
    user, password = f"ro-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    rabbitmq.management_request("PUT", f"/api/users/{user}", {"password": password, "tags": "monitoring"})
    try:
        nothing = {"configure": "^$", "write": "^$", "read": "^$"}
        rabbitmq.management_request("PUT", f"/api/permissions/{vhost.path}/{user}", nothing)
        host = vhost.amqp_url.rsplit("@", 1)[1]
        limited = drainer_for(BrokerConfig(management_url=rabbitmq.management_url), f"amqp://{user}:{password}@{host}")
        assert limited is not None
        assert limited.status([POOL]) == {POOL: DrainStatus(workers=0)}, "the listing needs no permission"
        with pytest.raises(DrainError, match="configure, write and read") as refused:
            limited.apply(POOL, DrainPlan(desired=1, open=1), NOW)
        wrong = drainer_for(BrokerConfig(management_url=rabbitmq.management_url), f"amqp://{user}:nope@{host}")
        assert wrong is not None
        with pytest.raises(DrainError, match="401") as unauthorized:
            wrong.status([POOL])
        for error in (refused.value, unauthorized.value):
            assert password not in str(error)
            assert "nope" not in str(error)
    finally:
        rabbitmq.management_request("DELETE", f"/api/users/{user}")


def pinned(vhost: Vhost, count: int) -> ScalerConfig:
    pool = {"service": "svc", "queues": ["q"], "min_workers": count, "max_workers": count}
    broker = {"url": vhost.amqp_url, "management_url": vhost.broker.management_url}
    return parse_config({"broker": broker, "cluster": "c", "pools": {POOL: pool}})


def test_a_tick_asks_then_lowers_by_the_drained_and_says_so(vhost: Vhost) -> None:
    service, store, stream = Service(5), InMemoryStateStore(), io.StringIO()
    config = pinned(vhost, 3)
    probe = RabbitMQProbe.from_config(config.broker, vhost.amqp_url)
    scaler = drainer(vhost)
    workers = [link(vhost, f"w{i}@host") for i in range(5)]

    def tick() -> PoolOutcome:
        telemetry = Telemetry("Test", stream=stream)
        return run_tick(config, probe, service, store, time.time(), telemetry=telemetry, drainer=scaler).outcomes[0]

    try:
        for w in workers:
            w.poll("look")
        first = tick()
        assert first.decision is not None
        assert first.decision.desired == 3
        assert (service.desired, first.drained()) == (5, {"asked": 2, "drained": 0, "set": 5})
        draining = [w for w in workers if w.poll("claim")[1] == "draining"]
        assert len(draining) == 2
        for w in draining:
            w.poll("drained")
        second = tick()
        assert (service.desired, second.drained(), second.acted) == (3, {"asked": 2, "drained": 2, "set": 3}, True)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(m["DrainedWorkers"], m["DesiredCount"]) for m in lines if "DrainedWorkers" in m] == [(0, 5), (2, 3)]

        service.running = 3  # ECS stopped the two drained workers; they left the drain at SIGTERM
        for w in draining:
            w.poll("leave")
        assert tick().drained() is None
        assert not scaler.status([POOL])[POOL].active, "over: the others may release protection"
    finally:
        for w in workers:
            w.close()


class Loop:
    """A Celery consumer as WorkerDrain sees it, whose event loop runs what it was given only when told."""

    def __init__(self, hostname: str, queues: list[str]) -> None:
        self.hostname = hostname
        self.task_consumer = type("TaskConsumer", (), {"queues": [type("Q", (), {"name": q})() for q in queues]})()
        self.consuming = set(queues)
        self.pending: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[..., None], *args: object) -> None:
        self.pending.append(lambda: fn(*args))

    def turn(self) -> None:
        pending, self.pending = self.pending, []
        for fn in pending:
            fn()

    def cancel_task_queue(self, name: str) -> None:
        self.consuming.discard(name)

    def add_task_queue(self, name: str) -> None:
        self.consuming.add(name)


def test_a_worker_counts_as_drained_only_once_its_loop_stopped_consuming_and_resumes_unseen(vhost: Vhost) -> None:
    scaler = drainer(vhost)
    loop = Loop("w@host", ["celery", "other"])
    side = link(vhost, loop.hostname)
    worker = WorkerDrain(loop, side, idle_s=0.0)
    try:
        worker.step()
        scaler.status([POOL])
        scaler.apply(POOL, DrainPlan(desired=1, open=1), NOW)
        worker.step()
        assert (worker.state, loop.consuming) == ("draining", {"celery", "other"}), "the loop has not turned"
        worker.step()
        assert worker.state == "draining", "not drained while the consumer may still take a message"
        assert scaler.status([POOL])[POOL].draining == 1
        loop.turn()
        worker.step()
        assert (worker.state, loop.consuming) == ("drained", set())
        assert scaler.status([POOL])[POOL].drained == 1

        scaler.apply(POOL, DrainPlan(desired=1, open=None), NOW)
        worker.step()
        assert loop.consuming == set(), "the loop has not turned"
        assert state_queue("drained", POOL, loop.hostname) not in vhost.listed(), "unseen before it consumes again"
        loop.turn()
        assert (worker.state, loop.consuming) == ("consuming", {"celery", "other"})
    finally:
        side.close()
