"""Per-pool policy state, saved with an optimistic version check.

Two invocations that overlap (a slow tick, a retried Lambda) both read version N; only the first
conditional write of N+1 succeeds. The other gets :class:`StateConflictError` and must not act, so
a pool is never scaled by two deciders at once.

Reading is total: whatever an item holds, ``load`` gives that pool a ``PoolState`` or an
:class:`UnreadableState` saying why not (corrupt item, keys left unprocessed, the table refused),
so one bad item affects its own pool only. The tick holds such a pool and repairs a corrupt item
(see docs/reliability.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from celery_autoscaler.aws import Backoff, client_config
from celery_autoscaler.estimates import EstimatorState
from celery_autoscaler.pause import Pause
from celery_autoscaler.policy import PoolState
from celery_autoscaler.recurrence import RecurrenceState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_LIMIT = 100
"""BatchGetItem reads at most 100 keys per call."""

STATE_FIELDS = ("recommendations", "idle_since", "last_action_at", "last_desired", "consecutive_failures")
"""The fields every item has; an item missing one is corrupt (unknown extra fields are ignored).

``pause`` and ``last_reason`` came later: an item without them is not paused and has no reason yet."""


MAX_EPOCH_S = 1e11
"""No timestamp the scaler writes is later than this (year 5138); a larger one is corrupt."""


class StateConflictError(Exception):
    """Another invocation saved this pool's state first; this one must not act on the pool."""


class StateStoreError(Exception):
    """The store could not be written (not a conflict); the pool is not acted on."""


class CorruptStateError(ValueError):
    """A stored state body that is not what ``encode_state`` writes; the message names the field."""


@dataclass(frozen=True)
class UnreadableState:
    """A pool whose stored state could not be used this tick: the pool holds and is not acted on.

    ``item`` is the stored item as read (DynamoDB attribute values) when it was read but is corrupt,
    so a repair can replace exactly that item; ``None`` when it was not read at all (nothing to repair).
    """

    reason: str
    item: Mapping[str, Any] | None = None


StoredState = PoolState | UnreadableState


class StateStore(Protocol):
    """Where ``PoolState`` lives between ticks: DynamoDB (AWS, or the demo's emulator), memory for the CLI."""

    def load(self, pools: Sequence[str]) -> dict[str, StoredState]:
        """Every requested pool's state (never saved: ``PoolState()``, version 0), or why it is unreadable."""
        ...

    def save(self, pool: str, state: PoolState) -> PoolState:
        """Write ``state`` if the stored version is still ``state.version``; return it with version + 1."""
        ...


@runtime_checkable
class StateRepairer(Protocol):
    """A store whose items can be corrupt, and that can replace a corrupt item it read."""

    def repair(self, pool: str, unreadable: UnreadableState, state: PoolState) -> PoolState:
        """Write ``state`` over ``unreadable.item`` if that item is still stored; return what was written."""
        ...


def encode_state(state: PoolState) -> str:
    """JSON of everything but the version (which the store keeps as its own attribute)."""
    body = asdict(state)
    del body["version"]
    return json.dumps(body, separators=(",", ":"))


def _reject_constant(name: str) -> float:
    raise CorruptStateError(f"holds {name}, which is not a finite number")


def _is_time(value: Any) -> bool:
    """Epoch seconds: a number (not a bool) in [0, MAX_EPOCH_S); NaN, infinities and huge integers fail."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < MAX_EPOCH_S


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _field(body: dict[str, Any], name: str, valid: bool) -> Any:
    if not valid:
        raise CorruptStateError(f"field {name!r} has the wrong type or value ({str(body[name])[:40]})")
    return body[name]


def _pause(body: dict[str, Any]) -> Pause | None:
    try:
        return Pause.from_json(body.get("pause"))
    except ValueError as exc:
        raise CorruptStateError(f"field 'pause' {exc}") from exc


def _last_reason(body: dict[str, Any]) -> str | None:
    reason = body.get("last_reason")
    if not isinstance(reason, str | None):
        raise CorruptStateError(f"field 'last_reason' has the wrong type or value ({str(reason)[:40]})")
    return reason


def _estimator(body: dict[str, Any]) -> EstimatorState:
    """The estimators' state; an item written before they existed has none (not corrupt: start afresh)."""
    try:
        return EstimatorState.from_json(body.get("estimator"))
    except (TypeError, ValueError) as exc:
        raise CorruptStateError(f"field 'estimator' is not an estimator state ({str(exc)[:60]})") from exc


