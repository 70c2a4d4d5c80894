"""The Redis probe against real Redis, real Celery producers and real prefork workers."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
import redis
from apps.probe_app import DONE, RELEASE, ROUTED_QUEUES, STARTED, make_app
from apps.workers import WorkerProcess
from celery_apps import celery_worker
from conftest import REDIS_HOST, REDIS_PORT, redis_url_for
from kombu import Connection, Exchange, Queue
from redis_acl import (
    HANDSHAKE,
    allowed_commands,
    command_calls,
    documented_acl_rules,
    documented_user,
    refused,
    seed_every_read,
    sent_between,
)
from waiting import wait_until

from celery_autoscaler.config import BrokerConfig, ConfigError
from celery_autoscaler.counters import COMPLETED_FIELD, RUN_MS_FIELD, stats_key
from celery_autoscaler.probe import BrokerUnavailableError, probe_for
from celery_autoscaler.probe.redis import MAX_CLOCK_SKEW_S, MAX_MESSAGE_BYTES, RedisProbe

SEP = "\x06\x16"
HEADER = "x_published_at"


def db_of(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs["db"])


def counting_client(url: str) -> tuple[redis.Redis, list[int]]:
    """A client that counts what it sends to Redis: one pipeline or one command is one round trip."""
    sent = [0]

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent[0] += 1
            super().send_packed_command(command, check_health)

    client = redis.Redis.from_url(url, connection_class=CountingConnection)
    client.ping()  # the connection's own set-up commands are not part of a measurement
    sent[0] = 0
    return client, sent


@contextmanager
def probe_worker(
    client: redis.Redis, queues: list[str], *, acks_late: bool, concurrency: int = 2, **options: Any
) -> Iterator[WorkerProcess]:
    """A worker on the test's db with prefetch multiplier 1: it holds exactly ``concurrency`` messages."""
    env = {
        "PROBE_APP_BROKER_URL": redis_url_for(db_of(client)),
        "PROBE_APP_ACKS_LATE": "1" if acks_late else "0",
        "PROBE_APP_TRANSPORT_OPTIONS": json.dumps(options),
    }
    with celery_worker("apps.probe_app", queues, concurrency=concurrency, env=env) as worker:
        try:
            yield worker
        finally:  # a failed test must not leave tasks blocking the worker's warm shutdown
            client.rpush(RELEASE, *["go"] * 20)


def release_all(client: redis.Redis, count: int, queue_key: str = "work", unacked_key: str = "unacked") -> None:
    """Let every blocking task finish and wait until the broker shows nothing left."""
    client.rpush(RELEASE, *["go"] * count)
    wait_until(
        lambda: client.llen(DONE) == count and client.hlen(unacked_key) == 0 and client.llen(queue_key) == 0,
        what=f"{count} tasks to finish",
    )


@pytest.mark.redis_db(3)
def test_default_priority_steps_sum_every_sub_list(redis_db: redis.Redis) -> None:
    app = make_app(redis_url_for(3))
    for priority in (None, 0, 2, 5, 9):
        app.tasks["probe.noop"].apply_async(queue="pq", priority=priority)

    # Kombu's default steps [0, 3, 6, 9] map these priorities to three different lists.
    assert set(redis_db.keys("pq*")) == {b"pq", f"pq{SEP}3".encode(), f"pq{SEP}9".encode()}
    before = time.time()
    measured = RedisProbe.from_config(BrokerConfig(), redis_url_for(3)).measure(["pq", "empty"])

    assert measured.queues["pq"].waiting == 5
    assert measured.queues["pq"].unacked == 0
    age = measured.queues["pq"].oldest_age_s
    assert age is not None
    assert 0 <= age <= time.time() - before + 60
    assert measured.queues["empty"].waiting == 0
    assert measured.queues["empty"].oldest_age_s is None
    assert measured.unacked_total == 0


