"""The RabbitMQ probe against a private RabbitMQ node, real Celery producers and real prefork workers.

Every test gets a vhost of its own on the session's node (so queue names never collide) and the
blocking tasks signal through Redis db 12. Numbers are checked against what the worker itself says
it holds (``celery inspect``), as the Redis probe's tests do.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from apps.probe_app import DONE, RELEASE, STARTED, make_app
from apps.workers import WorkerProcess
from brokers import RabbitBroker, Vhost, create_vhost, free_ports
from celery import Celery
from celery_apps import celery_worker
from conftest import redis_url_for
from kombu import Connection, Exchange, Producer, Queue
from waiting import wait_until

from celery_autoscaler import worker as autoscaler_worker
from celery_autoscaler.cli import main as cli_main
from celery_autoscaler.config import BrokerConfig, ConfigError
from celery_autoscaler.probe import BrokerUnavailableError, probe_for
from celery_autoscaler.probe.rabbitmq import ManagementEndpoint, RabbitMQProbe

pytestmark = pytest.mark.redis_db(12)
SIGNALS_URL = redis_url_for(12)
QUEUE_KINDS: dict[str, dict[str, Any]] = {
    "classic": {},
    "priority": {"x-max-priority": 10},
    "quorum": {"x-queue-type": "quorum"},
}


def send(vhost: Vhost, queue: str, count: int) -> None:
    """``count`` messages from a real Celery producer, and wait until the broker has them all."""
    app = make_app(vhost.amqp_url, signal_url=SIGNALS_URL)
    for _ in range(count):
        app.send_task("x", queue=queue)
    app.close()
    wait_until(lambda: vhost.listed().get(queue, {}).get("messages_ready") == count, what=f"{count} in {queue}")


@pytest.fixture
def vhost(rabbitmq: RabbitBroker, redis_db: redis.Redis) -> Iterator[Vhost]:
    """A fresh vhost (a slash in its name, so quoting is exercised); deleted with its queues afterwards."""
    made = create_vhost(rabbitmq, f"celery/{uuid.uuid4().hex[:8]}")
    yield made
    rabbitmq.management_request("DELETE", f"/api/vhosts/{made.path}")


def app_for(vhost: Vhost, *, acks_late: bool, queues: dict[str, dict[str, Any]]) -> Celery:
    return make_app(vhost.amqp_url, acks_late=acks_late, signal_url=SIGNALS_URL, queue_arguments=queues)


@contextmanager
def rabbit_worker(
    vhost: Vhost, signals: redis.Redis, queues: dict[str, dict[str, Any]], *, acks_late: bool
) -> Iterator[WorkerProcess]:
    """A prefork worker (concurrency 2, prefetch multiplier 1) on the vhost's ``queues``."""
    env = {
        "PROBE_APP_BROKER_URL": vhost.amqp_url,
        "PROBE_APP_ACKS_LATE": "1" if acks_late else "0",
        "PROBE_APP_SIGNAL_URL": SIGNALS_URL,
        "PROBE_APP_QUEUE_ARGUMENTS": json.dumps(queues),
    }
    with celery_worker("apps.probe_app", list(queues), concurrency=2, env=env) as worker:
        try:
            yield worker
        finally:  # a failed test must not leave tasks blocking the worker's warm shutdown
            signals.rpush(RELEASE, *["go"] * 20)


def held_by(app: Celery, worker: WorkerProcess) -> dict[str, int]:
    """What the worker says it holds: running, reserved (prefetched) and scheduled (ETA) tasks."""
    inspect = app.control.inspect(destination=[worker.hostname], timeout=30)
    return {
        "active": len(inspect.active()[worker.hostname]),
        "reserved": len(inspect.reserved()[worker.hostname]),
        "scheduled": len(inspect.scheduled()[worker.hostname]),
    }


