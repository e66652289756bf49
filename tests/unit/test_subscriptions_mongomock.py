"""Subscription store contracts, fast: mongomock and the in-memory store.

`StoreContract` holds the behaviour every store shares and `MongoStoreContract` adds what a
MongoDB-backed one must also do (report invalid documents, retry a lost insert race, keep
credentials out of errors). Both run here on mongomock and run again, unchanged, on a real
MongoDB wire-protocol server in `tests/component/test_subscriptions_server.py`.

mongomock caveats: it accepts conflicting update operators silently, has no sessions and no
concurrency of its own, so atomicity under contention is only tested on the real server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import mongomock
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import DuplicateKeyError, OperationFailure, ServerSelectionTimeoutError

from polymarket_kafka.config import MongoConfig
from polymarket_kafka.service.ports import SubscriptionStore
from polymarket_kafka.subscriptions import (
    ActiveSubscriptions,
    MongoSubscriptionStore,
    SubscriptionStoreError,
    client_defaults,
    open_subscription_store,
    validate_market_id,
)
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MARKET_A = "0x" + "a" * 64
MARKET_B = "0x" + "b" * 64
MARKET_C = "0x" + "0123456789abcdef" * 4
SECRET_URI = "mongodb://user:s3cret@127.0.0.1:1/"

INVALID_IDS: list[Any] = [
    "",
    "0x",
    "abc",
    "0x" + "a" * 63,
    "0x" + "a" * 65,
    "0x" + "g" * 64,
    "0X" + "a" * 64,
    " 0x" + "a" * 64,
    "0x" + "a" * 64 + "\n",
    "a" * 66,
    64,
    None,
]


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def ids(listing: ActiveSubscriptions) -> list[str]:
    return [s.market_id for s in listing.subscriptions]


@pytest.mark.anyio
class StoreContract:
    """Behaviour shared by every `SubscriptionStore`; subclasses provide `store`."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    async def test_first_subscribe_creates_the_subscription(self, store: SubscriptionStore) -> None:
        change = await store.subscribe(MARKET_A)
        assert (change.market_id, change.delta, change.created, change.read_error) == (
            MARKET_A,
            1,
            True,
            None,
        )
        sub = change.subscription
        assert sub is not None
        assert sub.market_id == MARKET_A
        assert sub.ref_count == 1
        assert sub.created_at == sub.updated_at == T0
        assert sub.question is None
        assert (await store.list_all()).subscriptions == (sub,)

    async def test_created_at_is_set_once_and_updated_at_moves(
        self, store: SubscriptionStore, clock: FakeClock
    ) -> None:
        await store.subscribe(MARKET_A)
        t1 = clock.advance(60)
        second = (await store.subscribe(MARKET_A)).subscription
        assert second is not None
        assert (second.ref_count, second.created_at, second.updated_at) == (2, T0, t1)
        t2 = clock.advance(60)
        change = await store.unsubscribe(MARKET_A)
        assert (change.delta, change.created) == (-1, False)
        third = change.subscription
        assert third is not None
        assert (third.ref_count, third.created_at, third.updated_at) == (1, T0, t2)

    async def test_question_is_set_kept_and_replaced(self, store: SubscriptionStore) -> None:
        async def question(text: str | None = None) -> str | None:
            sub = (await store.subscribe(MARKET_A, question=text)).subscription
            assert sub is not None
            return sub.question

        assert await question("Will it rain?") == "Will it rain?"
        assert await question() == "Will it rain?"
        assert await question("Will it snow?") == "Will it snow?"

    async def test_unsubscribe_unknown_market_changes_nothing(
        self, store: SubscriptionStore
    ) -> None:
        change = await store.unsubscribe(MARKET_A)
        assert (change.applied, change.delta, change.subscription, change.read_error) == (
            False,
            0,
            None,
            None,
        )
        assert (await store.list_all()).subscriptions == ()

    async def test_ref_count_never_goes_negative(self, store: SubscriptionStore) -> None:
        for _ in range(3):
            await store.subscribe(MARKET_A)
        changes = [await store.unsubscribe(MARKET_A) for _ in range(5)]
        assert [c.delta for c in changes] == [-1, -1, -1, 0, 0]
        assert [c.ref_count for c in changes] == [2, 1, 0, 0, 0]
        (kept,) = (await store.list_all()).subscriptions
        assert kept.ref_count == 0  # the document stays, with its history

    async def test_active_lists_only_referenced_markets_sorted(
        self, store: SubscriptionStore
    ) -> None:
        for market_id in (MARKET_C, MARKET_B, MARKET_A, MARKET_B):
            await store.subscribe(market_id)
        await store.unsubscribe(MARKET_C)
        await store.unsubscribe(MARKET_B)
        active = await store.active()
        assert ids(active) == [MARKET_A, MARKET_B]
        assert active.market_ids == {MARKET_A, MARKET_B}
        assert active.invalid == ()
        assert ids(await store.list_all()) == [MARKET_C, MARKET_A, MARKET_B]  # sorted

    async def test_resubscribing_reactivates(self, store: SubscriptionStore) -> None:
        await store.subscribe(MARKET_A)
        await store.unsubscribe(MARKET_A)
        assert ids(await store.active()) == []
        change = await store.subscribe(MARKET_A)
        assert (change.ref_count, change.created) == (1, False)
        assert ids(await store.active()) == [MARKET_A]

    async def test_market_id_is_lower_cased(self, store: SubscriptionStore) -> None:
        upper = "0x" + "ABCDEF0123" * 6 + "ABCD"
        assert (await store.subscribe(upper)).market_id == upper.lower()
        assert (await store.subscribe(upper.lower())).ref_count == 2
        unsubscribed = await store.unsubscribe(upper)
        assert (unsubscribed.market_id, unsubscribed.ref_count) == (upper.lower(), 1)

    @pytest.mark.parametrize("market_id", INVALID_IDS, ids=repr)
    async def test_malformed_market_id_is_rejected(
        self, store: SubscriptionStore, market_id: Any
    ) -> None:
        with pytest.raises(ValueError, match="invalid market_id") as excinfo:
            await store.subscribe(market_id)
        assert repr(market_id) in str(excinfo.value)
        with pytest.raises(ValueError, match="invalid market_id"):
            await store.unsubscribe(market_id)
        assert (await store.list_all()).subscriptions == ()

    async def test_timestamps_are_utc_and_millisecond_precise(
        self, store: SubscriptionStore, clock: FakeClock
    ) -> None:
        # What a write returns must equal what a later read returns: BSON keeps milliseconds.
        clock.now = datetime(2024, 5, 1, 14, 0, 0, 123_987, tzinfo=timezone(timedelta(hours=2)))
        sub = (await store.subscribe(MARKET_A)).subscription
        assert sub is not None and sub.created_at is not None
        assert sub.created_at == datetime(2024, 5, 1, 12, 0, 0, 123_000, tzinfo=UTC)
        assert sub.created_at.tzinfo == UTC
        clock.now = datetime(2024, 5, 1, 12, 30)  # naive: taken as UTC
        again = (await store.subscribe(MARKET_A)).subscription
        assert again is not None
        assert again.updated_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
        assert (await store.list_all()).subscriptions == (again,)

    async def test_returned_models_are_copies(self, store: SubscriptionStore) -> None:
        sub = (await store.subscribe(MARKET_A)).subscription
        assert sub is not None
        sub.ref_count = 99
        (listed,) = (await store.active()).subscriptions
        listed.question = "mutated"
        assert (await store.list_all()).subscriptions[0].model_dump() == {
            "market_id": MARKET_A,
            "ref_count": 1,
            "created_at": T0,
            "updated_at": T0,
            "question": None,
            "threshold": None,
            "window_seconds": None,
            "cooldown_seconds": None,
        }

    async def test_closed_store_refuses_calls(self, store: SubscriptionStore) -> None:
        await store.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await store.subscribe(MARKET_A)
        with pytest.raises(anyio.ClosedResourceError):
            await store.active()


