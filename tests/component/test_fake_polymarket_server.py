"""`FakePolymarketServer` (`polymarket_kafka.testing`): real HTTP on loopback, both backends.

The client and the poller talk to it exactly as they talk to Polymarket, so these tests also
check that the fake serves the live response shapes the parsers expect.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio.lowlevel
import httpx
import pytest

from polymarket_kafka.polymarket import (
    ClientStats,
    PolymarketBlockedError,
    open_polymarket_client,
)
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.testing.fake_polymarket import FakeMarket, FakePolymarketServer, main

T0 = datetime(2024, 11, 5, 21, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=5, latency_seconds=0.001) as server:
        yield server


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


def test_synthetic_ids_look_real_and_are_deterministic() -> None:
    market = FakeMarket.make(7)

    assert market == FakeMarket.make(7)
    assert market.condition_id.startswith("0x")
    assert len(market.condition_id) == 66
    int(market.condition_id, 16)
    assert market.yes_token_id.isdigit()
    assert 70 <= len(market.yes_token_id) <= 78
    assert market.yes_token_id != market.no_token_id


@pytest.mark.anyio
async def test_gamma_serves_the_live_shapes(fake: FakePolymarketServer) -> None:
    first = fake.markets[0]
    async with httpx.AsyncClient(base_url=fake.url) as http:
        response = await http.get(
            "/markets", params={"condition_ids": first.condition_id, "limit": 1}
        )

    (item,) = response.json()
    assert item["conditionId"] == first.condition_id
    assert isinstance(item["outcomes"], str)  # JSON inside a string
    assert json.loads(item["clobTokenIds"]) == [first.yes_token_id, first.no_token_id]
    assert json.loads(item["outcomePrices"]) == ["0.1", "0.9"]
    assert isinstance(item["volume"], str)
    assert isinstance(item["volumeNum"], float)


@pytest.mark.anyio
async def test_client_reads_metadata_and_midpoints(fake: FakePolymarketServer) -> None:
    markets = fake.markets
    async with open_polymarket_client(fake.polymarket_config()) as client:
        metadata = await client.fetch_markets([m.condition_id for m in markets])
        prices = await client.fetch_midpoints(
            [m.yes_token_id for m in markets] + [markets[0].no_token_id]
        )

    assert metadata.failures == {}
    assert metadata.markets[markets[1].condition_id].category == "Politics"
    assert [prices.prices[m.yes_token_id] for m in markets] == [0.1, 0.11, 0.12, 0.13, 0.14]
    assert prices.prices[markets[0].no_token_id] == 0.9
    assert fake.request_count("GET /markets") == 1
    assert fake.request_count("POST /midpoints") == 1
    assert fake.request_count() == 2


@pytest.mark.anyio
async def test_scripted_moves_show_up_in_snapshots(fake: FakePolymarketServer) -> None:
    markets = fake.markets
    subscriptions = fake.subscriptions(T0)
    async with open_polymarket_client(fake.polymarket_config()) as client:
        poller = MarketPoller(client, metadata_refresh_seconds=300)
        before = await poller.poll_once(subscriptions, T0)
        fake.set_price(markets[0].condition_id, 0.71)
        fake.set_price(markets[1].no_token_id, "0.25")
        after = await poller.poll_once(subscriptions, T0 + timedelta(seconds=30))

    price = {s.market_id: s.yes_price for s in after.snapshots}
    assert len(before.snapshots) == 5
    assert price[markets[0].condition_id] == 0.71
    assert price[markets[1].condition_id] == 0.75
    assert fake.price(markets[1].yes_token_id) == pytest.approx(0.75)
    assert fake.request_count("GET /markets") == 1  # metadata cached for the second cycle


@pytest.mark.anyio
async def test_closed_markets_need_closed_true_and_have_no_book(fake: FakePolymarketServer) -> None:
    resolved = fake.markets[2]
    fake.close_market(resolved.condition_id, winner_yes=False)
    async with open_polymarket_client(fake.polymarket_config()) as client:
        result = await MarketPoller(client, metadata_refresh_seconds=300).poll_once(
            fake.subscriptions(T0), T0
        )
        no_book = await client.fetch_midpoints([resolved.yes_token_id])

    snapshot = next(s for s in result.snapshots if s.market_id == resolved.condition_id)
    assert (snapshot.closed, snapshot.yes_price, snapshot.volume) == (True, 0.0, None)
    assert fake.request_count("GET /markets") == 2  # the implicit closed=false, then closed=true
    assert no_book.failures == {
        resolved.yes_token_id: "HTTP 404: No orderbook exists for the requested token id"
    }


@pytest.mark.anyio
async def test_a_token_without_book_is_isolated(fake: FakePolymarketServer) -> None:
    markets = fake.markets
    fake.remove_orderbook(markets[3].yes_token_id)
    stats = ClientStats()
    async with open_polymarket_client(fake.polymarket_config(), stats=stats) as client:
        batch = await client.fetch_midpoints([m.yes_token_id for m in markets])

    assert set(batch.failures) == {markets[3].yes_token_id}
    assert len(batch.prices) == 4
    assert stats.bisections >= 1


@pytest.mark.anyio
async def test_scripted_failures_are_served_in_order(fake: FakePolymarketServer) -> None:
    token = fake.markets[0].yes_token_id
    fake.fail_next("/midpoints", 429, headers={"Retry-After": "1"}, times=2)
    fake.fail_next("/midpoints", 503, body="busy")
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await anyio.lowlevel.checkpoint()

    stats = ClientStats()
    async with open_polymarket_client(fake.polymarket_config(), sleep=sleep, stats=stats) as client:
        batch = await client.fetch_midpoints([token])

    assert batch.prices == {token: 0.1}
    assert sleeps[:2] == [1.0, 1.0]
    assert stats.requests[("POST /midpoints", "429")] == 2
    assert stats.requests[("POST /midpoints", "503")] == 1
    assert fake.request_count("POST /midpoints") == 4


@pytest.mark.anyio
async def test_a_scripted_cloudflare_page_blocks(fake: FakePolymarketServer) -> None:
    fake.fail_next(
        "/markets",
        403,
        body=b"<html>Attention Required!</html>",
        headers={"Content-Type": "text/html"},
    )
    async with open_polymarket_client(fake.polymarket_config(), sleep=no_sleep) as client:
        with pytest.raises(PolymarketBlockedError):
            await client.fetch_markets([fake.markets[0].condition_id])


@pytest.mark.anyio
async def test_the_limits_and_errors_of_the_real_api(fake: FakePolymarketServer) -> None:
    too_many = [{"token_id": fake.markets[0].yes_token_id}] * 501
    async with httpx.AsyncClient(base_url=fake.url) as http:
        over = await http.post("/midpoints", json=too_many)
        garbage = await http.post("/midpoints", content=b"not json")
        unknown = await http.post("/midpoints", json=[{"token_id": "123"}])
        elsewhere = await http.post("/prices", json=[])
        lost = await http.get("/books")
        listing = await http.get("/markets", params={"limit": "1000"})
        bad_limit = await http.get("/markets", params={"limit": "many"})

    assert (over.status_code, over.json()) == (400, {"error": "Payload exceeds the limit"})
    assert (garbage.status_code, garbage.json()) == (400, {"error": "Invalid payload"})
    assert unknown.status_code == 404
    assert elsewhere.status_code == lost.status_code == 404
    assert len(listing.json()) == 5
    assert len(bad_limit.json()) == 5


def test_gamma_caps_limit_at_100() -> None:
    with FakePolymarketServer(n_markets=150) as fake:
        response = httpx.get(f"{fake.url}/markets", params={"limit": 150})

    assert len(response.json()) == 100


@pytest.mark.anyio
async def test_a_large_fake_is_served_in_batches() -> None:
    with FakePolymarketServer(n_markets=1200, price=lambda i: 0.5) as fake:
        stats = ClientStats()
        async with open_polymarket_client(fake.polymarket_config(), stats=stats) as client:
            result = await MarketPoller(client, metadata_refresh_seconds=300).poll_once(
                fake.subscriptions(T0), T0
            )
        midpoint_requests = fake.request_count("POST /midpoints")
        gamma_requests = fake.request_count("GET /markets")

    assert len(result.snapshots) == 1200
    assert {s.yes_price for s in result.snapshots} == {0.5}
    assert (gamma_requests, midpoint_requests) == (12, 3)


def test_scripting_errors_and_lifecycle() -> None:
    fake = FakePolymarketServer(n_markets=1)
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fake.set_price(fake.markets[0].condition_id, 1.5)
    with pytest.raises(KeyError, match="unknown market"):
        fake.set_price("0xnope", 0.5)

    fake.set_latency(0.0)
    assert fake.start() is fake.start()  # starting twice is harmless
    config = fake.polymarket_config(max_retries=1)
    assert (config.base_url, config.gamma_url, config.max_retries) == (fake.url, fake.url, 1)
    assert config.rate_limit_delay_ms == 0
    fake.stop()
    fake.stop()  # so is stopping twice


@pytest.mark.anyio
async def test_the_single_midpoint_form_serves_the_live_shape(fake: FakePolymarketServer) -> None:
    first, second = fake.markets[:2]
    fake.close_market(second.condition_id)
    async with httpx.AsyncClient(base_url=fake.url) as http:
        yes = await http.get("/midpoint", params={"token_id": first.yes_token_id})
        no = await http.get("/midpoint", params={"token_id": first.no_token_id})
        closed = await http.get("/midpoint", params={"token_id": second.yes_token_id})
        unknown = await http.get("/midpoint", params={"token_id": "123"})
        missing = await http.get("/midpoint")

    assert (yes.status_code, yes.json()) == (200, {"mid": "0.1"})  # a string, like live
    assert no.json() == {"mid": "0.9"}
    assert closed.status_code == unknown.status_code == 404
    assert unknown.json() == {"error": "No orderbook exists for the requested token id"}
    assert (missing.status_code, missing.json()) == (400, {"error": "Invalid payload"})
    assert fake.request_count("GET /midpoint") == 5
    assert fake.request_counts() == {"GET /midpoint": 5}


def test_main_serves_until_stdin_closes() -> None:
    read_fd, write_fd = os.pipe()
    out = io.StringIO()
    with os.fdopen(read_fd) as stdin, os.fdopen(write_fd, "w") as feed:
        runner = threading.Thread(
            target=main,
            args=(["--markets", "2", "--latency-ms", "1"],),
            kwargs={"stdin": stdin, "stdout": out},
        )
        runner.start()
        try:
            deadline = time.monotonic() + 10
            while not out.getvalue() and time.monotonic() < deadline:
                time.sleep(0.02)  # until the server prints its URL
            url = out.getvalue().strip()
            token = FakeMarket.make(1).yes_token_id
            response = httpx.get(f"{url}/midpoint", params={"token_id": token})
            feed.write("ignored line\n")
        finally:
            feed.close()
            runner.join(timeout=10)

    assert not runner.is_alive()
    assert response.json() == {"mid": "0.11"}
    first, last = out.getvalue().splitlines()
    assert first.startswith("http://127.0.0.1:")
    assert json.loads(last) == {"requests": {"GET /midpoint": 1}}


def test_main_rejects_negative_arguments() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--markets", "-1"], stdin=io.StringIO(), stdout=io.StringIO())
    assert exit_info.value.code == 2


def test_the_module_runs_as_a_separate_server_process() -> None:
    command = [sys.executable, "-m", "polymarket_kafka.testing.fake_polymarket", "--markets", "3"]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        response = httpx.post(
            f"{url}/midpoints", json=[{"token_id": FakeMarket.make(2).yes_token_id}]
        )
        process.stdin.close()
        report = json.loads(process.stdout.readline())
        assert process.wait(timeout=10) == 0

    assert response.json() == {FakeMarket.make(2).yes_token_id: "0.12"}
    assert report == {"requests": {"POST /midpoints": 1}}
