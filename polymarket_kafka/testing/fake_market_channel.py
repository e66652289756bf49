"""A fake of Polymarket's CLOB market channel WebSocket (`/ws/market`) on real loopback TCP.

Why this file is over 400 lines: one scriptable fake of the whole channel (handshake,
subscription protocol, live message shapes, pushes, misbehaviour) that client tests and
benchmarks drive as one object.

It speaks shared/polymarket-api.md §4: a JSON subscription first (anything else, `PING`
included, closes with `1008 "invalid subscription payload"`), `PING` → `PONG`, live
`{"operation": "subscribe"|"unsubscribe"}` changes, the initial dump as ONE array frame of
`book`s for the known assets (`[]` if none), bids ascending and asks descending (best LAST),
numbers and timestamps as strings. Pushes are single-object frames.

    with FakeMarketChannel() as fake:
        fake.add_asset(yes, market=cid, best_bid=0.48, best_ask=0.52)
        ...                                     # a client connects to fake.url, subscribes
        fake.wait_subscribed([yes])             # via anyio.to_thread.run_sync in async tests
        assert fake.move(yes, 0.60, 0.62) == 1  # one connection was sent the price_change

Design: stdlib sockets and `wsproto` in daemon threads (one accepts, one per connection), so
the server runs whatever the test's event loop. A push returns once written to every target
socket, so a `PING` sent afterwards is answered after the pushed frames. One lock guards the
shared state and is never held while writing; a lock per connection serialises its frames.

Live misbehaviour (§4.1, §8.5): `freeze()` (PONG answered, no data), past
`max_assets_per_connection` a connection gets no data (dumps included) until it unsubscribes
below the cap, `close_all()`, `drop_all()`, `refuse_connections()`, `answer_pings(False)`,
`flood()`. Undocumented, so chosen here: books have three levels a side, one tick apart; a
`subscribe` operation (or a second full subscription) dumps every asset it lists; malformed
messages after the subscription are recorded and ignored; `stop()` sends no close frames.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self

import wsproto.events as ev
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = ["ConnectionInfo", "FakeMarketChannel"]

PATH = "/ws/market"
INVALID_SUBSCRIPTION = "invalid subscription payload"
MAX_MESSAGES = 10_000  # client messages kept per connection, oldest dropped
_BOOK_DEPTH = 3


@dataclass(frozen=True)
class ConnectionInfo:
    """A snapshot of one connection, as `FakeMarketChannel.connections()` returns it."""

    id: int
    assets: frozenset[str]
    custom_feature: bool
    pings: int
    messages: list[str]  # raw text messages received from the client, in order
    open: bool


@dataclass
class _Asset:
    asset_id: str
    market: str
    best_bid: Decimal
    best_ask: Decimal
    last_trade: Decimal | None
    tick: Decimal = Decimal("0.01")


@dataclass(eq=False)
class _Conn:
    id: int
    sock: socket.socket
    ws: WSConnection = field(default_factory=lambda: WSConnection(ConnectionType.SERVER))
    lock: threading.Lock = field(default_factory=threading.Lock)  # `ws` and writes to `sock`
    assets: dict[str, None] = field(default_factory=dict)  # an insertion-ordered set
    subscribed: bool = False
    custom_feature: bool = False
    pings: int = 0
    partial: list[str] = field(default_factory=list)  # fragments of a text message
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_MESSAGES))
    open: bool = False  # upgraded, and neither closed nor dropped

    def info(self) -> ConnectionInfo:
        feature, msgs = self.custom_feature, list(self.messages)
        return ConnectionInfo(self.id, frozenset(self.assets), feature, self.pings, msgs, self.open)


def _num(value: float | Decimal) -> str:
    exact = value if isinstance(value, Decimal) else Decimal(str(value))
    return format(exact.normalize(), "f")  # "0.5", not "0.50" or "5E-1"


def _now_ms() -> str:
    return str(time.time_ns() // 1_000_000)


def _hex(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _dumps(payload: object) -> str:
    return json.dumps(payload, separators=(",", ":"))


def _event(asset: _Asset, event_type: str, stamp: str = "", **fields: object) -> str:
    head = {"event_type": event_type, "asset_id": asset.asset_id, "market": asset.market}
    return _dumps({**head, **fields, "timestamp": stamp or _now_ms()})


def _price_change(
    asset_id: str, market: str, bid: Decimal, ask: Decimal, *, stamp: str = "", depth: int = 0
) -> str:
    """A current-shape `price_change`: the BUY level `depth` cents under the best bid."""
    price = bid - depth * Decimal("0.01")
    item = {"asset_id": asset_id, "price": _num(price), "size": str(100 + 50 * depth)}
    item.update(side="BUY", hash=_hex(asset_id, price, time.time_ns())[:40])
    item.update(best_bid=_num(bid), best_ask=_num(ask))
    change = {"event_type": "price_change", "market": market, "price_changes": [item]}
    return _dumps({**change, "timestamp": stamp or _now_ms()})


def _parse(text: str, *, initial: bool) -> tuple[str, list[str], dict[str, Any]] | None:
    """(operation, assets, message) of a valid subscription or operation message, else None."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    assets = message.get("assets_ids")
    if not isinstance(assets, list) or not all(isinstance(a, str) for a in assets):
        return None
    flags = (message.get(k, False) for k in ("custom_feature_enabled", "initial_dump"))
    if not all(isinstance(f, bool) for f in flags) or message.get("level", 2) not in (1, 2, 3):
        return None
    kind, operation = message.get("type"), message.get("operation")
    if isinstance(kind, str) and kind.lower() == "market":
        return "subscribe", assets, message
    if not initial and operation in ("subscribe", "unsubscribe"):
        return operation, assets, message
    return None