class MongoStoreContract(StoreContract):
    """What a MongoDB-backed store adds; subclasses provide `collection` and `store`."""

    async def test_invalid_documents_are_skipped_and_reported(
        self, store: MongoSubscriptionStore, collection: Any
    ) -> None:
        await store.subscribe(MARKET_A)
        base = {"ref_count": 1, "created_at": T0, "updated_at": T0}
        bad: dict[str, dict[str, Any]] = {
            "extra field": {**base, "market_id": "0x" + "1" * 64, "colour": "red"},
            "fractional ref_count": {**base, "market_id": "0x" + "3" * 64, "ref_count": 1.5},
            "threshold out of range": {**base, "market_id": "0x" + "4" * 64, "threshold": 7},
            "market_id not a string": {**base, "market_id": 12345},
            "market_id not a condition id": {**base, "market_id": "will-it-rain"},
            "created_at not a date": {**base, "market_id": "0x" + "5" * 64, "created_at": []},
        }
        inserted = {name: collection.insert_one(doc).inserted_id for name, doc in bad.items()}
        # Not active for the server (no BSON number > 0), so only list_all() reports them.
        for name, digit, ref_count in [
            ("string ref_count", "6", "5"),
            ("bool ref_count", "8", True),
        ]:
            doc = {**base, "market_id": "0x" + digit * 64, "ref_count": ref_count}
            inserted[name] = collection.insert_one(doc).inserted_id
        collection.insert_one({**base, "market_id": "0x" + "7" * 64, "ref_count": -1})
        # Valid: the timestamps are optional, as in the specification.
        collection.insert_one({"market_id": "0x" + "2" * 64, "ref_count": 1})

        active = await store.active()
        assert ids(active) == ["0x" + "2" * 64, MARKET_A]
        by_id = {invalid.document_id: invalid for invalid in active.invalid}
        assert set(by_id) == {str(inserted[name]) for name in bad}
        listing = await store.list_all()
        assert ids(listing) == ["0x" + "2" * 64, MARKET_A]
        reported = {invalid.document_id: invalid for invalid in listing.invalid}
        assert len(reported) == len(listing.invalid) == len(inserted) + 1

        expected_fields = {
            "extra field": "colour",
            "fractional ref_count": "ref_count",
            "threshold out of range": "threshold",
            "market_id not a string": "market_id",
            "market_id not a condition id": "market_id",
            "created_at not a date": "created_at",
            "string ref_count": "ref_count: must be a number, got str",
            "bool ref_count": "ref_count: must be a number, got bool",
        }
        for name, field in expected_fields.items():
            invalid = reported[str(inserted[name])]
            assert field in invalid.error, (name, invalid.error)
        assert reported[str(inserted["market_id not a string"])].market_id is None
        assert reported[str(inserted["extra field"])].market_id == "0x" + "1" * 64
        negative = [i for i in listing.invalid if i.market_id == "0x" + "7" * 64]
        assert [i.error for i in negative] == ["ref_count: must be >= 0, got -1"]

    async def test_subscribe_to_an_invalid_document_is_applied_and_says_so(
        self, store: MongoSubscriptionStore, collection: Any
    ) -> None:
        # The increment is MongoDB's to apply; the document's other fields only make it
        # unreadable as a subscription. Reporting a failure here would invite a retry that
        # counts the subscriber twice.
        collection.insert_one(
            {"market_id": MARKET_A, "ref_count": 1, "created_at": T0, "updated_at": T0, "x": 1}
        )
        change = await store.subscribe(MARKET_A)
        assert (change.delta, change.created, change.subscription) == (1, False, None)
        assert change.read_error is not None
        assert change.read_error.startswith("the document is invalid: x: ")
        assert collection.find_one({"market_id": MARKET_A})["ref_count"] == 2

    async def test_subscribe_to_a_document_without_timestamps(
        self, store: MongoSubscriptionStore, collection: Any, clock: FakeClock
    ) -> None:
        # Written by another tool: no created_at/updated_at. Valid, and the write adds only
        # what the specification's $set does ($setOnInsert applies to inserts only).
        collection.insert_one({"market_id": MARKET_A, "ref_count": 1})
        change = await store.subscribe(MARKET_A)
        assert change.subscription is not None
        assert (change.ref_count, change.created) == (2, False)
        assert (change.subscription.created_at, change.subscription.updated_at) == (None, T0)
        unsubscribed = await store.unsubscribe(MARKET_A)
        assert (unsubscribed.delta, unsubscribed.ref_count) == (-1, 1)

    async def test_the_writes_are_the_specifications_update_one_operations(
        self, store: MongoSubscriptionStore, collection: Any, clock: FakeClock
    ) -> None:
        calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        for method in ("update_one", "find_one_and_update"):
            original = getattr(collection, method)

            def spy(*args: Any, _method: str = method, _o: Any = original, **kw: Any) -> Any:
                calls.append((_method, args, kw))
                return _o(*args, **kw)

            setattr(collection, method, spy)
        await store.subscribe(MARKET_A, question="Will it rain?")
        t1 = clock.advance(5)
        await store.unsubscribe(MARKET_A)
        assert calls == [
            (
                "update_one",
                (
                    {"market_id": MARKET_A},
                    {
                        "$inc": {"ref_count": 1},
                        "$setOnInsert": {"market_id": MARKET_A, "created_at": T0},
                        "$set": {"updated_at": T0, "question": "Will it rain?"},
                    },
                ),
                {"upsert": True},
            ),
            (
                "update_one",
                (
                    {"market_id": MARKET_A, "ref_count": {"$gt": 0}},
                    {"$inc": {"ref_count": -1}, "$set": {"updated_at": t1}},
                ),
                {},
            ),
        ]

    async def test_mongo_numbers_of_other_types_are_accepted(
        self, store: MongoSubscriptionStore, collection: Any
    ) -> None:
        # mongosh writes doubles: `ref_count: 2` typed there is 2.0 in BSON.
        doc = {"market_id": MARKET_A, "ref_count": 2.0, "created_at": T0, "updated_at": T0}
        collection.insert_one(doc)
        (sub,) = (await store.active()).subscriptions
        assert sub.ref_count == 2
        unsubscribed = await store.unsubscribe(MARKET_A)
        assert (unsubscribed.delta, unsubscribed.ref_count) == (-1, 1)

    async def test_writes_create_the_unique_index_and_reads_do_not(
        self, store: MongoSubscriptionStore, collection: Any
    ) -> None:
        await store.active()
        await store.list_all()
        assert not _market_id_index(collection)
        await store.subscribe(MARKET_A)
        assert _market_id_index(collection) == {"unique": True}

    async def test_ensure_indexes_is_idempotent(
        self, store: MongoSubscriptionStore, collection: Any
    ) -> None:
        await store.ensure_indexes()
        await store.ensure_indexes()
        assert _market_id_index(collection) == {"unique": True}


