"""`PolymarketClient` against recorded cassettes (vcrpy) and scripted `httpx.MockTransport`s.

vcrpy's httpx support patches `httpx.AsyncHTTPTransport.handle_async_request`; on playback it
never opens a socket, so it runs unchanged under Trio and asyncio and every cassette test below
runs on both backends with vcrpy itself. Assertions are on what crossed the boundary: the
requests sent (bodies, query strings), how many, and the counters. Sleeping is injected and
recorded, never real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import vcr

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.polymarket import (
    ClientStats,
    MalformedPayloadError,
    PolymarketBlockedError,
    PolymarketClient,
    PolymarketHTTPError,
    PolymarketUnavailableError,
    RateLimiter,
    RetryPolicy,
    open_polymarket_client,
)

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes"
RECORDED = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="none",
    match_on=["method", "path", "query", "body"],
)

TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
TRUMP_YES = "21742633143463906290569050155826241533067272736897614950488156847949938836455"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
HARRIS_YES = "69236923620077691027083946871148646972011131466059644796654161903044970987404"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
FED_YES = "60487116984468020978247225474488676749601001829886755968952521846780452448915"
DESANTIS = "0x12a0cb60174abc437bf1178367c72d11f069e1a3add20b148fb0ab4279b772b2"
BTC100K_YES = "64903093311385616430821497488306433314807585397286521531639186532059591846310"
# Protocol V2 markets of protocol_v2.yaml (illustrative ids, documented shape).
V2_ETH = "0x0ad913d730f776903e135e88b58397e2e797b57b4efe88147d4f9d81670708c9"
V2_ETH_YES_POSITION = (
    "37212350416638003674432500064461592243369810243258986085605794752467962457498"
)
V2_ETH_NO_POSITION = "22473017051131082499873012897431854678140358536285255300264801553548331506677"
V2_ETH_YES_TOKEN = "65958748191199987019299316439334663105506531429503770731856499469739886756461"
V2_NEW = "0xc7b06dc36b63afa348a44c6b65ace9e20f014b5bce917700c3d576dcc5d97fa5"
BIDEN_COVID = "0xe3b423dfad8c22ff75c9899c4e8176f628cf4ad4caa00481764d320e7415f7a9"

NO_BOOK = {"error": "No orderbook exists for the requested token id"}


class Sleeps:
    """An injected sleep: records the durations, yields to the scheduler, never waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def config(**changes: Any) -> PolymarketConfig:
    return replace(PolymarketConfig(rate_limit_delay_ms=0, max_retries=3), **changes)


HALF = RetryPolicy(max_retries=3, random=lambda: 0.5)


# --- scripted peers --------------------------------------------------------------------------

Reply = httpx.Response | Exception


class Script:
    """A `MockTransport` handler: records requests, answers from a function or a queue."""

    def __init__(self, answer: Callable[[httpx.Request], Reply] | list[Reply]) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self._answer(request) if callable(self._answer) else self._answer.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def bodies(self) -> list[list[str]]:
        return [[item["token_id"] for item in json.loads(r.content)] for r in self.requests]

    def condition_ids(self) -> list[list[str]]:
        return [r.url.params.get_list("condition_ids") for r in self.requests]


def midpoints_for(request: httpx.Request, price: str = "0.5") -> httpx.Response:
    return httpx.Response(200, json={i["token_id"]: price for i in json.loads(request.content)})


def gamma_item(
    condition_id: str, *, closed: bool = False, yes: str | None = None
) -> dict[str, object]:
    token = yes or str(int(condition_id[2:10], 16))
    return {
        "conditionId": condition_id,
        "question": f"Question {condition_id[:8]}?",
        "outcomes": '["Yes", "No"]',
        "clobTokenIds": json.dumps([token, token + "0"]),
        "outcomePrices": '["1", "0"]' if closed else '["0.4", "0.6"]',
        "closed": closed,
        "active": True,
    }


def cid(n: int) -> str:
    return "0x" + f"{n:064x}"


def tokens(n: int) -> list[str]:
    return [str(10**70 + i) for i in range(n)]


# --- recorded cassettes (vcrpy, both backends) ------------------------------------------------


