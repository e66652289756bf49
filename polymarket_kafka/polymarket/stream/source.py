"""The stream source: market-channel connections in, coalesced `MarketSnapshot`s out.

Why this file is over 400 lines: `MarketStream` is the one owner of the state its parts
share (which market is on which connection, the quotes, the coalescer, distrust and
silence); the parts with a single job are modules of their own (frames, quotes, coalesce,
connection), and what is left here is their bookkeeping and its documentation.

```
 shards (one WebSocket each, ≤ assets_per_connection) ──frames──► decode ──► Quotes
        ──changed market──► Coalescer ──due──► build_snapshot ──► (bounded) snapshot channel
```

The caller (the poll stage, `service.streaming`) says which markets to stream
(`set_markets`, with the metadata the REST path fetched: the YES asset, question, volume...)
and asks which of them the stream currently serves (`live_markets`): a market is live while
its connection is up and not silent, has delivered a price of its asset since it
(re)connected, and no REST reconciliation has disagreed with it since (`distrust`).
Everything else falls back to REST, whose prices come back here (`rest_observed`): a silent
connection whose markets REST sees trading is given up.

The socket reader never waits on the pipeline: a frame is decoded, folded into the quotes
and offered to the coalescer synchronously; a separate flusher sends the due snapshots down
the bounded channel (and it alone waits when the channel is full, while the coalescer keeps
absorbing updates: backpressure becomes coalescing, and memory stays one pending entry per
market). A `market_resolved` message ends its market with one closed snapshot (the detector
then sends the single final event; the REST path's own closed snapshot later finds the market
closed and changes nothing).

Bounds: one quote, one coalescer entry and one pending resolution per streamed market;
connections = ceil(markets / assets_per_connection), plus empty ones while they close.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import httpx
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import ValidationError

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.snapshots import build_snapshot
from polymarket_kafka.polymarket.stream.coalesce import Coalescer
from polymarket_kafka.polymarket.stream.connection import Shard, StreamSettings, disconnect_kind
from polymarket_kafka.polymarket.stream.frames import (
    Book,
    MarketResolved,
    TickSizeChange,
    decode_frame,
    exchange_time_of,
)
from polymarket_kafka.polymarket.stream.quotes import Quote, Quotes, resolved_price

__all__ = ["MarketStream", "StreamStats", "StreamedMarket"]

logger = logging.getLogger(__name__)

#: A snapshot and the monotonic time it entered the pipeline (as `service.polling.Polled`).
Polled = tuple[MarketSnapshot, float]

#: A REST midpoint further than this from the stream's last one: the market traded.
_MOVED = 1e-6

#: At most one log line per connection per this many seconds about malformed frames.
_MALFORMED_LOG_SECONDS = 60.0


@dataclass(frozen=True)
class StreamedMarket:
    """A market to stream: its subscription, its REST metadata and the asset priced."""

    subscription: PolymarketSubscription
    metadata: MarketMetadata
    yes_asset: str

    @property
    def market_id(self) -> str:
        return self.subscription.market_id


@dataclass
class StreamStats:
    """Plain counters of the stream (exported by `ops.metrics`)."""

    connects: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    #: Messages by type (`book`, `price_change`, ..., `pong` is not counted here).
    messages: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    malformed: int = 0
    snapshots: int = 0
    resolved: int = 0
    #: Due markets with no usable price (one side of the book empty, or a crossed book).
    unpriced: int = 0
    invalid_snapshots: int = 0
    #: Connections that went silent (no data frame for `silence_seconds`).
    silences: int = 0
    #: Frames whose handling raised (a bug; logged with the traceback, the frame skipped).
    frame_errors: int = 0


class MarketStream:
    """See the module notes. Build it, `set_markets`, then run `run` in a task group."""

    def __init__(
        self,
        settings: StreamSettings,
        http: httpx.AsyncClient,
        *,
        coalesce_seconds: float,
        clock: Callable[[], datetime],
        stats: StreamStats | None = None,
        exchange_time: bool = False,
    ) -> None:
        """`clock` stamps snapshots (`taken_at`); `exchange_time` stamps them with
        Polymarket's timestamp of the update instead (recorded replays: the demo)."""
        self.settings = settings
        self.stats = stats if stats is not None else StreamStats()
        self._http = http
        self._clock = clock
        self._exchange_time = exchange_time
        self._quotes = Quotes()
        self.coalescer = Coalescer(coalesce_seconds)
        self._markets: dict[str, StreamedMarket] = {}
        self._by_asset: dict[str, str] = {}
        self._asset_shard: dict[str, Shard] = {}
        self._shards: list[Shard] = []
        self._shard_count = 0
        self._started: list[Shard] = []
        self._distrusted: set[str] = set()
        #: The connection generation each asset's quote was last updated on.
        self._seen_on: dict[str, tuple[int, int]] = {}
        self._resolved: dict[str, MarketSnapshot] = {}
        #: Markets that resolved on the stream (until they stop being streamed).
        self._ended: set[str] = set()
        self._wake = anyio.Event()
        self._shards_changed = anyio.Event()
        self._malformed_logged: dict[int, float] = {}

    # --- control (the poll stage) --------------------------------------------------------

    def set_markets(self, markets: Mapping[str, StreamedMarket]) -> None:
        """Stream exactly these markets from now on (the metadata is refreshed in place)."""
        for market_id in [m for m in self._markets if m not in markets]:
            self._drop(market_id)
        for market_id, market in markets.items():
            old = self._markets.get(market_id)
            if old is not None and old.yes_asset != market.yes_asset:
                self._drop(market_id)
                old = None
            self._markets[market_id] = market
            if old is None:
                self._add_asset(market.yes_asset, market_id)

    def live_markets(self) -> set[str]:
        """Markets the stream serves now (see the module notes)."""
        live = set()
        for market_id, market in self._markets.items():
            if market_id in self._distrusted or market_id in self._ended:
                continue
            shard = self._asset_shard.get(market.yes_asset)
            seen = self._seen_on.get(market.yes_asset)
            if shard is None or not shard.connected or shard.silent:
                continue
            if seen != (shard.index, shard.generation):
                continue
            quote = self._quotes.get(market.yes_asset)
            if quote is not None and quote.priced():
                live.add(market_id)
        return live

    def price(self, market_id: str) -> float | None:
        """The latest streamed YES price of a market, if any."""
        market = self._markets.get(market_id)
        if market is None:
            return None
        quote = self._quotes.price(market.yes_asset)
        return None if quote is None else quote[0]

    def midpoint(self, market_id: str) -> float | None:
        """The streamed plain midpoint of a market (REST's `/midpoints` definition)."""
        quote = self._quote(market_id)
        return None if quote is None else quote.midpoint()

    def updates(self, market_id: str) -> int:
        """How many messages changed the market's quote so far (0 if not streamed)."""
        quote = self._quote(market_id)
        return 0 if quote is None else quote.updates

    def rest_observed(self, market_id: str, midpoint: float) -> None:
        """REST priced a market the stream does not serve: if its connection is silent and
        the price moved since the stream's last word, the silence is a frozen socket."""
        market = self._markets.get(market_id)
        shard = None if market is None else self._asset_shard.get(market.yes_asset)
        last = self.midpoint(market_id)
        if shard is None or not shard.silent or last is None:
            return
        if abs(last - midpoint) > _MOVED:
            shard.give_up(
                f"silent for over {self.settings.silence_seconds:g}s while its markets trade "
                f"(REST has {market_id} at {midpoint:g}, the stream last said {last:g})"
            )

    def _quote(self, market_id: str) -> Quote | None:
        market = self._markets.get(market_id)
        return None if market is None else self._quotes.get(market.yes_asset)

    def distrust(self, market_id: str) -> None:
        """REST disagreed with the stream: ask for a fresh book; until it arrives the market
        is not live (REST serves it) and its stream updates are not sent on."""
        market = self._markets.get(market_id)
        if market is None:
            return
        self._distrusted.add(market_id)
        self.coalescer.forget(market_id)
        shard = self._asset_shard.get(market.yes_asset)
        if shard is not None:
            shard.resubscribe(market.yes_asset)

    def streamed(self) -> list[StreamedMarket]:
        """The markets streamed now (`set_markets`)."""
        return list(self._markets.values())

    @property
    def connections(self) -> list[Shard]:
        return list(self._shards)

    @property
    def markets(self) -> int:
        return len(self._markets)

    # --- shards -------------------------------------------------------------------------

    def _add_asset(self, asset_id: str, market_id: str) -> None:
        self._by_asset[asset_id] = market_id
        self._quotes.track(asset_id)
        shard = next((s for s in self._shards if s.room > 0), None)
        if shard is None:
            shard = Shard(self._shard_count, self.settings, self, self._http)
            self._shard_count += 1
            self._shards.append(shard)
            self._shards_changed.set()
        shard.add(asset_id)
        self._asset_shard[asset_id] = shard

    def _drop(self, market_id: str) -> None:
        market = self._markets.pop(market_id)
        asset = market.yes_asset
        self._by_asset.pop(asset, None)
        self._quotes.untrack(asset)
        self._seen_on.pop(asset, None)
        self._distrusted.discard(market_id)
        self._resolved.pop(market_id, None)
        self._ended.discard(market_id)
        self.coalescer.forget(market_id)
        shard = self._asset_shard.pop(asset, None)
        if shard is not None:
            shard.remove(asset)
            if not shard.assets:
                self._shards.remove(shard)  # its task ends by itself
                self._malformed_logged.pop(shard.index, None)

    # --- FrameSink (called by the shards, on the event loop) ----------------------------

    def connected(self, shard: Shard) -> None:
        self.stats.connects += 1
        logger.info(
            "market channel connection %d up: %d assets",
            shard.index,
            len(shard.assets),
            extra={"connection": shard.index},
        )

    def silent(self, shard: Shard) -> None:
        self.stats.silences += 1
        logger.warning(
            "market channel connection %d silent for %gs: its %d market(s) go to REST until "
            "it speaks again (or is given up if REST shows them trading)",
            shard.index,
            self.settings.silence_seconds,
            len(shard.assets),
            extra={"connection": shard.index},
        )

    def disconnected(self, shard: Shard, reason: str) -> None:
        """A connection ended, or could not be opened (`reason` says which)."""
        self.stats.disconnects[disconnect_kind(reason)] += 1

    def frame(self, shard: Shard, text: str) -> None:
        try:
            self._frame(shard, text)
        except Exception:
            # A bug, not bad input (that is counted as malformed): the frame is lost, the
            # connection and the service go on.
            self.stats.frame_errors += 1
            logger.exception(
                "market channel connection %d: a frame could not be handled (skipped)",
                shard.index,
                extra={"connection": shard.index},
            )

    def _frame(self, shard: Shard, text: str) -> None:
        decoded = decode_frame(text)
        self.stats.frames += 1
        self.stats.messages.update(decoded.kinds)
        if decoded.errors:
            self._malformed(shard, decoded.errors)
        now = anyio.current_time()
        woke = False
        for message in decoded.messages:
            if isinstance(message, MarketResolved):
                woke |= self._market_resolved(message)
                continue
            asset = self._quotes.apply(message)
            if asset is None:
                continue
            market_id = self._by_asset[asset]
            self._seen_on[asset] = (shard.index, shard.generation)
            if market_id in self._ended:
                continue  # resolved: its one closed snapshot was the last
            if isinstance(message, TickSizeChange):
                shard.resubscribe(asset)  # the book is void: ask for a fresh one
            if market_id in self._distrusted:
                if not isinstance(message, Book):
                    continue  # REST contradicted this quote: only a fresh book counts again
                self._distrusted.discard(market_id)
            self.coalescer.offer(market_id, now)
            woke = True
        if woke:
            self._wake.set()

    def _malformed(self, shard: Shard, errors: list[str]) -> None:
        self.stats.malformed += len(errors)
        now = anyio.current_time()
        last = self._malformed_logged.get(shard.index)
        if last is None or now - last >= _MALFORMED_LOG_SECONDS:
            self._malformed_logged[shard.index] = now
            logger.warning(
                "market channel connection %d: %d malformed message(s) skipped, e.g. %s "
                "(at most one such line a minute per connection)",
                shard.index,
                len(errors),
                errors[0],
                extra={"connection": shard.index},
            )

    def _market_resolved(self, message: MarketResolved) -> bool:
        market = self._markets.get(message.market)
        if market is None or message.market in self._ended:
            return False  # not ours, or already ended by an earlier message
        outcome = resolved_price(message, market.yes_asset, self.price(message.market))
        if outcome is None:
            return False  # nothing to report it with: the REST path will see it close
        resolution, price = outcome
        source_at = exchange_time_of(message.timestamp_ms)
        try:
            snapshot = build_snapshot(
                market.subscription,
                market.metadata,
                price,
                self._stamp(source_at),
                closed=True,
                resolution=resolution,
                source="ws",
                source_at=source_at,
            )
        except ValidationError:
            self.stats.invalid_snapshots += 1
            return False
        self.stats.resolved += 1
        self._resolved[message.market] = snapshot
        self._ended.add(message.market)
        return True

    # --- running --------------------------------------------------------------------------

    async def run(self, snapshots: MemoryObjectSendStream[Polled]) -> None:
        """Run the connections and the flusher until cancelled (a stop request)."""
        async with snapshots, anyio.create_task_group() as tasks:
            tasks.start_soon(self._flush, snapshots)
            while True:
                for shard in self._shards:
                    if shard not in self._started:
                        self._started.append(shard)
                        tasks.start_soon(self._run_shard, shard)
                await self._shards_changed.wait()
                self._shards_changed = anyio.Event()

    async def _run_shard(self, shard: Shard) -> None:
        try:
            await shard.run()
        finally:
            self._started.remove(shard)

    async def _flush(self, snapshots: MemoryObjectSendStream[Polled]) -> None:
        while True:
            due_at = self.coalescer.next_due()
            now = anyio.current_time()
            if not self._resolved and (due_at is None or due_at > now):
                wait = math.inf if due_at is None else due_at - now
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            while self._resolved:
                market_id, final = self._resolved.popitem()
                self.coalescer.forget(market_id)
                self.stats.snapshots += 1
                await snapshots.send((final, anyio.current_time()))
            for market_id in self.coalescer.take_due(anyio.current_time()):
                snapshot = self._snapshot(market_id)
                if snapshot is not None:
                    self.stats.snapshots += 1
                    await snapshots.send((snapshot, anyio.current_time()))

    def _snapshot(self, market_id: str) -> MarketSnapshot | None:
        market = self._markets.get(market_id)
        if market is None or market_id in self._distrusted:
            return None  # gone, or REST contradicted it since it was offered
        quote = self._quotes.get(market.yes_asset)
        priced = None if quote is None else quote.price()
        if quote is None or priced is None:
            self.stats.unpriced += 1
            return None
        price, spread = priced
        source_at = exchange_time_of(quote.timestamp_ms)
        try:
            return build_snapshot(
                market.subscription,
                market.metadata,
                price,
                self._stamp(source_at),
                spread=spread,
                source="ws",
                source_at=source_at,
            )
        except ValidationError:
            self.stats.invalid_snapshots += 1
            return None

    def _stamp(self, source_at: datetime | None) -> datetime:
        if self._exchange_time and source_at is not None:
            return source_at
        return self._clock()
