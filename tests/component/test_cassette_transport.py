"""`CassetteTransport`: replaying vcrpy cassettes without vcrpy, on Trio and asyncio.

Also checks that the committed cassettes are what `cassettes/make_cassettes.py` generates, and
that the demo cassette tells the story the demo needs (Trump moves, Fed stays calm).
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.polymarket import ClientStats, open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.testing.cassette import (
    CassetteError,
    CassetteExhaustedError,
    CassetteMismatchError,
    CassetteTransport,
)

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes"
CLOB = "https://clob.polymarket.com"

TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
TRUMP_YES = "21742633143463906290569050155826241533067272736897614950488156847949938836455"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"


def interaction(
    method: str,
    uri: str,
    body: object = "",
    *,
    status: int = 200,
    response: object = "{}",
    headers: object = None,
    message: str | None = "OK",
) -> dict[str, Any]:
    return {
        "request": {"method": method, "uri": uri, "body": body, "headers": {}},
        "response": {
            "status": {"code": status, "message": message},
            "headers": {"Content-Type": ["application/json"]} if headers is None else headers,
            "body": {"string": response},
        },
    }


def cassette(*interactions: dict[str, Any]) -> dict[str, Any]:
    return {"interactions": list(interactions), "version": 1}


async def send(
    transport: CassetteTransport, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.request(method, url, **kwargs)


# --- matching --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_matching_request_gets_the_recorded_response() -> None:
    transport = CassetteTransport(
        cassette(
            interaction(
                "POST",
                f"{CLOB}/midpoints",
                '[{"token_id":"1"}]',
                status=429,
                response='{"error": "slow down"}',
                headers={"Content-Type": ["application/json"], "Retry-After": "2"},
                message="Too Many Requests",
            )
        )
    )

    response = await send(transport, "POST", f"{CLOB}/midpoints", json=[{"token_id": "1"}])

    assert response.status_code == 429
    assert response.reason_phrase == "Too Many Requests"
    assert response.headers["retry-after"] == "2"
    assert response.json() == {"error": "slow down"}
    assert transport.play_count == 1
    assert transport.all_played


@pytest.mark.anyio
async def test_query_order_does_not_matter_but_values_do() -> None:
    transport = CassetteTransport(
        cassette(interaction("GET", "https://h/markets?condition_ids=b&limit=2&condition_ids=a"))
    )

    ok = await send(transport, "GET", "https://h/markets?limit=2&condition_ids=a&condition_ids=b")
    assert ok.status_code == 200
    with pytest.raises(CassetteMismatchError):
        await send(transport, "GET", "https://h/markets?condition_ids=a&limit=2")


@pytest.mark.anyio
async def test_json_bodies_match_by_value_and_arrays_keep_their_order() -> None:
    recorded = '[ {"token_id": "1"},\n {"token_id": "2"} ]'
    transport = CassetteTransport(
        cassette(interaction("POST", f"{CLOB}/midpoints", recorded)), repeat_last=True
    )

    ok = await send(
        transport, "POST", f"{CLOB}/midpoints", json=[{"token_id": "1"}, {"token_id": "2"}]
    )
    assert ok.status_code == 200
    with pytest.raises(CassetteMismatchError, match=r'body=\'\[{"token_id":"2"}'):
        await send(
            transport, "POST", f"{CLOB}/midpoints", json=[{"token_id": "2"}, {"token_id": "1"}]
        )


@pytest.mark.anyio
async def test_the_host_is_not_matched() -> None:
    transport = CassetteTransport(
        cassette(interaction("GET", "https://gamma-api.polymarket.com/markets?limit=1"))
    )

    response = await send(transport, "GET", "http://127.0.0.1:9/markets?limit=1")

    assert response.status_code == 200


@pytest.mark.anyio
async def test_non_json_bodies_are_compared_as_bytes() -> None:
    transport = CassetteTransport(cassette(interaction("POST", "https://h/x", "plain text")))

    assert (await send(transport, "POST", "https://h/x", content=b"plain text")).status_code == 200
    with pytest.raises(CassetteMismatchError):
        await send(transport, "POST", "https://h/x", content=b"other text")


@pytest.mark.anyio
async def test_methods_must_match() -> None:
    transport = CassetteTransport(cassette(interaction("GET", "https://h/markets")))

    with pytest.raises(
        CassetteMismatchError, match="no cassette interaction for POST https://h/markets"
    ):
        await send(transport, "POST", "https://h/markets")


# --- repeats ---------------------------------------------------------------------------------


def three_prices() -> dict[str, Any]:
    return cassette(
        *(
            interaction("POST", f"{CLOB}/midpoints", "[]", response=f'{{"p": "{p}"}}')
            for p in ("0.1", "0.2", "0.3")
        )
    )


@pytest.mark.anyio
async def test_identical_requests_get_successive_interactions_then_fail() -> None:
    transport = CassetteTransport(three_prices())

    seen = [
        (await send(transport, "POST", f"{CLOB}/midpoints", json=[])).json()["p"] for _ in range(3)
    ]

    assert seen == ["0.1", "0.2", "0.3"]
    assert transport.all_played
    with pytest.raises(CassetteExhaustedError, match="all 3 interaction"):
        await send(transport, "POST", f"{CLOB}/midpoints", json=[])


@pytest.mark.anyio
async def test_repeat_last_keeps_replaying_the_last_interaction() -> None:
    transport = CassetteTransport(three_prices(), repeat_last=True)

    seen = [
        (await send(transport, "POST", f"{CLOB}/midpoints", json=[])).json()["p"] for _ in range(5)
    ]

    assert seen == ["0.1", "0.2", "0.3", "0.3", "0.3"]
    assert transport.play_count == 5


@pytest.mark.anyio
async def test_a_cassette_mismatch_is_not_retried_by_the_client() -> None:
    transport = CassetteTransport(cassette())
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with open_polymarket_client(
        PolymarketConfig(rate_limit_delay_ms=0), transport=transport, sleep=sleep
    ) as client:
        with pytest.raises(CassetteMismatchError, match=TRUMP_YES[:20]):
            await client.fetch_midpoints([TRUMP_YES])

    assert sleeps == []


# --- loading ---------------------------------------------------------------------------------


def test_loading_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "interactions:\n"
        "- request: {method: GET, uri: 'https://h/x', body: !!binary 'aGk=', headers: {}}\n"
        "  response:\n"
        "    status: {code: 204, message: ''}\n"
        "    headers: {X-One: single-value}\n"
        "    body: {string: null}\n"
        "version: 1\n",
        encoding="utf-8",
    )

    for source in (path, str(path)):
        assert CassetteTransport(source).play_count == 0


@pytest.mark.anyio
async def test_odd_but_valid_cassette_fields() -> None:
    data = cassette(
        interaction(
            "GET",
            "https://h/x",
            b"hi",
            status=204,
            response=None,
            headers={"X-One": "v"},
            message="",
        ),
        interaction("GET", "https://h/y", headers=["not", "a", "mapping"]),
    )
    transport = CassetteTransport(data)

    response = await send(transport, "GET", "https://h/x", content=b"hi")

    assert (response.status_code, response.content, response.headers["x-one"]) == (204, b"", "v")
    assert response.reason_phrase == "No Content"  # derived by httpx when none was recorded
    assert "content-type" not in (await send(transport, "GET", "https://h/y")).headers


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"version": 1}, "no 'interactions' list"),
        ({"interactions": ["nope"]}, "interaction #0 is not a mapping"),
        ({"interactions": [{"request": {}}]}, "interaction #0 is malformed"),
        (cassette(interaction("GET", "https://h/x", 42)), "unsupported body type"),
        (cassette(interaction("GET", "https://h/x", status="abc")), "interaction #0 is malformed"),  # type: ignore[arg-type]
    ],
)
def test_malformed_cassettes_are_rejected_clearly(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(CassetteError, match=problem):
        CassetteTransport(data)


def test_a_file_that_is_not_a_cassette(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")

    with pytest.raises(CassetteError, match="not a vcrpy cassette"):
        CassetteTransport(path)


# --- the committed cassettes -----------------------------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_cassettes", CASSETTES / "make_cassettes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_cassettes_match_the_generator() -> None:
    generator = load_generator()

    for name, text in generator.build_all().items():
        assert (CASSETTES / name).read_text(encoding="utf-8") == text, f"{name} is stale"
    assert generator.main(["--check"]) == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("normal_cycle.yaml", [TRUMP, HARRIS, FED]),
        (
            "closed_market.yaml",
            [TRUMP, "0x12a0cb60174abc437bf1178367c72d11f069e1a3add20b148fb0ab4279b772b2"],
        ),
    ],
)
async def test_the_client_replays_committed_cassettes(name: str, ids: list[str]) -> None:
    transport = CassetteTransport(CASSETTES / name)
    async with open_polymarket_client(
        PolymarketConfig(rate_limit_delay_ms=0), transport=transport
    ) as client:
        metadata = await client.fetch_markets(ids)
        open_tokens = [m.yes_token_id or "" for m in metadata.markets.values() if not m.closed]
        if open_tokens:
            await client.fetch_midpoints(open_tokens)

    assert set(metadata.markets) == set(ids)
    assert transport.all_played


@pytest.mark.anyio
async def test_the_demo_cassette_moves_trump_and_keeps_the_fed_calm() -> None:
    lead_in: int = load_generator().DEMO_LEAD_IN  # calm synthetic hours before the recording
    transport = CassetteTransport(CASSETTES / "demo.yaml", repeat_last=True)
    start = datetime(2024, 11, 5, 21, tzinfo=UTC) - timedelta(hours=lead_in)
    subscriptions = [
        PolymarketSubscription(market_id=m, ref_count=1, created_at=start, updated_at=start)
        for m in (TRUMP, HARRIS, FED)
    ]
    stats = ClientStats()
    history: dict[str, list[float]] = {TRUMP: [], HARRIS: [], FED: []}
    async with open_polymarket_client(
        PolymarketConfig(rate_limit_delay_ms=0, max_retries=0), transport=transport, stats=stats
    ) as client:
        poller = MarketPoller(client, metadata_refresh_seconds=300)
        # One more cycle than recorded: repeat_last serves the last prices.
        for cycle in range(lead_in + 11):
            result = await poller.poll_once(subscriptions, start + timedelta(hours=cycle))
            assert result.skipped == {}
            for snapshot in result.snapshots:
                history[snapshot.market_id].append(snapshot.yes_price)

    assert transport.all_played
    # The lead-in holds the first recorded prices: a calm day, no move at all.
    for market in (TRUMP, HARRIS, FED):
        assert history[market][:lead_in] == [history[market][lead_in]] * lead_in
    recorded = {market: prices[lead_in:] for market, prices in history.items()}
    assert recorded[TRUMP][:4] == [0.6085, 0.6155, 0.58, 0.706]
    assert recorded[TRUMP][-2:] == [0.9935, 0.9935]
    moves = [abs(b - a) for a, b in zip(recorded[TRUMP], recorded[TRUMP][1:], strict=False)]
    assert max(moves) >= 0.05
    fed = history[FED]
    assert max(fed) - min(fed) < 0.05
    assert max(recorded[HARRIS]) - min(recorded[HARRIS]) > 0.3