@pytest.mark.parametrize(
    ("kind", "acks_late"), [("classic", False), ("classic", True), ("priority", True), ("quorum", True)]
)
def test_counts_match_what_the_worker_holds(vhost: Vhost, redis_db: redis.Redis, kind: str, acks_late: bool) -> None:
    queues = {"work": QUEUE_KINDS[kind]}
    app = app_for(vhost, acks_late=acks_late, queues=queues)
    for i in range(6):
        app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="work", priority=i % 3)
    probe = vhost.probe()
    wait_until(lambda: probe.measure(["work"]).queues["work"].waiting == 6, what="the published messages to be ready")
    assert vhost.listed()["work"]["messages_ready"] == 6

    with rabbit_worker(vhost, redis_db, queues, acks_late=acks_late) as worker:
        # Concurrency 2, prefetch 2: two run; acks_late off acks them at start, so two more are reserved.
        expected_unacked = 2
        expected_waiting = 2 if not acks_late else 4
        wait_until(
            lambda: (
                redis_db.llen(STARTED) == 2
                and vhost.listed()["work"]["messages_unacknowledged"] == expected_unacked
                and vhost.listed()["work"]["messages_ready"] == expected_waiting
            ),
            what="two tasks running and the prefetch window full",
        )
        measured = probe.measure(["work"])
        held = held_by(app, worker)

        work = measured.queues["work"]
        assert (work.waiting, work.unacked, work.error, work.declared) == (
            expected_waiting,
            expected_unacked,
            None,
            True,
        )
        assert held["active"] == 2
        assert work.unacked == held["reserved"] + held["scheduled"] + (held["active"] if acks_late else 0)
        assert work.scheduled is None  # RabbitMQ cannot tell held ETA messages from reserved ones
        assert measured.unacked_total == expected_unacked

        redis_db.rpush(RELEASE, *["go"] * 6)
        wait_until(lambda: redis_db.llen(DONE) == 6, what="every task to finish")
        wait_until(
            lambda: (
                (probe.measure(["work"]).queues["work"].waiting, probe.measure(["work"]).queues["work"].unacked)
                == (0, 0)
            ),
            what="the queue to drain",
        )
    probe.close()


def test_held_eta_messages_count_as_unacked_and_scheduled_is_unknown(vhost: Vhost, redis_db: redis.Redis) -> None:
    queues = {"later": QUEUE_KINDS["classic"]}
    app = app_for(vhost, acks_late=True, queues=queues)
    for _ in range(3):
        app.tasks["probe.noop"].apply_async(queue="later", countdown=3600)
    for i in range(4):
        app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="later")
    probe = vhost.probe()

    with rabbit_worker(vhost, redis_db, queues, acks_late=True) as worker:
        # Celery raises the channel's prefetch by one per held ETA message: 3 held + 2 running.
        wait_until(
            lambda: redis_db.llen(STARTED) == 2 and vhost.listed()["later"]["messages_unacknowledged"] == 5,
            what="three ETA messages held and two tasks running",
        )
        later = probe.measure(["later"]).queues["later"]
        held = held_by(app, worker)

        assert held == {"active": 2, "reserved": 0, "scheduled": 3}
        assert (later.waiting, later.unacked, later.scheduled) == (2, 5, None)
        assert later.unacked == held["active"] + held["reserved"] + held["scheduled"]


def test_a_killed_workers_messages_are_ready_again_at_once(vhost: Vhost, redis_db: redis.Redis) -> None:
    queues = {"work": QUEUE_KINDS["classic"]}
    app = app_for(vhost, acks_late=True, queues=queues)
    for i in range(4):
        app.tasks["probe.block"].apply_async(args=[f"t{i}"], queue="work")
    probe = vhost.probe()

    with rabbit_worker(vhost, redis_db, queues, acks_late=True) as worker:
        wait_until(lambda: redis_db.llen(STARTED) == 2, what="two tasks running")
        wait_until(lambda: probe.measure(["work"]).queues["work"].unacked == 2, what="the probe to see them")
        worker.sigkill()
        wait_until(
            lambda: (probe.measure(["work"]).queues["work"].waiting, probe.measure(["work"]).unacked_total) == (4, 0),
            timeout=30,
            what="the killed worker's messages to be ready again",
        )


def test_only_the_urls_vhost_is_read(rabbitmq: RabbitBroker, vhost: Vhost) -> None:
    other = create_vhost(rabbitmq, f"other-{uuid.uuid4().hex[:8]}")
    try:
        send(vhost, "shared", 1)
        send(other, "shared", 3)

        assert vhost.probe().measure(["shared"]).queues["shared"].waiting == 1
        assert other.probe().measure(["shared"]).queues["shared"].waiting == 3
    finally:
        rabbitmq.management_request("DELETE", f"/api/vhosts/{other.path}")