@pytest.mark.anyio
async def test_normal_cycle_from_the_cassette(sleeps: Sleeps) -> None:
    stats = ClientStats()
    with RECORDED.use_cassette("normal_cycle.yaml") as cassette:
        async with open_polymarket_client(config(), stats=stats, sleep=sleeps) as client:
            metadata = await client.fetch_markets([TRUMP, HARRIS, FED])
            yes_tokens = [metadata.markets[m].yes_token_id or "" for m in (FED, HARRIS, TRUMP)]
            prices = await client.fetch_midpoints(yes_tokens)

    assert cassette.all_played
    assert metadata.failures == {}
    trump, harris, fed = (metadata.markets[m] for m in (TRUMP, HARRIS, FED))
    assert trump.yes_token_id == TRUMP_YES
    assert (trump.volume, trump.liquidity, trump.category) == (1250000000.5, 8350000.25, "Politics")
    assert trump.tags == ("Politics", "US Election")
    assert (harris.volume, harris.liquidity, harris.category) == (
        1020000000.75,
        5120000.5,
        "Politics",
    )
    assert (fed.category, fed.tags) == ("Fed Rates", ("Fed Rates", "Business"))
    assert prices.prices == {TRUMP_YES: 0.5865, HARRIS_YES: 0.4125, FED_YES: 0.0025}
    assert prices.failures == {}
    assert stats.requests == {("GET /markets", "200"): 1, ("POST /midpoints", "200"): 1}
    assert sleeps.calls == []


@pytest.mark.anyio
async def test_429_waits_for_retry_after_then_succeeds(sleeps: Sleeps) -> None:
    stats = ClientStats()
    with RECORDED.use_cassette("retry_429.yaml") as cassette:
        async with open_polymarket_client(config(), stats=stats, sleep=sleeps) as client:
            batch = await client.fetch_midpoints([TRUMP_YES])

    assert cassette.play_count == 2
    assert batch.prices == {TRUMP_YES: 0.5865}
    assert sleeps.calls == [2.0]  # the header (2 s), not the body's retry_after_seconds (5 s)
    assert stats.retries == 1
    assert stats.requests == {("POST /midpoints", "429"): 1, ("POST /midpoints", "200"): 1}


@pytest.mark.anyio
async def test_5xx_and_425_are_retried_with_backoff(sleeps: Sleeps) -> None:
    stats = ClientStats()
    with RECORDED.use_cassette("retry_5xx.yaml") as cassette:
        async with open_polymarket_client(
            config(), stats=stats, sleep=sleeps, retry_policy=HALF
        ) as client:
            metadata = await client.fetch_markets([FED])
            prices = await client.fetch_midpoints([FED_YES])

    assert cassette.all_played
    assert list(metadata.markets) == [FED]
    assert prices.prices == {FED_YES: 0.0025}
    # Full jitter with random() = 0.5 and a 0.5 s base: 0.25, then 0.25 and 0.5.
    assert sleeps.calls == [0.25, 0.25, 0.5]
    assert stats.retries == 3
    assert stats.requests[("POST /midpoints", "425")] == 1
    assert stats.requests[("POST /midpoints", "502")] == 1
    assert stats.requests[("GET /markets", "500")] == 1


@pytest.mark.anyio
async def test_cloudflare_html_403_is_not_retried(sleeps: Sleeps) -> None:
    stats = ClientStats()
    with RECORDED.use_cassette("blocked_403.yaml") as cassette:
        async with open_polymarket_client(config(), stats=stats, sleep=sleeps) as client:
            with pytest.raises(PolymarketBlockedError, match="geo/IP block") as caught:
                await client.fetch_midpoints([TRUMP_YES])

    assert cassette.play_count == 1
    assert "Attention Required! | Cloudflare" in caught.value.body_excerpt
    assert sleeps.calls == []
    assert stats.retries == 0


@pytest.mark.anyio
async def test_malformed_payloads_from_the_cassette(sleeps: Sleeps) -> None:
    stats = ClientStats()
    with RECORDED.use_cassette("malformed.yaml") as cassette:
        async with open_polymarket_client(config(), stats=stats, sleep=sleeps) as client:
            with pytest.raises(MalformedPayloadError, match="not JSON: 'upstream connect error"):
                await client.fetch_midpoints([TRUMP_YES])
            with pytest.raises(MalformedPayloadError, match="expected a JSON object, got list"):
                await client.fetch_midpoints([HARRIS_YES])
            prices = await client.fetch_midpoints([TRUMP_YES, HARRIS_YES, FED_YES])
            metadata = await client.fetch_markets([TRUMP, HARRIS, FED])
            with pytest.raises(MalformedPayloadError, match="expected a JSON array, got dict"):
                await client.fetch_markets([DESANTIS])

    assert cassette.all_played
    assert prices.prices == {FED_YES: 0.0025}
    assert "not a number" in prices.failures[TRUMP_YES]
    assert "'1.7' outside [0, 1]" in prices.failures[HARRIS_YES]
    assert list(metadata.markets) == [FED]
    assert metadata.failures[TRUMP].startswith(
        "malformed Gamma market: clobTokenIds is not valid JSON"
    )
    assert metadata.failures[HARRIS] == "not found on Gamma (neither open nor closed)"
    assert stats.malformed_payloads == 3
    assert stats.malformed_items == 4  # two prices, two Gamma items
    assert sleeps.calls == []  # malformed bodies are not retried


