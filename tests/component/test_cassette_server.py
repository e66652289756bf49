"""The recorded cassette over loopback HTTP: real client, real service, real sockets.

The container smoke test points the service in the container at a `CassetteServer` replaying
cassettes/demo.yaml; these tests prove, in-process and on both backends, that a real
`PolymarketClient` gets the recorded answers through it, and that the service polling on a
1-second clock (as the container does) detects the moves the smoke test waits for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from polymarket_kafka.models import ConvictionDirection, PolymarketEvent
from polymarket_kafka.polymarket import PolymarketHTTPError, open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceSettings
from polymarket_kafka.testing.cassette_server import MISMATCH_STATUS, CassetteServer
from polymarket_kafka.testing.demo import (
    DEFAULT_CASSETTE,
    SteppingClock,
    demo_market_ids,
    midpoint_cycles,
)
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.component.test_cassette_transport import load_generator

REPO = Path(__file__).resolve().parents[2]
TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
#: Harris's YES midpoint in the ten recorded cycles (election night 2024, hourly).
HARRIS_PATH = [0.39, 0.3855, 0.4215, 0.297, 0.288, 0.2005, 0.068, 0.0335, 0.014, 0.006]
#: The calm synthetic hours before them, holding the first recorded prices.
LEAD_IN: int = load_generator().DEMO_LEAD_IN
#: Harris's YES midpoint in every cycle of the cassette.
HARRIS_CASSETTE_PATH = [HARRIS_PATH[0]] * LEAD_IN + HARRIS_PATH


@pytest.fixture
def server() -> Iterator[CassetteServer]:
    with CassetteServer(DEFAULT_CASSETTE) as server:
        yield server


def one_interaction(
    uri: str = "https://clob.polymarket.com/midpoints",
    *,
    status: int = 200,
    message: str = "OK",
    headers: dict[str, list[str]] | None = None,
    body: str = '{"1": "0.5"}',
) -> dict[str, Any]:
    return {
        "interactions": [
            {
                "request": {"method": "POST", "uri": uri, "body": '[{"token_id": "1"}]'},
                "response": {
                    "status": {"code": status, "message": message},
                    "headers": headers or {"Content-Type": ["application/json"]},
                    "body": {"string": body},
                },
            }
        ],
        "version": 1,
    }


@pytest.mark.anyio
async def test_a_real_client_gets_the_recorded_session(server: CassetteServer) -> None:
    markets = sorted(demo_market_ids(DEFAULT_CASSETTE))  # what the poller asks for, in order
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        with anyio.fail_after(30):
            metadata = await client.fetch_markets(markets)
            assert metadata.failures == {}
            assert metadata.markets[TRUMP].question == (
                "Will Donald Trump win the 2024 US Presidential Election?"
            )
            yes = [metadata.markets[m].yes_token_id or "" for m in markets]
            harris = yes[markets.index(HARRIS)]
            path = []
            for _ in HARRIS_CASSETTE_PATH:
                prices = await client.fetch_midpoints(yes)
                assert prices.failures == {}
                path.append(prices.prices[harris])
            assert path[LEAD_IN:] == HARRIS_PATH  # after the calm lead-in, the recorded night
            assert path == HARRIS_CASSETTE_PATH
            assert server.all_played
            # Past the end of the recording the last cycle repeats: a flat price.
            assert (await client.fetch_midpoints(yes)).prices[harris] == HARRIS_PATH[-1]
    assert server.request_count("GET /markets") == 1
    assert server.request_count("POST /midpoints") == len(HARRIS_CASSETTE_PATH) + 1
    assert server.play_count == server.request_count() == len(HARRIS_CASSETTE_PATH) + 2
    assert server.errors == []


@dataclass
class RecordingPublisher:
    """Kafka boundary double: records what the service hands over."""

    events: list[PolymarketEvent] = field(default_factory=list)

    async def publish(self, event: PolymarketEvent, state: object = None) -> None:
        self.events.append(event)


@pytest.mark.anyio
async def test_the_service_on_a_one_second_clock_sees_the_election_night_moves(
    server: CassetteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What scripts/container_live.py expects of the container, in-process.

    The container polls every second on the wall clock, with the bundled rules and the
    default 300 s metadata refresh. Seconds apart, every cycle of the cassette (the calm
    lead-in, then the recorded night) is inside the 2-hour window and the cooldowns, so each
    election market fires once, on its first confirmed move, and the calm Fed market never
    does.
    """
    cycles = midpoint_cycles(DEFAULT_CASSETTE)
    assert cycles == LEAD_IN + len(HARRIS_PATH)
    publisher = RecordingPublisher()
    clock = SteppingClock(datetime(2026, 1, 1, tzinfo=UTC), timedelta(seconds=1))
    async with open_polymarket_client(server.polymarket_config()) as client:
        with anyio.fail_after(60):
            stats = await run_service(
                store=InMemorySubscriptionStore(seed=demo_market_ids(DEFAULT_CASSETTE)),
                poller=MarketPoller(client, metadata_refresh_seconds=300),
                publisher=publisher,
                settings=ServiceSettings(
                    poll_interval_seconds=0.01, max_cycles=cycles, handle_signals=False
                ),
                clock=clock,
                rules=RulesHolder.from_path(REPO / "rules" / "default.yaml"),
            )
    assert stats.poll_cycles == cycles
    assert server.all_played
    assert server.errors == []
    moves = {(e.market_id, e.direction) for e in publisher.events}
    assert moves == {
        (HARRIS, ConvictionDirection.TOWARD_NO),
        (TRUMP, ConvictionDirection.TOWARD_YES),
    }
    assert len(publisher.events) == 2
    # ... which is what the smoke test waits for.
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.delitem(sys.modules, "container_live", raising=False)
    live = importlib.import_module("container_live")
    assert {(market, direction.value) for market, direction in moves} == live.EXPECTED_MOVES


