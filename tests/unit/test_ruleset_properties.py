"""Properties over random valid rules files and random markets (hypothesis).

The strategy builds rules *documents* (plain dicts) within the documented bounds, dumps them
with yaml.safe_dump, and loads the text like any rules file.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset import PARAMETER_NAMES, ResolvedRule, RuleSet, load_rules_text
from polymarket_kafka.ruleset.durations import format_duration

CATEGORIES = ("politics", "crypto", "sports", "economy", "elections", "ai")
MARKETS = tuple(f"0x{i:064x}" for i in range(4))
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def floats(
    low: float, high: float, *, exclude_min: bool = False, exclude_max: bool = False
) -> st.SearchStrategy[float]:
    """Finite, normal floats in [low, high] (YAML round-trips them exactly)."""
    return st.floats(
        low,
        high,
        exclude_min=exclude_min,
        exclude_max=exclude_max,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
    )


positive_fraction = floats(0.0, 1.0, exclude_min=True)
unit_fraction = floats(0.0, 1.0)
below_one = floats(0.0, 1.0, exclude_max=True)
positive = floats(1e-6, 50.0)
usdc = floats(0.0, 1e9)
duration = st.integers(min_value=0, max_value=30 * 86400).map(format_duration)
positive_duration = st.integers(min_value=1, max_value=30 * 86400).map(format_duration)


def sections(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping holding any subset of `fields`."""
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def severity(draw: st.DrawFn) -> dict[str, dict[str, float]]:
    count = draw(st.integers(min_value=0, max_value=3))
    abs_values = sorted(
        draw(st.lists(positive_fraction, min_size=count, max_size=count, unique=True))
    )
    log_values = sorted(draw(st.lists(positive, min_size=count, max_size=count, unique=True)))
    bands: dict[str, dict[str, float]] = {"base": {}}
    for index, (a, lo) in enumerate(zip(abs_values, log_values, strict=True)):
        which = draw(st.sampled_from(["abs", "log_odds", "both"]))
        band: dict[str, float] = {}
        if which != "log_odds":
            band["abs"] = a
        if which != "abs":
            band["log_odds"] = lo
        bands[f"band{index}"] = band
    return bands


parameters = sections(
    name=st.text("abcdefgh_", min_size=1, max_size=12),
    enabled=st.booleans(),
    window=positive_duration,
    move=sections(
        abs=positive_fraction,
        log_odds=positive,
        combine=st.sampled_from(["any", "all"]),
        floor=below_one,
    ),
    cooldown=duration,
    hysteresis=below_one,
    confirm=sections(
        polls=st.integers(min_value=1, max_value=20), retain=unit_fraction, **{"for": duration}
    ),
    watch=sections(
        min_liquidity=usdc,
        min_volume=usdc,
        max_spread=positive_fraction,
        max_data_age=positive_duration,
    ),
    severity=severity(),
)


@st.composite
def tiers(draw: st.DrawFn) -> dict[str, Any]:
    """Bands between consecutive cut points; some pairs skipped (gaps), ends maybe open."""
    cuts = sorted(draw(st.lists(st.integers(0, 10**7), min_size=2, max_size=6, unique=True)))
    bands: dict[str, Any] = {}
    for index, (low, high) in enumerate(itertools.pairwise(cuts)):
        if draw(st.booleans()) or index == 0:
            band = draw(parameters)
            if index > 0 or draw(st.booleans()):
                band["from"] = low
            band["below"] = high
            bands[f"t{index}"] = band
    if draw(st.booleans()):
        bands["top"] = {"from": cuts[-1], **draw(parameters)}
    return {"by": draw(st.sampled_from(["liquidity", "volume"])), "bands": bands}


documents = st.fixed_dictionaries(
    {"version": st.just(1)},
    optional={
        "defaults": parameters,
        "tiers": tiers(),
        "categories": st.dictionaries(st.sampled_from(CATEGORIES), parameters, max_size=4),
        "markets": st.dictionaries(st.sampled_from(MARKETS), parameters, max_size=3),
    },
)

snapshots = st.builds(
    MarketSnapshot,
    market_id=st.sampled_from(MARKETS),
    question=st.just("q"),
    yes_price=unit_fraction,
    taken_at=st.just(T0),
    liquidity=st.none() | usdc,
    volume=st.none() | usdc,
    category=st.none() | st.sampled_from([c.upper() for c in CATEGORIES]),
    tags=st.lists(st.sampled_from([*CATEGORIES, "other"]), max_size=3).map(tuple),
    threshold=st.none() | positive_fraction,
    window_seconds=st.none() | floats(1.0, 1e7),
    cooldown_seconds=st.none() | floats(0.0, 1e7),
)


def assert_within_bounds(resolved: ResolvedRule) -> None:
    p = resolved.params
    assert p.name and isinstance(p.enabled, bool)
    assert p.window_seconds > 0 and math.isfinite(p.window_seconds)
    assert 0 < p.abs_move <= 1 and p.log_odds_move > 0 and 0 <= p.floor < 1
    assert p.combine in ("any", "all")
    assert p.cooldown_seconds >= 0 and 0 <= p.hysteresis < 1
    assert isinstance(p.confirm_polls, int) and p.confirm_polls >= 1
    assert p.confirm_seconds >= 0 and 0 <= p.confirm_retain <= 1
    assert p.min_liquidity >= 0 and p.min_volume >= 0
    assert 0 < p.max_spread <= 1 and p.max_data_age_seconds > 0
    base, *bands = p.severity
    assert base.abs_move is None and base.log_odds_move is None
    for kind in ("abs_move", "log_odds_move"):
        given_values = [getattr(b, kind) for b in bands if getattr(b, kind) is not None]
        assert given_values == sorted(set(given_values))
    assert all(b.abs_move is not None or b.log_odds_move is not None for b in bands)
    assert set(resolved.sources) == set(PARAMETER_NAMES)
    kinds = {"built-in", "defaults", "tier", "category", "market", "subscription"}
    assert {source.split(":")[0] for source in resolved.sources.values()} <= kinds


@settings(max_examples=150)
@given(document=documents, markets=st.lists(snapshots, min_size=1, max_size=5))
def test_random_valid_rules_load_and_resolve_within_bounds(
    document: dict[str, Any], markets: list[MarketSnapshot]
) -> None:
    text = yaml.safe_dump(document, sort_keys=False)
    rules = load_rules_text(text)
    for snapshot in markets:
        resolved = rules.resolve(snapshot)
        assert_within_bounds(resolved)
        if snapshot.threshold is not None:
            assert resolved.params.abs_move == snapshot.threshold
            assert resolved.sources["move.abs"] == "subscription"


@settings(max_examples=75)
@given(document=documents, snapshot=snapshots)
def test_resolution_is_deterministic(document: dict[str, Any], snapshot: MarketSnapshot) -> None:
    text = yaml.safe_dump(document, sort_keys=False)
    flow = yaml.safe_dump(document, sort_keys=False, default_flow_style=True, width=60)
    one, two, three = load_rules_text(text), load_rules_text(text), load_rules_text(flow)
    assert one.version == two.version == three.version
    first = one.resolve(snapshot)
    assert one.resolve(snapshot.model_copy()) is first
    assert first == two.resolve(snapshot) == three.resolve(snapshot)
    cold = RuleSet(one.document, "again").resolve(snapshot)
    assert cold == first and cold.rule_id == first.rule_id
