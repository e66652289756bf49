"""The subscription store against a real MongoDB wire-protocol server.

The server is SecantusDB, started once per session by `tests/plugins/mongo_server.py`, or the
MongoDB named by `TEST_MONGODB_URI`. The behavioural contract is the one the mongomock tests
run (`MongoStoreContract`); on top of it this module checks what only a real server can show:
the unique index, exact atomic `$inc` under contention, insert races, and the failure modes
of an unreachable server.
"""

from __future__ import annotations

import logging
import socket
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import anyio
import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from polymarket_kafka.config import MongoConfig
from polymarket_kafka.subscriptions import (
    MongoSubscriptionStore,
    SubscriptionStoreError,
    open_subscription_store,
)
from tests.plugins.mongo_server import TEST_DATABASE
from tests.unit.test_subscriptions_mongomock import (
    MARKET_A,
    T0,
    FakeClock,
    MongoStoreContract,
    _market_id_index,
)

pytestmark = pytest.mark.mongo_server

Doc = dict[str, Any]
TIMEOUT_SECONDS = 60  # absolute bound on I/O tests; they take well under a second here


class TestServerStore(MongoStoreContract):
    @pytest.fixture
    def collection(self, mongo_collection: Collection[Doc]) -> Collection[Doc]:
        return mongo_collection

    @pytest.fixture
    def store(self, collection: Collection[Doc], clock: FakeClock) -> MongoSubscriptionStore:
        return MongoSubscriptionStore(collection, clock=clock)


@pytest.fixture
def store(mongo_collection: Collection[Doc]) -> MongoSubscriptionStore:
    return MongoSubscriptionStore(mongo_collection, clock=FakeClock())


