"""`MarketPoller`: snapshots, skips, the metadata cache and its refresh timing.

Most tests drive the poller with `FakeSource`, a scripted stand-in for the client at its
boundary (the `MarketDataSource` protocol) that records every call. The last ones run the real
client over a recorded cassette.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.detection import CLOSED_RULE, Detector
from polymarket_kafka.events import build_event
from polymarket_kafka.models import ConvictionDirection, PolymarketSubscription
from polymarket_kafka.polymarket import (
    MarketMetadata,
    MetadataBatch,
    PolymarketBlockedError,
    PolymarketUnavailableError,
    PriceBatch,
    open_polymarket_client,
)
from polymarket_kafka.polymarket.poller import MarketPoller, PollerStats, PollResult
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.testing.cassette import CassetteTransport

T0 = datetime(2024, 11, 5, 21, tzinfo=UTC)
A, B, C = "0x" + "a" * 64, "0x" + "b" * 64, "0x" + "c" * 64


def market(market_id: str, **changes: object) -> MarketMetadata:
    fields: dict[str, object] = {
        "market_id": market_id,
        "question": f"Question {market_id[:4]}?",
        "yes_token_id": f"yes-{market_id[2]}",
        "no_token_id": f"no-{market_id[2]}",
        "volume": 1000.0,
        "liquidity": 50.0,
        "category": "Politics",
        "tags": ("Politics", "US Election"),
        "spread": 0.01,
    }
    fields.update(changes)
    return MarketMetadata(**fields)  # type: ignore[arg-type]


def sub(market_id: str, **changes: object) -> PolymarketSubscription:
    fields = {"market_id": market_id, "ref_count": 1, "created_at": T0, "updated_at": T0}
    return PolymarketSubscription.model_validate({**fields, **changes})


class FakeSource:
    """Scripted Polymarket: metadata and prices by id; records every call."""

    def __init__(self, *markets: MarketMetadata, prices: dict[str, float] | None = None) -> None:
        self.markets = {m.market_id: m for m in markets}
        self.prices = dict(prices or {})
        self.price_failures: dict[str, str] = {}
        self.markets_error: Exception | None = None
        self.midpoints_error: Exception | None = None
        self.market_calls: list[list[str]] = []
        self.midpoint_calls: list[list[str]] = []

    async def fetch_markets(self, condition_ids: Sequence[str]) -> MetadataBatch:
        self.market_calls.append(list(condition_ids))
        if self.markets_error is not None:
            raise self.markets_error
        batch = MetadataBatch()
        for market_id in condition_ids:
            if market_id in self.markets:
                batch.markets[market_id] = self.markets[market_id]
            else:
                batch.failures[market_id] = "not found on Gamma (neither open nor closed)"
        return batch

    async def fetch_midpoints(self, token_ids: Sequence[str]) -> PriceBatch:
        self.midpoint_calls.append(list(token_ids))
        if self.midpoints_error is not None:
            raise self.midpoints_error
        batch = PriceBatch()
        for token_id in token_ids:
            if token_id in self.prices:
                batch.prices[token_id] = self.prices[token_id]
            elif token_id in self.price_failures:
                batch.failures[token_id] = self.price_failures[token_id]
        return batch


def poller(source: FakeSource, refresh: float = 300.0) -> MarketPoller:
    return MarketPoller(source, metadata_refresh_seconds=refresh)


# --- snapshots -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_open_market_becomes_a_full_snapshot() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.61})

    result = await poller(source).poll_once(
        [sub(A, threshold=0.05, window_seconds=3600, cooldown_seconds=600)], T0
    )

    assert result.skipped == {}
    (snapshot,) = result.snapshots
    assert snapshot.market_id == A
    assert snapshot.question == "Question 0xaa?"
    assert (snapshot.yes_price, snapshot.no_price) == (0.61, 0.39)
    assert snapshot.taken_at == T0
    assert snapshot.closed is False
    assert (snapshot.volume, snapshot.liquidity, snapshot.spread) == (1000.0, 50.0, 0.01)
    assert (snapshot.category, snapshot.tags) == ("Politics", ("Politics", "US Election"))
    assert (snapshot.threshold, snapshot.window_seconds, snapshot.cooldown_seconds) == (
        0.05,
        3600,
        600,
    )
    assert source.midpoint_calls == [["yes-a"]]


@pytest.mark.anyio
async def test_no_overrides_means_none_on_the_snapshot() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})

    (snapshot,) = (await poller(source).poll_once([sub(A)], T0)).snapshots

    assert (snapshot.threshold, snapshot.window_seconds, snapshot.cooldown_seconds) == (
        None,
        None,
        None,
    )


@pytest.mark.anyio
async def test_a_closed_market_uses_its_final_outcome_price_without_a_midpoint_call() -> None:
    closed = market(B, closed=True, yes_outcome_price=1.0, outcome_prices=(1.0, 0.0), volume=None)
    source = FakeSource(market(A), closed, prices={"yes-a": 0.7})

    result = await poller(source).poll_once([sub(A), sub(B)], T0)

    by_id = {s.market_id: s for s in result.snapshots}
    assert by_id[B].closed is True
    assert by_id[B].yes_price == 1.0
    assert by_id[B].volume is None
    assert source.midpoint_calls == [["yes-a"]]


@pytest.mark.anyio
async def test_a_closed_market_snapshot_says_how_it_resolved() -> None:
    void = market(A, closed=True, yes_outcome_price=0.0, resolution="void")
    won = market(B, closed=True, yes_outcome_price=1.0, resolution="yes")
    source = FakeSource(void, won)

    result = await poller(source).poll_once([sub(A), sub(B)], T0)

    assert [(s.market_id, s.resolution) for s in result.snapshots] == [(A, "void"), (B, "yes")]


@pytest.mark.anyio
async def test_an_open_market_snapshot_has_no_resolution() -> None:
    source = FakeSource(market(A, resolution="void"), prices={"yes-a": 0.5})

    (snapshot,) = (await poller(source).poll_once([sub(A)], T0)).snapshots

    assert (snapshot.closed, snapshot.resolution) == (False, None)


@pytest.mark.anyio
async def test_only_closed_markets_means_no_midpoint_call_at_all() -> None:
    source = FakeSource(market(B, closed=True, yes_outcome_price=0.0))

    result = await poller(source).poll_once([sub(B)], T0)

    assert [s.yes_price for s in result.snapshots] == [0.0]
    assert source.midpoint_calls == []


@pytest.mark.anyio
async def test_question_falls_back_to_the_subscription_then_to_empty() -> None:
    source = FakeSource(
        market(A, question=None), market(B, question=None), prices={"yes-a": 0.5, "yes-b": 0.5}
    )

    result = await poller(source).poll_once([sub(A, question="Cached question?"), sub(B)], T0)

    assert [s.question for s in result.snapshots] == ["Cached question?", ""]


@pytest.mark.anyio
async def test_a_naive_now_is_taken_as_utc() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})

    (snapshot,) = (await poller(source).poll_once([sub(A)], datetime(2024, 11, 5, 21))).snapshots

    assert snapshot.taken_at == T0


# --- skips -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unusable_markets_are_skipped_with_a_reason_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = FakeSource(
        market(A),
        market(B, yes_token_id=None),
        market(C, closed=True, yes_outcome_price=None),
        prices={"yes-a": 0.5},
    )
    stats = PollerStats()
    unknown = "0x" + "d" * 64

    with caplog.at_level(logging.DEBUG, logger="polymarket_kafka.polymarket.poller"):
        result = await MarketPoller(source, metadata_refresh_seconds=300, stats=stats).poll_once(
            [sub(A), sub(B), sub(C), sub(unknown)], T0
        )

    assert [s.market_id for s in result.snapshots] == [A]
    assert result.skipped == {
        B: "no YES token id (a new market can lack one for a few minutes)",
        C: "closed market without a usable outcomePrices",
        unknown: "not found on Gamma (neither open nor closed)",
    }
    assert result.skip_kinds == {B: "no_token", C: "closed_price", unknown: "metadata"}
    assert stats.skipped == {"no_token": 1, "closed_price": 1, "metadata": 1}
    assert (stats.cycles, stats.snapshots) == (1, 1)
    # Not a line here: the service logs each skipped market once per cycle.
    assert caplog.records == []


@pytest.mark.anyio
async def test_a_market_without_a_trading_id_is_skipped_with_the_parser_s_reason() -> None:
    why = "v2 market without position ids in positionIds (its clobTokenIds are not its ids)"
    source = FakeSource(market(A, yes_token_id=None, token_problem=why))
    stats = PollerStats()

    poll = MarketPoller(source, metadata_refresh_seconds=300, stats=stats)
    result = await poll.poll_once([sub(A)], T0)
    await poll.poll_once([sub(A)], T0 + timedelta(seconds=1))

    assert result.skipped == {A: why}
    assert stats.skipped == {"no_token": 2}
    assert source.midpoint_calls == []
    assert source.market_calls == [[A], [A]]  # re-read at once: position ids may appear


@pytest.mark.anyio
async def test_a_missing_or_failed_price_skips_only_that_market() -> None:
    source = FakeSource(market(A), market(B), market(C), prices={"yes-a": 0.5})
    source.price_failures["yes-b"] = "malformed midpoint: price '1.7' outside [0, 1]"

    result = await poller(source).poll_once([sub(A), sub(B), sub(C)], T0)

    assert [s.market_id for s in result.snapshots] == [A]
    assert result.skipped == {
        B: "midpoint: malformed midpoint: price '1.7' outside [0, 1]",
        C: "midpoint: no midpoint returned",
    }


@pytest.mark.anyio
async def test_a_price_the_snapshot_model_rejects_is_skipped_not_raised() -> None:
    source = FakeSource(market(A), prices={"yes-a": 1.5})
    stats = PollerStats()

    result = await MarketPoller(source, metadata_refresh_seconds=300, stats=stats).poll_once(
        [sub(A)], T0
    )

    assert result.snapshots == []
    assert result.skipped[A].startswith("invalid snapshot: ")
    assert stats.skipped == {"invalid": 1}


@pytest.mark.anyio
async def test_unavailable_midpoints_skip_every_open_market_but_not_closed_ones() -> None:
    source = FakeSource(market(A), market(B), market(C, closed=True, yes_outcome_price=1.0))
    source.midpoints_error = PolymarketUnavailableError("https://clob/midpoints", 5, "HTTP 503")
    stats = PollerStats()

    result = await MarketPoller(source, metadata_refresh_seconds=300, stats=stats).poll_once(
        [sub(A), sub(B), sub(C)], T0
    )

    assert [s.market_id for s in result.snapshots] == [C]
    assert set(result.skipped) == {A, B}
    assert result.skipped[A].startswith("midpoints unavailable: https://clob/midpoints unavailable")
    assert stats.midpoint_failures == 1
    # No open market priced: Polymarket is down, whatever the closed market's snapshot says.
    assert result.unavailable == (
        "midpoints unavailable: https://clob/midpoints unavailable after 5 attempt(s): HTTP 503"
    )


@pytest.mark.anyio
async def test_unavailable_metadata_without_a_cache_skips_everything() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})
    source.markets_error = PolymarketUnavailableError("https://gamma/markets", 5, "HTTP 500")
    stats = PollerStats()

    result = await MarketPoller(source, metadata_refresh_seconds=300, stats=stats).poll_once(
        [sub(A)], T0
    )

    assert result.snapshots == []
    assert result.skipped[A].startswith("metadata unavailable: ")
    assert source.midpoint_calls == []
    assert (stats.metadata_requests, stats.metadata_failures) == (1, 1)
    assert result.unavailable == (
        "metadata unavailable: https://gamma/markets unavailable after 5 attempt(s): HTTP 500"
    )


# --- is Polymarket unavailable? (a failed request that cost every open market its price) ------

GAMMA_DOWN = PolymarketUnavailableError("https://gamma/markets", 1, "HTTP 502")
CLOB_DOWN = PolymarketUnavailableError("https://clob/midpoints", 1, "HTTP 503")


@pytest.mark.anyio
async def test_markets_skipped_for_their_own_reasons_never_make_polymarket_unavailable() -> None:
    # Nothing priced at all, but every request succeeded: the markets are the problem.
    source = FakeSource(
        market(A, yes_token_id=None),
        market(B, closed=True, yes_outcome_price=None),
        market(C),
        prices={"yes-c": 1.5},  # rejected by the snapshot model
    )
    unknown = "0x" + "d" * 64
    result = await poller(source).poll_once([sub(A), sub(B), sub(C), sub(unknown)], T0)
    assert result.snapshots == []
    assert len(result.skipped) == 4
    assert result.unavailable is None

    no_midpoints = await poller(FakeSource(market(A), market(B))).poll_once([sub(A), sub(B)], T0)
    assert set(no_midpoints.skipped) == {A, B}
    assert no_midpoints.unavailable is None


@pytest.mark.anyio
async def test_only_closed_markets_are_never_unavailable_even_while_gamma_is_down() -> None:
    source = FakeSource(market(A, closed=True, yes_outcome_price=1.0))
    p = poller(source, refresh=60)
    first = await p.poll_once([sub(A)], T0)
    between = await p.poll_once([sub(A)], T0 + timedelta(seconds=30))  # no request at all
    source.markets_error = GAMMA_DOWN
    refresh_failed = await p.poll_once([sub(A)], T0 + timedelta(seconds=60))  # the cache serves

    assert [r.unavailable for r in (first, between, refresh_failed)] == [None, None, None]
    assert [len(r.snapshots) for r in (first, between, refresh_failed)] == [1, 1, 1]
    assert source.midpoint_calls == []


@pytest.mark.anyio
async def test_a_failed_metadata_refresh_is_not_an_outage_while_prices_flow() -> None:
    source = FakeSource(market(A), market(B), prices={"yes-a": 0.5, "yes-b": 0.5})
    p = poller(source, refresh=60)
    await p.poll_once([sub(A)], T0)  # A cached, B not yet

    source.markets_error = GAMMA_DOWN
    result = await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=60))

    assert [s.market_id for s in result.snapshots] == [A]  # priced from the cached metadata
    assert result.skipped[B].startswith("metadata unavailable: ")  # B's request failed
    assert result.unavailable is None


@pytest.mark.anyio
async def test_failed_metadata_that_leaves_no_open_market_to_price_is_an_outage() -> None:
    source = FakeSource(market(A, closed=True, yes_outcome_price=1.0), market(B))
    p = poller(source, refresh=3600)
    await p.poll_once([sub(A)], T0)  # only the closed market is cached

    source.markets_error = GAMMA_DOWN
    result = await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=1))

    assert [s.market_id for s in result.snapshots] == [A]
    assert result.unavailable is not None
    assert result.unavailable.startswith("metadata unavailable: https://gamma/markets")


@pytest.mark.anyio
async def test_when_both_endpoints_fail_the_midpoints_failure_is_reported() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})
    p = poller(source, refresh=60)
    await p.poll_once([sub(A)], T0)

    source.markets_error, source.midpoints_error = GAMMA_DOWN, CLOB_DOWN
    result = await p.poll_once([sub(A)], T0 + timedelta(seconds=60))

    assert result.snapshots == []
    assert result.unavailable == (
        "midpoints unavailable: https://clob/midpoints unavailable after 1 attempt(s): HTTP 503"
    )
    source.markets_error = source.midpoints_error = None
    recovered = await p.poll_once([sub(A)], T0 + timedelta(seconds=61))
    assert (len(recovered.snapshots), recovered.unavailable) == (1, None)


@pytest.mark.anyio
@pytest.mark.parametrize("failing", ["fetch_markets", "fetch_midpoints"])
async def test_a_cloudflare_block_escapes_the_cycle(failing: str) -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})
    blocked = PolymarketBlockedError("https://clob.polymarket.com/midpoints", "<html>")
    if failing == "fetch_markets":
        source.markets_error = blocked
    else:
        source.midpoints_error = blocked

    with pytest.raises(PolymarketBlockedError):
        await poller(source).poll_once([sub(A)], T0)


# --- the metadata cache ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_metadata_is_refreshed_only_when_due() -> None:
    source = FakeSource(market(A), market(B), prices={"yes-a": 0.5, "yes-b": 0.5})
    p = poller(source, refresh=300)

    await p.poll_once([sub(A)], T0)
    await p.poll_once([sub(A)], T0 + timedelta(seconds=299))
    await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=299))  # a new market: just it
    await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=300))  # A is due, B is not
    await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=599))  # B is due

    assert source.market_calls == [[A], [B], [A], [B]]
    assert len(source.midpoint_calls) == 5


@pytest.mark.anyio
async def test_refreshed_metadata_replaces_the_cached_one() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})
    p = poller(source, refresh=60)
    await p.poll_once([sub(A)], T0)

    source.markets[A] = market(A, closed=True, yes_outcome_price=1.0)
    (snapshot,) = (await p.poll_once([sub(A)], T0 + timedelta(seconds=60))).snapshots

    assert snapshot.closed is True
    assert p.cached_metadata(A) == source.markets[A]


@pytest.mark.anyio
async def test_a_failed_refresh_keeps_the_cached_metadata() -> None:
    source = FakeSource(market(A), prices={"yes-a": 0.5})
    p = poller(source, refresh=60)
    await p.poll_once([sub(A)], T0)

    source.markets_error = PolymarketUnavailableError("https://gamma/markets", 5, "HTTP 500")
    result = await p.poll_once([sub(A)], T0 + timedelta(seconds=61))
    source.markets.clear()
    source.markets_error = None
    not_found = await p.poll_once([sub(A)], T0 + timedelta(seconds=62))

    assert [s.market_id for s in result.snapshots] == [A]
    assert [s.market_id for s in not_found.snapshots] == [A]  # "not found" keeps the cache too
    assert len(source.market_calls) == 3


@pytest.mark.anyio
async def test_a_market_whose_price_failed_is_re_read_next_cycle() -> None:
    source = FakeSource(market(A), market(B), prices={"yes-a": 0.5})
    source.price_failures["yes-b"] = "HTTP 404: No orderbook exists for the requested token id"
    p = poller(source, refresh=300)

    first = await p.poll_once([sub(A), sub(B)], T0)
    source.markets[B] = market(B, closed=True, yes_outcome_price=0.0)
    second = await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=30))
    third = await p.poll_once([sub(A), sub(B)], T0 + timedelta(seconds=60))

    assert first.skipped == {
        B: "midpoint: HTTP 404: No orderbook exists for the requested token id"
    }
    assert source.market_calls == [[A, B], [B]]  # only B is re-read, and only once
    assert {s.market_id: s.closed for s in second.snapshots} == {A: False, B: True}
    assert third.skipped == {}


@pytest.mark.anyio
async def test_a_market_without_token_is_re_read_next_cycle() -> None:
    source = FakeSource(market(A, yes_token_id=None), prices={"yes-a": 0.5})
    p = poller(source)

    await p.poll_once([sub(A)], T0)
    source.markets[A] = market(A)
    result = await p.poll_once([sub(A)], T0 + timedelta(seconds=1))

    assert [s.yes_price for s in result.snapshots] == [0.5]
    assert source.market_calls == [[A], [A]]


@pytest.mark.anyio
async def test_unsubscribed_markets_leave_the_cache() -> None:
    source = FakeSource(market(A), market(B), prices={"yes-a": 0.5, "yes-b": 0.5})
    p = poller(source)

    await p.poll_once([sub(A), sub(B)], T0)
    assert p.cached_metadata(B) is not None
    await p.poll_once([sub(A)], T0 + timedelta(seconds=1))

    assert p.cached_metadata(B) is None
    assert p.cached_metadata(A) is not None


# --- request shape ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_requests_do_not_depend_on_subscription_order_or_duplicates() -> None:
    source = FakeSource(
        market(A), market(B), market(C), prices={"yes-a": 0.1, "yes-b": 0.2, "yes-c": 0.3}
    )

    result = await poller(source).poll_once([sub(C), sub(A), sub(B), sub(A, threshold=0.2)], T0)

    assert source.market_calls == [[A, B, C]]
    assert source.midpoint_calls == [["yes-a", "yes-b", "yes-c"]]
    assert [s.market_id for s in result.snapshots] == [A, B, C]


@pytest.mark.anyio
async def test_no_subscriptions_means_no_requests() -> None:
    source = FakeSource()

    result = await poller(source).poll_once([], T0)

    assert (result.snapshots, result.skipped, result.unavailable) == ([], {}, None)
    assert source.market_calls == source.midpoint_calls == []


def test_refresh_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="metadata_refresh_seconds"):
        MarketPoller(FakeSource(), metadata_refresh_seconds=0)


# --- over the real client and a recorded cassette --------------------------------------------

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes"
TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
DESANTIS = "0x12a0cb60174abc437bf1178367c72d11f069e1a3add20b148fb0ab4279b772b2"
V2_ETH = "0x0ad913d730f776903e135e88b58397e2e797b57b4efe88147d4f9d81670708c9"
V2_NEW = "0xc7b06dc36b63afa348a44c6b65ace9e20f014b5bce917700c3d576dcc5d97fa5"
BIDEN_COVID = "0xe3b423dfad8c22ff75c9899c4e8176f628cf4ad4caa00481764d320e7415f7a9"


async def poll_once_through(
    transport: httpx.AsyncBaseTransport, subscriptions: list[PolymarketSubscription]
) -> PollResult:
    """One cycle of the real client and poller over `transport`, stamped T0."""
    async with open_polymarket_client(
        PolymarketConfig(rate_limit_delay_ms=0), transport=transport
    ) as client:
        return await MarketPoller(client, metadata_refresh_seconds=300).poll_once(subscriptions, T0)


@pytest.mark.anyio
async def test_a_recorded_cycle_through_the_real_client() -> None:
    transport = CassetteTransport(CASSETTES / "normal_cycle.yaml")
    result = await poll_once_through(transport, [sub(TRUMP), sub(HARRIS), sub(FED, threshold=0.02)])

    assert transport.all_played
    assert result.skipped == {}
    fed, harris, trump = result.snapshots  # sorted by condition id
    assert (fed.question, fed.yes_price, fed.volume, fed.liquidity) == (
        "Fed rate hike in 2025?",
        0.0025,
        1089143.410872,
        51025.13654,
    )
    assert (fed.category, fed.tags, fed.spread, fed.threshold) == (
        "Fed Rates",
        ("Fed Rates", "Business"),
        0.001,
        0.02,
    )
    assert (harris.yes_price, trump.yes_price) == (0.4125, 0.5865)


@pytest.mark.anyio
async def test_recorded_resolved_markets_become_closed_snapshots() -> None:
    transport = CassetteTransport(CASSETTES / "closed_market.yaml")
    result = await poll_once_through(transport, [sub(TRUMP), sub(DESANTIS)])

    assert transport.all_played  # two Gamma calls, and no midpoint call for resolved markets
    assert {s.market_id: (s.closed, s.yes_price) for s in result.snapshots} == {
        TRUMP: (True, 1.0),
        DESANTIS: (True, 0.0),
    }


@pytest.mark.anyio
async def test_malformed_items_from_the_real_client_skip_only_their_markets() -> None:
    items = [
        {"conditionId": TRUMP, "outcomes": '["Yes", "No"]', "clobTokenIds": '["1", '},
        {"conditionId": HARRIS, "outcomes": '["Yes", "No"]', "clobTokenIds": '["2", "3"]'},
        {"conditionId": FED, "outcomes": '["Yes", "No"]', "clobTokenIds": '["4", "5"]'},
    ]
    midpoint_bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/markets":
            return httpx.Response(200, json=items)
        midpoint_bodies.append(request.content)
        return httpx.Response(200, json={"2": "1.7", "4": "0.0025"})

    result = await poll_once_through(
        httpx.MockTransport(answer), [sub(TRUMP), sub(HARRIS), sub(FED)]
    )

    assert [(s.market_id, s.yes_price) for s in result.snapshots] == [(FED, 0.0025)]
    assert result.skipped[TRUMP].startswith(
        "malformed Gamma market: clobTokenIds is not valid JSON"
    )
    assert result.skipped[HARRIS] == "midpoint: malformed midpoint: price '1.7' outside [0, 1]"
    assert midpoint_bodies == [b'[{"token_id":"4"},{"token_id":"2"}]']  # sorted by condition id


@pytest.mark.anyio
async def test_a_recorded_cycle_with_v2_markets_prices_them_under_their_position_ids() -> None:
    # The cassette's midpoints request holds the v2 market's YES position id: asking for its
    # clobTokenIds (or for the v2 market without position ids) would not match it.
    transport = CassetteTransport(CASSETTES / "protocol_v2.yaml")
    result = await poll_once_through(transport, [sub(FED), sub(V2_ETH), sub(V2_NEW)])

    assert transport.all_played
    assert [(s.market_id, s.yes_price) for s in result.snapshots] == [
        (V2_ETH, 0.315),
        (FED, 0.0025),
    ]
    assert list(result.skipped) == [V2_NEW]
    assert "positionIds" in result.skipped[V2_NEW]
    assert result.unavailable is None


@pytest.mark.anyio
async def test_a_recorded_void_market_closes_with_its_last_price_and_no_winner() -> None:
    """Client, poller, detector and event builder over void_market.yaml: the legacy market
    closed at outcomePrices ["0", "0"] must not end with an event saying NO won."""
    transport = CassetteTransport(CASSETTES / "void_market.yaml")
    # A 1-minute window (1-second buckets): the polls 30 s apart are two observations.
    rules = load_rules_text("version: 1\ndefaults: {window: 1m}\n", "one-minute.yaml")
    detector = Detector()
    events = []
    async with open_polymarket_client(
        PolymarketConfig(rate_limit_delay_ms=0), transport=transport
    ) as client:
        poll = MarketPoller(client, metadata_refresh_seconds=60)
        for minutes in (0, 0.5, 2):  # metadata is due again after 60 s
            now = T0 + timedelta(minutes=minutes)
            for snapshot in (await poll.poll_once([sub(BIDEN_COVID)], now)).snapshots:
                events += [build_event(c) for c in detector.observe(snapshot, rules, now)]

    assert transport.all_played
    (final,) = events
    assert (final.final, final.rule, final.resolution) == (True, CLOSED_RULE, "void")
    # The last price observed, measured from the first: not Gamma's 0 ("NO won").
    assert (final.yes_price, final.baseline_yes_price, final.price_change) == (0.13, 0.115, 0.015)
    assert final.direction is ConvictionDirection.TOWARD_YES
    assert final.timestamp == T0 + timedelta(minutes=2)
