"""The operator's dashboard on the ops server: real hypercorn on a loopback port, real HTTP.

Every served test runs on trio and asyncio (hypercorn has an implementation for each). The
page's static files are written separately: a test that needs one skips while it is absent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import SimpleNamespace
from typing import Any, cast

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from polymarket_kafka.kafka.delivery import DeliveryStats
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent
from polymarket_kafka.ops import http_server
from polymarket_kafka.ops.board import MAX_EVENTS, MarketBoard
from polymarket_kafka.ops.dashboard import (
    API_ENDPOINTS,
    DEFAULT_EVENTS,
    PAGE_FILES,
    SECURITY_HEADERS,
    Dashboard,
    _limit,
)
from polymarket_kafka.ops.health import ComponentStatus, ServiceHealth
from polymarket_kafka.ops.http_server import ENDPOINTS, OpsApp, serve_ops
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.ruleset.loader import load_rules_text
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.service.streaming import StreamCoordinator
from polymarket_kafka.subscriptions import ActiveSubscriptions
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.factories import ONE_POLL_YAML, make_event

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
A = "0x" + "a" * 64
B = "0x" + "b" * 64
#: Market-supplied strings are untrusted HTML.
HOSTILE = "<script>alert(1)</script> & <img src=x onerror=alert(1)> \"quoted\" 'single'"
RULES_YAML = "version: 1\ndefaults:\n  watch: {max_spread: 0.05}\n"
SECRET = "hunter2-very-secret"
#: Generous: a busy two-core machine runs these beside the rest of the suite.
TIMEOUT = 30
CLIENT_TIMEOUT = httpx.Timeout(TIMEOUT)


@dataclass
class Clock:
    """The dashboard's wall clock, moved by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Toggle:
    """A readiness check whose status the test flips."""

    ok: bool = True
    calls: list[bool] = field(default_factory=list)

    def __call__(self) -> ComponentStatus:
        self.calls.append(self.ok)
        return ComponentStatus(self.ok, "1/1 brokers up" if self.ok else f"down ({SECRET})")


def snap(market_id: str, price: float, minutes: float = 0, **fields: Any) -> MarketSnapshot:
    values: dict[str, Any] = {
        "market_id": market_id,
        "question": f"Question {market_id[:6]}?",
        "yes_price": price,
        "taken_at": T0 + timedelta(minutes=minutes),
        "liquidity": 50_000.0,
        "category": "Politics",
        "spread": 0.01,
    }
    values.update(fields)
    return MarketSnapshot(**values)


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@dataclass
class Setup:
    board: MarketBoard
    health: ServiceHealth
    kafka: Toggle
    clock: Clock
    stats: ServiceStats
    delivery: DeliveryStats
    rules: RulesHolder
    dashboard: Dashboard


@pytest.fixture
def setup() -> Setup:
    board = MarketBoard(stale_after_seconds=90.0)
    board.observe(snap(A, 0.58, question=HOSTILE, spread=0.08))
    board.observe(snap(A, 0.62, minutes=1, question=HOSTILE, spread=0.08))
    board.observe(snap(B, 0.30, category="<b>bold</b>", tags=("<i>x</i>",)))
    health = ServiceHealth(poll_interval_seconds=30.0, secrets=[SECRET])
    kafka = Toggle()
    health.add_check("kafka", kafka)
    clock = Clock(T0 + timedelta(minutes=2))
    stats = ServiceStats(events_detected=3, events_published=2, last_poll_at=T0)
    delivery = DeliveryStats(pending=1, dead_lettered=1, delivered=2)
    loaded_at = datetime(2024, 11, 6, 0, 0, tzinfo=UTC)
    rules = RulesHolder(load_rules_text(RULES_YAML, "<test>"), clock=lambda: loaded_at)
    dashboard = Dashboard(board, health, rules, stats, clock, delivery)
    return Setup(board, health, kafka, clock, stats, delivery, rules, dashboard)


def static_file(name: str) -> bytes:
    """The page's file, or a skip while it has not been written yet."""
    path = resources.files("polymarket_kafka.ops").joinpath("static", name)
    if not path.is_file():
        pytest.skip(f"polymarket_kafka/ops/static/{name} is not there (yet)")
    return path.read_bytes()