@pytest.mark.anyio
async def test_closed_markets_are_found_with_closed_true() -> None:
    with RECORDED.use_cassette("closed_market.yaml") as cassette:
        async with open_polymarket_client(config()) as client:
            metadata = await client.fetch_markets([TRUMP, DESANTIS])

    assert cassette.all_played
    assert metadata.failures == {}
    trump, desantis = metadata.markets[TRUMP], metadata.markets[DESANTIS]
    assert (trump.closed, trump.yes_outcome_price, trump.volume) == (True, 1.0, None)
    assert (desantis.closed, desantis.yes_outcome_price) == (True, 0.0)


@pytest.mark.anyio
async def test_v2_markets_are_priced_under_their_position_ids_from_the_cassette() -> None:
    with RECORDED.use_cassette("protocol_v2.yaml") as cassette:
        async with open_polymarket_client(config()) as client:
            metadata = await client.fetch_markets([V2_ETH, FED, V2_NEW])
            yes_ids = [metadata.markets[m].yes_token_id for m in (V2_ETH, FED, V2_NEW)]
            prices = await client.fetch_midpoints([t for t in yes_ids if t is not None])

    # The midpoints request matched the cassette: the v2 YES position id, not its token id.
    assert cassette.all_played
    assert metadata.failures == {}
    fed, eth, new = (metadata.markets[m] for m in (FED, V2_ETH, V2_NEW))
    assert (fed.protocol_version, fed.yes_token_id) == ("v1", FED_YES)
    assert (eth.protocol_version, eth.yes_token_id, eth.no_token_id) == (
        "v2",
        V2_ETH_YES_POSITION,
        V2_ETH_NO_POSITION,
    )
    assert V2_ETH_YES_TOKEN not in yes_ids
    assert (new.protocol_version, new.yes_token_id) == ("v2", None)
    assert new.token_problem is not None and "positionIds" in new.token_problem
    assert prices.prices == {FED_YES: 0.0025, V2_ETH_YES_POSITION: 0.315}


@pytest.mark.anyio
async def test_a_legacy_market_closed_with_no_winner_is_void_from_the_cassette() -> None:
    with RECORDED.use_cassette("void_market.yaml") as cassette:
        async with open_polymarket_client(config()) as client:
            opened = await client.fetch_markets([BIDEN_COVID])
            for _ in range(2):
                await client.fetch_midpoints([opened.markets[BIDEN_COVID].yes_token_id or ""])
            closed = await client.fetch_markets([BIDEN_COVID])

    assert cassette.all_played
    before, after = opened.markets[BIDEN_COVID], closed.markets[BIDEN_COVID]
    assert (before.closed, before.resolution) == (False, None)
    assert (after.closed, after.outcome_prices, after.resolution) == (True, (0.0, 0.0), "void")


@pytest.mark.anyio
async def test_a_condition_alias_is_matched_to_the_requested_id() -> None:
    item = gamma_item(TRUMP)
    item["condition"] = item.pop("conditionId")
    script = Script(lambda request: httpx.Response(200, json=[item]))
    async with open_polymarket_client(config(), transport=script.transport) as client:
        batch = await client.fetch_markets([TRUMP])

    assert batch.failures == {}
    assert batch.markets[TRUMP].yes_token_id == str(int(TRUMP[2:10], 16))


@pytest.mark.anyio
async def test_a_condition_alias_keys_the_failure_of_a_bad_item() -> None:
    item = gamma_item(TRUMP)
    item["condition"] = item.pop("conditionId")
    item["outcomePrices"] = '["abc", "0.5"]'
    script = Script(lambda request: httpx.Response(200, json=[item]))
    async with open_polymarket_client(config(), transport=script.transport) as client:
        batch = await client.fetch_markets([TRUMP])

    assert len(script.requests) == 1  # the failure answers the id: no closed=true pass
    assert batch.markets == {}
    assert batch.failures[TRUMP].startswith("malformed Gamma market: outcomePrices")