def test_a_queue_missing_from_the_vhost_is_not_declared_and_holds_nothing(
    vhost: Vhost, caplog: pytest.LogCaptureFixture
) -> None:
    send(vhost, "real", 1)
    probe = vhost.probe()

    for _ in range(2):
        measured = probe.measure(["real", "typo"])
    assert measured.queues["real"].declared is True
    typo = measured.queues["typo"]
    assert (typo.declared, typo.waiting, typo.unacked, typo.error) == (False, 0, 0, None)
    warnings = [r.getMessage() for r in caplog.records if "'typo'" in r.getMessage()]
    assert len(warnings) == 1  # once, not every tick
    assert vhost.name in warnings[0]


def stamped_publish(vhost: Vhost, queue: str, arguments: dict[str, Any], stamp: int | None) -> None:
    with Connection(vhost.amqp_url) as connection:
        channel = connection.channel()
        Queue(queue, Exchange(queue), queue, queue_arguments=arguments, channel=channel).declare()
        properties = {} if stamp is None else {"timestamp": stamp}
        Producer(channel).publish({"n": 1}, exchange=queue, routing_key=queue, **properties)


def test_age_comes_from_the_stamped_head_and_only_when_a_queue_waits(vhost: Vhost) -> None:
    published = int(time.time()) - 120
    stamped_publish(vhost, "stamped", {}, published)
    stamped_publish(vhost, "unstamped", {}, None)
    stamped_publish(vhost, "quorum", QUEUE_KINDS["quorum"], published)
    probe = vhost.probe()

    def age() -> float | None:
        return probe.measure(["stamped", "unstamped", "quorum"]).queues["stamped"].oldest_age_s

    oldest = wait_until(age, timeout=60, what="the stats to report the head's timestamp")  # stats lag 5-10 s
    assert 120 <= oldest <= time.time() - published + 1
    measured = probe.measure(["stamped", "unstamped", "quorum"])
    assert measured.queues["unstamped"].oldest_age_s is None  # Celery sets no timestamp of its own
    assert measured.queues["quorum"].oldest_age_s is None  # quorum queues do not report the head's
    assert measured.queues["quorum"].waiting == 1


def test_the_worker_helper_stamps_the_amqp_timestamp_as_an_int(vhost: Vhost) -> None:
    app = make_app(vhost.amqp_url, stamp_header=None, signal_url=SIGNALS_URL, main="stamped")
    autoscaler_worker.install(app, apply_env_settings=False)
    try:
        before = int(time.time())
        app.send_task("x", queue="helper")
    finally:
        autoscaler_worker.uninstall(app)
    with Connection(vhost.amqp_url) as connection:
        message = connection.SimpleQueue("helper").get(timeout=10)
        stamp = message.properties["timestamp"]
        message.ack()
    assert isinstance(stamp, int)  # py-amqp sends an int; a datetime would raise at publish
    assert before <= stamp <= time.time()


def test_a_user_without_a_management_tag_is_refused_with_a_hint(rabbitmq: RabbitBroker, vhost: Vhost) -> None:
    untagged = f"untagged-{uuid.uuid4().hex[:6]}"
    rabbitmq.management_request("PUT", f"/api/users/{untagged}", {"password": "pw", "tags": ""})
    nothing = {"configure": "^$", "write": "^$", "read": "^$"}
    rabbitmq.management_request("PUT", f"/api/permissions/{vhost.path}/{untagged}", nothing)
    try:
        host = urlsplit(rabbitmq.amqp_url).netloc.rsplit("@", 1)[1]
        url = f"amqp://{untagged}:pw@{host}/{vhost.path}"
        probe = RabbitMQProbe.from_config(BrokerConfig(management_url=rabbitmq.management_url), url)
        with pytest.raises(BrokerUnavailableError, match=r"401 .*'monitoring'"):
            probe.measure(["q"])
    finally:
        rabbitmq.management_request("DELETE", f"/api/users/{untagged}")


def test_an_unknown_vhost_or_password_is_the_broker_unreadable(rabbitmq: RabbitBroker) -> None:
    settings = BrokerConfig(management_url=rabbitmq.management_url)
    missing = RabbitMQProbe.from_config(settings, rabbitmq.amqp_url.rstrip("/") + "/no-such-vhost")
    with pytest.raises(BrokerUnavailableError, match="404"):
        missing.measure(["q"])
    wrong = RabbitMQProbe.from_config(settings, rabbitmq.amqp_url.replace(rabbitmq.password, "wrong"))
    with pytest.raises(BrokerUnavailableError, match="401") as raised:
        wrong.measure(["q"])
    assert "wrong" not in str(raised.value)


