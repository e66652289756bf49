"""The dashboard's view of the feed (`ops.board.MarketBoard`): plain data, times passed in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ops.board import (
    MAX_EVENTS,
    MAX_POINTS,
    SPARK_POINTS,
    STALE_INTERVALS,
    MarketBoard,
    explain,
)
from polymarket_kafka.ruleset import PARAMETER_NAMES, ResolvedRule, RuleSet, format_value
from polymarket_kafka.ruleset.loader import load_rules_text
from tests.factories import make_event

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
A = "0x" + "a" * 64
B = "0x" + "b" * 64
C = "0x" + "c" * 64

#: Tiers by liquidity, a category layer and a narrower spread limit for thin books.
RULES_YAML = """
version: 1
defaults:
  watch: {max_spread: 0.10}
tiers:
  by: liquidity
  bands:
    thin: {below: 10000, watch: {max_spread: 0.05}}
    standard: {from: 10000, below: 250000}
    deep: {from: 250000}
categories:
  sports:
    move: {abs: 0.08}
"""


def snap(
    market_id: str = A, price: float = 0.5, minutes: float = 0, **fields: Any
) -> MarketSnapshot:
    """A snapshot of `market_id` taken `minutes` after T0."""
    values: dict[str, Any] = {
        "market_id": market_id,
        "question": f"Question of {market_id[:6]}?",
        "yes_price": price,
        "taken_at": T0 + timedelta(minutes=minutes),
        "liquidity": 50_000.0,
        "volume": 1_000_000.0,
        "category": "Politics",
        "tags": ("Politics", "US Election"),
        "spread": 0.01,
    }
    values.update(fields)
    return MarketSnapshot(**values)


def rules() -> RuleSet:
    return load_rules_text(RULES_YAML, "<test>")


def only(board: MarketBoard, now: datetime, resolve: Any = None) -> dict[str, Any]:
    (row,) = board.markets(now, resolve)
    return row


# --- rows ---------------------------------------------------------------------------------------


def test_a_row_per_market_from_its_latest_snapshot() -> None:
    board = MarketBoard()
    assert (board.markets(T0), board.market_ids(), len(board), board.version) == (
        [],
        frozenset(),
        0,
        0,
    )
    board.observe(snap(B, 0.3, source="ws", source_at=T0))
    board.observe(snap(A, 0.58, question="Will Donald Trump win?"))
    board.observe(snap(A, 0.62, minutes=60, category="Sports", tags=("NBA",), spread=None))

    rows = board.markets(T0 + timedelta(minutes=61))
    assert [r["market_id"] for r in rows] == [A, B]  # sorted by id
    assert board.market_ids() == frozenset({A, B})
    assert len(board) == 2
    a, b = rows
    assert a == {
        "market_id": A,
        "question": f"Question of {A[:6]}?",  # the latest snapshot's
        "category": "Sports",
        "tags": ["NBA"],
        "liquidity": 50_000.0,
        "volume": 1_000_000.0,
        "yes_price": 0.62,
        "spread": None,
        "source": "rest",
        "updated_at": "2024-11-06T02:00:00+00:00",
        "age_seconds": 60.0,
        "stale": False,
        "thin_book": False,
        "closed": False,
        "resolution": None,
        "move": 0.04,
        "window_seconds": None,
        "spark": [[T0.timestamp(), 0.58], [(T0 + timedelta(hours=1)).timestamp(), 0.62]],
        "events": 0,
        "last_event_id": None,
        "rules": None,  # no rules asked for
    }
    assert (b["source"], b["move"], b["spark"], b["spread"]) == (
        "ws",
        0.0,
        [[T0.timestamp(), 0.3]],
        0.01,
    )


def test_an_older_snapshot_is_ignored() -> None:
    board = MarketBoard()
    board.observe(snap(A, 0.6, minutes=10))
    version = board.version
    board.observe(snap(A, 0.1, minutes=5, question="older"))
    row = only(board, T0 + timedelta(minutes=10))
    assert (row["yes_price"], row["question"], len(row["spark"])) == (
        0.6,
        f"Question of {A[:6]}?",
        1,
    )
    assert board.version == version
    # Nor one of the same time: the first of two observations at one time is kept, as the
    # detector keeps it (a streamed and a polled price can tie).
    board.observe(snap(A, 0.61, minutes=10))
    row = only(board, T0 + timedelta(minutes=10))
    assert (row["yes_price"], len(row["spark"])) == (0.6, 1)
    assert board.version == version
    board.observe(snap(A, 0.62, minutes=11))
    assert only(board, T0 + timedelta(minutes=11))["yes_price"] == 0.62
    assert board.version == version + 1


def test_spark_points_are_bounded_and_the_move_is_over_the_kept_points() -> None:
    board = MarketBoard()
    prices = [round(0.01 + i * 0.005, 3) for i in range(MAX_POINTS + 5)]
    for minute, price in enumerate(prices):
        board.observe(snap(A, price, minutes=minute))
    row = only(board, T0 + timedelta(minutes=len(prices)))
    # MAX_POINTS kept, SPARK_POINTS of them sent, evenly spaced, the latest always in.
    kept = prices[-MAX_POINTS:]
    step = MAX_POINTS // SPARK_POINTS
    assert len(row["spark"]) == SPARK_POINTS
    assert [p for _, p in row["spark"]] == kept[::-1][::step][::-1]
    assert row["spark"][-1] == [(T0 + timedelta(minutes=len(prices) - 1)).timestamp(), prices[-1]]
    assert row["move"] == pytest.approx(prices[-1] - prices[5], abs=1e-9)  # over all kept
    assert row["move"] == round(row["move"], 6)


def test_stale_after_the_interval_never_when_closed() -> None:
    board = MarketBoard(stale_after_seconds=90.0)
    board.observe(snap(A, 0.5))
    board.observe(snap(B, 1.0, closed=True, resolution="yes"))

    def stale(seconds: float) -> dict[str, bool]:
        rows = board.markets(T0 + timedelta(seconds=seconds))
        return {r["market_id"]: r["stale"] for r in rows}

    assert stale(90.0) == {A: False, B: False}  # at the limit: not yet
    assert stale(90.5) == {A: True, B: False}
    assert stale(10 * 86_400) == {A: True, B: False}  # a closed market is final, not stale
    closed = board.markets(T0)[1]
    assert (closed["closed"], closed["resolution"], closed["yes_price"]) == (True, "yes", 1.0)
    # A clock behind the snapshot never shows a negative age.
    assert board.markets(T0 - timedelta(minutes=1))[0]["age_seconds"] == 0.0
    assert MarketBoard().stale_after_seconds == 90.0 == STALE_INTERVALS * 30.0


def test_thin_book_when_the_spread_exceeds_the_resolved_max_spread() -> None:
    ruleset = rules()
    board = MarketBoard()
    board.observe(snap(A, spread=0.08))  # standard tier: max_spread 0.10
    board.observe(snap(B, spread=0.08, liquidity=5_000.0))  # thin tier: max_spread 0.05
    board.observe(snap(C, spread=None, liquidity=5_000.0))  # no spread known: not thin
    thin = {r["market_id"]: r["thin_book"] for r in board.markets(T0, ruleset.resolve)}
    assert thin == {A: False, B: True, C: False}
    # Exactly at the limit is not thin.
    board.observe(snap(B, spread=0.05, liquidity=5_000.0, minutes=1))
    assert not board.markets(T0, ruleset.resolve)[1]["thin_book"]
    # Without rules there is nothing to compare with.
    board.observe(snap(B, spread=0.9, liquidity=5_000.0, minutes=2))
    assert not board.markets(T0)[1]["thin_book"]
    assert board.markets(T0, ruleset.resolve)[1]["thin_book"]


def test_rules_as_rules_explain_shows_them() -> None:
    ruleset = rules()
    board = MarketBoard()
    board.observe(snap(A, liquidity=5_000.0, category="Sports", tags=()))
    board.observe(snap(B, liquidity=None))
    a, b = board.markets(T0, ruleset.resolve)
    resolved = ruleset.resolve(snap(A, liquidity=5_000.0, category="Sports", tags=()))
    assert a["rules"] == explain(resolved)
    assert a["rules"]["tier"] == "thin"
    assert a["rules"]["category"] == "sports"
    assert a["rules"]["rules_version"] == ruleset.version
    assert a["rules"]["rule_id"] == resolved.rule_id
    assert a["rules"]["params"]["move.abs"] == "0.08"
    assert a["rules"]["params"]["watch.max_spread"] == "0.05"
    assert (b["rules"]["tier"], b["rules"]["category"]) == (None, None)  # no liquidity known
    # No internal key leaks into the row.
    assert not any(key.startswith("_") for key in a["rules"])


def test_explain_formats_every_parameter_like_rules_explain() -> None:
    resolved = rules().resolve(snap(A, liquidity=300_000.0))
    shown = explain(resolved)
    assert set(shown) == {"rule_id", "rules_version", "tier", "category", "params"}
    assert shown["tier"] == "deep"
    assert list(shown["params"]) == list(PARAMETER_NAMES)
    for dotted, attribute in PARAMETER_NAMES.items():
        assert shown["params"][dotted] == format_value(dotted, getattr(resolved.params, attribute))
    assert all(isinstance(value, str) for value in shown["params"].values())


# --- events -------------------------------------------------------------------------------------


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def test_published_events_count_on_their_row_newest_first() -> None:
    board = MarketBoard()
    board.observe(snap(A))
    first = make_event(event_id=event_id(1), market_id=A)
    second = make_event(event_id=event_id(2), market_id=A)
    elsewhere = make_event(event_id=event_id(3), market_id=B)  # no row: kept all the same
    version = board.version
    for n, event in enumerate((first, second, elsewhere), start=1):
        board.published(event)
        assert board.version == version + n
    row = only(board, T0)
    assert (row["events"], row["last_event_id"]) == (2, event_id(2))
    assert board.market_ids() == frozenset({A})
    assert board.events(10) == [e.model_dump(mode="json") for e in (elsewhere, second, first)]
    assert board.events(1) == [elsewhere.model_dump(mode="json")]
    assert board.events(2)[1]["event_id"] == event_id(2)
    assert board.events(0) == []
    assert board.events(-5) == []


def test_events_are_bounded() -> None:
    board = MarketBoard()
    for n in range(MAX_EVENTS + 7):
        board.published(make_event(event_id=event_id(n), market_id=A))
    kept = board.events(10**6)
    assert len(kept) == MAX_EVENTS
    assert kept[0]["event_id"] == event_id(MAX_EVENTS + 6)  # newest first
    assert kept[-1]["event_id"] == event_id(7)  # the oldest seven are gone


def test_forget_removes_the_row_and_bumps_the_version_once() -> None:
    board = MarketBoard()
    board.observe(snap(A))
    board.observe(snap(B))
    board.published(make_event(event_id=event_id(1), market_id=A))
    version = board.version
    board.forget(A)
    assert board.version == version + 1
    assert board.market_ids() == frozenset({B})
    assert [r["market_id"] for r in board.markets(T0)] == [B]
    assert board.events(5)[0]["market_id"] == A  # what was published stays published
    board.forget(A)  # not watched any more: no change
    board.forget(C)
    assert board.version == version + 1
    # Watched again: a fresh row, its events counted afresh.
    board.observe(snap(A, 0.7, minutes=5))
    row = board.markets(T0 + timedelta(minutes=5))[0]
    assert (row["market_id"], row["events"], row["last_event_id"], len(row["spark"])) == (
        A,
        0,
        None,
        1,
    )


def test_version_bumps_on_each_change_only() -> None:
    board = MarketBoard()
    seen = [board.version]
    board.observe(snap(A, minutes=1))
    seen.append(board.version)
    board.observe(snap(A, minutes=2))
    seen.append(board.version)
    board.observe(snap(A, minutes=0))  # older: no change
    seen.append(board.version)
    board.published(make_event(event_id=event_id(1), market_id=A))
    seen.append(board.version)
    board.forget(A)
    seen.append(board.version)
    board.forget(A)
    seen.append(board.version)
    board.markets(T0, rules().resolve)
    board.events(10)
    seen.append(board.version)
    assert seen == [0, 1, 2, 2, 3, 4, 4, 4]


# --- the resolution cache -----------------------------------------------------------------------


@pytest.fixture
def resolve_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every `RuleSet.resolve` call as (id of the rules, market id). The wrapper is put on the
    class, so `rules.resolve` stays a bound method whose `__self__` is the rule set, as the
    dashboard passes it (`RulesHolder.current.resolve`: a new bound method every time)."""
    calls: list[tuple[int, str]] = []
    original = RuleSet.resolve

    def counting(self: RuleSet, snapshot: MarketSnapshot) -> ResolvedRule:
        calls.append((id(self), snapshot.market_id))
        return original(self, snapshot)

    monkeypatch.setattr(RuleSet, "resolve", counting)
    return calls


