"""Shared test data: a valid `PolymarketEvent` with any field overridden, scripted clocks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from polymarket_kafka.models import ConvictionDirection, PolymarketEvent

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
MARKET = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"


#: Rules for replay tests: two-poll confirmation, a 2 h window and a liquidity floor, so that
#: confirmation, cooldown and the watch guard all show in a short synthetic series.
#: Rules of the pipeline tests: a move of the built-in thresholds fires on its first poll,
#: judged by thresholds only. The scripted markets are new to the detector, which would judge
#: their first moves against a prior volatility; these tests are about the plumbing.
ONE_POLL_YAML = "version: 1\ndefaults:\n  confirm: {polls: 1}\n  volatility: {z: 0}\n"

#: Rules of the replay engine's tests: thresholds only (no volatility test, no ramp), so
#: their series stay short; the volatility test has tests of its own.
REPLAY_RULES_YAML = """
version: 1
defaults:
  window: 2h
  move: {abs: 0.05, log_odds: 2.0}
  cooldown: 10m
  confirm: {polls: 2, ramp: 0}
  volatility: {z: 0}
  watch: {min_liquidity: 1000}
"""


def event_fields(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of a valid event (Trump 2024, 0.58 -> 0.706 in one hour)."""
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "x")),
        "timestamp": T0,
        "market_id": MARKET,
        "question": "Will Donald Trump win the 2024 US Presidential Election?",
        "yes_price": 0.706,
        "no_price": 0.294,
        "direction": ConvictionDirection.TOWARD_YES,
        "baseline_yes_price": 0.58,
        "baseline_timestamp": T0 - timedelta(hours=1),
        "price_change": 0.126,
        "abs_price_change": 0.126,
        "log_odds_change": 0.553,
        "window_seconds": 3600.0,
        "rule": "conviction_move",
    }
    fields.update(overrides)
    return fields


def make_event(**overrides: Any) -> PolymarketEvent:
    """A valid event with `overrides` applied."""
    return PolymarketEvent(**event_fields(**overrides))


class FixedRules:
    """A rule source that resolves every market to the same parameters (detector tests)."""

    def __init__(self, params: Any = None, version: str = "test") -> None:
        from polymarket_kafka.ruleset.params import DetectionParams

        self.params = params if params is not None else DetectionParams()
        self.version = version

    def resolve(self, snapshot: Any) -> Any:
        from polymarket_kafka.ruleset.params import ResolvedRule

        return ResolvedRule(params=self.params, rules_version=self.version)


class _PricedServer(Protocol):
    def set_price(self, market_or_token_id: str, price: float | str) -> None: ...


def scripted_prices_clock(
    server: _PricedServer, script: Mapping[int, Mapping[str, float]], start: datetime
) -> Callable[[], datetime]:
    """A service clock whose n-th reading (from 0) first sets `script[n]`'s prices on
    `server`, then returns `start + n hours`: one poll cycle per hour of market time."""
    cycle = 0

    def clock() -> datetime:
        nonlocal cycle
        for market_id, price in script.get(cycle, {}).items():
            server.set_price(market_id, price)
        now = start + timedelta(hours=cycle)
        cycle += 1
        return now

    return clock


def empty_env_file(directory: Path, name: str = "empty.env") -> Path:
    """An existing, empty dotenv file: `--env-file` refuses a missing one, and the tests must
    not read a `.env` in the working directory either."""
    path = directory / name
    path.touch()
    return path