@pytest.mark.redis_db(3)
def test_ten_priority_steps_with_colon_separator(redis_db: redis.Redis) -> None:
    options = {"priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"}
    app = make_app(redis_url_for(3), transport_options=options)
    for priority in range(10):
        app.tasks["probe.noop"].apply_async(queue="tenq", priority=priority)
    assert sorted(redis_db.keys("tenq*")) == sorted([b"tenq", *(f"tenq:{n}".encode() for n in range(1, 10))])

    colon = RedisProbe(BrokerConfig(priority_sep=":"), url=redis_url_for(3)).measure(["tenq"])
    default_sep = RedisProbe(BrokerConfig(), url=redis_url_for(3)).measure(["tenq"])

    assert colon.queues["tenq"].waiting == 10
    assert default_sep.queues["tenq"].waiting == 1  # the separator is configuration, not a guess


@pytest.mark.redis_db(4)
def test_global_keyprefix_on_another_db_with_a_worker(redis_db: redis.Redis) -> None:
    options = {"global_keyprefix": "tenant1:"}
    app = make_app(redis_url_for(4), acks_late=True, transport_options=options)
    for i in range(3):
        app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="pq")
    assert redis_db.llen("tenant1:pq") == 3
    prefixed = RedisProbe(BrokerConfig(key_prefix="tenant1:"), url=redis_url_for(4))

    with probe_worker(redis_db, ["pq"], acks_late=True, concurrency=1, **options):
        wait_until(
            lambda: redis_db.llen(STARTED) == 1 and redis_db.hlen("tenant1:unacked") == 1,
            what="one task running",
        )
        measured = prefixed.measure(["pq"])
        assert (measured.queues["pq"].waiting, measured.queues["pq"].unacked, measured.unacked_total) == (2, 1, 1)
        unprefixed = RedisProbe(BrokerConfig(), url=redis_url_for(4)).measure(["pq"])
        assert (unprefixed.queues["pq"].waiting, unprefixed.unacked_total) == (0, 0)
        release_all(redis_db, 3, queue_key="tenant1:pq", unacked_key="tenant1:unacked")

    measured = prefixed.measure(["pq"])
    assert (measured.queues["pq"].waiting, measured.queues["pq"].unacked, measured.unacked_total) == (0, 0, 0)


@pytest.mark.redis_db(3)
@pytest.mark.parametrize("acks_late", [False, True])
def test_in_flight_matches_what_the_worker_holds(redis_db: redis.Redis, acks_late: bool) -> None:
    app = make_app(redis_url_for(3), acks_late=acks_late)
    for i in range(5):
        app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="work")
    # Concurrency 2, prefetch 2: two tasks run. acks_late=False acks them on start, so two more are
    # reserved; acks_late=True keeps the running two unacked, which fill the prefetch window.
    expected_unacked = 2
    expected_waiting = 1 if not acks_late else 3
    probe = RedisProbe.from_config(BrokerConfig(), redis_url_for(3))

    with probe_worker(redis_db, ["work"], acks_late=acks_late) as worker:
        wait_until(
            lambda: (
                redis_db.llen(STARTED) == 2
                and redis_db.hlen("unacked") == expected_unacked
                and redis_db.llen("work") == expected_waiting
            ),
            what="two tasks running and the prefetch window full",
        )
        measured = probe.measure(["work", "celery"])
        inspect = app.control.inspect(destination=[worker.hostname], timeout=30)
        active, reserved = inspect.active()[worker.hostname], inspect.reserved()[worker.hostname]

        assert measured.queues["work"].waiting == expected_waiting
        assert measured.queues["work"].unacked == expected_unacked
        assert measured.queues["celery"].unacked == 0
        assert measured.unacked_total == expected_unacked
        assert len(active) == 2
        held_in_redis = len(active) + len(reserved) if acks_late else len(reserved)
        assert measured.queues["work"].unacked == held_in_redis

        capped = RedisProbe(BrokerConfig(unacked_scan_cap=1), url=redis_url_for(3)).measure(["work", "celery"])
        assert capped.queues["work"].unacked is None
        assert capped.queues["celery"].unacked is None
        assert capped.unacked_total == expected_unacked

        release_all(redis_db, 5)
        measured = probe.measure(["work"])
        assert (measured.queues["work"].waiting, measured.queues["work"].unacked) == (0, 0)


