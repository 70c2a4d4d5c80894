"""What every fault-injection case checks, shared by tests/faults/: strict JSON output, an untouched Redis."""

from __future__ import annotations

import json
from typing import Any

import redis


def strict_json(line: str) -> Any:
    """Parse one output line, refusing NaN and Infinity (Python's json accepts them by default)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant} in {line[:200]}")

    return json.loads(line, parse_constant=refuse)


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, bytes | None]]:
    """Every key of the db with its type and serialised value: the probe must change none of them."""
    return {key: (client.type(key), client.dump(key)) for key in client.scan_iter(count=1000)}
