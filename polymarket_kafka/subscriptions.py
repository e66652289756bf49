"""Subscription store: which markets the service watches, kept in MongoDB.

One document per market (`PolymarketSubscription`). Several subscribers may want the same
market, so a document carries a reference count, not a flag: `subscribe` increments it,
`unsubscribe` decrements it, and a market is *active* while `ref_count > 0`. Documents are never
deleted: a market nobody watches keeps its history and overrides at `ref_count == 0`.

Why it is built this way:

* Atomicity lives in MongoDB: both writes are the specification's single-document atomic
  `update_one` operations, so service replicas and CLI runs may write at once with no lock
  and no transaction. `subscribe` is `update_one({market_id}, {$inc: {ref_count: 1},
  $setOnInsert: {market_id, created_at}, $set: {updated_at[, question]}}, upsert=True)`;
  `unsubscribe` is `update_one({market_id, ref_count: {$gt: 0}}, {$inc: {ref_count: -1},
  $set: {updated_at}})` -- the `ref_count > 0` filter makes "decrement unless zero" one step,
  so the count never goes negative.
* A write is judged by MongoDB's acknowledgement alone (`SubscriptionChange.applied`). The
  document is read back *after* it, for display only: that read may already include another
  writer's change, and if it fails, or the document does not validate, the write still
  happened -- the change says so (`read_error`) instead of raising. So an error from
  `subscribe`/`unsubscribe` always means the count was not changed by this call (with the
  caveat every database client has: a connection lost after the server applied a write
  cannot be told apart from one lost before; pymongo's retryable writes retry it once).
* Two upserts of a new market may both try to insert; the unique index on `market_id` makes one
  fail with DuplicateKeyError (11000), and one retry suffices (it is a plain update by then).
  Writes create the index first until it is known to exist (MongoDB may have been down at
  start); reads never do, so the service also works with read-only credentials.
* pymongo is synchronous: each call runs in a worker thread (`anyio.to_thread.run_sync`), on
  Trio and asyncio alike. Calls are not abandoned on cancellation, so no write is left running
  behind the caller's back.
* One bad document never takes a refresh down: documents are validated one by one and the
  failures are returned as `InvalidDocument`s next to the valid subscriptions.
* Errors leave as `SubscriptionStoreError`, scrubbed of the URI's credentials and raised
  `from None`: pymongo messages (and a chained cause, which loggers print) may echo them.
* Timestamps come from the injected clock, truncated to milliseconds (BSON's precision), so
  what a write returns equals what a later read returns, on both stores.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.lowlevel
import anyio.to_thread
from pydantic import ValidationError
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import MongoConfig
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.redact import Redactor, uri_credentials
from polymarket_kafka.subscription_records import (
    MARKET_ID,
    ActiveSubscriptions,
    Clock,
    InvalidDocument,
    SubscriptionChange,
    store_timestamp,
    validate_market_id,
)

__all__ = [
    "ActiveSubscriptions",
    "InvalidDocument",
    "MongoSubscriptionStore",
    "SubscriptionChange",
    "SubscriptionStoreError",
    "client_defaults",
    "open_subscription_store",
    "store_timestamp",
    "validate_market_id",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Document = dict[str, Any]
# Kept out of signatures: the project's coverage excludes any line containing an ellipsis.
ClientFactory = Callable[..., MongoClient[Document]]


class SubscriptionStoreError(Exception):
    """The store could not complete an operation. The message never contains credentials.

    `code` is MongoDB's error code when the server sent one (e.g. 11000), else None.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _check(document: Document) -> PolymarketSubscription | str:
    """The subscription in `document`, or why it is not one (one line, no document values)."""
    ref_count = document.get("ref_count", 0)
    # The server's `ref_count > 0` filter matches BSON numbers only: refuse pydantic's lax
    # "5" -> 5 and True -> 1 so that list_all() and active() agree about a document.
    if isinstance(ref_count, bool) or not isinstance(ref_count, int | float):
        return f"ref_count: must be a number, got {type(ref_count).__name__}"
    try:
        subscription = PolymarketSubscription.from_document(document)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'document'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
    if subscription.ref_count < 0:
        return f"ref_count: must be >= 0, got {subscription.ref_count}"
    if MARKET_ID.fullmatch(subscription.market_id) is None:
        return "market_id: not a Polymarket condition id (0x followed by 64 hex digits)"
    return subscription