@pytest.mark.redis_db(3)
def test_a_shrunken_unacked_hash_is_rescanned_at_once(redis_db: redis.Redis) -> None:
    """Finished work must not linger as carried-forward in-flight; new work may wait for the interval."""

    def entry(queue: str) -> str:
        return json.dumps([{"headers": {"id": queue}, "body": ""}, "", queue])

    redis_db.hset("unacked", mapping={"t1": entry("a"), "t2": entry("b"), "t3": entry("b")})
    probe = RedisProbe(BrokerConfig(unacked_scan_interval_s=5000), url=redis_url_for(3))
    assert [probe.measure(["a", "b"]).queues[q].unacked for q in "ab"] == [1, 2]

    redis_db.hdel("unacked", "t1")
    assert [probe.measure(["a", "b"]).queues[q].unacked for q in "ab"] == [0, 2]

    redis_db.hset("unacked", "t4", entry("a"))  # grew back: carried forward until the interval
    assert [probe.measure(["a", "b"]).queues[q].unacked for q in "ab"] == [0, 2]


@pytest.mark.redis_db(3)
def test_eta_tasks_are_not_demand_until_due(redis_db: redis.Redis) -> None:
    app = make_app(redis_url_for(3))
    for _ in range(3):
        app.tasks["probe.noop"].apply_async(queue="later", countdown=3600)
    now = [time.time()]
    client, sent = counting_client(redis_url_for(3))
    start = now[0]
    probe = RedisProbe(BrokerConfig(unacked_scan_interval_s=5000), client=client, clock=lambda: now[0])

    with probe_worker(redis_db, ["later"], acks_late=False):
        wait_until(lambda: redis_db.hlen("unacked") == 3, what="the worker to fetch the ETA tasks")
        measured = probe.measure(["later"])
        assert (measured.queues["later"].waiting, measured.queues["later"].unacked) == (0, 0)
        assert measured.queues["later"].scheduled == 3  # held by the worker: not demand, but not idle
        assert measured.unacked_total == 3

        now[0] = start + 3700  # past the ETA: the worker runs them now, so they are in flight
        sent[0] = 0
        due = probe.measure(["later"]).queues["later"]
        assert (due.unacked, due.scheduled) == (3, 0)
        assert sent[0] == 1  # from the last scan's ETAs, without scanning again

        now[0] = start + 5000  # the scan interval has passed: HSCAN again, in extra round trips
        sent[0] = 0
        assert probe.measure(["later"]).queues["later"].unacked == 3
        assert sent[0] > 1

    # Warm shutdown puts the ETA messages back on the queue.
    wait_until(lambda: redis_db.llen("later") == 3, what="ETA messages restored")
    measured = probe.measure(["later"])
    assert (measured.queues["later"].waiting, measured.unacked_total) == (3, 0)


@pytest.mark.redis_db(3)
def test_named_exchanges_resolve_through_kombu_bindings(redis_db: redis.Redis) -> None:
    app = make_app(redis_url_for(3), acks_late=True)
    block = app.tasks["probe.block"]
    routed, topic = ROUTED_QUEUES

    with probe_worker(redis_db, ["routed", "topicq"], acks_late=True):
        block.apply_async(args=["direct"], queue=routed, exchange="routed_ex", routing_key="rk.routed")
        block.apply_async(args=["topic"], queue=topic, routing_key="jobs.a")
        wait_until(lambda: redis_db.llen(STARTED) == 2, what="both tasks running")
        exchanges = {json.loads(v)[1] for v in redis_db.hvals("unacked")}
        assert exchanges == {"routed_ex", "topic_ex"}  # so attribution must go through the bindings

        measured = RedisProbe.from_config(BrokerConfig(), redis_url_for(3)).measure(["routed", "topicq", "celery"])
        assert [measured.queues[q].unacked for q in ("routed", "topicq", "celery")] == [1, 1, 0]

        with documented_user(redis_db, read_only=True) as url:
            restricted = RedisProbe.from_config(BrokerConfig(), url).measure(["routed", "topicq"])
        assert restricted.queues == {q: measured.queues[q] for q in ("routed", "topicq")}
        assert restricted.unacked_total == 2
        release_all(redis_db, 2, queue_key="routed")