@pytest.mark.anyio
async def test_a_token_without_order_book_is_isolated_by_bisection() -> None:
    stats = ClientStats()
    with RECORDED.use_cassette("no_orderbook.yaml") as cassette:
        async with open_polymarket_client(config(), stats=stats) as client:
            batch = await client.fetch_midpoints([TRUMP_YES, BTC100K_YES])

    assert cassette.all_played
    assert batch.prices == {TRUMP_YES: 0.5865}
    assert batch.failures == {
        BTC100K_YES: "HTTP 404: No orderbook exists for the requested token id"
    }
    assert stats.bisections == 1


# --- batching --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_midpoints_are_posted_in_chunks_of_at_most_500_in_order() -> None:
    script = Script(midpoints_for)
    wanted = tokens(1201)
    async with open_polymarket_client(
        config(), transport=script.transport, max_concurrency=1
    ) as client:
        batch = await client.fetch_midpoints(wanted + wanted[:3] + [""])

    assert [len(body) for body in script.bodies()] == [500, 500, 201]
    assert [t for body in script.bodies() for t in body] == wanted
    assert len(batch.prices) == 1201
    request = script.requests[0]
    assert (request.method, request.url.path) == ("POST", "/midpoints")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("polymarket-kafka/")


@pytest.mark.anyio
async def test_chunks_run_concurrently_and_cover_every_token() -> None:
    script = Script(midpoints_for)
    wanted = tokens(1600)
    async with open_polymarket_client(config(), transport=script.transport) as client:
        batch = await client.fetch_midpoints(wanted)

    assert sorted(len(body) for body in script.bodies()) == [100, 500, 500, 500]
    assert set(batch.prices) == set(wanted)


@pytest.mark.anyio
async def test_nothing_to_ask_makes_no_request() -> None:
    script = Script(midpoints_for)
    async with open_polymarket_client(config(), transport=script.transport) as client:
        assert (await client.fetch_midpoints([])).prices == {}
        assert (await client.fetch_markets(["", ""])).markets == {}

    assert script.requests == []


@pytest.mark.anyio
async def test_gamma_is_asked_in_chunks_of_at_most_100_with_repeated_keys() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json=[gamma_item(i) for i in request.url.params.get_list("condition_ids")]
        )

    script = Script(answer)
    ids = [cid(n) for n in range(1, 251)]
    async with open_polymarket_client(
        config(), transport=script.transport, max_concurrency=1
    ) as client:
        batch = await client.fetch_markets(ids)

    assert [len(chunk) for chunk in script.condition_ids()] == [100, 100, 50]
    assert [r.url.params["limit"] for r in script.requests] == ["100", "100", "50"]
    assert all("closed" not in r.url.params for r in script.requests)
    assert str(script.requests[0].url).startswith(
        f"https://gamma-api.polymarket.com/markets?condition_ids={ids[0]}&condition_ids={ids[1]}&"
    )
    assert list(batch.markets) == ids
    assert batch.failures == {}


@pytest.mark.anyio
async def test_ids_gamma_drops_are_asked_again_with_closed_true() -> None:
    live, resolved, unknown = cid(1), cid(2), cid(3)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("closed") == "true":
            return httpx.Response(200, json=[gamma_item(resolved, closed=True)])
        return httpx.Response(200, json=[gamma_item(live)])

    script = Script(answer)
    async with open_polymarket_client(config(), transport=script.transport) as client:
        batch = await client.fetch_markets([live, resolved, unknown])

    assert script.condition_ids() == [[live, resolved, unknown], [resolved, unknown]]
    assert script.requests[1].url.params["closed"] == "true"
    assert script.requests[1].url.params["limit"] == "2"
    assert batch.markets[live].closed is False
    assert batch.markets[resolved].closed is True
    assert batch.failures == {unknown: "not found on Gamma (neither open nor closed)"}