def assert_secure(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "*" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@dataclass
class Served:
    client: httpx.AsyncClient
    port: int
    server: anyio.CancelScope
    #: Set once `serve_ops` has returned (its socket closed).
    stopped: anyio.Event

    def stop(self) -> None:
        """Cancel the server (as the service does at its end); the client stays open."""
        self.server.cancel()


@asynccontextmanager
async def serving(dashboard: Dashboard | None) -> AsyncIterator[Served]:
    """The ops server (with `dashboard`) on a free port, and a client; cancelled on exit.

    A test that reads a live stream stops the server and reads the stream to its end: on
    trio, httpx's response generators left suspended warn when collected.
    """
    server, stopped = anyio.CancelScope(), anyio.Event()

    async def run(*, task_status: Any) -> None:
        try:
            with server:
                await _serve(dashboard, task_status=task_status)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        port: int = await tg.start(run)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT
        ) as client:
            yield Served(client, port, server, stopped)
        server.cancel()


async def _serve(dashboard: Dashboard | None, *, task_status: Any) -> None:
    health = dashboard.health if dashboard is not None else ServiceHealth()
    await serve_ops(
        "127.0.0.1",
        0,
        health=health,
        registry=CollectorRegistry(),
        dashboard=dashboard,
        task_status=task_status,
    )


@pytest.fixture
def fast_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """The live channel checks for changes often (the default is once a second)."""
    monkeypatch.setattr(http_server, "LIVE_CHECK_SECONDS", 0.02)


# --- the JSON endpoints ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_markets_json_keeps_market_strings_intact(setup: Setup) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            response = await served.client.get("/api/markets")
            expected = setup.board.markets(setup.clock(), setup.rules.current.resolve)
            version = setup.rules.current.version
            # A reload of the rules shows at once.
            setup.rules.current = load_rules_text("version: 1\n", "<reloaded>")
            reloaded = await served.client.get("/api/markets")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert_secure(response)
    body = response.json()
    assert body["generated_at"] == "2024-11-06T01:02:00+00:00"
    a, b = body["markets"]
    # JSON carries them as data, exactly as Polymarket sent them; the page renders text.
    assert a["question"] == HOSTILE
    assert "<script>alert(1)</script>" in a["question"]
    assert "<img src=x onerror=alert(1)>" in a["question"]
    assert (b["category"], b["tags"]) == ("<b>bold</b>", ["<i>x</i>"])
    assert body["markets"] == expected
    assert (a["yes_price"], a["move"], len(a["spark"]), a["age_seconds"]) == (0.62, 0.04, 2, 60.0)
    assert a["rules"]["rules_version"] == version
    assert a["rules"]["params"]["watch.max_spread"] == "0.05"
    assert (a["thin_book"], b["thin_book"]) == (True, False)  # the rules in force say 0.05
    assert (a["stale"], b["stale"]) == (False, True)  # B is 120 s old, stale after 90

    again = reloaded.json()["markets"][0]
    assert again["rules"]["rules_version"] == setup.rules.current.version
    assert again["rules"]["params"]["watch.max_spread"] == "0.1"
    assert not again["thin_book"]


@pytest.mark.anyio
async def test_events_with_a_limit(setup: Setup) -> None:
    for n in range(MAX_EVENTS + 5):
        setup.board.published(make_event(event_id=event_id(n), market_id=A))
    newest = MAX_EVENTS + 4
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            client = served.client

            async def ids(query: str) -> list[str]:
                response = await client.get(f"/api/events{query}")
                assert response.status_code == 200, (query, response.text)
                assert response.headers["content-type"] == "application/json"
                assert_secure(response)
                assert set(response.json()) == {"events"}
                return [e["event_id"] for e in response.json()["events"]]

            assert await ids("?limit=2") == [event_id(newest), event_id(newest - 1)]
            assert len(await ids("")) == DEFAULT_EVENTS == 50
            assert (await ids(""))[0] == event_id(newest)
            assert len(await ids("?limit=100000")) == MAX_EVENTS  # clamped
            assert len(await ids(f"?limit={MAX_EVENTS + 1}")) == MAX_EVENTS
            assert await ids("?limit=0") == []
            assert await ids("?limit=-3") == []
            for invalid in ("abc", "", "2.5", "1e3", "0x10", "9" * 5000):
                assert len(await ids(f"?limit={invalid}")) == DEFAULT_EVENTS, invalid
            assert len(await ids("?limit=1&limit=3")) == 3  # the last one counts
            assert len(await ids("?other=1&limit=%204%20")) == 4
            event = (await client.get("/api/events?limit=1")).json()["events"][0]
    assert event == setup.board.events(1)[0]
    assert event["question"] == make_event().question


