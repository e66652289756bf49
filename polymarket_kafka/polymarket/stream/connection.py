"""One market-channel connection: a shard of assets on one WebSocket, kept alive.

`Shard.run` connects (httpx-ws, anyio-native), subscribes to the shard's assets, and then
runs three tasks until the connection dies:

* the reader hands every text frame to the `FrameSink` at once (it never waits on the
  pipeline: the sink decodes and coalesces synchronously). When no data frame (`PONG` does
  not count) arrived for `silence_seconds`, the connection is **silent**: live sockets are
  known to freeze for hours while the heartbeat still works (§8.5), but a connection of quiet
  markets is silent too. So silence alone does not end it: the sink takes its markets off the
  stream (REST polls them at the normal interval), and the connection is given up
  (`give_up`) only when REST shows that one of them traded meanwhile; a data frame ends the
  silence;
* the heartbeat sends the text `PING` every `ping_interval_seconds`, only after the
  subscription (a `PING` first gets the socket closed with 1008, §4.1), and gives the
  connection up when the previous `PING` got no `PONG`;
* the subscription keeper sends `{"operation": "subscribe"|"unsubscribe"}` when the shard's
  assets change while connected.

A connection that ends for any reason (closed by the server, network error, refused upgrade,
given up while silent, missing `PONG`, a send the peer does not take in time, a message over
`MAX_MESSAGE_BYTES`) is reported to the sink, and the shard reconnects after a jittered
exponential backoff (`reconnect_delays`: 1 s doubling to 60 s by default, each wait drawn in
[d/2, d]) and subscribes to its whole current set again. The backoff starts again from the
bottom only after a connection that delivered data and held for `silence_seconds`. An empty
shard ends its task.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketUpgradeError,
    aconnect_ws,
)
from wsproto.events import BytesMessage, Event, TextMessage

from polymarket_kafka.exception_groups import innermost

__all__ = [
    "ConnectionLost",
    "FrameSink",
    "Shard",
    "StreamSettings",
    "disconnect_kind",
    "disconnect_reason",
    "reconnect_delays",
    "subscribe_message",
]

logger = logging.getLogger(__name__)

#: Read size per socket read (not a message size limit: frames larger than this are joined).
_READ_BYTES = 1 << 16
#: The largest message accepted (a dump of 500 books is well under 1 MiB).
MAX_MESSAGE_BYTES = 16 << 20


@dataclass(frozen=True)
class StreamSettings:
    """How the market channel is used (`PolymarketConfig.ws_*`)."""

    url: str
    assets_per_connection: int = 200
    ping_interval_seconds: float = 10.0
    silence_seconds: float = 30.0
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0


class MessageTooLargeError(HTTPXWSException):
    """A message grew past `MAX_MESSAGE_BYTES`: the connection is closed."""


class CappedSession(AsyncWebSocketSession):
    """httpx-ws's session with a bound on a message's size: it would otherwise join the
    fragments of a never-ending message in memory without limit (its `max_message_size_bytes`
    is only the size of one read). Bytes read since the last message handed out count."""

    _unread = 0

    async def _read_stream(self, max_bytes: int) -> bytes:
        data = await super()._read_stream(max_bytes)
        self._unread += len(data)
        if self._unread > MAX_MESSAGE_BYTES:
            raise MessageTooLargeError(f"a message over {MAX_MESSAGE_BYTES} bytes")
        return data

    async def receive(self, timeout: float | None = None) -> Event:  # noqa: ASYNC109 - httpx-ws's
        event = await super().receive(timeout)
        self._unread = 0
        return event


class ConnectionLost(Exception):
    """Why a connection was given up (the reason is the message; no payload, no secret)."""


class FrameSink(Protocol):
    """Where a shard reports to (the stream source). Called on the event loop, never blocks."""

    def connected(self, shard: Shard) -> None: ...

    def frame(self, shard: Shard, text: str) -> None: ...

    def silent(self, shard: Shard) -> None:
        """No data frame for `silence_seconds`: the connection is suspect."""
        ...

    def disconnected(self, shard: Shard, reason: str) -> None:
        """The connection ended, or could not be opened."""
        ...


def subscribe_message(assets: Iterator[str] | list[str]) -> str:
    """The first message of a connection (custom features on: `best_bid_ask`,
    `market_resolved`)."""
    return json.dumps(
        {"assets_ids": sorted(assets), "type": "market", "custom_feature_enabled": True}
    )


def _operation(operation: str, assets: set[str]) -> str:
    return json.dumps(
        {"operation": operation, "assets_ids": sorted(assets), "custom_feature_enabled": True}
    )


def reconnect_delays(
    first: float, cap: float, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """Jittered exponential backoff: the n-th wait is drawn in [d/2, d], d = first * 2**n
    capped at `cap`."""
    ceiling = first
    while True:
        yield ceiling * (0.5 + 0.5 * rand())
        ceiling = min(2 * ceiling, cap)


def disconnect_reason(exc: BaseException, settings: StreamSettings) -> str:
    """Why a connection ended, in one line (no payload, no secret)."""
    if isinstance(exc, ConnectionLost):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"connect timed out after {settings.connect_timeout_seconds:g}s"
    if isinstance(exc, httpx.ConnectError):
        return f"connect failed: {exc}".rstrip(": ")
    if isinstance(exc, WebSocketUpgradeError):
        return f"upgrade refused: HTTP {exc.response.status_code}"
    if isinstance(exc, WebSocketDisconnect):
        return f"closed by the server: {exc.code} {exc.reason}".rstrip()
    if isinstance(exc, HTTPXWSException | OSError | httpx.HTTPError):
        return f"network error: {type(exc).__name__} {exc}".rstrip()
    return f"unexpected error: {type(exc).__name__}: {exc}"


def disconnect_kind(reason: str) -> str:
    """A low-cardinality label for the metrics from a `disconnect_reason`."""
    for prefix, kind in (
        ("silent", "silent"),
        ("no PONG", "no_pong"),
        ("closed by the server", "server_closed"),
        ("network", "network"),
        ("upgrade refused", "refused"),
        ("connect", "connect_failed"),
        ("could not send", "send_timeout"),
    ):
        if reason.startswith(prefix):
            return kind
    return "other"


class Shard:
    """Up to `StreamSettings.assets_per_connection` assets on one connection."""

    def __init__(
        self,
        index: int,
        settings: StreamSettings,
        sink: FrameSink,
        http: httpx.AsyncClient,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.index = index
        self.settings = settings
        self.assets: set[str] = set()
        self.connected = False
        #: Connections opened so far; a quote belongs to the connection it was seen on.
        self.generation = 0
        #: Monotonic time of the last data frame on the current connection.
        self.last_data = 0.0
        self.delivered = False
        self.reconnects = 0
        self._sink = sink
        self._http = http
        self._rand = rand
        self._told: set[str] = set()
        self._changed = anyio.Event()
        self._pong = True
        self._resubscribe: set[str] = set()
        self._session_scope: anyio.CancelScope | None = None
        #: No data frame for `silence_seconds`: suspect, its markets on REST (see `give_up`).
        self.silent = False
        self._give_up: str | None = None
        self._gave_up = anyio.Event()

    @property
    def room(self) -> int:
        return self.settings.assets_per_connection - len(self.assets)

    def add(self, asset_id: str) -> None:
        self.assets.add(asset_id)
        self._changed.set()

    def remove(self, asset_id: str) -> None:
        self.assets.discard(asset_id)
        self._changed.set()

    def resubscribe(self, asset_id: str) -> None:
        """Ask for a fresh `book` of `asset_id` (unsubscribe and subscribe again)."""
        self._told.discard(asset_id)
        self._resubscribe.add(asset_id)
        self._changed.set()

    def give_up(self, reason: str) -> None:
        """End the current connection (it reconnects): REST showed that the markets of this
        silent connection trade, so its silence is a frozen socket, not calm."""
        if self.connected and self._give_up is None:
            self._give_up = reason
            self._gave_up.set()

    async def run(self) -> None:
        """Keep the shard connected until it has no assets (then return)."""
        delays = reconnect_delays(
            self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds, self._rand
        )
        while self.assets:
            started = anyio.current_time()
            reason = await self._connect_once()
            if not self.assets:
                return
            # Back to the first delay only after a connection that delivered and held: a
            # server that sends the dump and closes must still see the backoff grow.
            held = anyio.current_time() - started >= self.settings.silence_seconds
            if self.delivered and held:
                delays = reconnect_delays(
                    self.settings.reconnect_min_seconds,
                    self.settings.reconnect_max_seconds,
                    self._rand,
                )
            delay = next(delays)
            self.reconnects += 1
            logger.warning(
                "market channel connection %d lost (%s); reconnecting in %.1fs",
                self.index,
                reason,
                delay,
                extra={"connection": self.index},
            )
            await anyio.sleep(delay)

    async def _connect_once(self) -> str:
        """One connection, from connect to its end; returns why it ended."""
        self.delivered = False
        reason = "closed"
        ws: AsyncWebSocketSession
        try:
            # The handshake's timeout is httpx's (a cancel scope cannot wrap entering the
            # session: it opens a task group that outlives the scope).
            async with aconnect_ws(
                self.settings.url,
                self._http,
                keepalive_ping_interval_seconds=None,
                max_message_size_bytes=_READ_BYTES,
                session_class=CappedSession,
                timeout=httpx.Timeout(self.settings.connect_timeout_seconds),
            ) as ws:
                reason = await self._session(ws)
        except Exception as exc:
            reason = disconnect_reason(innermost(exc), self.settings)
            if reason.startswith("unexpected"):
                logger.exception(
                    "market channel connection %d: %s",
                    self.index,
                    reason,
                    extra={"connection": self.index},
                )
        self.connected = False
        self.silent = False
        if self.assets:  # an emptied shard just ends
            self._sink.disconnected(self, reason)
        return reason

    async def _session(self, ws: AsyncWebSocketSession) -> str:
        self._told = set(self.assets)
        self._resubscribe.clear()
        self._changed = anyio.Event()
        self._give_up, self._gave_up = None, anyio.Event()
        await self._send(ws, subscribe_message(list(self._told)), "the subscription")
        self.generation += 1
        self.connected = True
        self.last_data = anyio.current_time()
        self._pong = True
        self._sink.connected(self)
        async with anyio.create_task_group() as tasks:
            self._session_scope = tasks.cancel_scope
            tasks.start_soon(self._heartbeat, ws)
            tasks.start_soon(self._keep_subscriptions, ws)
            tasks.start_soon(self._watch_give_up)
            await self._read(ws)
            tasks.cancel_scope.cancel()
        return "shard emptied"

    async def _read(self, ws: AsyncWebSocketSession) -> None:
        silence = self.settings.silence_seconds
        while self.assets:
            remaining = self.last_data + silence - anyio.current_time()
            try:
                event = await ws.receive(timeout=None if self.silent else max(remaining, 0.0))
            except TimeoutError:
                self.silent = True
                self._sink.silent(self)
                continue
            if isinstance(event, TextMessage):
                text = event.data
            elif isinstance(event, BytesMessage):
                text = bytes(event.data).decode("utf-8", errors="replace")
            else:
                continue
            if text.strip() == "PONG":
                self._pong = True
                continue
            self.last_data = anyio.current_time()
            self.delivered = True
            self.silent = False
            self._sink.frame(self, text)

    async def _watch_give_up(self) -> None:
        await self._gave_up.wait()
        raise ConnectionLost(self._give_up or "given up")

    async def _send(self, ws: AsyncWebSocketSession, text: str, what: str) -> None:
        """Send, or give the connection up when the peer does not take it in time (a peer
        that stops reading would otherwise hold this task forever)."""
        limit = max(self.settings.ping_interval_seconds, self.settings.connect_timeout_seconds)
        try:
            with anyio.fail_after(limit):
                await ws.send_text(text)
        except TimeoutError:
            raise ConnectionLost(f"could not send {what} within {limit:g}s") from None

    async def _heartbeat(self, ws: AsyncWebSocketSession) -> None:
        while True:
            await anyio.sleep(self.settings.ping_interval_seconds)
            if not self._pong:
                raise ConnectionLost(
                    f"no PONG within {self.settings.ping_interval_seconds:g}s of a PING"
                )
            self._pong = False
            await self._send(ws, "PING", "a PING")

    async def _keep_subscriptions(self, ws: AsyncWebSocketSession) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            if not self.assets:
                # Emptied: end the session (the reader may be waiting on a quiet socket).
                assert self._session_scope is not None
                self._session_scope.cancel()
                return
            fresh = set(self._resubscribe)
            self._resubscribe.clear()
            gone = (self._told - self.assets) | (fresh & self.assets)
            if gone:
                await self._send(ws, _operation("unsubscribe", gone), "an unsubscription")
                self._told -= gone
            new = self.assets - self._told
            if new:
                await self._send(ws, _operation("subscribe", new), "a subscription")
                self._told |= new
