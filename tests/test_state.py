"""State stores: DynamoDB (moto) and in-memory share one conditional-write contract."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto_aws import REGION, aws_env, count_calls, create_state_table

from celery_autoscaler.policy import PoolState
from celery_autoscaler.state import (
    DynamoStateStore,
    InMemoryStateStore,
    ReadOnlyStateStore,
    StateConflictError,
    StateStore,
    StateStoreError,
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
def test_missing_table_is_a_store_error_not_a_conflict() -> None:
    with pytest.raises(StateStoreError, match="'absent'"):
        DynamoStateStore("absent").load(["default"])
    with pytest.raises(StateStoreError, match="'absent'"):
        DynamoStateStore("absent").save("default", STATE)


def test_read_only_store_reads_but_never_writes(store: StateStore) -> None:
    saved = store.save("default", STATE)
    read_only = ReadOnlyStateStore(store)
    assert read_only.load(["default"])["default"] == saved
    assert read_only.save("default", saved).version == 2
    assert store.load(["default"])["default"] == saved
