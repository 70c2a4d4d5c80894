"""The Redis ACL recipes of docs/measurements.md, read from its ``redis-acl`` blocks so no test retypes them.

The ``redis-acl`` block is the scaler's user (the probe's reads plus fence and drain's writes on the
drain keys); the ``redis-acl read-only`` block is the probe's reads alone.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from conftest import ROOT
from kombu import Connection, Exchange, Queue

from celery_autoscaler.counters import COMPLETED_FIELD, RUN_MS_FIELD, stats_key

HANDSHAKE = frozenset({"hello", "auth"})
"""What a client sends to log in: Redis checks no ACL on it, so no recipe lists it."""


def documented_acl_line(*, read_only: bool = False) -> str:
    """The one line of the docs' ``redis-acl`` (or ``redis-acl read-only``) block, verbatim, for redis-cli."""
    page = (ROOT / "docs" / "measurements.md").read_text()
    blocks = re.findall(r"^```redis-acl( read-only)?\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    wanted = [text for option, text in blocks if bool(option) == read_only]
    tag = "redis-acl read-only" if read_only else "redis-acl"
    assert len(wanted) == 1, f"docs/measurements.md has exactly one {tag} block"
    (line,) = wanted[0].strip().splitlines()
    return str(line)


def documented_acl_rules(*, read_only: bool = False) -> tuple[str, str, list[str]]:
    """The recipe's user name, password and the rules after them (``%R~*``, ``-@all``, ``+llen``, ...)."""
    words = shlex.split(documented_acl_line(read_only=read_only))
    assert words[:2] == ["ACL", "SETUSER"]
    password = next(w[1:] for w in words if w.startswith(">"))
    return words[2], password, [w for w in words[3:] if not w.startswith(">") and w != "on"]


def allowed_commands(rules: list[str]) -> set[str]:
    """The commands a recipe allows, named as INFO commandstats names them (``script|load``)."""
    return {rule[1:] for rule in rules if rule.startswith("+")}


@contextmanager
def documented_user(client: redis.Redis, *, read_only: bool = False) -> Iterator[str]:
    """The documented user, made by redis-cli from the line as written: its URL on ``client``'s db; deleted after."""
    name, password, _ = documented_acl_rules(read_only=read_only)
    kwargs = client.connection_pool.connection_kwargs
    host, port, db = kwargs["host"], kwargs["port"], kwargs["db"]
    cli = ["redis-cli", "-h", str(host), "-p", str(port)]
    line = documented_acl_line(read_only=read_only)
    ran = subprocess.run(cli, input=line + "\n", capture_output=True, text=True, check=True, timeout=30)
    assert ran.stdout.strip() == "OK", ran.stdout + ran.stderr
    try:
        yield f"redis://{name}:{password}@{host}:{port}/{db}"
    finally:
        client.execute_command("ACL", "DELUSER", name)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Every command's calls so far, server-wide (INFO commandstats; commands run by scripts included)."""
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in client.info("commandstats").items()}


def sent_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands called between two :func:`command_calls`, without the INFO that took ``before``."""
    sent = {name: calls - before.get(name, 0) for name, calls in after.items()}
    sent["info"] -= 1
    return {name: calls for name, calls in sent.items() if calls}


def refused(client: redis.Redis, user: str) -> list[str]:
    """What the server refused ``user`` since the last ACL LOG RESET (commands and keys)."""
    return [f"{e['reason']} {e['object']} ({e['context']})" for e in client.acl_log() if e["username"] == user]


def seed_every_read(client: redis.Redis, url: str, queue: str, now: float) -> None:
    """Keys that make the probe send every read it has: a bound queue with a message, one unacked, counters."""
    with Connection(url) as connection:
        Queue(queue, Exchange(f"{queue}_ex"), routing_key="rk", channel=connection.default_channel).declare()
    message = {"headers": {"id": "t1", "x_published_at": now - 5}, "body": ""}
    client.lpush(queue, json.dumps(message))
    client.hset("unacked", "t2", json.dumps([message, f"{queue}_ex", "rk"]))
    client.hset(stats_key("", queue), mapping={COMPLETED_FIELD: 3, RUN_MS_FIELD: 30})
