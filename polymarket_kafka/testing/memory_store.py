"""`InMemorySubscriptionStore`: the subscription store kept in process, for the demo and tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.lowlevel

from polymarket_kafka.clock import now_utc
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.subscription_records import (
    ActiveSubscriptions,
    Clock,
    SubscriptionChange,
    store_timestamp,
    validate_market_id,
)

__all__ = ["InMemorySubscriptionStore"]

Document = dict[str, Any]


class InMemorySubscriptionStore:
    """`service.ports.SubscriptionStore` kept in process (the demo, tests): no MongoDB needed.

    Same contracts as `MongoSubscriptionStore`; a lock makes each operation atomic even across
    threads. `seed` market ids start subscribed once each. Returned models are copies.
    """

    def __init__(self, seed: Iterable[str] = (), *, clock: Clock = now_utc) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._subscriptions: dict[str, PolymarketSubscription] = {}
        self._closed = False
        for market_id in seed:
            self._add(validate_market_id(market_id), None)

    async def subscribe(self, market_id: str, *, question: str | None = None) -> SubscriptionChange:
        market_id = validate_market_id(market_id)
        await self._checkpoint()
        created, subscription = self._add(market_id, question)
        return SubscriptionChange(market_id, 1, created, subscription)

    async def unsubscribe(self, market_id: str) -> SubscriptionChange:
        market_id = validate_market_id(market_id)
        await self._checkpoint()
        now = store_timestamp(self._clock)
        with self._lock:
            current = self._subscriptions.get(market_id)
            if current is None or current.ref_count <= 0:
                kept = None if current is None else current.model_copy()
                return SubscriptionChange(market_id, 0, subscription=kept)
            changes = {"ref_count": current.ref_count - 1, "updated_at": now}
            self._subscriptions[market_id] = current.model_copy(update=changes)
            return SubscriptionChange(
                market_id, -1, subscription=self._subscriptions[market_id].model_copy()
            )

    async def active(self) -> ActiveSubscriptions:
        return await self._select(active_only=True)

    async def list_all(self) -> ActiveSubscriptions:
        return await self._select(active_only=False)

    async def aclose(self) -> None:
        self._closed = True

    async def _checkpoint(self) -> None:
        # Behave like an I/O store towards the scheduler: every call is a cancellation point.
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise anyio.ClosedResourceError

    async def _select(self, *, active_only: bool) -> ActiveSubscriptions:
        await self._checkpoint()
        with self._lock:
            found = [s.model_copy() for s in self._subscriptions.values()]
        found = [s for s in found if s.is_active() or not active_only]
        return ActiveSubscriptions(tuple(sorted(found, key=lambda s: s.market_id)))

    def _add(self, market_id: str, question: str | None) -> tuple[bool, PolymarketSubscription]:
        """One more reference; returns (created, a copy of the document)."""
        now = store_timestamp(self._clock)
        with self._lock:
            existing = self._subscriptions.get(market_id)
            current = existing or PolymarketSubscription(
                market_id=market_id, created_at=now, updated_at=now
            )
            changes: Document = {"ref_count": current.ref_count + 1, "updated_at": now}
            if question is not None:
                changes["question"] = question
            self._subscriptions[market_id] = current.model_copy(update=changes)
            return existing is None, self._subscriptions[market_id].model_copy()
