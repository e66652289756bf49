"""`StreamCoordinator`: what a poll tick polls with the market channel on, reconciliation,
disagreements, and what the stream is told to stream (with hand-written fakes)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

import pytest

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.poller import PollResult
from polymarket_kafka.polymarket.stream.source import MarketStream, StreamedMarket
from polymarket_kafka.service.streaming import Plan, StreamCoordinator
from tests.factories import T0

RECONCILE = 120.0
TOLERANCE = 0.25  # exact in binary: the boundary is tested exactly


#: When a disagreement is found (after the poll, which started at T0).
LATER = T0 + timedelta(seconds=3)


def later() -> datetime:
    return LATER


@dataclass
class CountingClock:
    now: datetime
    calls: int = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return self.now


def sub(market_id: str) -> PolymarketSubscription:
    return PolymarketSubscription(market_id=market_id, ref_count=1)


def snap(market_id: str, price: float, *, closed: bool = False) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market_id, question="q", yes_price=price, taken_at=T0, closed=closed
    )


@dataclass
class FakeShard:
    connected: bool


@dataclass
class FakeStream:
    live: set[str] = field(default_factory=set)
    prices: dict[str, float] = field(default_factory=dict)
    connections: list[FakeShard] = field(default_factory=list)
    markets: int = 0
    #: Quote updates per market (`MarketStream.updates`); a test bumps one to say the stream
    #: moved while a poll ran.
    counts: dict[str, int] = field(default_factory=dict)
    #: Every call that changes the stream, in order.
    calls: list[tuple[str, object]] = field(default_factory=list)

    def live_markets(self) -> set[str]:
        return set(self.live)

    def price(self, market_id: str) -> float | None:
        return self.prices.get(market_id)

    def midpoint(self, market_id: str) -> float | None:
        return self.prices.get(market_id)

    def updates(self, market_id: str) -> int:
        return self.counts.get(market_id, 0)

    def rest_observed(self, market_id: str, midpoint: float) -> None:
        self.calls.append(("rest_observed", (market_id, midpoint)))

    def distrust(self, market_id: str) -> None:
        self.calls.append(("distrust", market_id))

    def set_markets(self, markets: Mapping[str, StreamedMarket]) -> None:
        self.calls.append(("set_markets", dict(markets)))

    @property
    def distrusted(self) -> list[object]:
        return [arg for name, arg in self.calls if name == "distrust"]

    @property
    def streamed(self) -> dict[str, StreamedMarket]:
        (last,) = [arg for name, arg in self.calls if name == "set_markets"][-1:]
        return cast("dict[str, StreamedMarket]", last)


@dataclass
class FakePoller:
    metadata: dict[str, MarketMetadata] = field(default_factory=dict)
    result: PollResult = field(default_factory=lambda: PollResult(snapshots=[], skipped={}))
    polls: list[tuple[list[str], datetime, frozenset[str] | None]] = field(default_factory=list)

    async def poll_once(
        self,
        subscriptions: Collection[PolymarketSubscription],
        now: datetime,
        *,
        only: Collection[str] | None = None,
    ) -> PollResult:
        ids = [s.market_id for s in subscriptions]
        self.polls.append((ids, now, None if only is None else frozenset(only)))
        return self.result

    def cached_metadata(self, market_id: str) -> MarketMetadata | None:
        return self.metadata.get(market_id)


def coordinator(
    stream: FakeStream | None = None, poller: FakePoller | None = None
) -> tuple[StreamCoordinator, FakeStream, FakePoller]:
    stream = stream if stream is not None else FakeStream()
    poller = poller if poller is not None else FakePoller()
    made = StreamCoordinator(
        cast("MarketStream", stream), poller, reconcile_seconds=RECONCILE, tolerance=TOLERANCE
    )
    return made, stream, poller


SUBS = [sub("a"), sub("b"), sub("c")]


# --- plan -----------------------------------------------------------------------------------------


def test_the_first_tick_reconciles_everything() -> None:
    coord, _, _ = coordinator(FakeStream(live={"a", "b"}))
    plan = coord.plan(SUBS, 1000.0)
    assert plan == Plan(only=None, reconcile=True, live={"a": 0, "b": 0})
    assert coord.reconciliations == 1
    assert coord.fallback == frozenset({"c"})
    assert coord.fallback_polls == 0  # a reconciliation polls all: no fallback poll counted


def test_between_reconciliations_only_what_the_stream_does_not_serve_is_polled() -> None:
    coord, stream, _ = coordinator(FakeStream(live={"a", "b"}))
    coord.plan(SUBS, 1000.0)
    plan = coord.plan(SUBS, 1030.0)
    assert plan == Plan(only=frozenset({"c"}), reconcile=False, live={"a": 0, "b": 0})
    assert coord.fallback_polls == 1
    stream.live = {"a"}  # b's connection went down
    plan = coord.plan(SUBS, 1060.0)
    assert plan.only == frozenset({"b", "c"})
    assert coord.fallback == frozenset({"b", "c"})
    assert coord.fallback_polls == 3  # summed over ticks
    assert coord.reconciliations == 1


def test_reconciliation_comes_back_every_reconcile_seconds() -> None:
    coord, _, _ = coordinator(FakeStream(live={"a", "b", "c"}))
    assert coord.plan(SUBS, 1000.0).reconcile
    assert not coord.plan(SUBS, 1000.0 + RECONCILE - 0.001).reconcile
    assert coord.plan(SUBS, 1000.0 + RECONCILE).reconcile  # due exactly then
    assert coord.reconciliations == 2
    # The next one is reconcile_seconds after that tick.
    assert not coord.plan(SUBS, 1000.0 + 2 * RECONCILE - 0.001).reconcile
    assert coord.plan(SUBS, 1000.0 + 2 * RECONCILE + 5.0).reconcile
    assert not coord.plan(SUBS, 1000.0 + 3 * RECONCILE).reconcile  # 5 s late: from then on
    assert coord.plan(SUBS, 1000.0 + 3 * RECONCILE + 5.0).reconcile
    assert coord.reconciliations == 4


def test_every_market_live_polls_nothing_between_reconciliations() -> None:
    coord, _, _ = coordinator(FakeStream(live={"a", "b", "c"}))
    coord.plan(SUBS, 0.0)
    plan = coord.plan(SUBS, 30.0)
    assert plan.only == frozenset()
    assert coord.fallback == frozenset()
    assert coord.fallback_polls == 0


def test_nothing_live_polls_everything_every_tick() -> None:
    coord, _, _ = coordinator()
    coord.plan(SUBS, 0.0)
    assert coord.plan(SUBS, 30.0).only == frozenset({"a", "b", "c"})
    assert coord.fallback_polls == 3


def test_a_live_market_no_longer_subscribed_is_not_a_fallback() -> None:
    coord, _, _ = coordinator(FakeStream(live={"a", "gone"}))
    plan = coord.plan([sub("a")], 0.0)
    assert plan.live == {"a": 0, "gone": 0}
    assert coord.fallback == frozenset()


def test_a_market_known_closed_is_not_a_fallback() -> None:
    """It had its final snapshot: left to the reconciliation, not polled every tick."""
    metadata = {
        "a": MarketMetadata(market_id="a", closed=True, resolution="yes"),
        "b": MarketMetadata(market_id="b", yes_token_id="tok-b"),
    }
    coord, _, _ = coordinator(poller=FakePoller(metadata=metadata))
    assert coord.plan(SUBS, 0.0).only is None  # the reconciliation still polls it
    assert coord.fallback == frozenset({"b", "c"})  # c: no metadata yet, taken as open
    assert coord.plan(SUBS, 30.0).only == frozenset({"b", "c"})
    assert coord.fallback_polls == 2


def test_no_subscriptions() -> None:
    coord, _, _ = coordinator(FakeStream(live={"a"}))
    coord.plan([], 0.0)
    assert coord.plan([], 1.0).only == frozenset()
    assert coord.fallback == frozenset()


# --- poll -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_plan_with_some_markets_polls_only_them(anyio_backend: str) -> None:
    expected = PollResult(snapshots=[snap("c", 0.4)], skipped={})
    coord, _, poller = coordinator(poller=FakePoller(result=expected))
    result = await coord.poll(SUBS, T0, Plan(frozenset({"c"}), False, {"a": 0, "b": 0}))
    assert result is expected
    assert poller.polls == [(["a", "b", "c"], T0, frozenset({"c"}))]


@pytest.mark.anyio
async def test_a_reconciliation_polls_everything(anyio_backend: str) -> None:
    coord, _, poller = coordinator()
    await coord.poll(SUBS, T0, Plan(None, True, {}))
    assert poller.polls == [(["a", "b", "c"], T0, None)]


# --- after_poll: reconciliation -------------------------------------------------------------------


def test_rest_and_stream_within_tolerance_agree() -> None:
    stream = FakeStream(live={"a", "b"}, prices={"a": 0.5, "b": 0.5})
    coord, _, _ = coordinator(stream)
    plan = coord.plan(SUBS, 0.0)
    clock = CountingClock(LATER)
    polled = [snap("a", 0.75), snap("b", 0.25)]  # exactly the tolerance away
    sent = coord.after_poll(SUBS, plan, polled, clock)
    assert coord.disagreements == 0
    assert stream.distrusted == []
    assert sent == polled
    assert clock.calls == 0  # the clock is read only for a disagreement


def test_a_disagreement_is_counted_logged_and_the_stream_distrusted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = FakeStream(live={"a", "b"}, prices={"a": 0.5, "b": 0.5})
    coord, _, _ = coordinator(stream)
    plan = coord.plan(SUBS, 0.0)
    clock = CountingClock(LATER)
    with caplog.at_level(logging.WARNING, logger="polymarket_kafka.service.streaming"):
        sent = coord.after_poll(SUBS, plan, [snap("a", 0.76), snap("b", 0.2)], clock)
    assert coord.disagreements == 2
    assert clock.calls == 1  # read once per call, however many disagree
    assert [s.taken_at for s in sent] == [LATER, LATER]
    assert stream.distrusted == ["a", "b"]
    messages = [r for r in caplog.records if r.name == "polymarket_kafka.service.streaming"]
    assert [getattr(r, "market_id", None) for r in messages] == ["a", "b"]
    assert messages[0].levelno == logging.WARNING
    assert "REST says 0.7600, the stream 0.5000 (tolerance 0.25)" in messages[0].getMessage()


def test_the_stream_is_distrusted_before_it_is_told_what_to_stream() -> None:
    stream = FakeStream(live={"a"}, prices={"a": 0.1})
    poller = FakePoller(metadata={"a": MarketMetadata(market_id="a", yes_token_id="t1")})
    coord, _, _ = coordinator(stream, poller)
    coord.after_poll(SUBS, coord.plan(SUBS, 0.0), [snap("a", 0.9)], later)
    assert [name for name, _ in stream.calls] == ["distrust", "set_markets"]


def test_a_closed_market_is_not_compared() -> None:
    stream = FakeStream(live={"a"}, prices={"a": 0.5})
    coord, _, _ = coordinator(stream)
    coord.after_poll(SUBS, coord.plan(SUBS, 0.0), [snap("a", 1.0, closed=True)], later)
    assert coord.disagreements == 0
    assert stream.distrusted == []


def test_a_market_not_live_when_planned_is_not_compared() -> None:
    stream = FakeStream(live={"a"}, prices={"a": 0.5, "b": 0.5})
    coord, _, _ = coordinator(stream)
    plan = coord.plan(SUBS, 0.0)
    stream.live = {"a", "b"}  # b went live during the poll: its REST price is no check
    coord.after_poll(SUBS, plan, [snap("b", 0.9)], later)
    assert coord.disagreements == 0
    assert stream.distrusted == []


def test_a_live_market_without_a_streamed_price_is_not_compared() -> None:
    stream = FakeStream(live={"a"})
    coord, _, _ = coordinator(stream)
    coord.after_poll(SUBS, coord.plan(SUBS, 0.0), [snap("a", 0.9)], later)
    assert coord.disagreements == 0
    assert stream.distrusted == []


def test_disagreements_add_up_over_ticks() -> None:
    stream = FakeStream(live={"a"}, prices={"a": 0.1})
    coord, _, _ = coordinator(stream)
    for now in (0.0, RECONCILE):
        coord.after_poll(SUBS, coord.plan(SUBS, now), [snap("a", 0.9)], later)
    assert coord.disagreements == 2
    assert stream.distrusted == ["a", "a"]


def test_a_disagreeing_rest_snapshot_is_restamped_as_the_newest_observation() -> None:
    stream = FakeStream(live={"a", "b"}, prices={"a": 0.1, "b": 0.5})
    coord, _, _ = coordinator(stream)
    polled = [snap("a", 0.9), snap("b", 0.5), snap("c", 0.3)]
    sent = coord.after_poll(SUBS, coord.plan(SUBS, 0.0), polled, later)
    assert [s.market_id for s in sent] == ["a", "b", "c"]
    assert sent[0] == polled[0].model_copy(update={"taken_at": LATER})
    assert sent[1:] == polled[1:]  # the others as polled
    assert sent[1] is polled[1]
    assert polled[0].taken_at == T0  # the input is not changed


def test_a_restamp_never_moves_a_snapshot_back_in_time() -> None:
    stream = FakeStream(live={"a"}, prices={"a": 0.1})
    coord, _, _ = coordinator(stream)
    (sent,) = coord.after_poll(
        SUBS, coord.plan(SUBS, 0.0), [snap("a", 0.9)], CountingClock(T0 - timedelta(seconds=1))
    )
    assert sent.taken_at == T0


def test_after_poll_with_nothing_polled_returns_nothing() -> None:
    coord, _, _ = coordinator()
    assert coord.after_poll(SUBS, coord.plan(SUBS, 0.0), [], later) == []


# --- after_poll: what to stream -------------------------------------------------------------------


def test_the_stream_is_told_every_open_subscribed_market_with_a_yes_asset() -> None:
    metadata = {
        "a": MarketMetadata(market_id="a", yes_token_id="tok-a"),
        "b": MarketMetadata(market_id="b", yes_token_id="tok-b", closed=True),
        "c": MarketMetadata(market_id="c", yes_token_id=None, token_problem="no YES"),
        "d": MarketMetadata(market_id="d", yes_token_id="tok-d"),
        "unsubscribed": MarketMetadata(market_id="unsubscribed", yes_token_id="tok-u"),
    }
    # e: no metadata cached (Gamma has not answered yet).
    subs = [sub("a"), sub("b"), sub("c"), sub("d"), sub("e")]
    coord, stream, _ = coordinator(poller=FakePoller(metadata=metadata))
    coord.after_poll(subs, coord.plan(subs, 0.0), [], later)
    assert stream.streamed == {
        "a": StreamedMarket(subs[0], metadata["a"], "tok-a"),
        "d": StreamedMarket(subs[3], metadata["d"], "tok-d"),
    }
    assert stream.streamed["a"].market_id == "a"


def test_the_stream_is_told_even_when_nothing_was_polled() -> None:
    poller = FakePoller(metadata={"a": MarketMetadata(market_id="a", yes_token_id="t1")})
    coord, stream, _ = coordinator(poller=poller)
    coord.after_poll(SUBS, coord.plan(SUBS, 0.0), [], later)
    assert [name for name, _ in stream.calls] == ["set_markets"]
    assert set(stream.streamed) == {"a"}


def test_an_unchanged_set_is_not_sent_again() -> None:
    """The same subscription and metadata objects: no per-market work for the stream."""
    metadata = {"a": MarketMetadata(market_id="a", yes_token_id="t1")}
    coord, stream, _ = coordinator(poller=FakePoller(metadata=metadata))
    subs = [sub("a"), sub("b")]
    for tick in range(3):
        coord.after_poll(subs, coord.plan(subs, float(tick)), [], later)
    assert [name for name, _ in stream.calls] == ["set_markets"]
    metadata["b"] = MarketMetadata(market_id="b", yes_token_id="t2")  # b gets its metadata
    coord.after_poll(subs, coord.plan(subs, 3.0), [], later)
    assert set(stream.streamed) == {"a", "b"}
    coord.after_poll(subs[:1], coord.plan(subs[:1], 4.0), [], later)  # b unsubscribed
    assert set(stream.streamed) == {"a"}
    assert [name for name, _ in stream.calls].count("set_markets") == 3


def test_the_latest_metadata_is_passed_on() -> None:
    poller = FakePoller(metadata={"a": MarketMetadata(market_id="a", yes_token_id="t1")})
    coord, stream, _ = coordinator(poller=poller)
    coord.after_poll([sub("a")], coord.plan([sub("a")], 0.0), [], later)
    assert stream.streamed["a"].yes_asset == "t1"
    poller.metadata["a"] = MarketMetadata(market_id="a", yes_token_id="t2", volume=5.0)
    coord.after_poll([sub("a")], coord.plan([sub("a")], 1.0), [], later)
    assert stream.streamed["a"].yes_asset == "t2"
    assert stream.streamed["a"].metadata.volume == 5.0
    poller.metadata["a"] = MarketMetadata(market_id="a", yes_token_id="t2", closed=True)
    coord.after_poll([sub("a")], coord.plan([sub("a")], 2.0), [], later)
    assert stream.streamed == {}  # closed: no longer streamed


# --- readiness ------------------------------------------------------------------------------------


def test_readiness_reports_connections_markets_and_fallbacks() -> None:
    stream = FakeStream(
        live={"a"},
        connections=[FakeShard(True), FakeShard(False), FakeShard(True)],
        markets=2,
    )
    coord, _, _ = coordinator(stream)
    coord.plan(SUBS, 0.0)
    detail, extra = coord.readiness()
    assert detail == (
        "2/3 market channel connection(s) up, 2 market(s) streamed, 2 on REST fallback"
    )
    assert extra == {
        "connections": 3,
        "connections_up": 2,
        "streamed_markets": 2,
        "rest_fallback_markets": 2,
        "rest_fallback": ["b", "c"],
        "disagreements": 0,
    }


def test_readiness_names_at_most_twenty_fallbacks_and_counts_them_all() -> None:
    subs = [sub(f"m{i:02d}") for i in range(25, 0, -1)]
    coord, _, _ = coordinator()
    coord.plan(subs, 0.0)
    _, extra = coord.readiness()
    assert extra["rest_fallback_markets"] == 25
    assert extra["rest_fallback"] == [f"m{i:02d}" for i in range(1, 21)]


def test_readiness_before_any_tick() -> None:
    coord, _, _ = coordinator()
    detail, extra = coord.readiness()
    assert detail == "0/0 market channel connection(s) up, 0 market(s) streamed, 0 on REST fallback"
    assert extra["rest_fallback"] == []
    assert extra["disagreements"] == 0


def test_readiness_counts_disagreements() -> None:
    stream = FakeStream(live={"a"}, prices={"a": 0.1})
    coord, _, _ = coordinator(stream)
    coord.after_poll(SUBS, coord.plan(SUBS, 0.0), [snap("a", 0.9)], later)
    assert coord.readiness()[1]["disagreements"] == 1


def test_a_market_the_stream_moved_during_the_poll_is_not_compared() -> None:
    """REST's price is then simply the older one: no disagreement, no restamp."""
    stream = FakeStream(live={"a"}, prices={"a": 0.5})
    coord, _, _ = coordinator(stream)
    plan = coord.plan([sub("a")], 0.0)
    stream.counts["a"] = 1  # a stream update arrived while REST was asked
    sent = coord.after_poll([sub("a")], plan, [snap("a", 0.1)], later)
    assert coord.disagreements == 0
    assert stream.distrusted == []
    assert sent[0].taken_at == T0


def test_rest_prices_of_markets_off_the_stream_are_shown_to_it() -> None:
    """So a silent connection whose markets trade on REST can be given up."""
    stream = FakeStream(live={"a"}, prices={"a": 0.5})
    coord, _, _ = coordinator(stream)
    plan = coord.plan([sub("a"), sub("b")], 0.0)
    coord.after_poll([sub("a"), sub("b")], plan, [snap("a", 0.5), snap("b", 0.3)], later)
    observed = [arg for name, arg in stream.calls if name == "rest_observed"]
    assert observed == [("b", 0.3)]