def _market_id_index(collection: Any) -> dict[str, Any]:
    for info in collection.index_information().values():
        if info["key"] == [("market_id", 1)]:
            return {"unique": bool(info.get("unique"))}
    return {}


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self, clock: FakeClock) -> InMemorySubscriptionStore:
        return InMemorySubscriptionStore(clock=clock)


class TestMongomockStore(MongoStoreContract):
    @pytest.fixture
    def collection(self) -> Any:
        return mongomock.MongoClient(tz_aware=True).polymarket.subscriptions

    @pytest.fixture
    def store(self, collection: Any, clock: FakeClock) -> MongoSubscriptionStore:
        return MongoSubscriptionStore(collection, clock=clock, uri=SECRET_URI)


# --- the in-memory store --------------------------------------------------------------------


@pytest.mark.anyio
async def test_seed_subscribes_each_id_once_per_occurrence() -> None:
    store = InMemorySubscriptionStore([MARKET_B, MARKET_A, MARKET_B.upper().replace("0X", "0x")])
    counts = {s.market_id: s.ref_count for s in (await store.active()).subscriptions}
    assert counts == {MARKET_A: 1, MARKET_B: 2}
    created = [s.created_at for s in (await store.active()).subscriptions]
    assert all(at is not None and at.tzinfo == UTC for at in created)


