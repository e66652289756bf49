"""What the pipeline needs from its adapters: Protocols only.

`pipeline.run_service` talks to the outside only through these (`polymarket.poller.
MarketPoller`, the subscription stores and `kafka.publisher.KafkaPublisher` satisfy them;
tests pass fakes). One Protocol per contract; the data they return is the adapters' own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from polymarket_kafka.detector_state import StateRecord
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription

if TYPE_CHECKING:
    from polymarket_kafka.subscription_records import ActiveSubscriptions, SubscriptionChange

__all__ = ["PollOutcome", "Poller", "Publisher", "StateSink", "StateStager", "SubscriptionStore"]


class PollOutcome(Protocol):
    """What a poll cycle returns (see `polymarket.poller.PollResult`)."""

    @property
    def snapshots(self) -> list[MarketSnapshot]: ...

    @property
    def skipped(self) -> dict[str, str]: ...

    @property
    def unavailable(self) -> str | None: ...

    @property
    def skip_kinds(self) -> dict[str, str]: ...


class Poller(Protocol):
    """Turns the active subscriptions into snapshots (see `polymarket.poller.MarketPoller`)."""

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> PollOutcome: ...


class SubscriptionStore(Protocol):
    """Where subscriptions live (`subscriptions.MongoSubscriptionStore`; the demo and tests use
    `testing.memory_store.InMemorySubscriptionStore`). The pipeline reads `active()`; the CLI
    writes.

    `subscribe` adds one reference (creating the document); `question`, when given, replaces
    the cached question. `unsubscribe` drops one reference unless the market is unknown or
    already at zero (then `applied` is False). Both return a `SubscriptionChange`, raise
    `ValueError` for a market id that `validate_market_id` rejects, and raise only when the
    count was not changed. `active()` returns the subscriptions with `ref_count > 0`,
    `list_all()` every one; both report invalid documents instead of failing. After
    `aclose()`, calls raise `anyio.ClosedResourceError`.
    """

    async def subscribe(
        self, market_id: str, *, question: str | None = None
    ) -> SubscriptionChange: ...

    async def unsubscribe(self, market_id: str) -> SubscriptionChange: ...

    async def active(self) -> ActiveSubscriptions: ...

    async def list_all(self) -> ActiveSubscriptions: ...

    async def aclose(self) -> None: ...


class Publisher(Protocol):
    """Accepts events for delivery (see `kafka.publisher.KafkaPublisher`).

    `publish` returns once the event is the publisher's to deliver (it may wait: backpressure).
    A publish cancelled (or failing) before that is the publisher's to account for as not
    delivered; the service's last line counts every detected event Kafka did not acknowledge
    (`ServiceStats.events_not_delivered`), so none is missed whichever side counts it.

    `state` (exactly-once delivery only, see `StateStager`): the detector state of the
    event's market right after it, to be committed together with the event.
    """

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None: ...


class StateSink(Protocol):
    """Where detector state records go at least once (`kafka.state_topic.StateWriter`, run
    in a thread) by the `checkpoint` stage."""

    async def write(self, records: Sequence[StateRecord]) -> Collection[str]:
        """Write `(market id, record or None for a tombstone)`; return the market ids NOT
        written (they are tried again at the next checkpoint). Never raises for a refused
        or unacknowledged record."""
        ...

    def unacknowledged(self) -> Collection[str]:
        """Markets with an event the publisher has not had acknowledged by Kafka."""
        ...


class StateStager(Protocol):
    """Where detector state records go exactly once (`kafka.transactional.
    TransactionalPublisher`): staged for the publisher's next transaction, in the order the
    pipeline stages them, with the events published before them."""

    def stage(self, records: Sequence[StateRecord]) -> None:
        """Add `records` to the next transaction (never waits, never raises)."""
        ...