def test_limit_parsing() -> None:
    assert _limit(b"") == DEFAULT_EVENTS
    assert _limit(b"limit=7") == 7
    assert _limit(b"limit=-1") == 0
    assert _limit(b"limit=" + str(10**9).encode()) == MAX_EVENTS
    assert _limit(b"limit=seven") == DEFAULT_EVENTS
    assert _limit(b"limit=\xff") == DEFAULT_EVENTS  # not UTF-8: still no error


@pytest.mark.anyio
async def test_health_with_since_per_component(setup: Setup) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            client = served.client

            async def health() -> dict[str, Any]:
                response = await client.get("/api/health")
                assert response.status_code == 200  # the page wants the body, ready or not
                assert response.headers["content-type"] == "application/json"
                assert_secure(response)
                return cast(dict[str, Any], response.json())

            first = await health()
            assert first["ready"] is False  # no subscriptions, no poll yet
            components = first["components"]
            assert set(components) == {"kafka", "subscriptions", "polling", "stages"}
            assert components["kafka"]["status"] == "ok"
            assert components["subscriptions"]["status"] == "fail"
            assert {c["since"] for c in components.values()} == {"2024-11-06T01:02:00+00:00"}
            assert first["feed"] == {
                "rules_version": setup.rules.current.version,
                "rules_loaded_at": "2024-11-06T00:00:00+00:00",
                "events_detected": 3,
                "events_published": 2,
                "events_in_flight": 1,
                "events_dead_lettered": 1,
                "events_acknowledged": 2,
                "last_poll_at": T0.isoformat(),
                "markets": 2,
                "stream": None,
            }

            # Ready: the service loaded its subscriptions and polled (on the loop's clock).
            setup.health.record_subscriptions(2)
            setup.health.record_poll(anyio.current_time())
            setup.clock.now += timedelta(minutes=1)
            second = await health()
            assert second["ready"] is True
            since = {name: c["since"] for name, c in second["components"].items()}
            # Kafka stayed up: since when it was first seen; the others just flipped.
            assert since == {
                "kafka": "2024-11-06T01:02:00+00:00",
                "subscriptions": "2024-11-06T01:03:00+00:00",
                "polling": "2024-11-06T01:03:00+00:00",
                "stages": "2024-11-06T01:02:00+00:00",
            }

            # Kafka goes down: its `since` moves, the details are scrubbed of secrets.
            setup.kafka.ok = False
            setup.clock.now += timedelta(minutes=1)
            down = await health()
            assert down["ready"] is False
            kafka = down["components"]["kafka"]
            assert kafka["status"] == "fail"
            assert kafka["since"] == "2024-11-06T01:04:00+00:00"
            assert SECRET not in json.dumps(down)
            assert kafka["detail"] == "down (***)"

            # Still down a minute later: unchanged.
            setup.clock.now += timedelta(minutes=1)
            assert (await health())["components"]["kafka"]["since"] == "2024-11-06T01:04:00+00:00"
            # Back up: moves again.
            setup.kafka.ok = True
            setup.clock.now += timedelta(minutes=1)
            up = await health()
            assert up["components"]["kafka"]["since"] == "2024-11-06T01:06:00+00:00"
            assert up["components"]["subscriptions"]["since"] == "2024-11-06T01:03:00+00:00"
            assert up["ready"] is True


def test_health_payload_with_the_stream_and_without_delivery_figures(setup: Setup) -> None:
    shards = [
        SimpleNamespace(connected=True, reconnects=2),
        SimpleNamespace(connected=False, reconnects=3),
        SimpleNamespace(connected=True, reconnects=0),
    ]
    stream = SimpleNamespace(
        stream=SimpleNamespace(connections=shards, markets=7),
        fallback=frozenset({A, B}),
        disagreements=4,
    )
    dashboard = Dashboard(
        setup.board,
        setup.health,
        RulesHolder(),  # built-in rules, loaded at no known time
        ServiceStats(),
        setup.clock,
        stream=cast(StreamCoordinator, stream),
    )
    payload = dashboard.health_payload(0.0)
    assert payload["feed"] == {
        "rules_version": RulesHolder().current.version,
        "rules_loaded_at": None,
        "events_detected": 0,
        "events_published": 0,
        "events_in_flight": 0,
        "events_dead_lettered": 0,
        "events_acknowledged": None,
        "last_poll_at": None,
        "markets": 2,
        "stream": {
            "connections": 3,
            "connections_up": 2,
            "reconnects": 5,
            "streamed_markets": 7,
            "rest_fallback_markets": 2,
            "disagreements": 4,
        },
    }
    # The same answer through `api`, as JSON.
    status, headers, body = dashboard.api("/api/health", b"", 0.0)
    assert status == 200
    assert dict(headers)[b"content-type"] == b"application/json"
    assert json.loads(body)["feed"]["stream"]["connections_up"] == 2