def test_resolve_is_called_once_per_market_while_nothing_it_depends_on_changes(
    resolve_calls: list[tuple[int, str]],
) -> None:
    ruleset = RuleSet.builtin()
    board = MarketBoard()
    board.observe(snap(A))
    board.observe(snap(B))
    first = board.markets(T0, ruleset.resolve)
    assert sorted(resolve_calls) == [(id(ruleset), A), (id(ruleset), B)]
    # Each `ruleset.resolve` is a new bound method; its `__self__` is the same rules.
    assert ruleset.resolve.__self__ is ruleset  # type: ignore[attr-defined]

    # What resolution does not depend on: price, time, spread, question, source, closing.
    board.observe(snap(A, 0.9, minutes=5, spread=0.3, question="another", source="ws"))
    board.observe(snap(B, 1.0, minutes=5, closed=True, resolution="yes"))
    board.published(make_event(event_id=event_id(1), market_id=A))
    for _ in range(3):
        again = board.markets(T0, ruleset.resolve)
    assert len(resolve_calls) == 2
    assert [r["rules"] for r in again] == [r["rules"] for r in first]


@pytest.mark.parametrize(
    "change",
    [
        {"liquidity": 5_000.0},
        {"liquidity": None},
        {"volume": 2_000_000.0},
        {"category": "Sports"},
        {"category": None},
        {"tags": ("Politics",)},
        {"threshold": 0.2},
        {"window_seconds": 600.0},
        {"cooldown_seconds": 60.0},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_change_of_what_resolution_depends_on_resolves_again(
    resolve_calls: list[tuple[int, str]], change: dict[str, Any]
) -> None:
    ruleset = RuleSet.builtin()
    board = MarketBoard()
    board.observe(snap(A))
    board.observe(snap(B))
    board.markets(T0, ruleset.resolve)
    assert len(resolve_calls) == 2
    board.observe(snap(A, minutes=1, **change))
    board.markets(T0, ruleset.resolve)
    assert resolve_calls[2:] == [(id(ruleset), A)]  # that market only
    board.markets(T0, ruleset.resolve)
    assert len(resolve_calls) == 3  # and cached again


def test_new_rules_resolve_every_market_again(resolve_calls: list[tuple[int, str]]) -> None:
    board = MarketBoard()
    board.observe(snap(A, liquidity=5_000.0))
    board.observe(snap(B, liquidity=5_000.0))
    old = RuleSet.builtin()
    assert only_rules(board, old.resolve) == [None, None]
    # A reload: a new rules object, even one with the same content, is resolved against.
    same_content = RuleSet.builtin()
    assert only_rules(board, same_content.resolve) == [None, None]
    tiered = rules()
    assert only_rules(board, tiered.resolve) == ["thin", "thin"]
    assert [owner for owner, _ in resolve_calls] == [id(old)] * 2 + [id(same_content)] * 2 + [
        id(tiered)
    ] * 2
    # And back to the first rules: resolved again (only the latest resolution is kept).
    only_rules(board, old.resolve)
    assert len(resolve_calls) == 8


def only_rules(board: MarketBoard, resolve: Callable[[MarketSnapshot], ResolvedRule]) -> list[Any]:
    return [row["rules"]["tier"] for row in board.markets(T0, resolve)]


def test_a_plain_function_is_its_own_key() -> None:
    """A `resolve` that is not a bound method is keyed by itself."""
    ruleset = rules()
    calls: list[str] = []

    def resolve(snapshot: MarketSnapshot) -> ResolvedRule:
        calls.append(snapshot.market_id)
        return ruleset.resolve(snapshot)

    board = MarketBoard()
    board.observe(snap(A))
    board.markets(T0, resolve)
    board.markets(T0, resolve)
    assert calls == [A]

    def other(snapshot: MarketSnapshot) -> ResolvedRule:
        calls.append("other")
        return ruleset.resolve(snapshot)

    board.markets(T0, other)
    assert calls == [A, "other"]


def test_the_move_is_measured_within_the_rule_window() -> None:
    """From the first kept observation inside the market's window, as the rule measures."""
    from datetime import timedelta

    from polymarket_kafka.models import MarketSnapshot
    from polymarket_kafka.ops.board import MarketBoard
    from polymarket_kafka.ruleset import RuleSet

    board = MarketBoard()
    start = datetime(2024, 11, 5, tzinfo=UTC)
    window = (
        RuleSet.builtin()
        .resolve(MarketSnapshot(market_id="m", question="q", yes_price=0.5, taken_at=start))
        .params.window_seconds
    )
    last = window / 60 + 40  # minutes
    points = ((0, 0.20), (50, 0.40), (window / 60 + 10, 0.45), (last, 0.50))
    for minutes, price in points:
        board.observe(
            MarketSnapshot(
                market_id="m",
                question="q",
                yes_price=price,
                taken_at=start + timedelta(minutes=minutes),
            )
        )
    now = start + timedelta(minutes=last)
    (row,) = board.markets(now, RuleSet.builtin().resolve)
    assert row["window_seconds"] == window
    assert row["move"] == pytest.approx(0.50 - 0.40)  # 0.20 is older than the window
    (plain,) = board.markets(now)  # without rules: over every kept point
    assert plain["move"] == pytest.approx(0.50 - 0.20)