@pytest.mark.redis_db(3)
def test_hundred_queues_in_one_round_trip(redis_db: redis.Redis) -> None:
    app = make_app(redis_url_for(3))
    queues = [f"q{i:03d}" for i in range(100)]
    with app.producer_or_acquire() as producer:
        for queue in queues:
            for priority in (0, 4, 9):
                app.tasks["probe.noop"].apply_async(queue=queue, priority=priority, producer=producer)
    client, sent = counting_client(redis_url_for(3))
    probe = RedisProbe(BrokerConfig(), client=client)
    probe.measure(queues)  # the first tick also lists kombu's binding sets (then every scan interval)
    sent[0] = 0

    measured = probe.measure(queues)

    assert sent[0] == 1
    assert all(measured.queues[q].waiting == 3 for q in queues)
    assert all(measured.queues[q].oldest_age_s is not None for q in queues)
    assert all(measured.queues[q].unacked == 0 for q in queues)


@pytest.mark.redis_db(3)
def test_publish_time_header_gives_the_oldest_age_across_sub_lists(redis_db: redis.Redis) -> None:
    app = make_app(redis_url_for(3))
    noop = app.tasks["probe.noop"]
    published = time.time()
    noop.apply_async(queue="aged", priority=9, headers={HEADER: published - 500})  # an older producer's stamp
    before = time.time()
    noop.apply_async(queue="aged")  # stamped by the before_task_publish handler
    after = time.time()
    assert json.loads(redis_db.lindex("aged", -1))["headers"][HEADER] >= before
    now = after + 100

    measured = RedisProbe(BrokerConfig(), url=redis_url_for(3), clock=lambda: now).measure(["aged"])
    assert measured.queues["aged"].oldest_age_s == pytest.approx(now - (published - 500))
    assert measured.measured_at == now

    redis_db.rpop(f"aged{SEP}9")
    measured = RedisProbe(BrokerConfig(), url=redis_url_for(3), clock=lambda: now).measure(["aged"])
    age = measured.queues["aged"].oldest_age_s
    assert age is not None
    assert now - after <= age <= now - before


@pytest.mark.redis_db(3)
def test_without_the_header_age_counts_from_first_seen(redis_db: redis.Redis) -> None:
    app = make_app(redis_url_for(3), main="plain", stamp_header=None)
    for _ in range(2):
        app.tasks["plain.noop"].apply_async(queue="plain")
    assert HEADER not in json.loads(redis_db.lindex("plain", -1))["headers"]
    now = [1000.0]
    probe = RedisProbe(BrokerConfig(), url=redis_url_for(3), clock=lambda: now[0])

    # The first sighting cannot know how long the message waited: unknown, not 0.
    assert probe.measure(["plain"]).queues["plain"].oldest_age_s is None
    now[0] = 1030.0
    assert probe.measure(["plain"]).queues["plain"].oldest_age_s == 30.0
    redis_db.rpop("plain")  # a worker took the oldest; the next one is new to the probe
    now[0] = 1040.0
    assert probe.measure(["plain"]).queues["plain"].oldest_age_s is None
    now[0] = 1045.0
    assert probe.measure(["plain"]).queues["plain"].oldest_age_s == 5.0
    redis_db.delete("plain")
    assert probe.measure(["plain"]).queues["plain"].oldest_age_s is None
    assert probe._first_seen == {}  # only current tails are remembered


