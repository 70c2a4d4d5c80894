"""State stores: DynamoDB (moto) and in-memory share one conditional-write contract; reading is total."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws
from moto_aws import (
    REGION,
    answer_sends,
    aws_env,
    botocore_sleeps,
    count_calls,
    create_state_table,
    leave_unprocessed,
    refuse_calls,
)

from celery_autoscaler.aws import MAX_ATTEMPTS, Backoff
from celery_autoscaler.pause import Pause
from celery_autoscaler.policy import PoolState
from celery_autoscaler.state import (
    DynamoStateStore,
    InMemoryStateStore,
    ReadOnlyStateStore,
    StateConflictError,
    StateStore,
    StateStoreError,
    UnreadableState,
    decode_item,
    encode_state,
)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    aws_env(monkeypatch)
    with mock_aws():
        yield


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest, aws: None) -> StateStore:
    if request.param == "memory":
        return InMemoryStateStore()
    return DynamoStateStore(create_state_table())


STATE = PoolState(
    recommendations=((1000.0, 3), (1015.5, 2)),
    idle_since=None,
    last_action_at=1000.0,
    last_desired=3,
    consecutive_failures=1,
)


def test_missing_pool_loads_as_fresh_state(store: StateStore) -> None:
    assert store.load(["default", "video"]) == {"default": PoolState(), "video": PoolState()}


def test_save_round_trips_and_bumps_version(store: StateStore) -> None:
    saved = store.save("default", STATE)
    assert saved.version == 1
    assert store.load(["default"])["default"] == saved
    again = store.save("default", saved)
    assert again.version == 2
    assert store.load(["default", "other"]) == {"default": again, "other": PoolState()}


def test_first_write_loses_to_a_concurrent_first_write(store: StateStore) -> None:
    store.save("default", STATE)
    with pytest.raises(StateConflictError, match="'default'"):
        store.save("default", STATE)


def test_stale_version_is_refused(store: StateStore) -> None:
    one = store.save("default", STATE)
    store.save("default", one)
    with pytest.raises(StateConflictError):
        store.save("default", one)


def test_concurrent_threads_exactly_one_wins_in_memory() -> None:
    # Threads only against the in-memory store: moto's check-then-put is not atomic across threads
    # (real DynamoDB's is); DynamoDB's conditional refusal is proven deterministically above.
    store = InMemoryStateStore()
    base = store.save("default", STATE)
    winners: list[int] = []
    losers: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        try:
            store.save("default", base)
            winners.append(i)
        except StateConflictError:
            losers.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == 7
    assert store.load(["default"])["default"].version == 2


@pytest.mark.usefixtures("aws")
def test_dynamo_loads_many_pools_in_batches_of_100() -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    store = DynamoStateStore(create_state_table(), client=client)
    names = [f"pool-{i:03d}" for i in range(150)]
    store.save("pool-042", STATE)
    calls = count_calls(client, "BatchGetItem")
    states = store.load(names)
    assert [len(next(iter(call["RequestItems"].values()))["Keys"]) for call in calls] == [100, 50]
    assert states["pool-042"].version == 1
    assert states["pool-043"] == PoolState()


@pytest.mark.usefixtures("aws")
def test_dynamo_item_is_readable_in_the_console() -> None:
    table = create_state_table()
    DynamoStateStore(table).save("default", STATE)
    item = boto3.client("dynamodb", region_name=REGION).get_item(TableName=table, Key={"pool": {"S": "default"}})
    assert item["Item"]["version"] == {"N": "1"}
    assert '"last_desired":3' in item["Item"]["state"]["S"]


@pytest.mark.usefixtures("aws")
def test_missing_table_leaves_every_pool_unreadable_and_refuses_writes() -> None:
    # Reading no longer raises (one refused batch must not take down other batches' pools): each pool says why.
    states = DynamoStateStore("absent").load(["default", "video"])
    for state in states.values():
        assert isinstance(state, UnreadableState)
        assert "'absent'" in state.reason
        assert "ResourceNotFoundException" in state.reason
        assert state.item is None, "nothing was read, so there is nothing to repair"
    with pytest.raises(StateStoreError, match="'absent'"):
        DynamoStateStore("absent").save("default", STATE)


def test_read_only_store_reads_but_never_writes(store: StateStore) -> None:
    saved = store.save("default", STATE)
    read_only = ReadOnlyStateStore(store)
    assert read_only.load(["default"])["default"] == saved
    assert read_only.save("default", saved).version == 2
    assert store.load(["default"])["default"] == saved


GOOD = encode_state(STATE)


def body(text: str) -> dict[str, Any]:
    """Item attributes with a usable version (3) and ``text`` as the state body."""
    return {"version": {"N": "3"}, "state": {"S": text}}


CORRUPT: dict[str, tuple[dict[str, Any], str]] = {
    "not JSON": (body("{not json"), "is not JSON"),
    "JSON list": (body("[1, 2]"), "not a JSON object"),
    "missing field": (
        body(json.dumps({"recommendations": [], "idle_since": None})),
        "lacks field(s) last_action_at, last_desired, consecutive_failures",
    ),
    "recommendations a string": (
        body(GOOD.replace("[[1000.0,3],[1015.5,2]]", '"many"')),
        "'recommendations'",
    ),
    "negative count": (
        body(GOOD.replace('"last_desired":3', '"last_desired":-1')),
        "'last_desired'",
    ),
    "boolean failures": (
        body(GOOD.replace('"consecutive_failures":1', '"consecutive_failures":true')),
        "'consecutive_failures'",
    ),
    "NaN literal": (
        body(GOOD.replace('"last_action_at":1000.0', '"last_action_at":NaN')),
        "NaN",
    ),
    "overflowing time": (
        body(GOOD.replace('"last_action_at":1000.0', '"last_action_at":1e400')),
        "'last_action_at'",
    ),
    "huge integer time": (
        body(GOOD.replace("1015.5", "9" * 400)),
        "'recommendations'",
    ),
    "nested 100k deep": (body("[" * 100_000), "nested too deeply"),
    "pause a string": (body(GOOD.replace('"pause":null', '"pause":"yes"')), "field 'pause' is not an object"),
    "pause without by": (
        body(GOOD.replace('"pause":null', '"pause":{"since":1000.0}')),
        "field 'pause' field 'by' is not a string",
    ),
    "pause count negative": (
        body(GOOD.replace('"pause":null', '"pause":{"since":1000.0,"by":"ops","count":-1}')),
        "field 'pause' field 'count' is not a count",
    ),
    "last_reason a number": (body(GOOD.replace('"last_reason":null', '"last_reason":7')), "'last_reason'"),
    "state a number": ({"version": {"N": "3"}, "state": {"N": "1"}}, "no string 'state' attribute"),
    "no state": ({"version": {"N": "3"}}, "no string 'state' attribute"),
    "version a string": ({"version": {"S": "three"}, "state": {"S": GOOD}}, "version attribute"),
    "no version": ({"state": {"S": GOOD}}, "version attribute"),
    "version 0": ({"version": {"N": "0"}, "state": {"S": GOOD}}, "version attribute"),
    "version negative": ({"version": {"N": "-2"}, "state": {"S": GOOD}}, "version attribute"),
    "version fractional": ({"version": {"N": "1.5"}, "state": {"S": GOOD}}, "version attribute"),
    "version a list": ({"version": {"L": [{"N": "1"}]}, "state": {"S": GOOD}}, "version attribute"),
}


def test_an_item_written_before_pauses_existed_is_not_paused() -> None:
    old = json.loads(GOOD)
    del old["pause"], old["last_reason"]
    assert decode_item(body(json.dumps(old))) == replace(STATE, version=3)


@pytest.mark.usefixtures("aws")
def test_a_pause_and_the_last_reason_round_trip_through_the_table() -> None:
    store = DynamoStateStore(create_state_table())
    paused = replace(STATE, pause=Pause(since=1000.0, by="ops", until=4600.0, count=4), last_reason="steady -> 3")
    saved = store.save("default", paused)
    assert store.load(["default"])["default"] == saved
    assert saved.pause == paused.pause


def put_raw(table: str, pool: str, attributes: dict[str, Any]) -> None:
    boto3.client("dynamodb", region_name=REGION).put_item(TableName=table, Item={"pool": {"S": pool}, **attributes})


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_item_is_unreadable_for_its_pool_only(case: str) -> None:
    attributes, reason = CORRUPT[case]
    store = DynamoStateStore(create_state_table())
    good = store.save("default", STATE)
    put_raw(store.table, "video", attributes)
    states = store.load(["default", "video"])
    assert states["default"] == good
    video = states["video"]
    assert isinstance(video, UnreadableState)
    assert reason in video.reason
    assert video.item is not None


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize("case", list(CORRUPT))
def test_repair_replaces_exactly_the_corrupt_item_once(case: str) -> None:
    store = DynamoStateStore(create_state_table())
    put_raw(store.table, "video", CORRUPT[case][0])
    unreadable = store.load(["video"])["video"]
    assert isinstance(unreadable, UnreadableState)
    fresh = PoolState(recommendations=((2000.0, 4),), last_desired=4, consecutive_failures=1)
    repaired = store.repair("video", unreadable, fresh)
    assert store.load(["video"])["video"] == repaired
    # Only the body was corrupt: the version sequence goes on (a number is never reused); else it restarts.
    assert repaired.version == (4 if CORRUPT[case][0].get("version") == {"N": "3"} else 1)
    with pytest.raises(StateConflictError, match="'video'"):
        store.repair("video", unreadable, fresh)  # a second invocation repairing the same item loses
    assert store.save("video", repaired).version == repaired.version + 1, "a repaired item is a normal item"


ATTRIBUTE = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["S", "N", "B", "L", "M", "BOOL", "NULL"]), st.text(max_size=30), max_size=2),
    st.text(max_size=10),
    st.integers(),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
STATE_BODY = st.one_of(
    st.text(max_size=60),
    JSON.map(json.dumps),
    st.fixed_dictionaries({name: JSON for name in json.loads(GOOD)}).map(json.dumps),
)


@given(version=ATTRIBUTE, body=STATE_BODY, as_string=st.booleans())
def test_decoding_any_item_gives_a_state_or_a_reason(version: Any, body: str, as_string: bool) -> None:
    item = {"pool": {"S": "p"}, "version": version, "state": {"S": body} if as_string else body}
    decoded = decode_item(item)
    assert isinstance(decoded, PoolState | UnreadableState)
    if isinstance(decoded, UnreadableState):
        assert decoded.reason
        assert decoded.item is item


@pytest.mark.usefixtures("aws")
def test_unprocessed_keys_are_read_again_with_jittered_backoff() -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    sleeps: list[float] = []
    store = DynamoStateStore(create_state_table(), client, Backoff(sleep=sleeps.append, random=lambda: 0.5))
    store.save("default", STATE)
    store.save("video", STATE)
    calls = count_calls(client, "BatchGetItem")
    leave_unprocessed(client, ["video"], times=2)
    states = store.load(["default", "video"])
    assert all(isinstance(state, PoolState) and state.version == 1 for state in states.values())
    assert [len(next(iter(call["RequestItems"].values()))["Keys"]) for call in calls] == [2, 1, 1]
    assert sleeps == [0.05, 0.1], "half of 0.1 s, then half of 0.2 s (full jitter, doubling)"


@pytest.mark.usefixtures("aws")
def test_keys_still_unprocessed_after_the_last_attempt_leave_only_their_pools_unreadable() -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    sleeps: list[float] = []
    store = DynamoStateStore(create_state_table(), client, Backoff(sleep=sleeps.append, random=lambda: 1.0))
    store.save("default", STATE)
    store.save("video", STATE)
    calls = count_calls(client, "BatchGetItem")
    leave_unprocessed(client, ["video"])
    states = store.load(["default", "video"])
    assert isinstance(states["default"], PoolState)
    video = states["video"]
    assert isinstance(video, UnreadableState)
    assert "unprocessed after 4 BatchGetItem calls" in video.reason
    assert video.item is None
    assert len(calls) == 4, "bounded: no tight loop until the Lambda times out"
    assert sleeps == [0.1, 0.2, 0.4]


@pytest.mark.usefixtures("aws")
def test_a_refused_batch_leaves_only_its_own_pools_unreadable() -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    store = DynamoStateStore(create_state_table(), client)
    names = [f"pool-{i:03d}" for i in range(150)]
    store.save("pool-042", STATE)
    store.save("pool-142", STATE)
    refused = refuse_calls(client, "BatchGetItem", "AccessDeniedException", when=lambda p: "pool-142" in json.dumps(p))
    states = store.load(names)
    assert len(refused) == 1
    assert states["pool-042"].version == 1
    assert all(isinstance(states[name], PoolState) for name in names[:100])
    assert all(isinstance(states[name], UnreadableState) for name in names[100:])
    assert "AccessDeniedException" in states["pool-142"].reason  # type: ignore[union-attr]


@pytest.mark.usefixtures("aws")
def test_throttled_reads_are_retried_by_botocore_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = botocore_sleeps(monkeypatch)
    store = DynamoStateStore(create_state_table())  # the client the Lambda makes: standard retries, timeouts
    store.save("default", STATE)
    throttled = answer_sends(store.client, "BatchGetItem", "ProvisionedThroughputExceededException")
    state = store.load(["default"])["default"]
    assert isinstance(state, UnreadableState)
    assert "ProvisionedThroughputExceededException" in state.reason
    assert len(throttled) == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1
    assert all(0 <= wait <= 1 for wait in sleeps)


@pytest.mark.usefixtures("aws")
def test_one_throttled_answer_is_retried_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    botocore_sleeps(monkeypatch)
    store = DynamoStateStore(create_state_table())
    saved = store.save("default", STATE)
    answer_sends(store.client, "BatchGetItem", "ThrottlingException", times=1)
    assert store.load(["default"])["default"] == saved