@pytest.mark.anyio
async def test_a_request_the_cassette_cannot_answer_fails_at_once() -> None:
    with CassetteServer(one_interaction()) as server:
        async with open_polymarket_client(server.polymarket_config(max_retries=3)) as client:
            with anyio.fail_after(30), pytest.raises(PolymarketHTTPError) as caught:
                await client.fetch_midpoints(["2"])  # a body the cassette never saw
    assert caught.value.status == MISMATCH_STATUS
    assert server.request_count() == 1  # neither retried nor bisected
    assert server.play_count == 0
    [error] = server.errors  # readable after stop
    assert "no cassette interaction for POST" in error
    assert '"token_id":"2"' in error.replace(" ", "")


def test_a_used_up_interaction_is_refused_without_repeat_last() -> None:
    with CassetteServer(one_interaction(), repeat_last=False) as server:
        first = httpx.post(f"{server.url}/midpoints", json=[{"token_id": "1"}])
        second = httpx.post(f"{server.url}/midpoints", json=[{"token_id": "1"}])
    assert (first.status_code, first.json()) == (200, {"1": "0.5"})
    assert second.status_code == MISMATCH_STATUS
    assert second.headers["content-type"] == "application/json"
    assert "already played" in second.json()["error"]
    assert second.json()["error"].startswith("cassette: ")
    assert server.all_played
    assert len(server.errors) == 1


def test_the_recorded_status_reason_and_headers_are_served() -> None:
    recorded = one_interaction(
        status=429,
        message="Too Many Requests",
        headers={
            "Content-Type": ["application/json"],
            "Retry-After": ["2"],
            # The body is stored decoded and unframed: the server frames it itself.
            "Content-Length": ["9999"],
            "Transfer-Encoding": ["chunked"],
            "Connection": ["close"],
        },
        body='{"error": "rate limited"}',
    )
    with CassetteServer(recorded) as server:
        response = httpx.post(f"{server.url}/midpoints", json=[{"token_id": "1"}])
    assert response.status_code == 429
    assert response.reason_phrase == "Too Many Requests"
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-length"] == str(len(b'{"error": "rate limited"}'))
    assert "transfer-encoding" not in response.headers
    assert response.headers.get("connection") != "close"
    assert response.json() == {"error": "rate limited"}


def test_lifecycle() -> None:
    server = CassetteServer(one_interaction())
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    assert server.start() is server
    url = server.url
    assert server.start().url == url  # starting twice keeps the one server
    assert server.polymarket_config(max_retries=0).gamma_url == url
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/markets")