# --- faults of the HTTP answer, from a small server of the test's own -----------------------------


class FakeManagement(http.server.ThreadingHTTPServer):
    """An HTTP server that answers every GET with ``status`` and ``body``, and counts TCP connections.

    It stands in for the management API only where a real node cannot be made to misbehave.
    """

    daemon_threads = True

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"[]",
        *,
        delay_s: float = 0.0,
        close_after_answer: bool = False,
        age_status: int | None = None,
    ) -> None:
        self.status, self.body, self.delay_s = status, body, delay_s
        self.connections = 0
        self.paths: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:
                server.paths.append(self.path)
                time.sleep(server.delay_s)
                ages = "columns=" in self.path  # the stats-mode request for head ages
                self.send_response(age_status if ages and age_status is not None else server.status)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)
                self.close_connection = close_after_answer  # without saying so, as an idle timeout does

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def probe(self, **settings: Any) -> RabbitMQProbe:
        return RabbitMQProbe.from_config(BrokerConfig(management_url=self.url, **settings), "amqp://u:secret@h/v")

    def __enter__(self) -> FakeManagement:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()
        self.server_close()


def row(name: str, ready: Any, unacked: Any, **more: Any) -> dict[str, Any]:
    return {"name": name, "messages_ready": ready, "messages_unacknowledged": unacked, **more}


def test_one_keep_alive_connection_and_one_request_per_tick() -> None:
    listing = [row("a", 0, 1), row("b", 0, 2)]
    with FakeManagement(body=json.dumps(listing).encode()) as server:
        probe = server.probe()
        for _ in range(3):
            measured = probe.measure(["a", "b"])
        assert (measured.queues["b"].unacked, measured.unacked_total) == (2, 3)
        assert server.connections == 1
        assert server.paths == ["/api/queues/v?disable_stats=true&enable_queue_totals=true"] * 3  # no age call


def test_a_connection_closed_between_ticks_is_reopened() -> None:
    with FakeManagement(body=json.dumps([row("a", 0, 1)]).encode(), close_after_answer=True) as server:
        probe = server.probe()
        for _ in range(3):  # each tick finds the kept-alive socket closed by the server (its idle timeout)
            assert probe.measure(["a"]).queues["a"].unacked == 1
        assert server.connections == 3


def test_a_queue_without_integer_counts_is_unreadable_alone() -> None:
    listing = [row("down", None, None, state="down"), row("ok", 3, 1), row("text", "3", 0), {"name": 7}]
    with FakeManagement(body=json.dumps(listing).encode()) as server:
        measured = server.probe().measure(["down", "ok", "text"])
    assert "down" in str(measured.queues["down"].error)
    assert measured.queues["text"].error is not None
    assert measured.queues["down"].unacked is None
    ok = measured.queues["ok"]
    assert (ok.waiting, ok.unacked, ok.error) == (3, 1, None)
    assert measured.unacked_total == 1


def test_a_failed_age_request_leaves_the_counts_and_only_the_ages_unknown(caplog: pytest.LogCaptureFixture) -> None:
    listing = [row("a", 4, 1, type="classic", head_message_timestamp=int(time.time()) - 60)]
    with FakeManagement(body=json.dumps(listing).encode()) as server:
        assert server.probe().measure(["a"]).queues["a"].oldest_age_s is not None  # the same answer serves ages
    with FakeManagement(body=json.dumps(listing).encode(), age_status=503) as server:
        a = server.probe().measure(["a"]).queues["a"]
        assert len(server.paths) == 2
    assert (a.waiting, a.unacked, a.oldest_age_s, a.error) == (4, 1, None, None)
    assert any("ages unknown" in r.getMessage() and "503" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (500, b"[]", "500"),
        (503, b"<html>maintenance</html>", "503"),
        (200, b"<html>a login page</html>", "not JSON"),
        (200, b'{"error": "x"}', "not a JSON list"),
        (401, b"", "monitoring"),
    ],
)
def test_bad_answers_are_the_broker_unreadable(status: int, body: bytes, match: str) -> None:
    with FakeManagement(status, body) as server, pytest.raises(BrokerUnavailableError, match=match) as raised:
        server.probe().measure(["a"])
    assert "secret" not in str(raised.value)