def test_seed_with_a_malformed_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        InMemorySubscriptionStore([MARKET_A, "nope"])


def test_in_memory_store_is_atomic_across_threads() -> None:
    store = InMemorySubscriptionStore([MARKET_A] * 100)
    subscribed: list[int | None] = []
    unsubscribed: list[int | None] = []

    async def churn(subscribe: bool) -> None:
        for _ in range(200):
            if subscribe:
                subscribed.append((await store.subscribe(MARKET_A)).ref_count)
            else:
                change = await store.unsubscribe(MARKET_A)
                unsubscribed.append(change.ref_count if change.applied else None)

    # Each thread runs its own event loop: only the store's lock keeps the count exact.
    threads = [threading.Thread(target=anyio.run, args=(churn, i % 2 == 0)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decrements = [count for count in unsubscribed if count is not None]
    assert len(subscribed) == len(unsubscribed) == 800
    assert min(decrements, default=0) >= 0
    final = anyio.run(store.list_all).subscriptions[0].ref_count
    assert final == 100 + 800 - len(decrements)


@pytest.mark.parametrize("kind", ["memory", "mongomock"])
@settings(max_examples=40)
@given(
    operations=st.lists(
        st.tuples(st.booleans(), st.sampled_from([MARKET_A, MARKET_B, MARKET_C])), max_size=30
    )
)
def test_any_sequence_matches_a_counter_that_stops_at_zero(
    kind: str, operations: list[tuple[bool, str]]
) -> None:
    store: SubscriptionStore = (
        InMemorySubscriptionStore()
        if kind == "memory"
        else MongoSubscriptionStore(mongomock.MongoClient().db.subscriptions)
    )
    expected: dict[str, int] = {}

    async def apply() -> ActiveSubscriptions:
        for subscribe, market_id in operations:
            if subscribe:
                expected[market_id] = expected.get(market_id, 0) + 1
                assert (await store.subscribe(market_id)).ref_count == expected[market_id]
            else:
                result = await store.unsubscribe(market_id)
                if expected.get(market_id, 0) == 0:
                    assert not result.applied
                else:
                    expected[market_id] -= 1
                    assert result.delta == -1
                    assert result.ref_count == expected[market_id]
        return await store.list_all()

    listing = anyio.run(apply)
    assert {s.market_id: s.ref_count for s in listing.subscriptions} == expected
    assert {s.market_id for s in anyio.run(store.active).subscriptions} == {
        market_id for market_id, count in expected.items() if count > 0
    }


# --- validation -----------------------------------------------------------------------------


def test_validate_market_id_returns_the_canonical_form() -> None:
    assert validate_market_id(MARKET_C) == MARKET_C
    assert validate_market_id(MARKET_A.upper().replace("0X", "0x")) == MARKET_A


@pytest.mark.parametrize("market_id", INVALID_IDS, ids=repr)
def test_validate_market_id_names_the_offending_value(market_id: Any) -> None:
    with pytest.raises(ValueError, match="0x followed by 64 hex digits") as excinfo:
        validate_market_id(market_id)
    assert repr(market_id) in str(excinfo.value)


# --- MongoDB failures (mongomock with an injected fault at the driver boundary) --------------


@contextmanager
def failing(collection: Any, method: str, *errors: Exception) -> Iterator[list[int]]:
    """Make `collection.<method>` raise `errors` one per call, then behave again."""
    original: Callable[..., Any] = getattr(collection, method)
    pending = list(errors)
    calls = [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if pending:
            raise pending.pop(0)
        return original(*args, **kwargs)

    setattr(collection, method, patched)
    try:
        yield calls
    finally:
        setattr(collection, method, original)


@pytest.fixture
def collection() -> Any:
    return mongomock.MongoClient().polymarket.subscriptions


@pytest.mark.anyio
async def test_lost_insert_race_is_retried_once(collection: Any) -> None:
    store = MongoSubscriptionStore(collection, clock=FakeClock())
    with failing(collection, "update_one", DuplicateKeyError("E11000", 11000)) as calls:
        change = await store.subscribe(MARKET_A)
    assert calls == [2]
    assert (change.ref_count, change.created) == (1, True)


@pytest.mark.anyio
async def test_second_duplicate_key_error_is_reported(collection: Any) -> None:
    store = MongoSubscriptionStore(collection)
    dup = DuplicateKeyError("E11000 duplicate key", 11000)
    with (
        failing(collection, "update_one", dup, dup) as calls,
        pytest.raises(
            SubscriptionStoreError, match="^subscribe 0x.* failed: DuplicateKeyError"
        ) as excinfo,
    ):
        await store.subscribe(MARKET_A)
    assert calls == [2]
    assert excinfo.value.code == 11000
    assert collection.count_documents({}) == 0  # an error means: nothing changed


@pytest.mark.anyio
@pytest.mark.parametrize("operation", ["subscribe", "unsubscribe"])
async def test_a_failed_write_changes_nothing(collection: Any, operation: str) -> None:
    store = MongoSubscriptionStore(collection, clock=FakeClock())
    await store.subscribe(MARKET_A)
    with (
        failing(collection, "update_one", ServerSelectionTimeoutError("no server")),
        pytest.raises(SubscriptionStoreError, match=f"^{operation} 0x.* failed"),
    ):
        await getattr(store, operation)(MARKET_A)
    assert collection.find_one({"market_id": MARKET_A})["ref_count"] == 1


@pytest.mark.anyio
async def test_an_applied_write_whose_read_back_fails_is_not_an_error(collection: Any) -> None:
    store = MongoSubscriptionStore(collection, clock=FakeClock(), uri=SECRET_URI)
    with failing(collection, "find_one", ServerSelectionTimeoutError("user:s3cret@gone")):
        change = await store.subscribe(MARKET_A, question="Will it rain?")
    assert (change.delta, change.created, change.subscription) == (1, True, None)
    assert change.read_error is not None
    assert change.read_error.startswith(f"read {MARKET_A} back failed")
    assert "s3cret" not in change.read_error
    assert collection.find_one({"market_id": MARKET_A})["ref_count"] == 1


@pytest.mark.anyio
async def test_a_document_deleted_right_after_the_write_is_reported(collection: Any) -> None:
    store = MongoSubscriptionStore(collection)
    collection.find_one = lambda *args, **kwargs: None  # applied, then deleted by someone
    change = await store.subscribe(MARKET_A)
    assert (change.delta, change.subscription) == (1, None)
    assert change.read_error == "the document was deleted right after the write"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "mongodb://h:1/",
            {
                "serverSelectionTimeoutMS": 5000,
                "connectTimeoutMS": 5000,
                "appname": "polymarket-kafka",
            },
        ),
        (
            "mongodb://u:p@h1:1,h2:2/db?serverSelectionTimeoutMS=30000&APPNAME=mine",
            {"connectTimeoutMS": 5000},
        ),
        (
            "mongodb+srv://cluster.example/?connecttimeoutms=100",
            {"serverSelectionTimeoutMS": 5000, "appname": "polymarket-kafka"},
        ),
    ],
)
def test_the_uris_own_options_win_over_the_defaults(uri: str, expected: dict[str, object]) -> None:
    assert client_defaults(uri, 5000) == expected


