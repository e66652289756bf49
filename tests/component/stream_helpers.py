"""Helpers for driving a real `MarketStream` against loopback servers (both backends).

* `streaming(...)` builds a `RecordingStream` on its own `httpx.AsyncClient`, gives it its
  markets and runs it in a task group (cancelled on exit); `Running` reads its snapshots.
* `RecordingStream` is the real `MarketStream` that also remembers every connect, silence,
  handled frame and disconnect (the full reason, when, and which markets were live at that
  moment: a record, so a test need not catch a state that lasts only `silence_seconds`).
* `wait_for` polls a condition with small sleeps (never a fixed sleep to "let it happen").
* `SilentServer` accepts TCP but never answers the upgrade (a connect timeout);
  `BinaryFrameServer` answers the subscription with one *binary* frame (the fake only sends
  text).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Self

import anyio
import anyio.to_thread
import httpx
import wsproto.events as ev
from anyio.streams.memory import MemoryObjectReceiveStream
from wsproto import ConnectionType, WSConnection

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.stream.connection import Shard, StreamSettings
from polymarket_kafka.polymarket.stream.source import MarketStream, StreamedMarket
from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel

__all__ = [
    "NOW",
    "WAIT",
    "BinaryFrameServer",
    "Connect",
    "Heard",
    "Lost",
    "Polled",
    "RecordingStream",
    "Running",
    "SilentServer",
    "free_port",
    "ids",
    "settings_for",
    "streamed",
    "streaming",
    "wait_for",
    "wait_subscribed",
]

#: What the stubbed clock says (`taken_at` of every snapshot unless `exchange_time`).
NOW = datetime(2025, 9, 15, 12, 0, tzinfo=UTC)
#: The generous bound of every wait (a busy 2-core box running the suite with `-n auto`).
WAIT = 10.0

Polled = tuple[MarketSnapshot, float]


def ids(n: int) -> tuple[str, str, str]:
    """(condition id, YES asset, NO asset) of test market `n`, shaped like the real ones."""
    yes = f"7132104567925221259462638553270691275033272857194{n:05d}"
    no = f"5211431950124591551605510604688420996992612748282{n:05d}"
    return "0x" + f"{n:02x}" * 32, yes, no


def streamed(market_id: str, yes_asset: str, **metadata: Any) -> StreamedMarket:
    """A market to stream, with a question unless `metadata` says otherwise."""
    metadata.setdefault("question", f"Will {market_id[:8]} happen?")
    return StreamedMarket(
        PolymarketSubscription(market_id=market_id, ref_count=1),
        MarketMetadata(market_id=market_id, yes_token_id=yes_asset, **metadata),
        yes_asset,
    )


def settings_for(url: str, **overrides: Any) -> StreamSettings:
    """Fast reconnects; heartbeat and watchdog out of the way unless a test wants them."""
    values: dict[str, Any] = {
        "ping_interval_seconds": 30.0,
        "silence_seconds": 30.0,
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.2,
        "connect_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return StreamSettings(url=url, **values)


@dataclass(frozen=True)
class Lost:
    """One `disconnected` call: the shard, the full reason, when, and what was live then."""

    shard: int
    reason: str
    at: float
    live: frozenset[str]


@dataclass(frozen=True)
class Connect:
    """One `connected` call: the shard, its generation, and what was live then."""

    shard: int
    generation: int
    live: frozenset[str]


@dataclass(frozen=True)
class Heard:
    """One frame handled, or one silence: the shard, its generation, and what was live just
    after it."""

    shard: int
    generation: int
    live: frozenset[str]


class RecordingStream(MarketStream):
    """The real stream; it also records what its shards reported."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost: list[Lost] = []
        self.connects: list[Connect] = []
        #: Every frame handled (`frame`), in order.
        self.heard: list[Heard] = []
        #: Every silence reported (`silent`), in order.
        self.silences: list[Heard] = []

    def connected(self, shard: Shard) -> None:
        super().connected(shard)
        live = frozenset(self.live_markets())
        self.connects.append(Connect(shard.index, shard.generation, live))

    def frame(self, shard: Shard, text: str) -> None:
        super().frame(shard, text)
        self.heard.append(Heard(shard.index, shard.generation, frozenset(self.live_markets())))

    def silent(self, shard: Shard) -> None:
        super().silent(shard)
        live = frozenset(self.live_markets())
        self.silences.append(Heard(shard.index, shard.generation, live))

    def disconnected(self, shard: Shard, reason: str) -> None:
        super().disconnected(shard, reason)
        live = frozenset(self.live_markets())
        self.lost.append(Lost(shard.index, reason, anyio.current_time(), live))


