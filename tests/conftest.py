"""Fixtures shared by every test file: a real Redis of our own (and a RabbitMQ node), and condition waits.

The tests' Redis is a private ``redis-server`` on a free loopback port with a throwaway data
directory, started on first use and stopped at the end of the session; ``TEST_REDIS_PORT`` (and
``TEST_REDIS_HOST``) name an existing server to use instead, whose dbs 1-12 the tests then flush.
``REDIS_HOST``, ``REDIS_PORT`` and ``redis_url_for`` (from tests/brokers.py) always point at that server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# The local demo's package: the worker helper's tests use its fake ECS agent.
sys.path.insert(0, str(ROOT / "examples" / "local"))
sys.path.insert(0, str(ROOT / "scripts"))

from tf_mirror import use_mirror  # noqa: E402  (found through the path above)

# Every terraform the tests start (their own, the demo's) takes providers from the offline mirror, if
# this machine has one, through the same TF_CLI_CONFIG_FILE that `make` exports.
use_mirror(ROOT / ".tmp" / "terraform-mirror.tfrc", os.environ)

from brokers import RabbitBroker, RabbitNode, redis_url_for, session_redis, stop_session_redis  # noqa: E402


def __getattr__(name: str) -> object:
    """``REDIS_HOST`` and ``REDIS_PORT`` start the private server only when a test file asks for them."""
    if name == "REDIS_HOST":
        return session_redis().host
    if name == "REDIS_PORT":
        return session_redis().port
    raise AttributeError(name)


__all__ = ["ROOT", "redis_url_for"]


# Test files own distinct db numbers so they never touch each other's keys.
@pytest.fixture
def redis_db(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A flushed Redis db for one test; the db number comes from ``@pytest.mark.redis_db(N)`` (default 9)."""
    marker = request.node.get_closest_marker("redis_db")
    db = marker.args[0] if marker else 9
    server = session_redis()
    client = redis.Redis(host=server.host, port=server.port, db=db)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitBroker]:
    """A private RabbitMQ node with the management plugin, for the whole session (about 5 s to start).

    It has its own node name, free loopback ports, Erlang cookie and port mapper, and its files in a
    temporary directory; the machine's RabbitMQ (5672) is never contacted. Use it as::

        def test_x(rabbitmq: RabbitBroker) -> None:
            with kombu.Connection(rabbitmq.amqp_url) as conn: ...          # AMQP, vhost "/"
            rabbitmq.management_get("/api/queues/%2F")                      # management API, JSON
            # or basic auth yourself: rabbitmq.management_url, rabbitmq.user, rabbitmq.password

    The node is shared by the session: give queues names of the test's own and delete them after.
    Only this node is stopped (``rabbitmqctl -n NODE stop``) at the end.
    """
    node = RabbitNode()
    broker = node.start()
    try:
        yield broker
    finally:
        node.stop()


# Files whose tests are long and share neither a costly fixture nor a Redis db: pytest-xdist (`make test`)
# spreads them over its processes one test at a time. Every other file runs in one process, so its module
# fixtures start once and its db number (on a server TEST_REDIS_PORT names, too) has one user at a time.
SPREAD = {"test_terraform_apply", "test_terraform_static"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's by-file scheduling (``--dist loadscope``), each test of a ``SPREAD`` file a scope of its own.

    (``xdist_group`` marks would say the same, but pytest-xdist 3.8 cannot rename pytest 9's node ids.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).stem in SPREAD else path

    return ByFile(config, log)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_db(n): the Redis db number a test owns")


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_session_redis()
