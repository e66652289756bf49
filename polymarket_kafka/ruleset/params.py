"""Resolved detection parameters: what the detector reads for one market (pure data).

A rules file is layered (defaults → liquidity tier → category → market → subscription); the
rule engine folds those layers into one `DetectionParams` per market and wraps it in a
`ResolvedRule` that remembers which layer set each parameter. Everything here is immutable
and hashable, so resolved rules can be cached and compared.

Two identities matter:

* `DetectionParams.state_key` covers only the parameters that shape detector *state*
  (window, thresholds, confirmation, cooldown, hysteresis). On a reload, a market whose
  `state_key` is unchanged keeps its state as it is; any other market is re-evaluated under
  the new parameters, its observed prices kept (`detection.Detector.apply_rules`).
* `DetectionParams.params_id` covers every parameter; events carry it as `rule_id`, so a
  strategy can tell exactly which configuration produced an event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "BUILT_IN",
    "PARAMETER_NAMES",
    "STATE_PARAMETERS",
    "DetectionParams",
    "ResolvedRule",
    "SeverityBand",
]

#: The layer label of a parameter nobody set: the engine's documented built-in default.
BUILT_IN = "built-in"

Combine = Literal["any", "all"]
CatchUp = Literal["report", "rebaseline"]


@dataclass(frozen=True)
class SeverityBand:
    """A severity band: reached when |Δp| ≥ `abs_move` or |Δlog-odds| ≥ `log_odds_move`.

    A threshold of None is not used. The first band of a rule is its base: every event gets
    at least that band, whatever its thresholds.
    """

    name: str
    abs_move: float | None = None
    log_odds_move: float | None = None


DEFAULT_SEVERITY: tuple[SeverityBand, ...] = (
    SeverityBand("minor"),
    SeverityBand("major", abs_move=0.10, log_odds_move=0.6),
    SeverityBand("extreme", abs_move=0.20, log_odds_move=1.2),
)


@dataclass(frozen=True)
class DetectionParams:
    """Every detection parameter of one market, fully resolved. Times are in seconds.

    Field names map to the dotted rules-file keys listed in `PARAMETER_NAMES`.
    """

    #: Rule name put on events (`rule`).
    name: str = "conviction_move"
    #: False: the market is not watched at all (no state, no events).
    enabled: bool = True
    #: Rolling window the move is measured over (the previous observation always counts).
    window_seconds: float = 2 * 3600.0
    #: Absolute move of the YES price, probability units (0.03 = 3 points).
    abs_move: float = 0.03
    #: Move of logit(YES price) (prices clamped to [0.001, 0.999]).
    log_odds_move: float = 0.4
    #: "any": either threshold fires; "all": both must be reached.
    combine: Combine = "any"
    #: Saturation guard: a move smaller than this never fires, whatever its log-odds.
    floor: float = 0.02
    #: After an event nothing fires for this long (observations are still recorded).
    cooldown_seconds: float = 600.0
    #: Extra distance a move *against* the last event needs before it fires (re-arm).
    hysteresis: float = 0.01
    #: Polls a move must be seen on (the first crossing included) before it fires.
    confirm_polls: int = 2
    #: Minimum time between the first crossing and the confirming poll.
    confirm_seconds: float = 0.0
    #: Fraction of the first crossing's move that must still stand when it is confirmed.
    confirm_retain: float = 0.5
    #: A crossing whose previous poll (at least a bucket, window / 60, and `confirm_seconds`
    #: earlier) already showed this fraction of the move, same way, is a ramp: confirmed at
    #: once (0 = off).
    confirm_ramp: float = 0.35
    #: A move must be at least this many times the market's own volatility over its duration
    #: (a z-score; 0 = off, thresholds only).
    volatility_z: float = 3.3
    #: Volatility never counts below this (probability points per square root of an hour).
    volatility_floor: float = 0.0065
    #: A market's volatility before its own history is known (per square root of an hour).
    volatility_prior: float = 0.04
    #: Half-life of the volatility estimate (an exponentially weighted average).
    volatility_half_life_seconds: float = 12 * 3600.0
    #: A move is judged as if it took at least this long (fine polling is not rushed).
    volatility_min_horizon_seconds: float = 900.0
    #: Watch a market only when its Gamma liquidity / volume (USDC) reach these (if known).
    min_liquidity: float = 0.0
    min_volume: float = 0.0
    #: Ignore snapshots whose bid-ask spread is wider than this (thin-book guard), if known.
    max_spread: float = 0.10
    #: Ignore snapshots older than this when they reach the detector (stale guard).
    max_data_age_seconds: float = 300.0
    #: Severity bands, lowest first.
    severity: tuple[SeverityBand, ...] = DEFAULT_SEVERITY
    #: After a restore (durable state), a move spanning the gap in observation: "report" it
    #: (marked `catch_up`), or "rebaseline" (the first price after the gap is the baseline).
    catch_up: CatchUp = "report"

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of the parameters (dotted keys, see `PARAMETER_NAMES`)."""
        raw = asdict(self)
        out: dict[str, Any] = {}
        for dotted, attribute in PARAMETER_NAMES.items():
            value = raw[attribute]
            if attribute == "severity":
                value = [
                    {"name": b["name"], "abs": b["abs_move"], "log_odds": b["log_odds_move"]}
                    for b in value
                ]
            out[dotted] = value
        return out

    @cached_property
    def state_key(self) -> str:
        """Hash of the parameters that shape detector state (see the module docstring)."""
        raw = asdict(self)
        return _digest({name: raw[name] for name in STATE_PARAMETERS})

    @cached_property
    def params_id(self) -> str:
        """Hash of every parameter: the `rule_id` carried on events."""
        return _digest(self.as_dict())