async def wait_for(
    condition: Callable[[], object],
    *,
    within: float = WAIT,
    interval: float = 0.005,
) -> None:
    """Poll `condition` until it is true (TimeoutError after `within` seconds)."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (state of the fake's threads and the stream)
            await anyio.sleep(interval)


async def wait_subscribed(fake: FakeMarketChannel, *assets: str) -> None:
    await anyio.to_thread.run_sync(partial(fake.wait_subscribed, assets, WAIT))


@dataclass
class Running:
    """A running stream and the receive side of its snapshot channel."""

    stream: RecordingStream
    snapshots: MemoryObjectReceiveStream[Polled]
    seen: list[MarketSnapshot] = field(default_factory=list)

    async def next(
        self, market_id: str | None = None, where: Callable[[MarketSnapshot], bool] | None = None
    ) -> MarketSnapshot:
        """The next snapshot (of `market_id`, matching `where`); the others are kept in
        `seen`."""
        with anyio.fail_after(WAIT):
            while True:
                snapshot, _entered = await self.snapshots.receive()
                self.seen.append(snapshot)
                if market_id is not None and snapshot.market_id != market_id:
                    continue
                if where is None or where(snapshot):
                    return snapshot

    def drain(self) -> list[MarketSnapshot]:
        """The snapshots waiting in the channel now (without waiting)."""
        drained: list[MarketSnapshot] = []
        while True:
            try:
                snapshot, _entered = self.snapshots.receive_nowait()
            except anyio.WouldBlock:
                return drained
            drained.append(snapshot)


@asynccontextmanager
async def streaming(
    url: str,
    markets: Mapping[str, StreamedMarket],
    *,
    buffer: int = 100,
    coalesce_seconds: float = 0.05,
    clock: Callable[[], datetime] = lambda: NOW,
    exchange_time: bool = False,
    **settings: Any,
) -> AsyncIterator[Running]:
    """A `RecordingStream` of `markets` on `url`, running until the block ends."""
    async with httpx.AsyncClient(trust_env=False) as http:
        stream = RecordingStream(
            settings_for(url, **settings),
            http,
            coalesce_seconds=coalesce_seconds,
            clock=clock,
            exchange_time=exchange_time,
        )
        stream.set_markets(markets)
        send, receive = anyio.create_memory_object_stream[Polled](buffer)
        with receive:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stream.run, send)
                yield Running(stream, receive)
                tasks.cancel_scope.cancel()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class SilentServer:
    """Listens on loopback and never accepts: the TCP connect succeeds (the kernel's backlog),
    the HTTP upgrade is never answered."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=16)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._listener.getsockname()[1]}/ws/market"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()


class BinaryFrameServer:
    """A WebSocket server that answers every subscription with `payload` as a BINARY frame,
    then keeps the connection open (reading) until the client leaves or `stop()`."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stopping = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="binary-frames", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._listener.getsockname()[1]}/ws/market"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self._lock:
                self._socks.append(sock)
            with sock:
                self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            while not self._stopping.is_set() and (data := sock.recv(65536)):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, ev.Request):
                        sock.sendall(ws.send(ev.AcceptConnection()))
                    elif isinstance(event, ev.TextMessage):
                        self.received.append(event.data)
                        if event.data.startswith("{") and '"market"' in event.data:
                            sock.sendall(ws.send(ev.BytesMessage(data=self.payload)))
                    elif isinstance(event, ev.CloseConnection):
                        sock.sendall(ws.send(event.response()))
                        return
        except OSError:
            return