def _recurrence(body: dict[str, Any]) -> RecurrenceState:
    """The learned recurrences; an item written before learning existed has none (not corrupt: start afresh)."""
    try:
        return RecurrenceState.from_json(body.get("recurrence"))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CorruptStateError(f"field 'recurrence' is not a recurrence state ({str(exc)[:60]})") from exc


def decode_state(text: str, version: int) -> PoolState:
    """The ``PoolState`` in ``text``; :class:`CorruptStateError` naming the field if it is not one."""
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise CorruptStateError("is nested too deeply to be a state") from exc
    except ValueError as exc:  # JSONDecodeError, an integer too long to parse, or a NaN/Infinity literal
        raise CorruptStateError(f"is not JSON ({exc})"[:120]) from exc
    if not isinstance(body, dict):
        raise CorruptStateError("is not a JSON object")
    missing = [name for name in STATE_FIELDS if name not in body]
    if missing:
        raise CorruptStateError(f"lacks field(s) {', '.join(missing)}")
    pairs = body["recommendations"]
    pairs_valid = isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and _is_time(p[0]) and _is_count(p[1]) for p in pairs
    )
    optional_time = {name: body[name] is None or _is_time(body[name]) for name in ("idle_since", "last_action_at")}
    return PoolState(
        recommendations=tuple((float(t), r) for t, r in _field(body, "recommendations", pairs_valid)),
        idle_since=_field(body, "idle_since", optional_time["idle_since"]),
        last_action_at=_field(body, "last_action_at", optional_time["last_action_at"]),
        last_desired=_field(body, "last_desired", body["last_desired"] is None or _is_count(body["last_desired"])),
        consecutive_failures=_field(body, "consecutive_failures", _is_count(body["consecutive_failures"])),
        pause=_pause(body),
        last_reason=_last_reason(body),
        estimator=_estimator(body),
        recurrence=_recurrence(body),
        version=version,
    )


def _stored_version(attribute: Any) -> int | None:
    """The item's ``version`` attribute as a usable version (an integer >= 1), else ``None``."""
    text = attribute.get("N") if isinstance(attribute, dict) else None
    try:
        version = int(text) if isinstance(text, str) else 0
    except ValueError:  # "1.5", "1e3", or more digits than int() parses
        return None
    return version if version >= 1 else None


def decode_item(item: Mapping[str, Any]) -> StoredState:
    """One DynamoDB item as a pool's state; total: any content gives a state or the reason it is unreadable."""
    version = _stored_version(item.get("version"))
    if version is None:
        shown = json.dumps(item.get("version"), default=str)[:60]
        return UnreadableState(f"state item's version attribute is not a positive integer ({shown})", item)
    body = item.get("state")
    text = body.get("S") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return UnreadableState("state item has no string 'state' attribute", item)
    try:
        return decode_state(text, version)
    except CorruptStateError as exc:
        return UnreadableState(f"state item {exc}", item)


def _unchanged(version: Any) -> dict[str, Any]:
    """A condition true while the item's ``version`` attribute is still ``version`` (as read; None: absent)."""
    names = {"#version": "version"}
    kind = next(iter(version), "") if isinstance(version, dict) else ""
    if version is None:
        return {"ConditionExpression": "attribute_not_exists(#version)", "ExpressionAttributeNames": names}
    if kind in ("N", "S", "B"):
        return {
            "ConditionExpression": "#version = :seen",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":seen": version},
        }
    # Lists, maps, sets, booleans: no valid writer owns such an item, so its type is condition enough.
    return {
        "ConditionExpression": "attribute_type(#version, :kind)",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {":kind": {"S": kind}},
    }


