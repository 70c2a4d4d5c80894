"""Fixtures shared by every test file: a real Redis database of our own, and condition waits."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))
sys.path.insert(0, str(ROOT / "tests"))
# The local demo's package: the worker helper's tests use its fake ECS agent.
sys.path.insert(0, str(ROOT / "examples" / "local"))


def redis_url_for(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


# Test files own distinct db numbers so they never touch a user's db 0 or each other's keys.
@pytest.fixture
def redis_db(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A flushed Redis db for one test; the db number comes from ``@pytest.mark.redis_db(N)`` (default 9)."""
    marker = request.node.get_closest_marker("redis_db")
    db = marker.args[0] if marker else 9
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_db(n): the Redis db number a test owns")
