"""Polymarket's market channel (WebSocket): decode, quote, coalesce, connect, stream.

| module | one job | I/O? |
|---|---|---|
| `frames` | text frame → typed messages (tolerant, every problem counted) | no |
| `quotes` | per-asset book, best bid/ask, last trade → the displayed YES price | no |
| `coalesce` | at most one snapshot per market per interval, latest wins | no |
| `connection` | one shard: subscribe, PING/PONG, silence watchdog, reconnect | WebSocket |
| `source` | shards + quotes + coalescer → snapshots into the pipeline | orchestration |

`open_market_stream` owns the HTTP client the connections ride on. The service's use of it
(REST as watchdog and fallback) is `service.streaming`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import httpx

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.polymarket.stream.connection import StreamSettings
from polymarket_kafka.polymarket.stream.source import MarketStream, StreamedMarket, StreamStats

__all__ = [
    "MarketStream",
    "StreamSettings",
    "StreamStats",
    "StreamedMarket",
    "open_market_stream",
    "stream_settings",
]


def stream_settings(config: PolymarketConfig) -> StreamSettings:
    """The connection settings `config` asks for."""
    return StreamSettings(
        url=config.ws_url,
        assets_per_connection=config.ws_assets_per_connection,
        ping_interval_seconds=config.ws_ping_seconds,
        silence_seconds=config.ws_silence_seconds,
        reconnect_max_seconds=config.ws_reconnect_max_seconds,
        connect_timeout_seconds=config.request_timeout_seconds,
    )


@asynccontextmanager
async def open_market_stream(
    config: PolymarketConfig,
    *,
    clock: Callable[[], datetime],
    exchange_time: bool = False,
) -> AsyncIterator[MarketStream]:
    """A `MarketStream` on its own HTTP client (no pool limit: one connection per shard)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as http:
        yield MarketStream(
            stream_settings(config),
            http,
            coalesce_seconds=config.ws_coalesce_ms / 1000,
            clock=clock,
            exchange_time=exchange_time,
        )
