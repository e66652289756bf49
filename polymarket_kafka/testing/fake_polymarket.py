"""A fake Polymarket (CLOB `POST /midpoints` + Gamma `GET /markets`) on real loopback HTTP.

Why this file is over 400 lines: a test helper: one scriptable fake of both Polymarket
endpoints (state, handler, server, CLI entry point) that tests and the benchmark drive as
one object.

For end-to-end tests and benchmarks: the service talks real HTTP to 127.0.0.1 on a free port,
through the same client code as in production, with the response shapes of the live API
(shared/polymarket-api.md §1.5, §2.1): Gamma's JSON-arrays-inside-strings and string volumes,
CLOB's string prices, `{"error": ...}` bodies, the implicit `closed=false` filter, the 100-row
`limit` cap and the 500-item `/midpoints` cap.

    with FakePolymarketServer(n_markets=3, latency_seconds=0.05) as fake:
        config = fake.polymarket_config()
        fake.set_price(fake.markets[0].condition_id, 0.71)   # script a move
        ...
        assert fake.request_count("POST /midpoints") == 2

The server is stdlib `http.server.ThreadingHTTPServer` in a daemon thread (one thread per
connection, HTTP/1.1 keep-alive), so a benchmark with 10,000 markets costs a dict lookup per
token. Latency is a `time.sleep` in the handler thread, so concurrent requests overlap like
they would against the real API.

`GET /midpoint?token_id=...` (the single-token form, `{"mid": "0.55"}`) is served too, for the
benchmark's naive one-request-per-market loop; the service itself never calls it.

As a separate process (benchmarks, so the server's CPU and memory are not the client's):

    python -m polymarket_kafka.testing.fake_polymarket --markets 10000 --latency-ms 50

prints `http://127.0.0.1:<port>` on the first stdout line, serves until its stdin closes (so it
dies with its parent), then prints one JSON line `{"requests": {"POST /midpoints": 20, ...}}`.

Assumption (not documented by Polymarket): when one token of a `POST /midpoints` batch has no
order book (unknown, closed, or `remove_orderbook`), the whole request answers 404, which is
what the client's bisection is built for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from http.server import ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.testing.loopback import KeepAliveHandler, LoopbackHttpServer

__all__ = ["FakeMarket", "FakePolymarketServer", "main"]

MAX_MIDPOINTS = 500
GAMMA_LIMIT_CAP = 100
_NO_ORDERBOOK = "No orderbook exists for the requested token id"


def _token_id(seed: str) -> str:
    # Real token ids are uint256 values written in decimal (~77 digits).
    return str(int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big"))


@dataclass(frozen=True)
class FakeMarket:
    """One synthetic binary market. Ids are deterministic in `index`."""

    index: int
    condition_id: str
    question: str
    yes_token_id: str
    no_token_id: str
    closed: bool = False
    winner_yes: bool | None = None

    @classmethod
    def make(cls, index: int) -> FakeMarket:
        return cls(
            index=index,
            condition_id="0x" + hashlib.sha256(f"fake-market-{index}".encode()).hexdigest(),
            question=f"Will synthetic event #{index} happen?",
            yes_token_id=_token_id(f"fake-market-{index}-yes"),
            no_token_id=_token_id(f"fake-market-{index}-no"),
        )


@dataclass(frozen=True)
class _ScriptedResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


class _State:
    """Everything the handler threads read and the test thread scripts, under one lock."""

    def __init__(self, markets: list[FakeMarket], price: Callable[[int], float]) -> None:
        self.lock = threading.Lock()
        self.markets = markets
        self.by_condition = {m.condition_id: m for m in markets}
        self.by_token = {m.yes_token_id: m for m in markets}
        self.by_token.update({m.no_token_id: m for m in markets})
        self.yes_price: dict[str, Decimal] = {
            m.condition_id: Decimal(str(price(m.index))) for m in markets
        }
        self.no_book: set[str] = set()
        self.scripted: dict[str, deque[_ScriptedResponse]] = {}
        self.counts: Counter[str] = Counter()
        self.latency = 0.0

    def token_price(self, token_id: str) -> Decimal | None:
        market = self.by_token.get(token_id)
        if market is None or market.closed or token_id in self.no_book:
            return None
        yes = self.yes_price[market.condition_id]
        return yes if token_id == market.yes_token_id else Decimal(1) - yes

    def gamma_item(self, market: FakeMarket) -> dict[str, Any]:
        yes = self.yes_price[market.condition_id]
        if market.closed:
            prices = ["1", "0"] if market.winner_yes else ["0", "1"]
        else:
            prices = [str(yes), str(Decimal(1) - yes)]
        volume = Decimal(1000 + 37 * market.index) + Decimal("0.25")
        item: dict[str, Any] = {
            "id": str(500000 + market.index),
            "question": market.question,
            "conditionId": market.condition_id,
            "slug": f"synthetic-event-{market.index}",
            "endDate": "2030-01-01T12:00:00Z",
            "outcomes": '["Yes", "No"]',
            "outcomePrices": json.dumps(prices),
            "clobTokenIds": json.dumps([market.yes_token_id, market.no_token_id]),
            "active": True,
            "closed": market.closed,
            "archived": False,
            "events": [
                {
                    "id": str(900000 + market.index),
                    "tags": [{"id": "2", "label": "Politics", "slug": "politics"}],
                }
            ],
        }
        if not market.closed:
            # Resolved markets lose their numeric fields on Gamma (§2.1).
            item.update(
                volume=str(volume),
                volumeNum=float(volume),
                liquidity="2500.5",
                liquidityNum=2500.5,
                spread=0.01,
                bestBid=float(yes) - 0.005,
                bestAsk=float(yes) + 0.005,
            )
        return item


def _json_bytes(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class _Handler(KeepAliveHandler):
    server: _Server

    def _reply(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        names = {name.lower() for name, _ in headers}
        for name, value in headers:
            self.send_header(name, value)
        if "content-type" not in names:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _begin(self, method: str) -> tuple[str, dict[str, list[str]], _ScriptedResponse | None]:
        parts = urlsplit(self.path)
        state = self.server.state
        with state.lock:
            state.counts[f"{method} {parts.path}"] += 1
            queue = state.scripted.get(parts.path)
            scripted = queue.popleft() if queue else None
            latency = state.latency
        if latency > 0:
            time.sleep(latency)
        return parts.path, parse_qs(parts.query), scripted

    def do_POST(self) -> None:
        path, _, scripted = self._begin("POST")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if scripted is not None:
            self._reply(scripted.status, scripted.body, scripted.headers)
        elif path != "/midpoints":
            self._reply(404, _json_bytes({"error": "not found"}))
        else:
            self._reply(*self._midpoints(raw))

    def do_GET(self) -> None:
        path, query, scripted = self._begin("GET")
        if scripted is not None:
            self._reply(scripted.status, scripted.body, scripted.headers)
        elif path == "/markets":
            self._reply(200, _json_bytes(self._gamma_markets(query)))
        elif path == "/midpoint":
            self._reply(*self._midpoint(query))
        else:
            self._reply(404, _json_bytes({"error": "not found"}))

    def _midpoints(self, raw: bytes) -> tuple[int, bytes]:
        try:
            items = json.loads(raw)
            tokens = [str(item["token_id"]) for item in items]
        except (ValueError, TypeError, KeyError):
            return 400, _json_bytes({"error": "Invalid payload"})
        if len(tokens) > MAX_MIDPOINTS:
            return 400, _json_bytes({"error": "Payload exceeds the limit"})
        state = self.server.state
        result: dict[str, str] = {}
        with state.lock:
            for token_id in tokens:
                price = state.token_price(token_id)
                if price is None:
                    return 404, _json_bytes({"error": _NO_ORDERBOOK})
                result[token_id] = str(price)
        return 200, _json_bytes(result)

    def _midpoint(self, query: Mapping[str, list[str]]) -> tuple[int, bytes]:
        token_id = query.get("token_id", [""])[-1]
        if not token_id:
            return 400, _json_bytes({"error": "Invalid payload"})
        state = self.server.state
        with state.lock:
            price = state.token_price(token_id)
        if price is None:
            return 404, _json_bytes({"error": _NO_ORDERBOOK})
        return 200, _json_bytes({"mid": str(price)})

    def _gamma_markets(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        want_closed = query.get("closed", ["false"])[-1].lower() == "true"
        try:
            limit = min(int(query.get("limit", ["20"])[-1]), GAMMA_LIMIT_CAP)
        except ValueError:
            limit = 20
        state = self.server.state
        with state.lock:
            if "condition_ids" in query:
                found = (state.by_condition.get(cid) for cid in query["condition_ids"])
                candidates = [m for m in found if m is not None]
            else:
                candidates = state.markets
            # Implicit closed=false: closed markets only show up with closed=true.
            return [state.gamma_item(m) for m in candidates if m.closed == want_closed][:limit]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)


class FakePolymarketServer(LoopbackHttpServer):
    """A scriptable fake of the two Polymarket endpoints the service uses.

    `n_markets` synthetic markets; `price(index)` gives each one's initial YES price
    (default: spread over 0.10..0.89). Start and stop it with `with` (or `start()`/`stop()`).
    All methods are thread-safe and may be called while the server runs.
    """

    def __init__(
        self,
        n_markets: int = 3,
        *,
        latency_seconds: float = 0.0,
        price: Callable[[int], float] | None = None,
    ) -> None:
        markets = [FakeMarket.make(i) for i in range(n_markets)]
        self._state = _State(markets, price or (lambda i: round(0.10 + (i % 80) / 100, 4)))
        self._state.latency = latency_seconds
        super().__init__()

    thread_name = "fake-polymarket"

    def _make_server(self) -> _Server:
        return _Server(self._state)

    # --- markets and scripting -------------------------------------------------------------

    @property
    def markets(self) -> list[FakeMarket]:
        with self._state.lock:
            return list(self._state.markets)

    def subscriptions(self, now: datetime | None = None) -> list[PolymarketSubscription]:
        """One active subscription per market (`ref_count=1`)."""
        at = now or datetime(2024, 11, 5, tzinfo=UTC)
        return [
            PolymarketSubscription(
                market_id=m.condition_id, ref_count=1, created_at=at, updated_at=at
            )
            for m in self.markets
        ]

    def _market(self, market_or_token_id: str) -> FakeMarket:
        market = self._state.by_condition.get(market_or_token_id) or self._state.by_token.get(
            market_or_token_id
        )
        if market is None:
            raise KeyError(f"unknown market or token id {market_or_token_id!r}")
        return market

    def set_price(self, market_or_token_id: str, price: float | str) -> None:
        """Set a market's YES midpoint (given its condition id or YES token id), in [0, 1].

        Given the NO token id, sets that token's price (the YES side becomes the complement).
        """
        value = Decimal(str(price))
        if not Decimal(0) <= value <= Decimal(1):
            raise ValueError(f"price must be in [0, 1], got {price!r}")
        with self._state.lock:
            market = self._market(market_or_token_id)
            if market_or_token_id == market.no_token_id:
                value = Decimal(1) - value
            self._state.yes_price[market.condition_id] = value

    def price(self, market_or_token_id: str) -> Decimal:
        """The current YES midpoint of a market."""
        with self._state.lock:
            return self._state.yes_price[self._market(market_or_token_id).condition_id]

    def close_market(self, condition_id: str, *, winner_yes: bool = True) -> None:
        """Resolve a market: Gamma shows it only with `closed=true` and its book disappears."""
        with self._state.lock:
            market = replace(self._market(condition_id), closed=True, winner_yes=winner_yes)
            self._state.markets[market.index] = market
            self._state.by_condition[market.condition_id] = market
            self._state.by_token[market.yes_token_id] = market
            self._state.by_token[market.no_token_id] = market

    def remove_orderbook(self, token_id: str) -> None:
        """Make `POST /midpoints` answer 404 for any batch containing `token_id`."""
        with self._state.lock:
            self._state.no_book.add(token_id)

    def fail_next(
        self,
        path: str,
        status: int,
        *,
        body: bytes | str | Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests to `path` (`/midpoints`, `/markets`) with `status`.

        `body` defaults to `{"error": "scripted failure"}`; a str/bytes body is sent as is
        (set a `Content-Type` header, e.g. `text/html` for a Cloudflare page).
        """
        if body is None:
            body = {"error": "scripted failure"}
        raw = body.encode() if isinstance(body, str) else body
        content = raw if isinstance(raw, bytes) else _json_bytes(dict(raw))
        response = _ScriptedResponse(status, content, tuple((headers or {}).items()))
        with self._state.lock:
            self._state.scripted.setdefault(path, deque()).extend([response] * times)

    def set_latency(self, seconds: float) -> None:
        with self._state.lock:
            self._state.latency = seconds

    def request_count(self, endpoint: str | None = None) -> int:
        """Requests received, e.g. for `"POST /midpoints"` or `"GET /markets"`, or in total."""
        with self._state.lock:
            if endpoint is None:
                return sum(self._state.counts.values())
            return self._state.counts[endpoint]

    def request_counts(self) -> dict[str, int]:
        """Requests received so far, by `"METHOD /path"`."""
        with self._state.lock:
            return dict(sorted(self._state.counts.items()))


# --- command line ------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Serve a fake Polymarket until `stdin` reaches end of file (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m polymarket_kafka.testing.fake_polymarket",
        description="Serve a fake Polymarket on loopback until stdin closes.",
    )
    parser.add_argument("--markets", type=int, default=3, help="synthetic markets (default 3)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every response (default 0)"
    )
    args = parser.parse_args(argv)
    if args.markets < 0 or args.latency_ms < 0:
        parser.error("--markets and --latency-ms must be >= 0")
    source = sys.stdin if stdin is None else stdin
    sink = sys.stdout if stdout is None else stdout
    with FakePolymarketServer(args.markets, latency_seconds=args.latency_ms / 1000) as fake:
        print(fake.url, file=sink, flush=True)
        try:
            while source.readline():
                pass
        except KeyboardInterrupt:
            pass
        counts = fake.request_counts()
    print(json.dumps({"requests": counts}), file=sink, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