def test_a_slow_answer_times_out() -> None:
    with FakeManagement(delay_s=3) as server, pytest.raises(BrokerUnavailableError, match="no answer within"):
        server.probe(socket_timeout_s=0.5).measure(["a"])


def test_refused_and_tls_failures_are_the_broker_unreadable() -> None:
    (port,) = free_ports()
    refused = RabbitMQProbe.from_config(BrokerConfig(management_url=f"http://127.0.0.1:{port}"), "amqp://u:p@h/")
    with pytest.raises(BrokerUnavailableError, match="refused"):
        refused.measure(["a"])
    with FakeManagement() as server:  # plain HTTP where TLS is expected
        tls = RabbitMQProbe.from_config(BrokerConfig(management_url=server.url.replace("http", "https")), "amqp://h/")
        with pytest.raises(BrokerUnavailableError, match="TLS"):
            tls.measure(["a"])


def test_a_self_signed_certificate_is_refused(tmp_path: Any) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    with FakeManagement() as server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        probe = RabbitMQProbe.from_config(
            BrokerConfig(management_url=server.url.replace("http", "https")), "amqps://h/"
        )
        with pytest.raises(BrokerUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            probe.measure(["a"])


# --- where the management API is ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amqp_url", "override", "where", "user", "vhost"),
    [
        ("amqp://guest:s3cret@rabbit.internal:5672//", None, "http://rabbit.internal:15672", "guest", "/"),
        ("amqp://rabbit.internal", None, "http://rabbit.internal:15672", "guest", "/"),
        ("amqps://admin:s3cret%40x@b-1.mq.eu-west-1.amazonaws.com:5671/celery", None,
         "https://b-1.mq.eu-west-1.amazonaws.com:443", "admin", "celery"),
        ("amqp://u:s3cret@h:5672/%2F", "https://console.example:8443/rabbit/",
         "https://console.example:8443/rabbit", "u", "/"),
        ("amqp://u:p@h/v", "http://monitor:s3cret@h:15672", "http://h:15672", "monitor", "v"),
    ],
)  # fmt: skip
def test_the_management_endpoint_is_derived_from_the_amqp_url(
    amqp_url: str, override: str | None, where: str, user: str, vhost: str
) -> None:
    endpoint = ManagementEndpoint.from_urls(amqp_url, override)
    assert (endpoint.where, endpoint.user, endpoint.vhost) == (where, user, vhost)
    assert endpoint.password.startswith("s3cret") or user == "guest"
    assert "s3cret" not in repr(endpoint)


def test_a_bad_management_url_names_the_field_and_hides_the_password() -> None:
    for bad in ("ftp://u:hunter2@h", "http://u:hunter2@h:99999", "http://u:hunter2@h/?x=1", "hunter2"):
        with pytest.raises(ConfigError, match=r"^broker\.management_url: ") as raised:
            probe_for(BrokerConfig(management_url=bad), "amqp://u:p@h/")
        assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"^broker\.url: ") as raised:
        probe_for(BrokerConfig(), "amqp://u:hunter2@/v")
    assert "hunter2" not in str(raised.value)


def test_the_factory_picks_the_rabbitmq_probe_for_amqp_urls() -> None:
    for url in ("amqp://u:p@h/v", "amqps://u:p@h/v", "AMQP://u:p@h/v"):
        assert isinstance(probe_for(BrokerConfig(), url), RabbitMQProbe)


def test_measure_prints_the_same_json_as_for_redis(
    vhost: Vhost, capsys: pytest.CaptureFixture[str], rabbitmq: RabbitBroker
) -> None:
    send(vhost, "cli", 2)
    args = ["measure", "--broker-url", vhost.amqp_url, "--management-url", rabbitmq.management_url]
    status = cli_main([*args, "--queue", "cli", "--queue", "absent", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert status == 0
    assert printed["queues"]["cli"] == {
        "waiting": 2,
        "unacked": 0,
        "oldest_age_s": None,
        "declared": True,
        "error": None,
    }
    assert printed["queues"]["absent"]["declared"] is False
    assert printed["unacked_total"] == 0

    (port,) = free_ports()
    status = cli_main(["measure", "--broker-url", vhost.amqp_url, "--management-url", f"http://127.0.0.1:{port}",
                       "--queue", "cli"])  # fmt: skip
    assert status == 3
