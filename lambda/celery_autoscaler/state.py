"""Per-pool policy state, saved with an optimistic version check.

Two invocations that overlap (a slow tick, a retried Lambda) both read version N; only the first
conditional write of N+1 succeeds. The other gets :class:`StateConflictError` and must not act, so
a pool is never scaled by two deciders at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Protocol

from celery_autoscaler.policy import PoolState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_LIMIT = 100
"""BatchGetItem reads at most 100 keys per call."""


class StateConflictError(Exception):
    """Another invocation saved this pool's state first; this one must not act on the pool."""


class StateStoreError(Exception):
    """The store could not be read or written (not a conflict); the tick does not act without state."""


class StateStore(Protocol):
    """Where ``PoolState`` lives between ticks: DynamoDB (AWS, or the demo's emulator), memory for the CLI."""

    def load(self, pools: Sequence[str]) -> dict[str, PoolState]:
        """Every requested pool's state; a pool never saved gets ``PoolState()`` (version 0)."""
        ...

    def save(self, pool: str, state: PoolState) -> PoolState:
        """Write ``state`` if the stored version is still ``state.version``; return it with version + 1."""
        ...


def encode_state(state: PoolState) -> str:
    """JSON of everything but the version (which the store keeps as its own attribute)."""
    body = asdict(state)
    del body["version"]
    return json.dumps(body, separators=(",", ":"))


def decode_state(text: str, version: int) -> PoolState:
    body: dict[str, Any] = json.loads(text)
    return PoolState(
        recommendations=tuple((float(t), int(r)) for t, r in body.get("recommendations", [])),
        idle_since=body.get("idle_since"),
        last_action_at=body.get("last_action_at"),
        last_desired=body.get("last_desired"),
        consecutive_failures=int(body.get("consecutive_failures", 0)),
        version=version,
    )


class InMemoryStateStore:
    """The same conditional semantics as DynamoDB, in a dict guarded by a lock."""

    def __init__(self) -> None:
        self._items: dict[str, PoolState] = {}
        self._lock = threading.Lock()

    def load(self, pools: Sequence[str]) -> dict[str, PoolState]:
        with self._lock:
            return {pool: self._items.get(pool, PoolState()) for pool in pools}

    def save(self, pool: str, state: PoolState) -> PoolState:
        with self._lock:
            stored = self._items.get(pool)
            stored_version = stored.version if stored is not None else 0
            if stored_version != state.version:
                raise StateConflictError(
                    f"pool {pool!r}: state version {state.version} is stale (stored {stored_version})"
                )
            saved = replace(state, version=state.version + 1)
            self._items[pool] = saved
            return saved


class DynamoStateStore:
    """One item per pool in a table whose hash key is ``pool`` (S); ``version`` (N) guards writes."""

    def __init__(self, table: str, client: DynamoDBClient | None = None) -> None:
        self.table = table
        self._client = client

    @property
    def client(self) -> DynamoDBClient:
        if self._client is None:
            import boto3

            self._client = boto3.client("dynamodb")
        return self._client

    def load(self, pools: Sequence[str]) -> dict[str, PoolState]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[str, PoolState] = {}
        unique = list(dict.fromkeys(pools))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            keys = [{"pool": {"S": p}} for p in unique[start : start + BATCH_GET_LIMIT]]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                try:
                    response = self.client.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise StateStoreError(f"reading state table {self.table!r} failed: {exc}") from exc
                for item in response.get("Responses", {}).get(self.table, []):
                    found[item["pool"]["S"]] = decode_state(item["state"]["S"], int(item["version"]["N"]))
                request = dict(response.get("UnprocessedKeys") or {})
        return {pool: found.get(pool, PoolState()) for pool in pools}

    def save(self, pool: str, state: PoolState) -> PoolState:
        from botocore.exceptions import BotoCoreError, ClientError

        saved = replace(state, version=state.version + 1)
        item = {
            "pool": {"S": pool},
            "version": {"N": str(saved.version)},
            "state": {"S": encode_state(saved)},
        }
        condition: dict[str, Any]
        if state.version == 0:
            condition = {
                "ConditionExpression": "attribute_not_exists(#pool)",
                "ExpressionAttributeNames": {"#pool": "pool"},
            }
        else:
            condition = {
                "ConditionExpression": "#version = :expected",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":expected": {"N": str(state.version)}},
            }
        try:
            self.client.put_item(TableName=self.table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise StateConflictError(
                    f"pool {pool!r}: another invocation saved state after version {state.version}"
                ) from exc
            raise StateStoreError(f"writing pool {pool!r} to state table {self.table!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StateStoreError(f"writing pool {pool!r} to state table {self.table!r} failed: {exc}") from exc
        return saved


class ReadOnlyStateStore:
    """Reads another store and never writes: a CLI dry run must not disturb the live scaler's state."""

    def __init__(self, source: StateStore) -> None:
        self.source = source

    def load(self, pools: Sequence[str]) -> dict[str, PoolState]:
        return self.source.load(pools)

    def save(self, pool: str, state: PoolState) -> PoolState:
        return replace(state, version=state.version + 1)