# --- the page and its files -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", list(PAGE_FILES))
async def test_the_page_and_its_files(setup: Setup, path: str) -> None:
    name, content_type = PAGE_FILES[path]
    expected = static_file(name)
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            client = served.client
            response = await client.get(path)
            head = await client.head(path)
            again = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type.decode()
    assert response.headers["cache-control"] == "no-store"
    assert_secure(response)
    assert response.content == expected == again.content
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(expected)
    assert head.headers["content-type"] == content_type.decode()
    assert_secure(head)


def test_page_types() -> None:
    assert {path: (name, ctype) for path, (name, ctype) in PAGE_FILES.items()} == {
        "/": ("index.html", b"text/html; charset=utf-8"),
        "/static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
        "/static/app.css": ("app.css", b"text/css; charset=utf-8"),
    }


def test_a_page_file_is_read_once(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Served from memory after the first request (without needing the real files)."""
    reads: list[str] = []

    class FakeFile:
        def __init__(self, name: str) -> None:
            self.name = name

        def joinpath(self, *parts: str) -> FakeFile:
            return FakeFile("/".join(parts))

        def read_bytes(self) -> bytes:
            reads.append(self.name)
            return f"contents of {self.name}".encode()

    monkeypatch.setattr(
        "polymarket_kafka.ops.dashboard.resources.files", lambda package: FakeFile(package)
    )
    for _ in range(3):
        status, headers, body = setup.dashboard.page("/static/app.js")
        assert (status, body) == (200, b"contents of static/app.js")
        assert dict(headers)[b"content-type"] == b"text/javascript; charset=utf-8"
        assert [h for h in headers if h in SECURITY_HEADERS] == SECURITY_HEADERS
    assert reads == ["static/app.js"]


# --- methods, and the server without a dashboard ------------------------------------------------


@pytest.mark.anyio
async def test_head_has_no_body_and_other_methods_are_refused(setup: Setup) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            client = served.client
            for path in ("/api/markets", "/api/events", "/api/health"):
                get = await client.get(path)
                head = await client.head(path)
                assert (head.status_code, head.content) == (200, b""), path
                assert head.headers["content-type"] == "application/json"
                assert int(head.headers["content-length"]) == len(get.content), path
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                for path in ("/", "/api/markets", "/api/events", "/api/live", "/static/app.js"):
                    wrong = await client.request(method, path)
                    assert wrong.status_code == 405, (method, path)
                    assert wrong.headers["allow"] == "GET, HEAD"
            missing = await client.get("/api/nothing")
            assert missing.status_code == 404
            assert missing.json() == {
                "error": "not found",
                "endpoints": [*ENDPOINTS, *PAGE_FILES, *API_ENDPOINTS],
            }
            # The health and metrics endpoints are unchanged beside the dashboard.
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200


@pytest.mark.anyio
async def test_head_of_the_live_channel_has_its_headers(setup: Setup) -> None:
    """HEAD answers with the headers a GET would get: for `/api/live` an event stream."""
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            client = served.client
            head = await client.head("/api/live")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == "text/event-stream"


@pytest.mark.anyio
async def test_without_a_dashboard_its_paths_are_not_found() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(None) as served:
            client = served.client
            for path in (*PAGE_FILES, *API_ENDPOINTS):
                for method in ("GET", "HEAD", "POST"):
                    response = await client.request(method, path)
                    assert response.status_code == 404, (method, path)
            body = (await client.get("/api/live")).json()
            assert body == {"error": "not found", "endpoints": list(ENDPOINTS)}
            assert "content-security-policy" not in (await client.get("/")).headers
            assert (await client.get("/health/live")).status_code == 200


# --- the live channel -----------------------------------------------------------------------------


async def next_message(lines: AsyncIterator[str]) -> list[str]:
    """The lines of the next server-sent message (up to its blank line)."""
    message: list[str] = []
    async for line in lines:
        if line == "":
            if message:
                return message
            continue
        message.append(line)
    raise AssertionError(f"the stream ended in the middle of {message}")


def update(version: int) -> list[str]:
    return ["event: update", f"data: {json.dumps({'version': version})}"]


async def next_update(lines: AsyncIterator[str]) -> list[str]:
    """The next `update` message, skipping keep-alive comments."""
    while True:
        message = await next_message(lines)
        if not all(line.startswith(":") for line in message):
            return message


def lines_of(response: httpx.Response) -> aclosing[AsyncGenerator[str, None]]:
    """The response's lines, closed on the way out."""
    return aclosing(cast(AsyncGenerator[str, None], response.aiter_lines()))


async def accepts(port: int) -> bool:
    """Whether anything accepts connections on the loopback `port`."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def drain(lines: AsyncIterator[str]) -> list[str]:
    """The rest of a stream, to its end (a complete response: a connection cut in the middle
    of the body raises `httpx.RemoteProtocolError`)."""
    return [line async for line in lines]


@pytest.mark.anyio
async def test_live_sends_the_version_then_each_change(setup: Setup) -> None:
    """With the default check interval (a second)."""
    board = setup.board
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(setup.dashboard) as served,
            served.client.stream("GET", "/api/live") as response,
            lines_of(response) as lines,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["cache-control"] == "no-store"
            assert "content-length" not in response.headers
            assert_secure(response)
            assert await next_message(lines) == ["retry: 1000"]
            assert await next_message(lines) == update(board.version)
            board.observe(snap(A, 0.7, minutes=3))
            assert await next_update(lines) == update(board.version)
            board.published(make_event(event_id=event_id(1), market_id=A))
            board.forget(B)  # two changes between two checks may come as one update
            message = await next_update(lines)
            assert message[0] == "event: update"
            if json.loads(message[1].removeprefix("data: "))["version"] != board.version:
                assert await next_update(lines) == update(board.version)
            served.stop()
            await drain(lines)


@pytest.mark.anyio
async def test_live_keepalive_and_the_end_of_a_stream(
    setup: Setup, fast_live: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without changes only keep-alive comments; the stream ends by itself (the browser
    reconnects) with a complete response."""
    monkeypatch.setattr(http_server, "LIVE_KEEPALIVE_SECONDS", 0.05)
    monkeypatch.setattr(http_server, "LIVE_STREAM_SECONDS", 0.5)
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            started = anyio.current_time()
            async with served.client.stream("GET", "/api/live") as response:
                text = "".join([chunk async for chunk in response.aiter_text()])
            assert anyio.current_time() - started >= 0.5
            messages = [m for m in text.split("\n\n") if m]
            assert messages[:2] == ["retry: 1000", "\n".join(update(setup.board.version))]
            assert messages[2:]  # the rest are comments
            assert set(messages[2:]) == {": keepalive"}
            # The server answers the next request as usual.
            assert (await served.client.get("/api/health")).status_code == 200


@pytest.mark.anyio
async def test_cancelling_the_server_ends_an_open_stream_promptly(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server, "LIVE_STREAM_SECONDS", 600.0)
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            async with (
                served.client.stream("GET", "/api/live") as response,
                lines_of(response) as lines,
            ):
                assert await next_message(lines) == ["retry: 1000"]
                assert await next_message(lines) == update(setup.board.version)
                cancelled_at = anyio.current_time()
                served.stop()
                # The server ends the stream itself, with a complete chunked response.
                rest = await drain(lines)
                ended_at = anyio.current_time()
            assert all(line == "" or line.startswith(":") for line in rest)
            await served.stopped.wait()
            stopped_at = anyio.current_time()
            assert not await accepts(served.port)  # the server is gone
    # Ended by the app (a clean end of the body above, where hypercorn cutting it at the end
    # of its grace period would have raised), well under the hard bound.
    assert ended_at - cancelled_at < http_server._SHUTDOWN_SECONDS / 2
    assert stopped_at - cancelled_at < http_server._SHUTDOWN_SECONDS / 2


@pytest.mark.anyio
async def test_a_client_that_goes_away_ends_its_stream(
    setup: Setup, fast_live: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server, "LIVE_STREAM_SECONDS", 600.0)
    finished = anyio.Event()
    live = OpsApp._live

    async def watched_live(self: OpsApp, *args: Any) -> None:
        try:
            await live(self, *args)
        finally:
            finished.set()

    monkeypatch.setattr(OpsApp, "_live", watched_live)
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            stream = await anyio.connect_tcp("127.0.0.1", served.port)
            async with stream:
                await stream.send(b"GET /api/live HTTP/1.1\r\nHost: test\r\n\r\n")
                received = b""
                while b"event: update" not in received:
                    received += await stream.receive()
                assert received.startswith(b"HTTP/1.1 200")
            # Ended by the disconnect: LIVE_STREAM_SECONDS is far away, the server is up.
            await finished.wait()
            # The server is not stuck: other requests (a new stream too) are answered.
            assert (await served.client.get("/api/markets")).status_code == 200
            async with (
                served.client.stream("GET", "/api/live") as response,
                lines_of(response) as lines,
            ):
                assert await next_message(lines) == ["retry: 1000"]
                assert await next_message(lines) == update(setup.board.version)
                served.stop()
                await drain(lines)


@pytest.mark.anyio
async def test_many_streams_at_once_each_see_a_change(setup: Setup, fast_live: None) -> None:
    board = setup.board
    listeners = 3
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            seen: list[list[str]] = []
            connected: list[int] = []
            all_connected, all_seen = anyio.Event(), anyio.Event()

            async def listen() -> None:
                async with (
                    served.client.stream("GET", "/api/live") as response,
                    lines_of(response) as lines,
                ):
                    assert await next_message(lines) == ["retry: 1000"]
                    connected.append(json.loads((await next_update(lines))[1][6:])["version"])
                    if len(connected) == listeners:
                        all_connected.set()
                    seen.append(await next_update(lines))
                    if len(seen) == listeners:
                        all_seen.set()
                    await drain(lines)

            async with anyio.create_task_group() as tg:
                for _ in range(listeners):
                    tg.start_soon(listen)
                await all_connected.wait()
                board.observe(snap(B, 0.5, minutes=10))
                await all_seen.wait()
                served.stop()
    assert connected == [board.version - 1] * listeners
    assert seen == [update(board.version)] * listeners


# --- the app without a server (what the served tests cannot reach deterministically) ----------


@pytest.mark.anyio
async def test_live_ends_at_shutdown_with_a_complete_response(setup: Setup) -> None:
    shutdown = anyio.Event()
    app = OpsApp(setup.health, CollectorRegistry(), dashboard=setup.dashboard, shutdown=shutdown)
    sent: list[dict[str, Any]] = []
    requested = anyio.Event()

    async def receive() -> Any:
        if not requested.is_set():
            requested.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()

    async def send(message: Any) -> None:
        sent.append(message)
        if message.get("body", b"").startswith(b"event: update"):
            shutdown.set()

    scope = {"type": "http", "path": "/api/live", "method": "GET", "headers": []}
    with anyio.fail_after(TIMEOUT):
        await app(cast(Any, scope), receive, send)
    assert sent[0]["type"] == "http.response.start"
    bodies = [m["body"] for m in sent[1:]]
    assert bodies == [
        b"retry: 1000\n\n",
        f"event: update\ndata: {json.dumps({'version': setup.board.version})}\n\n".encode(),
        b"",
    ]
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]