def _partition(documents: Iterable[Document]) -> ActiveSubscriptions:
    valid: list[PolymarketSubscription] = []
    invalid: list[InvalidDocument] = []
    for document in documents:
        checked = _check(document)
        if isinstance(checked, PolymarketSubscription):
            valid.append(checked)
            continue
        market_id = document.get("market_id")
        market_id = market_id if isinstance(market_id, str) else None
        invalid.append(InvalidDocument(str(document.get("_id")), market_id, checked))
    valid.sort(key=lambda s: s.market_id)
    return ActiveSubscriptions(tuple(valid), tuple(invalid))


class MongoSubscriptionStore:
    """`service.ports.SubscriptionStore` over one pymongo collection (see the module notes for
    the contracts).

    `uri` is only used to scrub its credentials out of error messages. The store does not own
    the client: `aclose()` only marks it closed (`open_subscription_store` closes its client).
    MongoDB errors raise `SubscriptionStoreError`.
    """

    def __init__(
        self, collection: Collection[Document], *, clock: Clock = now_utc, uri: str | None = None
    ) -> None:
        self._collection = collection
        self._clock = clock
        self._scrub = Redactor(uri_credentials(uri), uris=[uri] if uri else [])
        # Set from worker threads; a race only costs one more (idempotent) createIndex.
        self._indexes_ready = False
        self._closed = False

    async def ensure_indexes(self) -> None:
        """Create the unique index on `market_id` (idempotent).

        Raises `SubscriptionStoreError` if it cannot, e.g. when two documents already share a
        market_id (code 11000) or MongoDB is unreachable.
        """
        await self._run("create the unique market_id index", self._create_indexes, writes=False)

    async def subscribe(self, market_id: str, *, question: str | None = None) -> SubscriptionChange:
        market_id = validate_market_id(market_id)
        now = store_timestamp(self._clock)
        fields: Document = {"updated_at": now}
        if question is not None:
            fields["question"] = question
        increment = partial(
            self._collection.update_one,
            {"market_id": market_id},
            {
                "$inc": {"ref_count": 1},
                "$setOnInsert": {"market_id": market_id, "created_at": now},
                "$set": fields,
            },
            upsert=True,
        )

        def upsert() -> bool:
            try:
                result = increment()
            except DuplicateKeyError:
                # Two upserts of a new market both tried to insert and the unique index
                # refused ours, which therefore changed nothing: retry, it is an update now.
                result = increment()
            return result.upserted_id is not None

        created = await self._run(f"subscribe {market_id}", upsert)
        return await self._read_back(market_id, delta=1, created=created)

    async def unsubscribe(self, market_id: str) -> SubscriptionChange:
        market_id = validate_market_id(market_id)
        decrement = partial(
            self._collection.update_one,
            {"market_id": market_id, "ref_count": {"$gt": 0}},
            {"$inc": {"ref_count": -1}, "$set": {"updated_at": store_timestamp(self._clock)}},
        )
        result = await self._run(f"unsubscribe {market_id}", decrement)
        return await self._read_back(market_id, delta=-1 if result.modified_count else 0)

    async def active(self) -> ActiveSubscriptions:
        return await self._find("list active subscriptions", {"ref_count": {"$gt": 0}})

    async def list_all(self) -> ActiveSubscriptions:
        return await self._find("list subscriptions", {})

    async def aclose(self) -> None:
        self._closed = True

    def _create_indexes(self) -> None:
        self._collection.create_index([("market_id", ASCENDING)], unique=True)
        self._indexes_ready = True

    async def _find(self, action: str, query: Document) -> ActiveSubscriptions:
        documents = await self._run(
            action, lambda: list(self._collection.find(query)), writes=False
        )
        return _partition(documents)

    async def _run(self, action: str, call: Callable[[], T], *, writes: bool = True) -> T:
        if self._closed:
            raise anyio.ClosedResourceError

        def work() -> T:
            if writes and not self._indexes_ready:
                self._create_indexes()
            return call()

        try:
            return await anyio.to_thread.run_sync(work)
        except PyMongoError as exc:
            message = self._scrub(f"{action} failed: {type(exc).__name__}: {exc}")
            raise SubscriptionStoreError(message, code=getattr(exc, "code", None)) from None

    async def _read_back(
        self, market_id: str, *, delta: int, created: bool = False
    ) -> SubscriptionChange:
        """The change, with the document as it reads now (never raises: the write is done)."""
        change = partial(SubscriptionChange, market_id, delta, created)
        try:
            document = await self._run(
                f"read {market_id} back",
                partial(self._collection.find_one, {"market_id": market_id}),
                writes=False,
            )
        except SubscriptionStoreError as exc:
            return change(read_error=str(exc))
        if document is None:
            if not delta:
                return change()  # an unknown market: nothing to show, nothing wrong
            return change(read_error="the document was deleted right after the write")
        checked = _check(document)
        if isinstance(checked, str):
            return change(read_error=f"the document is invalid: {checked}")
        return change(subscription=checked)