@pytest.mark.anyio
async def test_gamma_rows_nobody_asked_for_are_ignored_and_case_is_forgiven() -> None:
    asked = cid(0xABC).upper().replace("0X", "0x")
    stray = cid(0xDEF)
    items = [gamma_item(cid(0xABC)), gamma_item(stray), {"question": "no id"}]
    script = Script(lambda _: httpx.Response(200, json=items))
    stats = ClientStats()
    async with open_polymarket_client(config(), transport=script.transport, stats=stats) as client:
        batch = await client.fetch_markets([asked])

    assert list(batch.markets) == [asked]
    assert batch.markets[asked].market_id == asked
    assert batch.failures == {}
    assert stats.malformed_items == 1


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "expected_sleep"),
    [
        (lambda: httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "slow"}), 2.0),
        (lambda: httpx.Response(429, json={"error": "slow", "retry_after_seconds": 1}), 1.0),
        (lambda: httpx.Response(429, headers={"Retry-After": "600"}), 30.0),  # capped
        (lambda: httpx.Response(425, json={"error": "service not ready"}), 0.25),
        (
            lambda: httpx.Response(
                500, json={"type": "internal error", "error": "cannot get the information"}
            ),
            0.25,
        ),
        (
            lambda: httpx.Response(
                503, text="<html>busy</html>", headers={"content-type": "text/html"}
            ),
            0.25,
        ),
        (lambda: httpx.ReadTimeout("read timed out"), 0.25),
        (lambda: httpx.ConnectTimeout("connect timed out"), 0.25),
        (lambda: httpx.ConnectError("connection refused"), 0.25),
        (lambda: httpx.RemoteProtocolError("peer closed"), 0.25),
    ],
)
async def test_retryable_failures_are_retried(
    first: Callable[[], Reply], expected_sleep: float, sleeps: Sleeps
) -> None:
    script = Script([first(), httpx.Response(200, json={"t": "0.5"})])
    async with open_polymarket_client(
        config(), transport=script.transport, sleep=sleeps, retry_policy=HALF
    ) as client:
        batch = await client.fetch_midpoints(["t"])

    assert batch.prices == {"t": 0.5}
    assert len(script.requests) == 2
    assert sleeps.calls == [expected_sleep]


@pytest.mark.anyio
async def test_outcomes_are_counted_by_endpoint_and_status(sleeps: Sleeps) -> None:
    stats = ClientStats()
    replies: list[Reply] = [
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.Response(503),
    ]
    script = Script([*replies, httpx.Response(200, json={"t": "0.5"})])
    async with open_polymarket_client(
        config(), transport=script.transport, sleep=sleeps, stats=stats
    ) as client:
        await client.fetch_midpoints(["t"])

    assert stats.requests == {
        ("POST /midpoints", "timeout"): 1,
        ("POST /midpoints", "transport_error"): 1,
        ("POST /midpoints", "503"): 1,
        ("POST /midpoints", "200"): 1,
    }
    assert stats.retries == 3
    assert stats.total_requests() == stats.total_requests("POST /midpoints") == 4
    assert stats.total_requests("GET /markets") == 0
    # Every attempt is timed, whatever its outcome; only endpoints that were asked appear.
    assert list(stats.latency) == ["POST /midpoints"]
    assert stats.latency["POST /midpoints"].count == 4


@pytest.mark.anyio
async def test_request_latency_is_measured_on_the_event_loop_clock() -> None:
    stats = ClientStats()

    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.05)
        return midpoints_for(request)

    async with open_polymarket_client(
        config(), transport=httpx.MockTransport(slow), stats=stats
    ) as client:
        await client.fetch_midpoints(["t"])

    latency = stats.latency["POST /midpoints"]
    assert latency.count == 1
    assert latency.sum >= 0.05  # a lower bound only: the reply waited at least that long


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (lambda: httpx.Response(503, json={"error": "down"}), "HTTP 503: down"),
        (lambda: httpx.ReadTimeout("slow"), "timeout (ReadTimeout)"),
        (lambda: httpx.ConnectError("refused"), "transport error (ConnectError: refused)"),
    ],
)
async def test_retries_are_bounded(
    reply: Callable[[], Reply], problem: str, sleeps: Sleeps
) -> None:
    script = Script(lambda _: reply())
    async with open_polymarket_client(
        config(max_retries=2), transport=script.transport, sleep=sleeps
    ) as client:
        with pytest.raises(PolymarketUnavailableError) as caught:
            await client.fetch_midpoints(["t"])

    assert len(script.requests) == 3
    assert len(sleeps.calls) == 2
    assert caught.value.attempts == 3
    assert caught.value.last_problem == problem


@pytest.mark.anyio
async def test_zero_retries_means_one_attempt(sleeps: Sleeps) -> None:
    script = Script(lambda _: httpx.Response(502))
    async with open_polymarket_client(
        config(max_retries=0), transport=script.transport, sleep=sleeps
    ) as client:
        with pytest.raises(PolymarketUnavailableError, match="after 1 attempt"):
            await client.fetch_markets([cid(1)])

    assert len(script.requests) == 1
    assert sleeps.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_on_gamma_are_not_retried(status: int, sleeps: Sleeps) -> None:
    body = {"type": "validation error", "error": "offset too large"}
    script = Script(lambda _: httpx.Response(status, json=body))
    async with open_polymarket_client(config(), transport=script.transport, sleep=sleeps) as client:
        with pytest.raises(PolymarketHTTPError) as caught:
            await client.fetch_markets([cid(1)])

    assert (caught.value.status, caught.value.body_excerpt) == (status, "offset too large")
    assert len(script.requests) == 1
    assert sleeps.calls == []