@pytest.mark.anyio
async def test_open_store_passes_the_uri_untouched_and_defaults_only_for_what_it_lacks() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def factory(uri: str, **kwargs: Any) -> Any:
        seen.append((uri, kwargs))
        return mongomock.MongoClient(uri, **kwargs)

    uri = "mongodb://127.0.0.1:27017/?serverSelectionTimeoutMS=1234"
    async with open_subscription_store(MongoConfig(uri=uri), client_factory=factory, probe=False):
        pass
    ((passed, kwargs),) = seen
    assert passed == uri
    assert "serverSelectionTimeoutMS" not in kwargs
    assert kwargs["tz_aware"] is True and kwargs["connectTimeoutMS"] == 5000


PASSWORDS = [
    ("mongodb://user:s3cret@db.example:27017/?authSource=admin", ["s3cret"]),
    ("mongodb://us%40er:p%40ss%2Fw0rd@h1:1,h2:2/db", ["p%40ss%2Fw0rd", "p@ss/w0rd"]),
    ("mongodb://user:s3cret@@127.0.0.1:1/", ["s3cret"]),  # malformed: an unescaped "@"
]


@pytest.mark.anyio
@pytest.mark.parametrize(("uri", "secrets"), PASSWORDS)
async def test_errors_never_carry_credentials(
    collection: Any, uri: str, secrets: list[str]
) -> None:
    store = MongoSubscriptionStore(collection, uri=uri)
    echo = " ".join([f"failed on {uri}", *secrets, *(f"user:{s}" for s in secrets)])
    with (
        failing(collection, "find", OperationFailure(echo, 18)),
        pytest.raises(SubscriptionStoreError) as excinfo,
    ):
        await store.active()
    error = excinfo.value
    assert error.code == 18
    assert "list active subscriptions failed: OperationFailure" in str(error)
    assert "***" in str(error)
    for secret in secrets:
        assert secret not in str(error)
        assert secret not in repr(error)
    # Raised `from None`: no chained pymongo error for a logger to print.
    assert error.__cause__ is None
    assert error.__suppress_context__