#: Dotted rules-file key → `DetectionParams` attribute, in display order.
PARAMETER_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "name": "name",
        "enabled": "enabled",
        "window": "window_seconds",
        "move.abs": "abs_move",
        "move.log_odds": "log_odds_move",
        "move.combine": "combine",
        "move.floor": "floor",
        "cooldown": "cooldown_seconds",
        "hysteresis": "hysteresis",
        "confirm.polls": "confirm_polls",
        "confirm.for": "confirm_seconds",
        "confirm.retain": "confirm_retain",
        "confirm.ramp": "confirm_ramp",
        "volatility.z": "volatility_z",
        "volatility.floor": "volatility_floor",
        "volatility.prior": "volatility_prior",
        "volatility.half_life": "volatility_half_life_seconds",
        "volatility.min_horizon": "volatility_min_horizon_seconds",
        "watch.min_liquidity": "min_liquidity",
        "watch.min_volume": "min_volume",
        "watch.max_spread": "max_spread",
        "watch.max_data_age": "max_data_age_seconds",
        "catch_up": "catch_up",
        "severity": "severity",
    }
)

#: Attributes whose change resets a market's detector state on reload.
STATE_PARAMETERS: tuple[str, ...] = (
    "window_seconds",
    "abs_move",
    "log_odds_move",
    "combine",
    "floor",
    "cooldown_seconds",
    "hysteresis",
    "confirm_polls",
    "confirm_seconds",
    "confirm_retain",
    "confirm_ramp",
    "volatility_z",
    "volatility_floor",
    "volatility_prior",
    "volatility_half_life_seconds",
    "volatility_min_horizon_seconds",
)


def _digest(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class ResolvedRule:
    """The parameters in force for one market, and where each one came from.

    `sources` maps every dotted parameter name to the layer that set it: `built-in`,
    `defaults`, `tier:<name>`, `category:<name>`, `market:<condition id>` or `subscription`.
    """

    params: DetectionParams
    rules_version: str
    # Left out of the hash (a mapping is unhashable); equal rules still compare sources.
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Liquidity tier of the market (None: no tier matched or no liquidity/volume known).
    tier: str | None = None
    #: Category layer applied (None: none matched).
    category: str | None = None

    @property
    def rule_id(self) -> str:
        return self.params.params_id

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers that contributed at least one parameter, in resolution order."""
        order = ("built-in", "defaults", "tier", "category", "market", "subscription")
        return tuple(
            sorted(set(self.sources.values()), key=lambda s: order.index(s.split(":", 1)[0]))
        )
