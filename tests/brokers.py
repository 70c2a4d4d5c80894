"""Brokers of our own for tests (and the demo): a redis-server and a RabbitMQ node on free loopback ports.

Each one lives in a throwaway directory (data, logs, config) removed when it stops, and dies with the
process that started it, so a crashed test run leaves nothing behind. Nothing here ever talks to a
server it did not start, except the Redis named by ``TEST_REDIS_PORT`` (see ``session_redis``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import OperationalError
from waiting import wait_until

from celery_autoscaler.config import BrokerConfig
from celery_autoscaler.probe.rabbitmq import RabbitMQProbe

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct loopback ports nobody listens on right now (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in sockets:
            probe.bind((LOOPBACK, 0))
        return [int(probe.getsockname()[1]) for probe in sockets]


def _die_with_parent() -> None:
    """Run in the child before exec: the kernel sends it SIGTERM when the starting process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _binary(name: str, *preferred: str) -> str:
    for candidate in (*preferred, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed: `make services` installs it (apt)")


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence, its files in a temporary directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = _binary("redis-server")
        for _ in range(5):  # another process may take the free port before redis binds it
            (self.port,) = free_ports()
            command = [binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.dir)]
            command += ["--save", "", "--appendonly", "no", "--logfile", str(self.dir / "redis.log")]
            self._proc = subprocess.Popen(command, preexec_fn=_die_with_parent)
            with contextlib.suppress(AssertionError):
                wait_until(self._answers, timeout=30, what=f"redis-server on port {self.port}")
                return self
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self._proc.returncode}")
        try:
            return bool(redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RedisEndpoint:
    """Where the tests' Redis answers, and whether this session started it."""

    host: str
    port: int
    ours: bool


_session_redis: RedisServer | None = None


def session_redis() -> RedisEndpoint:
    """The tests' Redis: the one ``TEST_REDIS_PORT`` names, else a private server started on first use.

    The private server's port is put into ``TEST_REDIS_PORT`` (and ``TEST_REDIS_HOST``), so worker
    subprocesses and apps that read the environment find the same server; ``stop_session_redis`` stops it.
    """
    global _session_redis
    port = os.environ.get("TEST_REDIS_PORT")
    host = os.environ.get("TEST_REDIS_HOST", LOOPBACK)
    if port and _session_redis is None:
        return RedisEndpoint(host, int(port), ours=False)
    if _session_redis is None:
        _session_redis = RedisServer().start()
        os.environ["TEST_REDIS_PORT"] = str(_session_redis.port)
        os.environ["TEST_REDIS_HOST"] = LOOPBACK
    return RedisEndpoint(LOOPBACK, _session_redis.port, ours=True)


def redis_url_for(db: int) -> str:
    """A URL for db ``db`` of the tests' Redis (``session_redis``)."""
    server = session_redis()
    return f"redis://{server.host}:{server.port}/{db}"


def stop_session_redis() -> None:
    """Stop the private server ``session_redis`` started, if it did (never a server named by the user)."""
    global _session_redis
    if _session_redis is not None:
        _session_redis.stop()
        _session_redis = None
        os.environ.pop("TEST_REDIS_PORT", None)
        os.environ.pop("TEST_REDIS_HOST", None)


@dataclass(frozen=True)
class RabbitBroker:
    """How to reach a private RabbitMQ node: AMQP for Celery/kombu, HTTP for the management API."""

    amqp_url: str  # amqp://user:password@127.0.0.1:PORT// (the default vhost "/")
    management_url: str  # http://127.0.0.1:PORT (GET /api/queues/%2F lists the default vhost's queues)
    user: str  # tagged administrator: AMQP and the management API both accept it
    password: str
    node: str  # the Erlang node name, for rabbitmqctl -n
    ctl_env: dict[str, str] = field(default_factory=dict, repr=False)
    """The environment in which a plain ``rabbitmqctl ...`` talks to this node (name, cookie, port mapper)."""

    def rabbitmqctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl ARGS`` against this node (not checked: the caller reads the result)."""
        ctl = _binary("rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl")
        return subprocess.run([ctl, *args], env=self.ctl_env, capture_output=True, text=True, timeout=120)

    def management_get(self, path: str) -> object:
        """``GET management_url + path`` as this broker's user; the decoded JSON answer."""
        return self.management_request("GET", path)

    def management_request(self, method: str, path: str, body: object = None) -> object:
        """``method management_url + path`` (JSON ``body``) as this broker's user; the decoded answer, or None."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.management_url + path, data=data, method=method)  # noqa: S310
        token = b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - our own loopback node
            text = answer.read()
        return json.loads(text) if text else None


@dataclass(frozen=True)
class Vhost:
    """A vhost of one test on the session's node, with the node's administrator allowed everything."""

    broker: RabbitBroker
    name: str

    @property
    def amqp_url(self) -> str:
        base = self.broker.amqp_url.rsplit("/", 2)[0]  # amqp://user:pass@host:port
        return f"{base}/{quote(self.name, safe='')}"

    @property
    def path(self) -> str:
        return quote(self.name, safe="")

    def probe(self, **settings: Any) -> RabbitMQProbe:
        broker = BrokerConfig(management_url=self.broker.management_url, **settings)
        return RabbitMQProbe.from_config(broker, self.amqp_url)

    def listed(self) -> dict[str, dict[str, Any]]:
        """What the management API lists (live counts), for checks the probe must agree with."""
        rows = self.broker.management_get(f"/api/queues/{self.path}?disable_stats=true&enable_queue_totals=true")
        assert isinstance(rows, list)
        return {row["name"]: row for row in rows}


def create_vhost(broker: RabbitBroker, name: str) -> Vhost:
    """A new vhost on ``broker`` in which its administrator may do everything."""
    broker.management_request("PUT", f"/api/vhosts/{quote(name, safe='')}", {})
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    broker.management_request("PUT", f"/api/permissions/{quote(name, safe='')}/{broker.user}", everything)
    return Vhost(broker, name)


class RabbitNode:
    """A RabbitMQ node of our own with the management plugin: own name, ports, Erlang port mapper and files.

    The machine's RabbitMQ (5672, its epmd on 4369) is never contacted: the node registers with a
    private epmd on a free port, which ``stop`` also ends.
    """

    USER = "autoscaler-test"

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="test-rabbitmq-"))
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.password = uuid.uuid4().hex
        self.amqp_port = self.management_port = self.dist_port = self.epmd_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        """The server's and rabbitmqctl's environment: HOME holds a private Erlang cookie."""
        return {
            **os.environ,
            "HOME": str(self.base),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),  # not the machine's
        }

    def start(self, timeout: float = 180) -> RabbitBroker:
        server = _binary("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
        self.amqp_port, self.management_port, self.dist_port, self.epmd_port = free_ports(4)
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        # The port mapper and the distribution listener on loopback only, as for AMQP and HTTP.
        (self.base / "rabbitmq-env.conf").write_text(
            'ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
        )
        (self.base / "rabbitmq.conf").write_text(
            f"management.tcp.ip = {LOOPBACK}\n"
            f"management.tcp.port = {self.management_port}\n"
            f"default_user = {self.USER}\n"
            f"default_pass = {self.password}\n"
        )
        log = (self.base / "server.log").open("wb")
        self._proc = subprocess.Popen(
            [server], env=self._env(), cwd=self.base, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        broker = RabbitBroker(
            amqp_url=f"amqp://{self.USER}:{self.password}@{LOOPBACK}:{self.amqp_port}//",
            management_url=f"http://{LOOPBACK}:{self.management_port}",
            user=self.USER,
            password=self.password,
            node=self.name,
            ctl_env=self._env(),
        )
        try:
            wait_until(lambda: self._answers(broker), timeout=timeout, what=f"RabbitMQ node {self.name}")
        except BaseException:
            self.stop()
            raise
        return broker

    def _answers(self, broker: RabbitBroker) -> bool:
        """True once both AMQP and the management API answer."""
        if self._proc is not None and self._proc.poll() is not None:
            output = (self.base / "server.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"rabbitmq-server exited with {self._proc.returncode}:\n{output}")
        try:
            with Connection(broker.amqp_url, connect_timeout=2) as connection:
                connection.connect()
            broker.management_get("/api/overview")
        except (OSError, AMQPError, OperationalError):  # URLError is an OSError
            return False
        return True

    def stop(self) -> None:
        """``rabbitmqctl stop`` for this node only, then its epmd; killed if it does not go."""
        if self._proc is not None:
            ctl = _binary("rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl")
            subprocess.run(
                [ctl, "-n", self.name, "stop"], env=self._env(), cwd=self.base, capture_output=True, timeout=120
            )
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
            self._proc = None
        if self.epmd_port:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                epmd = _binary("epmd")
                subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
