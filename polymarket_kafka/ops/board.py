"""What the dashboard shows, kept as plain data (pure: times are passed in).

`MarketBoard` is fed by the pipeline on the event loop thread: every snapshot the detector
judged (`observe`), every event handed to Kafka (`published`), every market no longer
watched (`forget`). The ops server reads it on the same thread (`markets`, `events`), so no
lock is needed. Strings from Polymarket (questions, categories) are data here: the page
renders them as text, never as HTML.

Bounds: one row per watched market (a market forgotten by the pipeline leaves); a row keeps
the last `MAX_POINTS` prices for its sparkline; `MAX_EVENTS` events are kept, newest first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from polymarket_kafka.detection import resolution_key
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent
from polymarket_kafka.ruleset import PARAMETER_NAMES, ResolvedRule, format_value

__all__ = ["MAX_EVENTS", "MAX_POINTS", "STALE_INTERVALS", "MarketBoard", "explain"]

#: Prices kept per market for its sparkline.
MAX_POINTS = 120
#: Points of a sparkline sent to the page (of the MAX_POINTS kept).
SPARK_POINTS = 40
#: Events kept for the page (newest first).
MAX_EVENTS = 200
#: A row whose latest price is older than this many poll intervals is marked stale.
STALE_INTERVALS = 3.0


@dataclass
class _Row:
    snapshot: MarketSnapshot
    points: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))
    events: int = 0
    last_event_id: str | None = None
    #: (rules object, what it was resolved from, what `rules explain` shows) for this market.
    explained: tuple[object, tuple[object, ...], dict[str, Any]] | None = None


def explain(resolved: ResolvedRule) -> dict[str, Any]:
    """The resolved parameters as `rules explain` shows them (values formatted alike)."""
    params = resolved.params
    return {
        "rule_id": resolved.rule_id,
        "rules_version": resolved.rules_version,
        "tier": resolved.tier,
        "category": resolved.category,
        "params": {
            dotted: format_value(dotted, getattr(params, attribute))
            for dotted, attribute in PARAMETER_NAMES.items()
        },
    }


def _spark(points: deque[tuple[float, float]]) -> list[list[float]]:
    """At most `SPARK_POINTS` of the kept points, evenly spaced, the latest always in."""
    step = max(1, -(-len(points) // SPARK_POINTS))
    kept = list(points)
    chosen = kept[::-1][::step][::-1]
    return [[round(at, 3), price] for at, price in chosen]


def _first_in_window(
    points: deque[tuple[float, float]], now: float, window: float | None, price: float
) -> float:
    """The first kept price at or after `now - window` (the oldest kept without a window)."""
    if not points:
        return price
    if window is not None:
        start = now - window
        for at, kept in points:
            if at >= start:
                return kept
        return price
    return points[0][1]


@dataclass
class MarketBoard:
    """See the module notes. `stale_after_seconds` is STALE_INTERVALS poll intervals."""

    stale_after_seconds: float = 90.0
    #: Bumped on every change: the page's live channel says "something changed" with it.
    version: int = 0
    _rows: dict[str, _Row] = field(default_factory=dict)
    _events: deque[PolymarketEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))

    def observe(self, snapshot: MarketSnapshot) -> None:
        """A snapshot the detector judged (the market's latest observation)."""
        row = self._rows.get(snapshot.market_id)
        if row is None:
            row = self._rows[snapshot.market_id] = _Row(snapshot)
        elif snapshot.taken_at <= row.snapshot.taken_at:
            return  # not newer than what is shown (the detector ignored it too)
        row.snapshot = snapshot
        row.points.append((snapshot.taken_at.timestamp(), snapshot.yes_price))
        self.version += 1

    def published(self, event: PolymarketEvent) -> None:
        """An event handed to Kafka."""
        self._events.appendleft(event)
        row = self._rows.get(event.market_id)
        if row is not None:
            row.events += 1
            row.last_event_id = event.event_id
        self.version += 1

    def forget(self, market_id: str) -> None:
        """The market is no longer watched."""
        if self._rows.pop(market_id, None) is not None:
            self.version += 1

    def events(self, limit: int) -> list[dict[str, Any]]:
        """The latest `limit` events, newest first, as on the topic (JSON values)."""
        return [e.model_dump(mode="json") for e in list(self._events)[: max(limit, 0)]]

    def markets(
        self, now: datetime, resolve: Callable[[MarketSnapshot], ResolvedRule] | None = None
    ) -> list[dict[str, Any]]:
        """One row per market (see README "Dashboard" for the fields), sorted by id.

        `resolve` (the rules in force, e.g. `RuleSet.resolve`) adds the resolved thresholds;
        a row's resolution is recomputed only when the rules or what they depend on changed.
        """
        rows = []
        for market_id in sorted(self._rows):
            row = self._rows[market_id]
            snapshot = row.snapshot
            age = max(0.0, (now - snapshot.taken_at).total_seconds())
            rules: dict[str, Any] | None = None
            max_spread: float | None = None
            window: float | None = None
            if resolve is not None:
                owner = getattr(resolve, "__self__", resolve)
                key = resolution_key(snapshot)
                if row.explained is None or row.explained[:2] != (owner, key):
                    resolved = resolve(snapshot)
                    explained = explain(resolved) | {
                        "_max_spread": resolved.params.max_spread,
                        "_window": resolved.params.window_seconds,
                    }
                    row.explained = (owner, key, explained)
                rules = {k: v for k, v in row.explained[2].items() if not k.startswith("_")}
                max_spread = row.explained[2]["_max_spread"]
                window = row.explained[2]["_window"]
            first_price = _first_in_window(row.points, now.timestamp(), window, snapshot.yes_price)
            spread = snapshot.spread
            rows.append(
                {
                    "market_id": market_id,
                    "question": snapshot.question,
                    "category": snapshot.category,
                    "tags": list(snapshot.tags),
                    "liquidity": snapshot.liquidity,
                    "volume": snapshot.volume,
                    "yes_price": snapshot.yes_price,
                    "spread": spread,
                    "source": snapshot.source,
                    "updated_at": snapshot.taken_at.isoformat(),
                    "age_seconds": round(age, 3),
                    "stale": not snapshot.closed and age > self.stale_after_seconds,
                    "thin_book": spread is not None
                    and max_spread is not None
                    and spread > max_spread,
                    "closed": snapshot.closed,
                    "resolution": snapshot.resolution,
                    "move": round(snapshot.yes_price - first_price, 6),
                    "window_seconds": window,
                    "spark": _spark(row.points),
                    "events": row.events,
                    "last_event_id": row.last_event_id,
                    "rules": rules,
                }
            )
        return rows

    def market_ids(self) -> frozenset[str]:
        return frozenset(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