def client_defaults(uri: str, server_selection_timeout_ms: int) -> dict[str, object]:
    """The client options the service sets by default, minus those the URI sets itself.

    pymongo lets a keyword argument override the same option in the URI; an operator who
    writes `?serverSelectionTimeoutMS=30000` into `MONGODB_URI` expects it to hold, so a
    default is only passed when the URI does not name that option (names are
    case-insensitive in MongoDB URIs). `tz_aware` is not a URI option: it is always set.
    """
    try:
        query = urlsplit(uri).query
    except ValueError:
        query = ""
    named = {key.lower() for key, _ in parse_qsl(query, keep_blank_values=True)}
    defaults: dict[str, object] = {
        "serverSelectionTimeoutMS": server_selection_timeout_ms,
        "connectTimeoutMS": server_selection_timeout_ms,
        "appname": "polymarket-kafka",
    }
    return {key: value for key, value in defaults.items() if key.lower() not in named}


@asynccontextmanager
async def open_subscription_store(
    config: MongoConfig,
    *,
    clock: Clock = now_utc,
    client_factory: ClientFactory = MongoClient,
    server_selection_timeout_ms: int = 5000,
    probe: bool = True,
) -> AsyncIterator[MongoSubscriptionStore]:
    """Open a MongoDB client for `config`, yield a store on its collection, close it on exit.

    An unreachable MongoDB at start is not fatal: a warning naming the redacted URI is logged
    and the store is yielded anyway; its calls raise `SubscriptionStoreError` until MongoDB is
    back, and the first successful write creates the index. A malformed URI raises
    `SubscriptionStoreError` at once.

    `probe=False` skips that start-up check (and its wait of up to the server selection
    timeout): the service, which only reads, learns about MongoDB from its first refresh and
    answers its health endpoint meanwhile. The CLI commands keep the probe and its warning.
    """
    scrub = Redactor(uri_credentials(config.uri), uris=[config.uri])

    defaults = client_defaults(config.uri, server_selection_timeout_ms)

    def connect() -> MongoClient[Document]:
        return client_factory(config.uri, tz_aware=True, **defaults)

    try:
        # In a thread too: a mongodb+srv:// URI is resolved through blocking DNS lookups.
        client = await anyio.to_thread.run_sync(connect)
    except PyMongoError as exc:
        message = f"cannot create a MongoDB client for {config.redacted_uri}: {exc}"
        raise SubscriptionStoreError(scrub(message)) from None
    store = MongoSubscriptionStore(
        client[config.database][config.full_collection], clock=clock, uri=config.uri
    )
    try:
        try:
            if probe:
                await store.ensure_indexes()
        except SubscriptionStoreError as exc:
            logger.warning(
                "MongoDB at %s is not ready, continuing without it for now "
                "(the index is created on the next successful write): %s",
                config.redacted_uri,
                exc,
            )
        yield store
    finally:
        # Shielded so a cancelled service still releases its sockets and monitor threads;
        # close() does not wait for an unreachable server.
        with anyio.CancelScope(shield=True):
            await store.aclose()
            await anyio.to_thread.run_sync(client.close)