@pytest.mark.anyio
async def test_index_creation_is_retried_by_the_next_write(collection: Any) -> None:
    store = MongoSubscriptionStore(collection, uri=SECRET_URI)
    down = ServerSelectionTimeoutError("127.0.0.1:1: [Errno 111] Connection refused")
    with failing(collection, "create_index", down, down, down):
        with pytest.raises(SubscriptionStoreError, match="Connection refused"):
            await store.ensure_indexes()
        with pytest.raises(SubscriptionStoreError, match="subscribe"):
            await store.subscribe(MARKET_A)
        assert (await store.active()).subscriptions == ()  # reads work without the index
        with pytest.raises(SubscriptionStoreError, match="unsubscribe"):
            await store.unsubscribe(MARKET_A)
    assert (await store.subscribe(MARKET_A)).ref_count == 1
    assert _market_id_index(collection) == {"unique": True}


# --- open_subscription_store -----------------------------------------------------------------


class RecordingFactory:
    """A mongomock client factory that records what the store asked for."""

    def __init__(self) -> None:
        self.client: Any = None
        self.kwargs: dict[str, Any] = {}
        self.close_calls = 0

    def __call__(self, uri: str, **kwargs: Any) -> Any:
        self.kwargs = {"uri": uri, **kwargs}
        self.client = mongomock.MongoClient()
        original_close = self.client.close

        def close() -> None:
            self.close_calls += 1
            original_close()

        self.client.close = close
        return self.client