@pytest.mark.anyio
async def test_a_non_bisectable_4xx_on_midpoints_raises() -> None:
    script = Script(lambda _: httpx.Response(422, json={"error": "nope"}))
    async with open_polymarket_client(config(), transport=script.transport) as client:
        with pytest.raises(PolymarketHTTPError, match="HTTP 422"):
            await client.fetch_midpoints(tokens(4))

    assert len(script.requests) == 1


@pytest.mark.anyio
async def test_html_403_raises_blocked_without_retry(sleeps: Sleeps) -> None:
    page = "<!DOCTYPE html><title>Attention Required! | Cloudflare</title>"
    script = Script(lambda _: httpx.Response(403, text=page, headers={"content-type": "text/html"}))
    async with open_polymarket_client(config(), transport=script.transport, sleep=sleeps) as client:
        with pytest.raises(PolymarketBlockedError):
            await client.fetch_markets([cid(1)])

    assert len(script.requests) == 1
    assert sleeps.calls == []


# --- malformed payloads ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        lambda: httpx.Response(200, text="upstream connect error"),
        lambda: httpx.Response(200, text=""),
        lambda: httpx.Response(200, content=b"\xff\xfe{"),
    ],
)
async def test_an_unreadable_body_is_malformed_not_retried(
    reply: Callable[[], httpx.Response], sleeps: Sleeps
) -> None:
    stats = ClientStats()
    script = Script(lambda _: reply())
    async with open_polymarket_client(
        config(), transport=script.transport, sleep=sleeps, stats=stats
    ) as client:
        with pytest.raises(MalformedPayloadError):
            await client.fetch_midpoints(["t"])

    assert len(script.requests) == 1
    assert stats.malformed_payloads == 1
    assert sleeps.calls == []


# httpx leaves its body iterators unfinished when decoding fails mid-read; Trio reports
# that as a ResourceWarning at garbage collection. It is httpx's, and harmless here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.anyio
async def test_an_undecodable_body_is_malformed() -> None:
    stats = ClientStats()
    broken = httpx.ByteStream(b"not gzip")
    reply = httpx.Response(200, stream=broken, headers={"content-encoding": "gzip"})
    script = Script([reply])
    async with open_polymarket_client(config(), transport=script.transport, stats=stats) as client:
        with pytest.raises(MalformedPayloadError, match="undecodable body"):
            await client.fetch_midpoints(["t"])

    assert stats.requests == {("POST /midpoints", "decoding_error"): 1}
    assert stats.latency["POST /midpoints"].count == 1
    assert stats.malformed_payloads == 1


@pytest.mark.anyio
async def test_a_failed_chunk_marks_only_its_own_tokens() -> None:
    wanted = tokens(600)

    def answer(request: httpx.Request) -> httpx.Response:
        if len(json.loads(request.content)) == 100:
            return httpx.Response(200, text="oops")
        return midpoints_for(request)

    script = Script(answer)
    async with open_polymarket_client(
        config(), transport=script.transport, max_concurrency=1
    ) as client:
        batch = await client.fetch_midpoints(wanted)

    assert set(batch.prices) == set(wanted[:500])
    assert set(batch.failures) == set(wanted[500:])
    assert "body is not JSON" in batch.failures[wanted[-1]]


@pytest.mark.anyio
async def test_a_failed_gamma_chunk_marks_only_its_own_ids(sleeps: Sleeps) -> None:
    ids = [cid(n) for n in range(1, 151)]

    def answer(request: httpx.Request) -> httpx.Response:
        asked = request.url.params.get_list("condition_ids")
        if len(asked) == 100:
            return httpx.Response(503)
        return httpx.Response(200, json=[gamma_item(i) for i in asked])

    script = Script(answer)
    async with open_polymarket_client(
        config(max_retries=1), transport=script.transport, sleep=sleeps
    ) as client:
        batch = await client.fetch_markets(ids)

    assert set(batch.markets) == set(ids[100:])
    assert set(batch.failures) == set(ids[:100])
    assert "unavailable after 2 attempt(s): HTTP 503" in batch.failures[ids[0]]
    assert len(script.requests) == 3  # no closed=true pass: every id is accounted for