@pytest.mark.anyio
async def test_live_after_a_disconnect_sends_nothing_more(setup: Setup) -> None:
    app = OpsApp(setup.health, CollectorRegistry(), dashboard=setup.dashboard)
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    first_update = anyio.Event()

    async def receive() -> Any:
        if len(messages) == 1:
            await first_update.wait()
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)
        if message.get("body", b"").startswith(b"event:"):
            first_update.set()

    scope = {"type": "http", "path": "/api/live", "method": "GET", "headers": []}
    with anyio.fail_after(TIMEOUT):
        await app(cast(Any, scope), receive, send)
    assert [m.get("more_body") for m in sent] == [None, True, True]  # no final message


# --- the pipeline feeds the board -----------------------------------------------------------


@pytest.mark.anyio
async def test_the_pipeline_feeds_the_board() -> None:
    """Every snapshot judged, every event handed over, every market no longer watched."""
    with FakePolymarketServer(n_markets=3, price=lambda i: 0.50) as server:
        a, b, c = (m.condition_id for m in server.markets)
        store = InMemorySubscriptionStore(seed=[a, b, c])
        unsubscribe = anyio.Event()

        class UnsubscribingStore(InMemorySubscriptionStore):
            async def active(self) -> ActiveSubscriptions:
                if unsubscribe.is_set() and a in (await store.active()).market_ids:
                    await store.unsubscribe(a)
                return await store.active()

        cycle = 0

        def clock() -> datetime:
            nonlocal cycle
            if cycle == 1:
                server.set_price(b, 0.65)  # fires at once under one-poll rules
            if cycle == 2:
                unsubscribe.set()
            now = T0 + timedelta(hours=cycle)
            cycle += 1
            return now

        published: list[str] = []

        class Publisher:
            async def publish(self, event: PolymarketEvent, state: object = None) -> None:
                published.append(event.event_id)

        board = MarketBoard()
        settings = ServiceSettings(
            poll_interval_seconds=0.05,
            subscription_refresh_seconds=0.001,
            max_cycles=5,
            handle_signals=False,
        )
        with anyio.fail_after(TIMEOUT):
            async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
                stats = await run_service(
                    store=UnsubscribingStore(),
                    poller=MarketPoller(client, metadata_refresh_seconds=3600),
                    publisher=Publisher(),
                    settings=settings,
                    clock=clock,
                    rules=RulesHolder(load_rules_text(ONE_POLL_YAML, "one-poll.yaml")),
                    board=board,
                )
    assert stats.events_published == len(published) == 1
    assert board.market_ids() == frozenset({b, c})  # `a` was forgotten
    rows = {row["market_id"]: row for row in board.markets(T0 + timedelta(hours=5))}
    assert rows[b]["yes_price"] == 0.65
    assert (rows[b]["events"], rows[b]["last_event_id"]) == (1, published[0])
    assert (rows[c]["events"], rows[c]["yes_price"]) == (0, 0.5)
    assert len(rows[c]["spark"]) == 5  # one snapshot a cycle
    assert [e["event_id"] for e in board.events(10)] == published