@pytest.mark.anyio
async def test_open_subscription_store_owns_its_client() -> None:
    factory = RecordingFactory()
    config = MongoConfig(uri=SECRET_URI, database="pm", collection="subs", collection_prefix="t_")
    async with open_subscription_store(
        config, clock=FakeClock(), client_factory=factory, server_selection_timeout_ms=1234
    ) as store:
        collection = factory.client["pm"]["t_subs"]
        assert _market_id_index(collection) == {"unique": True}
        await store.subscribe(MARKET_A)
        assert collection.count_documents({"market_id": MARKET_A, "ref_count": 1}) == 1
        assert factory.close_calls == 0
    assert factory.close_calls == 1
    assert factory.kwargs["uri"] == SECRET_URI
    assert factory.kwargs["serverSelectionTimeoutMS"] == 1234
    assert factory.kwargs["tz_aware"] is True
    with pytest.raises(anyio.ClosedResourceError):
        await store.active()


@pytest.mark.anyio
async def test_open_subscription_store_rejects_a_malformed_uri_without_leaking_it() -> None:
    config = MongoConfig(uri="mongodb://user:s3cret@@127.0.0.1:1/")
    with pytest.raises(SubscriptionStoreError, match="cannot create a MongoDB client") as excinfo:
        async with open_subscription_store(config):
            pytest.fail("must not yield")
    assert "s3cret" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


@pytest.mark.anyio
async def test_open_subscription_store_closes_its_client_when_cancelled() -> None:
    factory = RecordingFactory()
    with anyio.CancelScope() as scope:
        async with open_subscription_store(MongoConfig(), client_factory=factory):
            scope.cancel()
            await anyio.sleep_forever()
    assert factory.close_calls == 1