class FakeMarketChannel:
    """A scriptable fake of the market channel. Start and stop it with `with`.

    Every method is thread-safe. Pushes (`move`, `trade`, `resolve`, `tick_size_change`,
    `send_raw`) return the number of connections the frame was written to.
    """

    def __init__(self, *, max_assets_per_connection: int | None = None) -> None:
        self._max_assets = max_assets_per_connection
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._assets: dict[str, _Asset] = {}
        self._conns: dict[int, _Conn] = {}  # every live TCP connection, upgraded or not
        self._ids = itertools.count(1)
        self._accepted = 0
        self._frozen = False
        self._answer_pings = True
        self._refusals: deque[int] = deque()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> Self:
        if self._listener is None:
            self._stopping.clear()
            self._listener = socket.create_server(("127.0.0.1", 0))
            self._listener.settimeout(0.05)  # how often the accept thread checks for stop()
            self._spawn(self._accept_loop, "fake-market-channel", self._listener)
        return self

    def stop(self) -> None:
        """Shut every connection (no close frame), then join the threads (5 s at most)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        with self._lock:
            conns, threads = list(self._conns.values()), list(self._threads)
        for conn in conns:
            self._shutdown(conn)
        deadline = time.monotonic() + 5
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        listener.close()
        for conn in conns:
            conn.sock.close()  # each connection's thread has normally closed it already

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`ws://127.0.0.1:<port>/ws/market`."""
        if self._listener is None:
            raise RuntimeError("FakeMarketChannel is not running")
        host, port = self._listener.getsockname()[:2]
        return f"ws://{host}:{port}{PATH}"

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def add_asset(
        self,
        asset_id: str,
        *,
        market: str,
        best_bid: float,
        best_ask: float,
        last_trade: float | None = None,
    ) -> None:
        """A known asset, whose book goes into dumps (three levels a side, one tick apart)."""
        bid, ask = Decimal(str(best_bid)), Decimal(str(best_ask))
        trade = None if last_trade is None else Decimal(str(last_trade))
        with self._lock:
            self._assets[asset_id] = _Asset(asset_id, market, bid, ask, trade)

    def move(
        self, asset_id: str, best_bid: float, best_ask: float, *, timestamp_ms: int | None = None
    ) -> int:
        """A `price_change`, followed by a `best_bid_ask` on custom-feature connections."""
        stamp = _now_ms() if timestamp_ms is None else str(timestamp_ms)
        with self._lock:
            asset = self._asset(asset_id)
            bid = asset.best_bid = Decimal(str(best_bid))
            ask = asset.best_ask = Decimal(str(best_ask))
            plain = _price_change(asset_id, asset.market, bid, ask, stamp=stamp)
            quote = {"best_bid": _num(bid), "best_ask": _num(ask), "spread": _num(ask - bid)}
            custom = _event(asset, "best_bid_ask", stamp, **quote)
            targets = self._targets(asset_id)
        return sum(self._send(c, plain, *[custom] * c.custom_feature) for c in targets)

    def trade(self, asset_id: str, price: float) -> int:
        """A `last_trade_price` (and the book's `last_trade_price` from now on)."""
        with self._lock:
            asset = self._asset(asset_id)
            asset.last_trade = Decimal(str(price))
            fill = {"price": _num(price), "side": "BUY", "size": "10", "fee_rate_bps": "0"}
            text = _event(asset, "last_trade_price", **fill)
            targets = self._targets(asset_id)
        return self._broadcast(targets, text)

    def tick_size_change(self, asset_id: str, new_tick: str) -> int:
        """A `tick_size_change`; later books use the new tick."""
        with self._lock:
            asset = self._asset(asset_id)
            old, asset.tick = asset.tick, Decimal(new_tick)
            ticks = {"old_tick_size": _num(old), "new_tick_size": new_tick}
            text = _event(asset, "tick_size_change", **ticks)
            targets = self._targets(asset_id)
        return self._broadcast(targets, text)

    def resolve(self, market: str, winning_asset_id: str) -> int:
        """A `market_resolved`, to custom-feature connections subscribed to the market."""
        with self._lock:
            assets = [a.asset_id for a in self._assets.values() if a.market == market]
            if winning_asset_id not in assets:
                raise KeyError(f"{winning_asset_id!r} is not a known asset of market {market!r}")
            outcome = "Yes" if assets.index(winning_asset_id) == 0 else "No"
            message: dict[str, object] = {"event_type": "market_resolved"}
            message.update(id=str(int(_hex(market)[:6], 16)), market=market, assets_ids=assets)
            message.update(winning_asset_id=winning_asset_id, winning_outcome=outcome)
            message.update(timestamp=_now_ms(), tags=[])
            targets = [c for c in self._targets(*assets) if c.custom_feature]
        return self._broadcast(targets, _dumps(message))

    def send_raw(self, text: str, *, asset_id: str | None = None) -> int:
        """Any text, to connections subscribed to `asset_id` (to all subscribed ones if None)."""
        with self._lock:
            targets = self._targets() if asset_id is None else self._targets(asset_id)
        return self._broadcast(targets, text)

    def flood(
        self,
        asset_ids: Sequence[str],
        *,
        per_second: float,
        seconds: float,
        best_bid: float = 0.5,
        best_ask: float = 0.52,
    ) -> threading.Thread:
        """`price_change` frames round-robin over `asset_ids` at `per_second`, from a thread.

        Every frame carries exactly `best_bid`/`best_ask` (never a move); only the changed
        level below them varies. The fake's books are left alone. Join the thread to wait.
        """
        if per_second <= 0 or not asset_ids:
            raise ValueError("flood() needs per_second > 0 and at least one asset")
        assets, bid, ask = list(asset_ids), Decimal(str(best_bid)), Decimal(str(best_ask))

        def run() -> None:
            start = time.monotonic()
            for n in itertools.count():
                due = n / per_second
                if due >= seconds or self._stopping.wait(start + due - time.monotonic()):
                    return
                asset_id = assets[n % len(assets)]
                with self._lock:
                    known = self._assets.get(asset_id)
                    market = known.market if known else "0x" + _hex(asset_id)
                    text = _price_change(asset_id, market, bid, ask, depth=1 + n % _BOOK_DEPTH)
                    targets = self._targets(asset_id)
                self._broadcast(targets, text)

        return self._spawn(run, "fake-market-channel-flood")

    def connections(self) -> list[ConnectionInfo]:
        """The open connections, oldest first."""
        with self._lock:
            return [c.info() for c in sorted(self._conns.values(), key=lambda c: c.id) if c.open]

    @property
    def connection_count_total(self) -> int:
        """WebSocket connections accepted (upgraded) since start; refused ones don't count."""
        with self._lock:
            return self._accepted

    def wait_subscribed(self, asset_ids: Iterable[str], timeout: float = 5.0) -> None:
        """Block until each asset is subscribed on an open connection (else TimeoutError)."""
        wanted = set(asset_ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while missing := wanted.difference(*(c.assets for c in self._conns.values() if c.open)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"not subscribed after {timeout} s: {sorted(missing)}")
                self._changed.wait(left)

    def close_all(self, code: int = 1011, reason: str = "") -> int:
        """Close every open connection with a close frame; returns how many."""
        with self._lock:
            conns = [c for c in self._conns.values() if c.open]
        closed = 0
        for conn in conns:
            if conn.lock.acquire(timeout=2):  # else a write is stuck on a client not reading
                closed += self._close_locked(conn, code, reason)
                conn.lock.release()
            else:
                self._shutdown(conn)
        return closed

    def drop_all(self) -> int:
        """Shut every open connection's socket, with no close frame; returns how many."""
        with self._lock:
            conns = [c for c in self._conns.values() if c.open]
        for conn in conns:
            self._shutdown(conn)
        return len(conns)

    def freeze(self, frozen: bool = True) -> None:
        """While frozen, connections stay open and PONG is answered, but no data goes out."""
        with self._lock:
            self._frozen = frozen

    def answer_pings(self, answer: bool) -> None:
        """False: a `PING` is recorded but gets no `PONG`."""
        with self._lock:
            self._answer_pings = answer

    def refuse_connections(self, count: int, status: int = 503) -> None:
        """Answer the next `count` upgrade requests with HTTP `status` instead of 101."""
        with self._lock:
            self._refusals.extend([status] * count)

    # --- internals ---------------------------------------------------------------------------
    # Lock order: a connection's lock, then self._lock; never the other way round.

    def _asset(self, asset_id: str) -> _Asset:
        asset = self._assets.get(asset_id)
        if asset is None:
            raise KeyError(f"unknown asset {asset_id!r}: add_asset() it first")
        return asset

    def _gets_data(self, conn: _Conn) -> bool:  # self._lock held
        stalled = self._max_assets is not None and len(conn.assets) > self._max_assets
        return conn.open and conn.subscribed and not self._frozen and not stalled

    def _targets(self, *asset_ids: str) -> list[_Conn]:  # self._lock held; no ids: all
        conns = [c for c in self._conns.values() if self._gets_data(c)]
        return [c for c in conns if not asset_ids or any(a in c.assets for a in asset_ids)]

    def _book(self, asset: _Asset) -> dict[str, object]:  # self._lock held
        def levels(best: Decimal, step: Decimal) -> list[dict[str, str]]:
            at = ((best + k * step, k) for k in reversed(range(_BOOK_DEPTH)))  # worst first
            return [{"price": _num(p), "size": str(100 * (k + 1))} for p, k in at if 0 < p < 1]

        bids, asks = levels(asset.best_bid, -asset.tick), levels(asset.best_ask, asset.tick)
        book: dict[str, object] = {"event_type": "book", "asset_id": asset.asset_id}
        book.update(market=asset.market, bids=bids, asks=asks, timestamp=_now_ms())
        book.update(hash="0x" + _hex(asset.asset_id, bids, asks)[:40], tick_size=_num(asset.tick))
        book.update(last_trade_price="" if asset.last_trade is None else _num(asset.last_trade))
        return book

    def _broadcast(self, targets: list[_Conn], text: str) -> int:
        return sum(self._send(conn, text) for conn in targets)

    def _send(self, conn: _Conn, *texts: str) -> int:
        """Write `texts` to `conn`, one frame each; 1 if written, 0 if it is closed."""
        with conn.lock:
            return self._send_locked(conn, *texts)

    def _send_locked(self, conn: _Conn, *texts: str) -> int:  # conn.lock held
        if not conn.open:
            return 0
        try:
            conn.sock.sendall(b"".join(conn.ws.send(ev.TextMessage(data=t)) for t in texts))
        except (OSError, LocalProtocolError):
            conn.open = False
            return 0
        return 1

    def _close_locked(self, conn: _Conn, code: int, reason: str) -> int:  # conn.lock held
        if not conn.open:
            return 0
        conn.open = False
        try:
            conn.sock.sendall(conn.ws.send(ev.CloseConnection(code=code, reason=reason)))
            conn.sock.shutdown(socket.SHUT_WR)  # keep reading until the client's close reply
        except (OSError, LocalProtocolError):
            return 0
        return 1

    def _shutdown(self, conn: _Conn) -> None:
        conn.open = False
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the connection's thread

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(next(self._ids), sock)
            with self._lock:  # stop() sets _stopping, then lists the connections to shut
                if self._stopping.is_set():
                    sock.close()
                    return
                self._conns[conn.id] = conn
            self._spawn(self._serve, f"fake-market-channel-{conn.id}", conn)

    def _serve(self, conn: _Conn) -> None:
        try:
            while not self._stopping.is_set() and (data := conn.sock.recv(65536)):
                with conn.lock:
                    conn.ws.receive_data(data)
                    events = list(conn.ws.events())
                for event in events:
                    if not self._on_event(conn, event):
                        return
        except (OSError, RemoteProtocolError, LocalProtocolError):
            pass
        finally:
            with self._changed:
                conn.open = False
                self._conns.pop(conn.id, None)
                self._changed.notify_all()
            conn.sock.close()

    def _on_event(self, conn: _Conn, event: ev.Event) -> bool:
        """Handle one client event; False once the connection is finished."""
        if isinstance(event, ev.Request):
            return self._on_upgrade(conn, event)
        if isinstance(event, ev.CloseConnection):
            with conn.lock:
                conn.open = False
                if conn.ws.state is ConnectionState.REMOTE_CLOSING:
                    conn.sock.sendall(conn.ws.send(event.response()))
            return False
        if isinstance(event, ev.Ping):
            with conn.lock:
                conn.sock.sendall(conn.ws.send(event.response()))
        elif isinstance(event, ev.TextMessage):
            conn.partial.append(event.data)  # wsproto hands fragments over as they arrive
            if event.message_finished:
                text = "".join(conn.partial)
                conn.partial.clear()
                self._on_text(conn, text)
        return True

    def _on_upgrade(self, conn: _Conn, request: ev.Request) -> bool:
        with self._lock:
            status = self._refusals.popleft() if self._refusals else None
            if status is None and request.target.split("?")[0] != PATH:
                status = 404
            if status is None:
                self._accepted += 1
                conn.open = True
        with conn.lock:
            if status is not None:
                conn.sock.sendall(conn.ws.send(ev.RejectConnection(status_code=status)))
                return False
            conn.sock.sendall(conn.ws.send(ev.AcceptConnection()))
        return True

    def _on_text(self, conn: _Conn, text: str) -> None:
        # conn.lock throughout: a dump goes out before any push computed after the subscription
        with conn.lock:
            reply, refuse = self._consume(conn, text)
            if refuse:
                self._close_locked(conn, 1008, INVALID_SUBSCRIPTION)
            elif reply is not None:
                self._send_locked(conn, reply)

    def _consume(self, conn: _Conn, text: str) -> tuple[str | None, bool]:
        """Record a client message: (the frame to answer, whether to refuse the subscription)."""
        with self._changed:
            conn.messages.append(text)
            if text == "PING":
                conn.pings += 1
                pong = conn.subscribed and self._answer_pings
                return ("PONG" if pong else None), not conn.subscribed
            parsed = _parse(text, initial=not conn.subscribed)
            if parsed is None:
                return None, not conn.subscribed  # ignored once subscribed
            operation, assets, message = parsed
            conn.subscribed = True
            conn.custom_feature = message.get("custom_feature_enabled", conn.custom_feature)
            if operation == "unsubscribe":
                for asset_id in assets:
                    conn.assets.pop(asset_id, None)
            else:
                conn.assets.update(dict.fromkeys(assets))
            self._changed.notify_all()
            dump = operation == "subscribe" and message.get("initial_dump", True)
            if not dump or not self._gets_data(conn):
                return None, False
            known = (self._assets.get(a) for a in dict.fromkeys(assets))
            return _dumps([self._book(a) for a in known if a is not None]), False