@pytest.mark.anyio
async def test_a_failing_closed_pass_marks_the_missing_ids() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("closed") == "true":
            return httpx.Response(200, json={"error": "wrong shape"})
        return httpx.Response(200, json=[gamma_item(cid(1))])

    async with open_polymarket_client(config(), transport=Script(answer).transport) as client:
        batch = await client.fetch_markets([cid(1), cid(2)])

    assert list(batch.markets) == [cid(1)]
    assert "expected a JSON array" in batch.failures[cid(2)]


@pytest.mark.anyio
async def test_concurrent_chunk_failures_are_isolated_too() -> None:
    wanted = tokens(1100)

    def answer(request: httpx.Request) -> httpx.Response:
        if len(json.loads(request.content)) == 100:
            return httpx.Response(200, json=["wrong shape"])
        return midpoints_for(request)

    async with open_polymarket_client(config(), transport=Script(answer).transport) as client:
        batch = await client.fetch_midpoints(wanted)

    assert len(batch.prices) == 1000
    assert set(batch.failures) == set(wanted[1000:])


@pytest.mark.anyio
async def test_a_block_in_one_concurrent_chunk_raises_itself_not_a_group() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(json.loads(request.content)) == 100:
            return httpx.Response(403, text="<html>blocked</html>")
        return midpoints_for(request)

    async with open_polymarket_client(config(), transport=Script(answer).transport) as client:
        with pytest.raises(PolymarketBlockedError):
            await client.fetch_midpoints(tokens(1100))


@pytest.mark.anyio
async def test_an_unexpected_error_in_a_concurrent_chunk_propagates_unwrapped() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(json.loads(request.content)) == 100:
            raise RuntimeError("cassette does not fit")
        return midpoints_for(request)

    async with open_polymarket_client(config(), transport=Script(answer).transport) as client:
        with pytest.raises(RuntimeError, match="cassette does not fit"):
            await client.fetch_midpoints(tokens(1100))


# --- bisection -------------------------------------------------------------------------------


class NoBook:
    """A CLOB that answers 404 for any batch holding a token without an order book."""

    def __init__(self, bad: set[str], status: int = 404) -> None:
        self.bad = bad
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        asked = [item["token_id"] for item in json.loads(request.content)]
        if self.bad & set(asked):
            return httpx.Response(self.status, json=NO_BOOK)
        return midpoints_for(request)


@pytest.mark.anyio
async def test_bisection_isolates_the_bad_token_and_remembers_it() -> None:
    wanted = tokens(8)
    book = NoBook({wanted[5]})
    script = Script(book)
    stats = ClientStats()
    async with open_polymarket_client(
        config(), transport=script.transport, stats=stats, max_concurrency=1
    ) as client:
        first = await client.fetch_midpoints(wanted)
        first_bodies = script.bodies()
        script.requests.clear()
        second = await client.fetch_midpoints(wanted)
        second_bodies = script.bodies()
        book.bad.clear()  # the book comes back
        script.requests.clear()
        await client.fetch_midpoints(wanted)
        third_bodies = script.bodies()
        script.requests.clear()
        await client.fetch_midpoints(wanted)

    assert set(first.prices) == set(wanted) - {wanted[5]}
    assert first.failures == {wanted[5]: f"HTTP 404: {NO_BOOK['error']}"}
    assert [len(b) for b in first_bodies] == [8, 4, 4, 2, 1, 1, 2]
    assert stats.bisections == 3
    # Next time the known-bad token goes alone: 2 requests instead of 7.
    assert second_bodies == [wanted[:5] + wanted[6:], [wanted[5]]]
    assert second.failures == first.failures
    assert third_bodies == second_bodies
    assert script.bodies() == [wanted]  # recovered: back in the big batch


@pytest.mark.anyio
async def test_the_memory_of_isolated_tokens_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("polymarket_kafka.polymarket.client._MAX_ISOLATED", 2)
    wanted = tokens(3)
    script = Script(NoBook(set(wanted)))
    async with open_polymarket_client(
        config(), transport=script.transport, max_concurrency=1
    ) as client:
        await client.fetch_midpoints(wanted)  # isolates all three; the memory holds at most 2
        script.requests.clear()
        await client.fetch_midpoints(wanted)

    # Only the last isolated token was remembered: the others went back into a batch.
    assert script.bodies()[0] == wanted[:2]
    assert script.bodies()[-1] == wanted[2:]


