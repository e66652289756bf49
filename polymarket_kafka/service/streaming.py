"""REST as watchdog and fallback of the market channel: which markets a poll tick polls.

With streaming on, the poll stage still ticks every `poll_interval_seconds`, but asks REST
only for what the stream does not serve (`StreamCoordinator.plan`):

* every open market not live on the stream (not subscribed yet, its connection down, silent
  or reconnecting, no book yet, or distrusted): polled every tick, i.e. at the normal
  interval (a market known to be closed had its final snapshot already);
* every market, once per `reconcile_seconds`: the reconciliation. A streamed market whose
  REST midpoint differs from the streamed midpoint by more than `tolerance` is a
  disagreement (`after_poll`): counted, logged, REST's snapshot goes to the detector as the
  newest observation, and the stream is asked for a fresh book of it (until that arrives,
  REST serves it). Only markets whose quote did not change while the poll ran are compared:
  otherwise REST's price is simply the older one. Midpoints, not displayed prices, are
  compared: REST's `/midpoints` never shows the last trade of a wide spread.
* a market on REST because its connection is silent: when REST shows it moved since the
  stream's last word, the connection is a frozen one and is given up
  (`MarketStream.rest_observed`).

After each poll the stream is told the markets to stream: every subscribed, open market whose
metadata (Gamma, via the poller's cache) names its YES asset. Metadata stays on REST.

The coordinator holds no I/O and reads no clock: times are passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.ops.health import ComponentStatus
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.poller import PollResult
from polymarket_kafka.polymarket.stream.source import MarketStream, StreamedMarket

__all__ = ["Plan", "SelectivePoller", "StreamCoordinator"]

logger = logging.getLogger(__name__)

#: How many fallback markets readiness names (the count is always complete).
_NAMED_FALLBACKS = 20


@dataclass(frozen=True)
class Plan:
    """What one tick polls: `only` these markets (None: all), and whether it reconciles."""

    only: frozenset[str] | None
    reconcile: bool
    #: Markets the stream served when the tick was planned (their REST price is compared),
    #: with how many updates their quote had then (`MarketStream.updates`).
    live: Mapping[str, int]


class SelectivePoller(Protocol):
    """A poller that can poll a subset and share its metadata (`MarketPoller`)."""

    async def poll_once(
        self,
        subscriptions: Collection[PolymarketSubscription],
        now: datetime,
        *,
        only: Collection[str] | None = None,
    ) -> PollResult: ...

    def cached_metadata(self, market_id: str) -> MarketMetadata | None: ...


class StreamCoordinator:
    """See the module notes."""

    def __init__(
        self,
        stream: MarketStream,
        poller: SelectivePoller,
        *,
        reconcile_seconds: float,
        tolerance: float,
    ) -> None:
        self.stream = stream
        self._poller = poller
        self.reconcile_seconds = reconcile_seconds
        self._tolerance = tolerance
        self._next_reconcile: float | None = None
        self.disagreements = 0
        self.reconciliations = 0
        #: Markets polled because the stream did not serve them, summed over ticks.
        self.fallback_polls = 0
        self.fallback: frozenset[str] = frozenset()
        #: What the stream was last told to stream (`_streamable`).
        self._streamed: dict[str, StreamedMarket] = {}

    def plan(self, subscriptions: Collection[PolymarketSubscription], now: float) -> Plan:
        """The markets to poll at monotonic time `now`."""
        live = {m: self.stream.updates(m) for m in self.stream.live_markets()}
        # A closed market has had its final snapshot (the poll that found it closed sent
        # it): it is left to the reconciliation, not polled every tick.
        open_markets = {
            s.market_id
            for s in subscriptions
            if (metadata := self._poller.cached_metadata(s.market_id)) is None
            or not metadata.closed
        }
        self.fallback = frozenset(open_markets - live.keys())
        if self._next_reconcile is None or now >= self._next_reconcile:
            self._next_reconcile = now + self.reconcile_seconds
            self.reconciliations += 1
            return Plan(None, True, live)
        self.fallback_polls += len(self.fallback)
        return Plan(self.fallback, False, live)

    async def poll(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime, plan: Plan
    ) -> PollResult:
        """Run the poll `plan` asks for (the caller skips a plan with nothing to poll)."""
        return await self._poller.poll_once(subscriptions, now, only=plan.only)

    def after_poll(
        self,
        subscriptions: Collection[PolymarketSubscription],
        plan: Plan,
        snapshots: Sequence[MarketSnapshot],
        clock: Callable[[], datetime],
    ) -> list[MarketSnapshot]:
        """Compare REST with the stream and tell the stream what to stream; return the
        snapshots to send on.

        A streamed market whose REST price disagrees is restamped with `clock()` (called
        only then): REST is trusted, so its price must be the detector's newest observation
        of the market (a poll's time is when it started, and the stream may have sent a later
        one meanwhile).
        """
        sent = list(snapshots)
        now: datetime | None = None
        for index, snapshot in enumerate(sent):
            market_id = snapshot.market_id
            if snapshot.closed:
                continue
            if market_id not in plan.live:
                self.stream.rest_observed(market_id, snapshot.yes_price)
                continue
            if self.stream.updates(market_id) != plan.live[market_id]:
                continue  # the stream moved during the poll: REST's price is the older one
            streamed = self.stream.midpoint(market_id)
            if streamed is None or abs(streamed - snapshot.yes_price) <= self._tolerance:
                continue
            self.disagreements += 1
            logger.warning(
                "market %s: REST says %.4f, the stream %.4f (tolerance %g): trusting REST "
                "and asking the stream for a fresh book",
                snapshot.market_id,
                snapshot.yes_price,
                streamed,
                self._tolerance,
                extra={"market_id": snapshot.market_id},
            )
            self.stream.distrust(snapshot.market_id)
            now = now or clock()
            sent[index] = snapshot.model_copy(update={"taken_at": max(now, snapshot.taken_at)})
        streamable = self._streamable(subscriptions)
        if streamable is not None:
            self.stream.set_markets(streamable)
        return sent

    def _streamable(
        self, subscriptions: Collection[PolymarketSubscription]
    ) -> dict[str, StreamedMarket] | None:
        """The markets to stream, or None when they are the ones streamed already (the same
        subscription and metadata objects: most ticks, at no allocation per market)."""
        markets: dict[str, StreamedMarket] = {}
        changed = False
        for subscription in subscriptions:
            metadata = self._poller.cached_metadata(subscription.market_id)
            if metadata is None or metadata.closed or metadata.yes_token_id is None:
                continue
            market_id = subscription.market_id
            old = self._streamed.get(market_id)
            if old is not None and old.subscription is subscription and old.metadata is metadata:
                markets[market_id] = old
            else:
                markets[market_id] = StreamedMarket(subscription, metadata, metadata.yes_token_id)
                changed = True
        if not changed and len(markets) == len(self._streamed):
            return None
        self._streamed = markets
        return markets

    def check(self) -> ComponentStatus:
        """The `stream` readiness component: always ok (REST serves what the stream does
        not); it says how the stream does and which markets are on REST fallback."""
        detail, extra = self.readiness()
        return ComponentStatus(True, detail, extra)

    def readiness(self) -> tuple[str, dict[str, object]]:
        """The detail and extra of the `stream` readiness component."""
        shards = self.stream.connections
        up = sum(1 for s in shards if s.connected)
        fallback = sorted(self.fallback)
        extra: dict[str, object] = {
            "connections": len(shards),
            "connections_up": up,
            "streamed_markets": self.stream.markets,
            "rest_fallback_markets": len(fallback),
            "rest_fallback": fallback[:_NAMED_FALLBACKS],
            "disagreements": self.disagreements,
        }
        detail = (
            f"{up}/{len(shards)} market channel connection(s) up, {self.stream.markets} "
            f"market(s) streamed, {len(fallback)} on REST fallback"
        )
        return detail, extra