def test_dashboard_fields_are_the_services_own(setup: Setup) -> None:
    """Nothing is copied: the dashboard reads the live objects."""
    dashboard = setup.dashboard
    assert dashboard.board is setup.board
    assert dashboard.delivery is setup.delivery
    setup.delivery.pending = 9
    assert dashboard.health_payload(0.0)["feed"]["events_in_flight"] == 9


def test_the_market_list_is_rebuilt_at_most_as_often_as_it_may(setup: Setup) -> None:
    """A changed board waits for the next rebuild time; unchanged, the same bytes."""
    from polymarket_kafka.ops.dashboard import MIN_REBUILD_SECONDS

    first = setup.dashboard.api("/api/markets", b"", 100.0)[2]
    setup.board.observe(snap(A, 0.70, minutes=1.5, question=HOSTILE))
    soon = setup.dashboard.api("/api/markets", b"", 100.0 + MIN_REBUILD_SECONDS / 2)[2]
    assert soon == first  # throttled: the change shows at the next rebuild
    later = setup.dashboard.api("/api/markets", b"", 100.0 + MIN_REBUILD_SECONDS)[2]
    assert later != first
    assert json.loads(later)["markets"][0]["yes_price"] == 0.70
    again = setup.dashboard.api("/api/markets", b"", 500.0)[2]
    assert again is later  # nothing changed since: not rebuilt


def test_readiness_is_sampled_for_since_when(setup: Setup) -> None:
    """`since` is when the sampler saw the status change, and a change bumps the version."""
    setup.dashboard.sample(0.0)
    version = setup.board.version
    setup.clock.now += timedelta(minutes=5)
    setup.dashboard.sample(1.0)
    assert setup.board.version == version  # nothing changed
    setup.kafka.ok = not setup.kafka.ok
    changed_at = setup.clock.now = setup.clock.now + timedelta(minutes=5)
    setup.dashboard.sample(2.0)
    assert setup.board.version == version + 1
    setup.clock.now += timedelta(minutes=5)
    payload = setup.dashboard.health_payload(3.0)
    assert payload["components"]["kafka"]["since"] == changed_at.isoformat()


@pytest.mark.anyio
async def test_live_streams_beyond_the_cap_are_refused(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polymarket_kafka.ops import http_server

    monkeypatch.setattr(http_server, "MAX_LIVE_STREAMS", 0)
    with anyio.fail_after(TIMEOUT):
        async with serving(setup.dashboard) as served:
            response = await served.client.get("/api/live")
    assert response.status_code == 503
    assert response.json() == {"error": "too many live streams: poll /api/*"}
