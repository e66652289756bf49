"""What the pipeline needs from its adapters, and where their outcomes are recorded.

`service.run_service` talks to the outside only through the three protocols below
(`poller.MarketPoller`, `subscriptions` stores and `kafka.KafkaPublisher` satisfy them; tests
pass fakes). `SourceOutcomes` is the one place where the sources record how each
subscription refresh and poll cycle went: it classifies the outcome once and updates both
the metrics' counters (`service.ServiceStats`) and `health.ServiceHealth`, so the two never
disagree. `run_stage` runs each long-lived task as a named stage, so `/health/live` knows
which task ended and why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import anyio

from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription
from polymarket_kafka.ops.health import ServiceHealth

if TYPE_CHECKING:
    from polymarket_kafka.service.pipeline import ServiceStats

__all__ = [
    "InvalidDocumentLike",
    "PollOutcome",
    "Poller",
    "Publisher",
    "SourceOutcomes",
    "SubscriptionSource",
    "run_stage",
    "task_name",
]


class PollOutcome(Protocol):
    """What a poll cycle returns (see `poller.PollResult`)."""

    @property
    def snapshots(self) -> list[MarketSnapshot]: ...

    @property
    def skipped(self) -> dict[str, str]: ...

    @property
    def unavailable(self) -> str | None: ...

    @property
    def skip_kinds(self) -> dict[str, str]: ...


class Poller(Protocol):
    """Turns the active subscriptions into snapshots (see `poller.MarketPoller`)."""

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> PollOutcome: ...


class InvalidDocumentLike(Protocol):
    """A subscription document that failed validation (see `subscriptions.InvalidDocument`)."""

    @property
    def document_id(self) -> str: ...

    @property
    def market_id(self) -> str | None: ...

    @property
    def error(self) -> str: ...

    def describe(self) -> str: ...


class _ActiveSubscriptions(Protocol):
    @property
    def subscriptions(self) -> tuple[PolymarketSubscription, ...]: ...

    @property
    def invalid(self) -> tuple[InvalidDocumentLike, ...]: ...


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


class SourceOutcomes:
    """Records each subscription refresh and poll cycle once, into `stats` and `health`.

    Called by the service's source tasks on the event loop thread; `time` is the monotonic
    clock poll cycles are stamped with for readiness.
    """

    def __init__(
        self,
        stats: ServiceStats,
        health: ServiceHealth,
        *,
        time: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._stats, self._health, self._time = stats, health, time

    def refreshed(self, active_markets: int, invalid_documents: int = 0) -> None:
        """A refresh read the active subscriptions: `active_markets` distinct markets, and
        `invalid_documents` documents it had to skip."""
        self._stats.subscription_refreshes += 1
        self._stats.markets_tracked = active_markets
        self._stats.invalid_subscription_documents = invalid_documents
        self._health.record_subscriptions(active_markets)

    def refresh_failed(self, error: Exception) -> int:
        """A refresh failed; returns how many failed in a row (for the retry backoff)."""
        self._stats.subscription_failures += 1
        return self._health.record_refresh_failure(str(error))

    def polled(self, result: PollOutcome, now: datetime, seconds: float) -> bool:
        """A cycle stamped `now` returned after `seconds`; False if Polymarket was unavailable
        (`result.unavailable`): a failed cycle for readiness, `unavailable` for the metrics."""
        self._stats.poll_duration.observe(seconds)
        self._stats.markets_skipped += len(result.skipped)
        if result.unavailable is not None:
            self._stats.poll_unavailable += 1
            self._health.record_poll_failure(f"Polymarket unavailable: {result.unavailable}")
            return False
        self._stats.poll_cycles += 1
        self._stats.last_poll_at = now
        self._health.record_poll(self._time())
        return True

    def ticks_skipped(self, count: int) -> None:
        """`count` poll ticks were skipped after a cycle overran the interval."""
        self._stats.poll_ticks_skipped += count

    def poll_failed(self, error: Exception, seconds: float) -> None:
        """A cycle raised `error` after `seconds`."""
        self._stats.poll_duration.observe(seconds)
        self._stats.poll_failures += 1
        self._health.record_poll_failure(f"{type(error).__name__}: {error}")