@pytest.mark.redis_db(3)
def test_malformed_messages_count_as_waiting_and_warn_once(
    redis_db: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_db.lpush("bad", b"\xff not json")
    redis_db.lpush(f"bad{SEP}3", json.dumps({"body": "no headers"}))
    make_app(redis_url_for(3)).tasks["probe.noop"].apply_async(queue="bad")
    redis_db.hset("unacked", "tag-1", b"[not json")
    probe = RedisProbe(BrokerConfig(), url=redis_url_for(3))

    with caplog.at_level(logging.WARNING, logger="celery_autoscaler.probe.redis"):
        first = probe.measure(["bad"])
        second = probe.measure(["bad"])

    for measured in (first, second):
        assert measured.queues["bad"].waiting == 3
        assert measured.queues["bad"].oldest_age_s is None
        assert measured.queues["bad"].unacked == 0
        assert measured.unacked_total == 1
    tails = [r.getMessage() for r in caplog.records if "tail" in r.getMessage()]
    assert len(tails) == 2
    assert any("'bad'" in m for m in tails)
    assert any(repr(f"bad{SEP}3") in m for m in tails)
    assert any("tag-1" in r.getMessage() for r in caplog.records)


def _closed_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _silent_server() -> Iterator[int]:
    """A socket that accepts connections (the kernel does) and never answers: a hung broker."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["refused", "timeout", "auth"])
def test_unreadable_broker_raises_broker_unavailable(failure: str) -> None:
    settings = BrokerConfig(socket_timeout_s=0.5)
    with _silent_server() as silent:
        url = {
            "refused": f"redis://127.0.0.1:{_closed_port()}/3",
            "timeout": f"redis://127.0.0.1:{silent}/3",
            "auth": f"redis://nobody:wrong@{REDIS_HOST}:{REDIS_PORT}/3",
        }[failure]
        probe = RedisProbe.from_config(settings, url)
        with pytest.raises(BrokerUnavailableError):
            probe.measure(["celery"])
        probe.close()


def test_needs_exactly_one_of_url_and_client() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RedisProbe(BrokerConfig())
    with pytest.raises(ValueError, match="exactly one"):
        RedisProbe(BrokerConfig(), url=redis_url_for(3), client=redis.Redis())


def declare(url: str, *queues: str, prefix: str = "") -> None:
    """Declare ``queues`` as a Celery app does (kombu's binding sets), whatever kombu cached in this process."""
    options = {"global_keyprefix": prefix} if prefix else {}
    with Connection(url, transport_options=options) as connection:
        for name in queues:
            Queue(name, Exchange(name), routing_key=name, channel=connection.default_channel).declare()


@pytest.mark.redis_db(3)
def test_a_key_of_the_wrong_type_makes_only_its_queue_unreadable(redis_db: redis.Redis) -> None:
    redis_db.lpush("good", json.dumps({"headers": {"id": "t1", HEADER: time.time()}}))
    redis_db.set("stray", "a string sharing a queue's name")
    redis_db.hset(f"other{SEP}3", "field", "a hash sharing a priority sub-list's name")
    probe = RedisProbe.from_config(BrokerConfig(), redis_url_for(3))

    measured = probe.measure(["good", "stray", "other"])

    assert (measured.queues["good"].waiting, measured.queues["good"].error) == (1, None)
    for queue, key in (("stray", "stray"), ("other", f"other{SEP}3")):
        error = measured.queues[queue].error
        assert error is not None
        assert "WRONGTYPE" in error
        assert repr(key) in error

    redis_db.set("unacked", "not a hash")  # every pool's demand needs it: the broker as a whole is unreadable
    with pytest.raises(BrokerUnavailableError, match=r"'unacked'.*WRONGTYPE"):
        probe.measure(["good"])


@pytest.mark.redis_db(3)
def test_worker_counters_come_in_the_same_round_trip(redis_db: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    redis_db.hset(stats_key("", "work"), mapping={COMPLETED_FIELD: 7, RUN_MS_FIELD: 2500})
    redis_db.set(stats_key("", "broken"), "not a hash")
    redis_db.lpush("broken", json.dumps({"headers": {"id": "t1"}}))
    client, sent = counting_client(redis_url_for(3))
    probe = RedisProbe(BrokerConfig(), client=client)
    probe.measure(["work"])
    sent[0] = 0

    with caplog.at_level(logging.WARNING, logger="celery_autoscaler.probe.redis"):
        measured = probe.measure(["work", "idle", "broken"])

    assert sent[0] == 1
    work, idle, broken = (measured.queues[q] for q in ("work", "idle", "broken"))
    assert (work.completed, work.run_seconds) == (7, 2.5)
    assert (idle.completed, idle.run_seconds) == (None, None)
    assert (broken.waiting, broken.error, broken.completed) == (1, None, None)  # the queue itself is fine
    assert any(stats_key("", "broken") in r.getMessage() for r in caplog.records)


@pytest.mark.redis_db(3)
def test_a_queue_no_app_declared_is_reported_on_every_tick(
    redis_db: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    declare(redis_url_for(3), "celery", prefix="tenant1:")
    clock = [1000.0]
    probe = RedisProbe(BrokerConfig(key_prefix="tenant1:", unacked_scan_interval_s=60), url=redis_url_for(3),
                       clock=lambda: clock[0])  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="celery_autoscaler.probe.redis"):
        for _ in range(2):
            measured = probe.measure(["celery", "celry"])
            assert (measured.queues["celery"].declared, measured.queues["celry"].declared) == (True, False)
    warnings = [r.getMessage() for r in caplog.records if "'celry'" in r.getMessage()]
    assert len(warnings) == 2
    assert all("db 3" in w and "'tenant1:'" in w for w in warnings)

    unprefixed = RedisProbe(BrokerConfig(), url=redis_url_for(3)).measure(["celery"])
    assert unprefixed.queues["celery"].declared is False  # the prefix is missing from the config

    declare(redis_url_for(3), "celry", prefix="tenant1:")  # seen at the next binding read, not before
    assert probe.measure(["celry"]).queues["celry"].declared is False
    clock[0] += 60
    assert probe.measure(["celry"]).queues["celry"].declared is True


POISON_TAILS = {
    "not JSON": b"\xff\xfe not json",
    "deeply nested": b"[" * 200_000 + b"]" * 200_000,
    "nested headers": json.dumps({"headers": {"id": "t", HEADER: [[[[1]]]]}}).encode(),
    "huge integer stamp": b'{"headers": {"id": "t", "x_published_at": 1' + b"0" * 400 + b"}}",
    "too many digits": b'{"headers": {"id": "t", "x_published_at": 1' + b"0" * 5000 + b"}}",
    "float overflow": b'{"headers": {"x_published_at": 1e999}}',
    "NaN literal": b'{"headers": {"x_published_at": NaN}}',
    "over the size cap": json.dumps({"headers": {"id": "t", HEADER: 1.0}, "body": "x" * MAX_MESSAGE_BYTES}).encode(),
    "date out of range": json.dumps({"headers": {"id": "t", HEADER: "9999-12-31T23:59:59-23:59"}}).encode(),
}


@pytest.mark.redis_db(3)
@pytest.mark.parametrize("poison", list(POISON_TAILS))
def test_poison_messages_count_as_waiting_with_age_unknown(
    redis_db: redis.Redis, poison: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis_db.lpush("poisoned", POISON_TAILS[poison])
    entry = [{"headers": {"eta": POISON_TAILS[poison].decode("latin-1")}}, "", "poisoned"]
    huge_eta = b'[{"headers": {"eta": 1' + b"0" * 400 + b'}}, "", "poisoned"]'
    redis_db.hset("unacked", mapping={"whole": POISON_TAILS[poison], "eta": json.dumps(entry), "huge-eta": huge_eta})
    probe = RedisProbe(BrokerConfig(), url=redis_url_for(3))

    with caplog.at_level(logging.WARNING, logger="celery_autoscaler.probe.redis"):
        measured = probe.measure(["poisoned"])

    queue = measured.queues["poisoned"]
    assert (queue.waiting, queue.oldest_age_s, queue.error) == (1, None, None)
    # The whole-entry poison is in unacked_total only; an unreadable ETA counts the entry as in flight.
    assert queue.unacked == (1 if poison == "over the size cap" else 2)
    assert measured.unacked_total == 3
    assert any("'poisoned'" in r.getMessage() for r in caplog.records)


@pytest.mark.redis_db(3)
@pytest.mark.parametrize("stamp", [0, -5, "NaN", "-inf", "inf", 1e300, "far future"])
def test_an_implausible_publish_time_is_not_believed(redis_db: redis.Redis, stamp: object) -> None:
    now = [1_800_000_000.0]
    value = now[0] + 86_400 if stamp == "far future" else stamp
    redis_db.lpush("stamped", json.dumps({"headers": {"id": "t1", HEADER: value}}))
    probe = RedisProbe(BrokerConfig(), url=redis_url_for(3), clock=lambda: now[0])

    assert probe.measure(["stamped"]).queues["stamped"].oldest_age_s is None  # first seen: unknown
    now[0] += 20
    assert probe.measure(["stamped"]).queues["stamped"].oldest_age_s == 20.0  # since first seen


@pytest.mark.redis_db(3)
def test_a_stamp_within_the_clock_skew_allowance_is_now(redis_db: redis.Redis) -> None:
    now = 1_800_000_000.0
    redis_db.lpush("ahead", json.dumps({"headers": {"id": "t1", HEADER: now + MAX_CLOCK_SKEW_S / 2}}))
    measured = RedisProbe(BrokerConfig(), url=redis_url_for(3), clock=lambda: now).measure(["ahead"])
    assert measured.queues["ahead"].oldest_age_s == 0.0


def test_the_factory_picks_the_probe_by_scheme() -> None:
    for url in ("redis://localhost:6379/0", "rediss://user:pw@cache.example:6380/2"):
        assert isinstance(probe_for(BrokerConfig(), url), RedisProbe)
    with pytest.raises(ConfigError, match=r"broker\.url: unsupported scheme kafka:// \(supported: amqp://, .*\)"):
        probe_for(BrokerConfig(), "kafka://guest:guest@localhost//")
    with pytest.raises(ConfigError, match="--broker-url") as raised:
        probe_for(BrokerConfig(), "redis://user:hunter2@localhost:hunter2/0", field="--broker-url")
    assert "hunter2" not in str(raised.value)
    assert raised.value.__cause__ is None


@pytest.mark.redis_db(3)
def test_an_exchange_bound_since_the_last_binding_read_routes_at_the_next_scan(redis_db: redis.Redis) -> None:
    probe = RedisProbe(BrokerConfig(unacked_scan_interval_s=60), url=redis_url_for(3), clock=lambda: 1000.0)
    assert probe.measure(["late"]).queues["late"].declared is False  # bindings read; nothing unacked yet
    with Connection(redis_url_for(3)) as connection:
        Queue("late", Exchange("late_ex"), routing_key="rk", channel=connection.default_channel).declare()
    message = {"headers": {"id": "t"}, "body": ""}
    redis_db.hset(
        "unacked", mapping={"t1": json.dumps([message, "late_ex", "rk"]), "t2": json.dumps([message, "gone_ex", "rk"])}
    )

    measured = probe.measure(["late"])  # scanned at once (the hash turned non-empty); late_ex is read then

    assert measured.queues["late"].unacked == 1  # gone_ex has no bindings: kombu could not route it either
    assert measured.unacked_total == 2


@pytest.mark.redis_db(3)
def test_the_documented_acl_recipe_is_exactly_what_the_probe_sends(redis_db: redis.Redis) -> None:
    """Run as the documented read-only user, the probe is refused nothing, and uses every command it allows."""
    now = time.time()
    seed_every_read(redis_db, redis_url_for(3), "acl", now)
    expected = RedisProbe(BrokerConfig(), url=redis_url_for(3), clock=lambda: now).measure(["acl"])
    user, _, rules = documented_acl_rules(read_only=True)

    redis_db.acl_log_reset()
    with documented_user(redis_db, read_only=True) as url:
        before = command_calls(redis_db)
        measured = RedisProbe(BrokerConfig(), url=url, clock=lambda: now).measure(["acl"])  # a first tick
        sent = sent_between(before, command_calls(redis_db))
        denied = refused(redis_db, user)

    assert measured == expected
    assert (measured.queues["acl"].unacked, measured.queues["acl"].completed) == (1, 3)
    assert allowed_commands(rules) - set(sent) == set(), "allowed but never sent"
    assert set(sent) - allowed_commands(rules) <= HANDSHAKE, "sent but not allowed"
    assert denied == [], "sent but refused"