async def _concurrently(*jobs: tuple[int, Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run each `(tasks, job)`: `tasks` concurrent tasks each awaiting `job()`."""
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with anyio.create_task_group() as tg:
            for tasks, job in jobs:
                for _ in range(tasks):
                    tg.start_soon(job)


def _ref_count(collection: Collection[Doc], market_id: str) -> int:
    document = collection.find_one({"market_id": market_id})
    assert document is not None
    return int(document["ref_count"])


# --- the unique index ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_unique_index_rejects_a_second_document_for_a_market(
    store: MongoSubscriptionStore, mongo_collection: Collection[Doc]
) -> None:
    await store.ensure_indexes()
    assert _market_id_index(mongo_collection) == {"unique": True}
    mongo_collection.insert_one({"market_id": MARKET_A})
    with pytest.raises(DuplicateKeyError) as excinfo:
        mongo_collection.insert_one({"market_id": MARKET_A})
    assert excinfo.value.code == 11000


@pytest.mark.anyio
async def test_index_over_duplicated_documents_is_a_clear_error(
    store: MongoSubscriptionStore, mongo_collection: Collection[Doc]
) -> None:
    mongo_collection.insert_many([{"market_id": MARKET_A}, {"market_id": MARKET_A}])
    with pytest.raises(SubscriptionStoreError, match="create the unique market_id index") as exc:
        await store.ensure_indexes()
    assert exc.value.code == 11000


# --- atomicity under contention -------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_subscribes_count_exactly(
    store: MongoSubscriptionStore, mongo_collection: Collection[Doc]
) -> None:
    # The document exists first: the insert race has its own test below.
    await store.subscribe(MARKET_A)
    returned: list[int | None] = []

    async def subscribe_100() -> None:
        for _ in range(100):
            change = await store.subscribe(MARKET_A)
            assert (change.delta, change.created, change.read_error) == (1, False, None)
            returned.append(change.ref_count)

    await _concurrently((8, subscribe_100))
    assert _ref_count(mongo_collection, MARKET_A) == 801
    # The count read back after each write includes every write before it, and maybe some
    # of the other writers' (the specification's update_one returns no post-image).
    counts = [count for count in returned if count is not None]
    assert len(counts) == 800 and min(counts) >= 2 and max(counts) == 801


@pytest.mark.anyio
async def test_racing_first_subscribes_create_one_document(
    store: MongoSubscriptionStore, mongo_collection: Collection[Doc]
) -> None:
    await store.ensure_indexes()
    markets = [f"0x{i:064x}" for i in range(10)]

    async def subscribe_all() -> None:
        for market_id in markets:
            await store.subscribe(market_id)

    await _concurrently((8, subscribe_all))
    for market_id in markets:
        assert mongo_collection.count_documents({"market_id": market_id}) == 1
        assert _ref_count(mongo_collection, market_id) == 8


@pytest.mark.anyio
async def test_concurrent_mix_ends_at_the_exact_count(
    store: MongoSubscriptionStore, mongo_collection: Collection[Doc]
) -> None:
    mongo_collection.insert_one(
        {"market_id": MARKET_A, "ref_count": 300, "created_at": T0, "updated_at": T0}
    )
    unsubscribed: list[int | None] = []

    async def subscribe_100() -> None:
        for _ in range(100):
            await store.subscribe(MARKET_A)

    async def unsubscribe_100() -> None:
        for _ in range(100):
            change = await store.unsubscribe(MARKET_A)
            unsubscribed.append(change.ref_count if change.applied else None)

    await _concurrently((4, subscribe_100), (3, unsubscribe_100))
    assert None not in unsubscribed  # never more unsubscribes than references
    assert _ref_count(mongo_collection, MARKET_A) == 300 + 400 - 300


@pytest.mark.anyio
async def test_concurrent_over_unsubscribing_never_goes_below_zero(
    store: MongoSubscriptionStore, mongo_collection: Collection[Doc]
) -> None:
    unsubscribed: list[int | None] = []

    async def subscribe_50() -> None:
        for _ in range(50):
            await store.subscribe(MARKET_A)

    async def unsubscribe_50() -> None:
        for _ in range(50):
            change = await store.unsubscribe(MARKET_A)
            unsubscribed.append(change.ref_count if change.applied else None)

    await _concurrently((2, subscribe_50), (4, unsubscribe_50))
    decrements = [count for count in unsubscribed if count is not None]
    assert min(decrements, default=0) >= 0
    assert len(decrements) <= 100
    assert _ref_count(mongo_collection, MARKET_A) == 100 - len(decrements)
    assert mongo_collection.count_documents({"ref_count": {"$lt": 0}}) == 0


# --- an unreachable server ------------------------------------------------------------------


@pytest.fixture
def unreachable_uri() -> str:
    """A URI with credentials, on a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"mongodb://user:s3cret@127.0.0.1:{port}/"


@pytest.fixture
def unreachable_client(unreachable_uri: str) -> Iterator[MongoClient[Doc]]:
    client: MongoClient[Doc] = MongoClient(unreachable_uri, serverSelectionTimeoutMS=200)
    with client:
        yield client


def _assert_no_credentials(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error)
    assert "s3cret" not in text
    assert "user:" not in text


@pytest.mark.anyio
async def test_unreachable_server_raises_a_scrubbed_store_error(
    unreachable_client: MongoClient[Doc], unreachable_uri: str
) -> None:
    collection = unreachable_client["db"]["subscriptions"]
    store = MongoSubscriptionStore(collection, uri=unreachable_uri)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.subscribe(MARKET_A),
        lambda: store.unsubscribe(MARKET_A),
        store.active,
        store.list_all,
        store.ensure_indexes,
    ]
    for call in calls:
        with anyio.fail_after(TIMEOUT_SECONDS), pytest.raises(SubscriptionStoreError) as excinfo:
            await call()
        assert "ServerSelectionTimeoutError" in str(excinfo.value)
        _assert_no_credentials(excinfo.value)


@pytest.mark.anyio
async def test_open_against_an_unreachable_server_still_yields(
    unreachable_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = MongoConfig(uri=unreachable_uri)
    with (
        anyio.fail_after(TIMEOUT_SECONDS),
        caplog.at_level(logging.WARNING, logger="polymarket_kafka.subscriptions"),
    ):
        async with open_subscription_store(config, server_selection_timeout_ms=200) as store:
            (record,) = caplog.records
            assert record.levelno == logging.WARNING
            assert config.redacted_uri in record.getMessage()
            with pytest.raises(SubscriptionStoreError) as excinfo:
                await store.active()
            _assert_no_credentials(excinfo.value)
    assert "s3cret" not in caplog.text


# --- open_subscription_store against the server ---------------------------------------------


@pytest.mark.anyio
async def test_open_subscription_store_against_the_server(
    mongo_server_uri: str, mongo_client: MongoClient[Doc]
) -> None:
    config = MongoConfig(
        uri=mongo_server_uri,
        database=TEST_DATABASE,
        collection="subscriptions",
        collection_prefix=f"open_{uuid.uuid4().hex[:12]}_",
    )
    collection = mongo_client[TEST_DATABASE][config.full_collection]
    try:
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with open_subscription_store(config, clock=FakeClock()) as store:
                assert _market_id_index(collection) == {"unique": True}
                sub = (await store.subscribe(MARKET_A, question="Will it rain?")).subscription
                assert sub is not None and sub.created_at is not None
                assert sub.created_at == T0
                assert sub.created_at.tzinfo is not None
                assert (await store.active()).subscriptions == (sub,)
        assert _ref_count(collection, MARKET_A) == 1
    finally:
        collection.drop()