class InMemoryStateStore:
    """The same conditional semantics as DynamoDB, in a dict guarded by a lock."""

    def __init__(self) -> None:
        self._items: dict[str, PoolState] = {}
        self._lock = threading.Lock()

    def load(self, pools: Sequence[str]) -> dict[str, StoredState]:
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
    """One item per pool in a table whose hash key is ``pool`` (S); ``version`` (N) guards writes.

    ``backoff`` bounds the re-reads of keys BatchGetItem leaves unprocessed (its sleep is injectable).
    """

    def __init__(self, table: str, client: DynamoDBClient | None = None, backoff: Backoff | None = None) -> None:
        self.table = table
        self._client = client
        self.backoff = backoff or Backoff()

    @property
    def client(self) -> DynamoDBClient:
        if self._client is None:
            import boto3

            self._client = boto3.client("dynamodb", config=client_config())
        return self._client

    def load(self, pools: Sequence[str]) -> dict[str, StoredState]:
        found: dict[str, StoredState] = {}
        unique = list(dict.fromkeys(pools))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            found.update(self._load_batch(unique[start : start + BATCH_GET_LIMIT]))
        return {pool: found.get(pool, PoolState()) for pool in pools}

    def _load_batch(self, pools: Sequence[str]) -> dict[str, StoredState]:
        """Read up to 100 pools, re-reading unprocessed keys with backoff; pools still unread are unreadable."""
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[str, StoredState] = {}
        request: Mapping[str, Any] = {self.table: {"Keys": [{"pool": {"S": p}} for p in pools], "ConsistentRead": True}}
        for attempt in range(self.backoff.attempts):
            if attempt:
                self.backoff.pause(attempt)
            try:
                response = self.client.batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as exc:
                reason = f"reading state table {self.table!r} failed: {exc}"
                return {**found, **{pool: UnreadableState(reason) for pool in pools if pool not in found}}
            for item in response.get("Responses", {}).get(self.table, []):
                name = item.get("pool", {}).get("S")
                if isinstance(name, str) and name in pools:
                    found[name] = decode_item(item)
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
        unread = {key["pool"]["S"] for key in request.get(self.table, {}).get("Keys", [])}
        reason = (
            f"state table {self.table!r} left the item unprocessed after {self.backoff.attempts} "
            "BatchGetItem calls (throttled)"
        )
        return {**found, **{pool: UnreadableState(reason) for pool in unread}}

    def save(self, pool: str, state: PoolState) -> PoolState:
        if state.version == 0:
            condition: dict[str, Any] = {
                "ConditionExpression": "attribute_not_exists(#pool)",
                "ExpressionAttributeNames": {"#pool": "pool"},
            }
        else:
            condition = _unchanged({"N": str(state.version)})
        return self._put(pool, replace(state, version=state.version + 1), condition)

    def repair(self, pool: str, unreadable: UnreadableState, state: PoolState) -> PoolState:
        """Replace the corrupt item read as ``unreadable.item``; numbered after its version if that was usable."""
        item = unreadable.item or {}
        version = _stored_version(item.get("version")) or 0
        return self._put(pool, replace(state, version=version + 1), _unchanged(item.get("version")))

    def _put(self, pool: str, saved: PoolState, condition: dict[str, Any]) -> PoolState:
        from botocore.exceptions import BotoCoreError, ClientError

        item = {
            "pool": {"S": pool},
            "version": {"N": str(saved.version)},
            "state": {"S": encode_state(saved)},
        }
        try:
            self.client.put_item(TableName=self.table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise StateConflictError(
                    f"pool {pool!r}: another invocation saved state after version {saved.version - 1}"
                ) from exc
            raise StateStoreError(f"writing pool {pool!r} to state table {self.table!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StateStoreError(f"writing pool {pool!r} to state table {self.table!r} failed: {exc}") from exc
        return saved


class ReadOnlyStateStore:
    """Reads another store and never writes: a CLI dry run must not disturb the live scaler's state."""

    def __init__(self, source: StateStore) -> None:
        self.source = source

    def load(self, pools: Sequence[str]) -> dict[str, StoredState]:
        return self.source.load(pools)

    def save(self, pool: str, state: PoolState) -> PoolState:
        return replace(state, version=state.version + 1)
