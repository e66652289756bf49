"""What the pipeline needs from its adapters, and how it watches them for health.

`service.run_service` talks to the outside only through the three protocols below
(`poller.MarketPoller`, `subscriptions` stores and `kafka.KafkaPublisher` satisfy them; tests
pass fakes). The stages stay unaware of health: `WatchedStore` and `WatchedPoller` wrap the
adapters and tell `health.ServiceHealth` what crossed the boundary, and `run_stage` runs
each long-lived task as a named stage, so `/health/live` knows which task ended and why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Protocol

import anyio

from polymarket_kafka.health import ServiceHealth
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription

__all__ = [
    "Poller",
    "Publisher",
    "SubscriptionSource",
    "WatchedPoller",
    "WatchedStore",
    "run_stage",
    "task_name",
]


class _PollResult(Protocol):
    @property
    def snapshots(self) -> list[MarketSnapshot]: ...

    @property
    def skipped(self) -> dict[str, str]: ...


class Poller(Protocol):
    """Turns the active subscriptions into snapshots (see `poller.MarketPoller`)."""

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> _PollResult: ...


class _ActiveSubscriptions(Protocol):
    @property
    def subscriptions(self) -> tuple[PolymarketSubscription, ...]: ...


class SubscriptionSource(Protocol):
    """Where the active subscriptions come from (see `subscriptions`)."""

    async def active(self) -> _ActiveSubscriptions: ...


class Publisher(Protocol):
    """Accepts events for delivery (see `kafka.KafkaPublisher`)."""

    async def publish(self, event: PolymarketEvent) -> None: ...


async def run_stage(
    health: ServiceHealth,
    name: str,
    task: Callable[..., Awaitable[object]],
    *args: object,
    **kwargs: object,
) -> None:
    """Run `task(*args, **kwargs)` as stage `name` of `health` (kwargs: `task_status`)."""
    with health.stage(name):
        await task(*args, **kwargs)


def task_name(task: Callable[..., object]) -> str:
    """The stage name of a background task: its function's name."""
    # functools.partial has no __name__: name it after the function it wraps.
    target = getattr(task, "func", task)
    return str(getattr(target, "__name__", type(target).__name__))


class WatchedStore:
    """A `SubscriptionSource` that tells `health` how each refresh went."""

    def __init__(self, store: SubscriptionSource, health: ServiceHealth) -> None:
        self._store, self._health = store, health

    async def active(self) -> _ActiveSubscriptions:
        try:
            active = await self._store.active()
        except Exception as exc:
            self._health.record_refresh_failure(str(exc))
            raise
        self._health.record_subscriptions(len({s.market_id for s in active.subscriptions}))
        return active


class WatchedPoller:
    """A `Poller` that tells `health` when a cycle finished (or failed)."""

    def __init__(self, poller: Poller, health: ServiceHealth) -> None:
        self._poller, self._health = poller, health

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> _PollResult:
        try:
            result = await self._poller.poll_once(subscriptions, now)
        except Exception as exc:
            self._health.record_poll_failure(f"{type(exc).__name__}: {exc}")
            raise
        self._health.record_poll(anyio.current_time())
        return result
