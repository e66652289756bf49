"""What makes a move a conviction change: thresholds, volatility and severity (pure math).

All functions here take plain numbers and resolved parameters; nothing reads a clock or keeps
state. `Detector` calls them on the few observations that get past its quiet band.

* `qualifies` — the thresholds of the rules file: |Δp| ≥ `floor` and, combined by
  `any`/`all`, |Δp| ≥ `abs` and |Δlogit(p)| ≥ `log_odds`.
* `required_move` — the volatility test: a move lasting `h` seconds must reach
  `z x max(sigma x sqrt(h), floor x sqrt(min(h, window)))`, with `h` at least
  `min_horizon`. `sigma` is the market's own volatility (probability per square root of a
  second, measured before the window: `window.MarketWindow`), the floor keeps a flat market
  from treating a tick as news, and capping the floor's horizon at the window keeps daily data
  (one observation a day) from needing a move of sqrt(24 h) floors.
* `severity_of` — the highest severity band a move reaches.
"""

from __future__ import annotations

import math

from polymarket_kafka.ruleset.params import DetectionParams

__all__ = [
    "PRECISION",
    "at_least",
    "log_odds",
    "per_second",
    "qualifies",
    "required_move",
    "severity_of",
]

# Prices are quoted on a 0.001 tick at best; comparing at 1e-9 absorbs float noise such as
# 0.60 - 0.55 = 0.04999999999999993 without ever merging two distinct ticks.
PRECISION = 9
_LOGIT_CLAMP = 0.001
_SECONDS_PER_HOUR = 3600.0


def log_odds(price: float) -> float:
    """logit(p) with p clamped to [0.001, 0.999], so 0 and 1 stay finite."""
    p = min(max(price, _LOGIT_CLAMP), 1.0 - _LOGIT_CLAMP)
    return math.log(p / (1.0 - p))


def at_least(value: float, threshold: float) -> bool:
    """`value >= threshold` at the comparison precision (float noise absorbed)."""
    return round(value, PRECISION) >= round(threshold, PRECISION)


def qualifies(baseline: float, price: float, params: DetectionParams) -> bool:
    """Whether a move from `baseline` to `price` clears the rule's thresholds (the volatility
    test, `required_move`, comes on top)."""
    move = abs(price - baseline)
    if move == 0 or not at_least(move, params.floor):
        return False
    by_abs = at_least(move, params.abs_move)
    by_log_odds = at_least(abs(log_odds(price) - log_odds(baseline)), params.log_odds_move)
    if params.combine == "all":
        return by_abs and by_log_odds
    return by_abs or by_log_odds


def per_second(per_sqrt_hour: float) -> float:
    """A volatility per square root of an hour, as a variance per second."""
    return per_sqrt_hour * per_sqrt_hour / _SECONDS_PER_HOUR


def required_move(variance: float, seconds: float, params: DetectionParams) -> float:
    """The smallest |move| lasting `seconds` that the volatility test accepts, for a market
    whose volatility is `variance` (per second). 0 when the test is off (`z` = 0)."""
    if params.volatility_z <= 0:
        return 0.0
    horizon = max(seconds, params.volatility_min_horizon_seconds)
    by_volatility = math.sqrt(variance * horizon)
    floor_horizon = min(horizon, params.window_seconds) / _SECONDS_PER_HOUR
    by_floor = params.volatility_floor * math.sqrt(floor_horizon)
    return params.volatility_z * max(by_volatility, by_floor)


def severity_of(baseline: float, price: float, params: DetectionParams) -> str:
    """The highest severity band the move reaches (the first band when it reaches none)."""
    move = abs(price - baseline)
    logit_move = abs(log_odds(price) - log_odds(baseline))
    reached = params.severity[0].name if params.severity else ""
    for band in params.severity[1:]:
        by_abs = band.abs_move is not None and at_least(move, band.abs_move)
        by_log_odds = band.log_odds_move is not None and at_least(logit_move, band.log_odds_move)
        if by_abs or by_log_odds:
            reached = band.name
    return reached