@pytest.mark.anyio
async def test_a_400_chunk_is_bisected_too() -> None:
    wanted = tokens(3)
    script = Script(NoBook({wanted[0]}, status=400))
    async with open_polymarket_client(config(), transport=script.transport) as client:
        batch = await client.fetch_midpoints(wanted)

    assert set(batch.prices) == set(wanted[1:])
    assert batch.failures[wanted[0]].startswith("HTTP 400: ")


@pytest.mark.anyio
async def test_bisection_is_bounded_when_every_request_fails() -> None:
    wanted = tokens(8)
    script = Script(NoBook(set(wanted), status=400))
    async with httpx.AsyncClient(transport=script.transport) as http:
        client = PolymarketClient(
            http,
            config(),
            limiter=RateLimiter(0),
            retry_policy=RetryPolicy(max_retries=0),
            stats=ClientStats(),
            sleep=Sleeps(),
            max_bisect_requests=4,
        )
        batch = await client.fetch_midpoints(wanted)

    assert batch.prices == {}
    assert set(batch.failures) == set(wanted)
    # 8 → 4 → 2 + 2 (budget spent: those fail whole) → the other 4 fails whole.
    assert len(script.requests) == 5


@pytest.mark.anyio
async def test_unavailable_half_fails_only_its_tokens(sleeps: Sleeps) -> None:
    wanted = tokens(4)

    def answer(request: httpx.Request) -> httpx.Response:
        asked = [i["token_id"] for i in json.loads(request.content)]
        if len(asked) == 4:
            return httpx.Response(404, json=NO_BOOK)
        if wanted[3] in asked:
            return httpx.Response(503)
        return midpoints_for(request)

    async with open_polymarket_client(
        config(max_retries=0), transport=Script(answer).transport, sleep=sleeps
    ) as client:
        batch = await client.fetch_midpoints(wanted)

    assert set(batch.prices) == set(wanted[:2])
    assert "unavailable after 1 attempt(s)" in batch.failures[wanted[2]]


@pytest.mark.anyio
async def test_a_block_during_bisection_raises() -> None:
    wanted = tokens(4)

    def answer(request: httpx.Request) -> httpx.Response:
        if len(json.loads(request.content)) == 4:
            return httpx.Response(404, json=NO_BOOK)
        return httpx.Response(403, text="<html>blocked</html>")

    async with open_polymarket_client(config(), transport=Script(answer).transport) as client:
        with pytest.raises(PolymarketBlockedError):
            await client.fetch_midpoints(wanted)


# --- pacing and construction -----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_requests_are_paced_by_the_configured_delay() -> None:
    clock = FakeClock()
    sleeps = Sleeps()
    stats = ClientStats()
    script = Script(midpoints_for)
    async with open_polymarket_client(
        PolymarketConfig(rate_limit_delay_ms=100),
        transport=script.transport,
        stats=stats,
        sleep=sleeps,
        clock=clock,
        max_concurrency=1,
    ) as client:
        await client.fetch_midpoints(tokens(1500))

    assert len(script.requests) == 3
    assert sleeps.calls == pytest.approx([0.1, 0.2])  # the fake clock never moves
    assert stats.rate_limit_waits == 2
    assert stats.rate_limit_wait_seconds == pytest.approx(0.3)


@pytest.mark.anyio
async def test_default_sleep_and_clock_work_on_the_real_loop() -> None:
    script = Script([httpx.Response(503), httpx.Response(200, json={"t": "0.5"})])
    async with open_polymarket_client(
        config(), transport=script.transport, retry_policy=RetryPolicy(random=lambda: 0.0)
    ) as client:
        assert (await client.fetch_midpoints(["t"])).prices == {"t": 0.5}


@pytest.mark.parametrize(
    "kwargs",
    [{"midpoints_per_request": 501}, {"gamma_ids_per_request": 0}, {"max_concurrency": 0}],
)
def test_client_rejects_impossible_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PolymarketClient(
            httpx.AsyncClient(),
            config(),
            limiter=RateLimiter(0),
            retry_policy=RetryPolicy(),
            stats=ClientStats(),
            sleep=Sleeps(),
            **kwargs,
        )


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """Belt and braces: any real connection attempt in this module is a test bug."""
    original = httpx.AsyncHTTPTransport.handle_async_request

    async def refuse(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"real network access attempted: {request.url}")

    httpx.AsyncHTTPTransport.handle_async_request = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.AsyncHTTPTransport.handle_async_request = original  # type: ignore[method-assign]
