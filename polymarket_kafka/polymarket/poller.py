"""One poll cycle: subscriptions in, `MarketSnapshot`s out (plus why the others were skipped).

The poller is the thin shell between the Polymarket client and the pure detector. Per cycle it
makes at most two kinds of batched call:

1. Gamma metadata (question, token ids, closed flag, volume, liquidity, tags) for markets that
   are new, due for refresh (`metadata_refresh_seconds`), or suspicious (their midpoint failed,
   which is how a market that just closed usually shows up first). A failed refresh keeps the
   cached metadata: a Gamma hiccup must not blind the service to prices.
2. One `fetch_midpoints` for the YES tokens of every open market: the trading id Gamma's
   `version` selects (a CTF token id, or a Protocol V2 position id; see `parsing`). Closed
   markets are not asked for (their book is gone); their final YES price comes from Gamma's
   `outcomePrices`, with how they resolved (`MarketSnapshot.resolution`: a void market's
   `["0", "0"]` is not "NO won").

Every per-market problem (no metadata, no YES trading id -- not assigned yet, a v2 market
without position ids, an unsupported `version` --, bad or missing price) skips that market for
this cycle with a reason, logged and counted; the cycle itself never fails for it. The one
exception that escapes `poll_once` is `PolymarketBlockedError` (an HTML 403 from Cloudflare):
no market can be served, retrying does not help, and the service should say so loudly.

A failed batch request (Polymarket down, after the client's retries) also skips markets, but
it is not the markets' fault: `PollResult.unavailable` then says why, when the failure left
markets out and no open market got a price this cycle -- the midpoints request failed, or the
metadata request failed and no market it left out could be priced from the cache. A set of
closed markets, markets without a token yet or with bad prices never sets it: only a request
that failed does, so readiness follows Polymarket's availability and not the markets' state.

Markets are processed in sorted `market_id` order, so the requests of a cycle do not depend on
the iteration order of the subscription collection (a set's order changes between processes,
which would break cassette replay).

The poller never reads a clock: `now` is passed in and stamped on every snapshot.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pydantic import ValidationError

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription, utc
from polymarket_kafka.polymarket.errors import PolymarketBlockedError, PolymarketError
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.results import MetadataBatch, PriceBatch
from polymarket_kafka.polymarket.snapshots import build_snapshot

__all__ = ["MarketDataSource", "MarketPoller", "PollResult", "PollerStats"]

logger = logging.getLogger(__name__)


class MarketDataSource(Protocol):
    """What the poller needs from a client (`PolymarketClient` satisfies it)."""

    async def fetch_markets(self, condition_ids: Sequence[str]) -> MetadataBatch: ...

    async def fetch_midpoints(self, token_ids: Sequence[str]) -> PriceBatch: ...


@dataclass
class PollerStats:
    """Plain counters across cycles; `skipped` is keyed by reason kind (see `SKIP_KINDS`)."""

    cycles: int = 0
    snapshots: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    metadata_requests: int = 0
    metadata_failures: int = 0
    midpoint_failures: int = 0


SKIP_KINDS = ("metadata", "no_token", "closed_price", "midpoint", "invalid")


@dataclass(frozen=True)
class PollResult:
    """The snapshots of one cycle, and a reason for every subscribed market left out.

    `unavailable` is None, or why Polymarket could not serve the cycle: a batch request failed,
    markets were left out because of it, and no open market was priced (see the module notes).
    """

    snapshots: list[MarketSnapshot]
    skipped: dict[str, str]
    unavailable: str | None = None
    #: The kind of each skip (one of `SKIP_KINDS`), by market id: for logs and metrics.
    skip_kinds: dict[str, str] = field(default_factory=dict)


@dataclass
class _Cached:
    metadata: MarketMetadata
    fetched_at: datetime
    suspect: bool = False


@dataclass
class _Cycle:
    """Working state of one `poll_once` call."""

    now: datetime
    subscriptions: dict[str, PolymarketSubscription]
    snapshots: list[MarketSnapshot] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    skip_kinds: dict[str, str] = field(default_factory=dict)
    #: Why a batch request failed (midpoints over metadata), and how many markets it left out.
    request_error: str | None = None
    lost_to_request_error: int = 0
    #: Open markets that got a midpoint.
    priced: int = 0

    def unavailable(self) -> str | None:
        if self.lost_to_request_error and not self.priced:
            return self.request_error
        return None


class MarketPoller:
    """Turns subscriptions into snapshots, one `poll_once` per cycle.

    Not safe for concurrent `poll_once` calls (the service runs one poll task). The metadata
    cache holds only currently subscribed markets.
    """

    def __init__(
        self,
        client: MarketDataSource,
        *,
        metadata_refresh_seconds: float,
        stats: PollerStats | None = None,
    ) -> None:
        if metadata_refresh_seconds <= 0:
            raise ValueError("metadata_refresh_seconds must be > 0")
        self._client = client
        self._refresh_seconds = metadata_refresh_seconds
        self._cache: dict[str, _Cached] = {}
        self.stats = stats if stats is not None else PollerStats()

    def cached_metadata(self, market_id: str) -> MarketMetadata | None:
        """The metadata currently cached for a market, if any."""
        cached = self._cache.get(market_id)
        return None if cached is None else cached.metadata

    async def poll_once(
        self,
        subscriptions: Collection[PolymarketSubscription],
        now: datetime,
        *,
        only: Collection[str] | None = None,
    ) -> PollResult:
        """Poll every subscribed market once; `now` stamps the snapshots (`taken_at`).

        The caller passes the active subscriptions; each distinct `market_id` yields either
        one snapshot or one entry in `skipped`. `only` (the streaming service's fallback
        cycles) polls just those of them; the metadata of the others stays cached. Raises only
        `PolymarketBlockedError`; a Polymarket outage is reported in `PollResult.unavailable`
        instead.
        """
        by_id: dict[str, PolymarketSubscription] = {}
        for subscription in subscriptions:
            by_id.setdefault(subscription.market_id, subscription)
        for market_id in [m for m in self._cache if m not in by_id]:
            del self._cache[market_id]
        if only is not None:
            by_id = {k: v for k, v in by_id.items() if k in only}
        cycle = _Cycle(utc(now), {k: by_id[k] for k in sorted(by_id)})

        metadata_errors = await self._refresh_metadata(cycle)
        open_markets = self._sort_markets(cycle, metadata_errors)
        await self._price_open_markets(cycle, open_markets)

        self.stats.cycles += 1
        self.stats.snapshots += len(cycle.snapshots)
        # No log line per skipped market here: the caller logs each one once per cycle.
        return PollResult(cycle.snapshots, cycle.skipped, cycle.unavailable(), cycle.skip_kinds)

    # --- steps -----------------------------------------------------------------------------

    def _due(self, market_id: str, now: datetime) -> bool:
        cached = self._cache.get(market_id)
        if cached is None or cached.suspect:
            return True
        return (now - cached.fetched_at).total_seconds() >= self._refresh_seconds

    async def _refresh_metadata(self, cycle: _Cycle) -> dict[str, str]:
        """Refresh due markets' metadata; return the failure reason of each id that failed."""
        due = [market_id for market_id in cycle.subscriptions if self._due(market_id, cycle.now)]
        if not due:
            return {}
        self.stats.metadata_requests += 1
        try:
            batch = await self._client.fetch_markets(due)
        except PolymarketBlockedError:
            raise
        except PolymarketError as exc:
            self.stats.metadata_failures += 1
            logger.warning(
                "poll: metadata refresh of %d market(s) failed: %s",
                len(due),
                exc,
                extra={"endpoint": "GET /markets"},
            )
            cycle.request_error = cycle.request_error or f"metadata unavailable: {exc}"
            return dict.fromkeys(due, f"metadata unavailable: {exc}")
        for market_id, metadata in batch.markets.items():
            self._cache[market_id] = _Cached(metadata, cycle.now)
        return dict(batch.failures)

    def _sort_markets(
        self, cycle: _Cycle, metadata_errors: dict[str, str]
    ) -> dict[str, MarketMetadata]:
        """Snapshot closed markets, skip unusable ones; return the open markets to price."""
        open_markets: dict[str, MarketMetadata] = {}
        for market_id in cycle.subscriptions:
            cached = self._cache.get(market_id)
            if cached is None:
                reason = metadata_errors.get(market_id, "no metadata")
                # Uncached means due: with a failed request, that request left it out.
                lost = cycle.request_error is not None
                self._skip(cycle, market_id, "metadata", reason, lost=lost)
                continue
            metadata = cached.metadata
            if metadata.closed:
                if metadata.yes_outcome_price is None:
                    reason = "closed market without a usable outcomePrices"
                    self._skip(cycle, market_id, "closed_price", reason)
                else:
                    self._emit(cycle, market_id, metadata, metadata.yes_outcome_price)
            elif metadata.yes_token_id is None:
                cached.suspect = True
                reason = metadata.token_problem or (
                    "no YES token id (a new market can lack one for a few minutes)"
                )
                self._skip(cycle, market_id, "no_token", reason)
            else:
                open_markets[market_id] = metadata
        return open_markets

    async def _price_open_markets(
        self, cycle: _Cycle, open_markets: dict[str, MarketMetadata]
    ) -> None:
        if not open_markets:
            return
        tokens = [m.yes_token_id for m in open_markets.values() if m.yes_token_id is not None]
        try:
            batch = await self._client.fetch_midpoints(tokens)
        except PolymarketBlockedError:
            raise
        except PolymarketError as exc:
            self.stats.midpoint_failures += 1
            logger.warning(
                "poll: midpoints for %d market(s) failed: %s",
                len(tokens),
                exc,
                extra={"endpoint": "POST /midpoints"},
            )
            cycle.request_error = f"midpoints unavailable: {exc}"
            for market_id in open_markets:
                reason = f"midpoints unavailable: {exc}"
                self._skip(cycle, market_id, "midpoint", reason, lost=True)
            return
        for market_id, metadata in open_markets.items():
            token_id = metadata.yes_token_id
            assert token_id is not None  # filtered in _sort_markets
            price = batch.prices.get(token_id)
            if price is None:
                # Often the first sign that the market closed: re-read its metadata next cycle.
                self._cache[market_id].suspect = True
                reason = batch.failures.get(token_id, "no midpoint returned")
                self._skip(cycle, market_id, "midpoint", f"midpoint: {reason}")
            else:
                cycle.priced += 1
                self._emit(cycle, market_id, metadata, price)

    # --- outcomes --------------------------------------------------------------------------

    def _emit(self, cycle: _Cycle, market_id: str, metadata: MarketMetadata, price: float) -> None:
        subscription = cycle.subscriptions[market_id]
        try:
            snapshot = build_snapshot(subscription, metadata, price, cycle.now)
        except ValidationError as exc:
            self._skip(cycle, market_id, "invalid", f"invalid snapshot: {exc.errors()[0]['msg']}")
            return
        cycle.snapshots.append(snapshot)

    def _skip(
        self, cycle: _Cycle, market_id: str, kind: str, reason: str, *, lost: bool = False
    ) -> None:
        """Leave `market_id` out of the cycle; `lost`: because a batch request failed."""
        cycle.skipped[market_id] = reason
        cycle.skip_kinds[market_id] = kind
        cycle.lost_to_request_error += lost
        self.stats.skipped[kind] += 1
