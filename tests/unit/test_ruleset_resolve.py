"""Resolution of a market's parameters: layer order, matching, provenance, cache, version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset import (
    PARAMETER_NAMES,
    DetectionParams,
    RuleSet,
    SeverityBand,
    compiled,
    load_rules,
    load_rules_text,
)
from polymarket_kafka.ruleset.compiled import layer_settings
from polymarket_kafka.ruleset.schema import Parameters

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
MARKET = "0x" + "aa" * 32
OTHER = "0x" + "bb" * 32
#: The market's key as written in the file: upper-case hex, matched case-insensitively.
MARKET_KEY = "0x" + "AA" * 32
MARKET_LABEL = f"market:{MARKET_KEY}"

LAYERED = f"""\
version: 1
defaults:
  name: base
  window: 1h
  move: {{abs: 0.05}}
tiers:
  bands:
    thin: {{below: 10000, window: 2h, move: {{log_odds: 0.5}}}}
    standard: {{from: 10000, below: 250000}}
    deep: {{from: 300000, confirm: {{polls: 1}}}}
categories:
  crypto: {{window: 3h, move: {{floor: 0.03}}}}
  politics: {{window: 4h, cooldown: 1m}}
markets:
  "{MARKET_KEY}": {{window: 5h, enabled: false}}
"""


def snap(market: str = OTHER, **fields: Any) -> MarketSnapshot:
    return MarketSnapshot(market_id=market, question="q", yes_price=0.5, taken_at=T0, **fields)


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(LAYERED, encoding="utf-8")
    return load_rules(path)


def test_every_layer_overrides_the_one_before(rules: RuleSet) -> None:
    """Each step adds one matching layer; `window` is set by every layer."""
    steps: list[tuple[dict[str, Any], str, float, str]] = [
        ({}, OTHER, 3600, "defaults"),
        ({"liquidity": 5000}, OTHER, 7200, "tier:thin"),
        ({"liquidity": 5000, "tags": ("crypto",)}, OTHER, 3 * 3600, "category:crypto"),
        ({"liquidity": 5000, "tags": ("crypto",)}, MARKET, 5 * 3600, MARKET_LABEL),
        (
            {"liquidity": 5000, "tags": ("crypto",), "window_seconds": 60},
            MARKET,
            60,
            "subscription",
        ),
    ]
    for fields, market, window, source in steps:
        resolved = rules.resolve(snap(market, **fields))
        assert resolved.params.window_seconds == window
        assert resolved.sources["window"] == source


def test_provenance_of_every_parameter(rules: RuleSet) -> None:
    resolved = rules.resolve(
        snap(MARKET, liquidity=5000, tags=("Crypto",), threshold=0.07, cooldown_seconds=30)
    )
    p = resolved.params
    assert (p.name, p.enabled, p.window_seconds) == ("base", False, 5 * 3600)
    assert (p.abs_move, p.log_odds_move, p.floor, p.cooldown_seconds) == (0.07, 0.5, 0.03, 30)
    assert p.confirm_polls == DetectionParams().confirm_polls
    assert dict(resolved.sources) == {
        **dict.fromkeys(PARAMETER_NAMES, "built-in"),
        "name": "defaults",
        "enabled": MARKET_LABEL,
        "window": MARKET_LABEL,
        "move.abs": "subscription",
        "move.log_odds": "tier:thin",
        "move.floor": "category:crypto",
        "cooldown": "subscription",
    }
    assert (resolved.tier, resolved.category) == ("thin", "crypto")
    assert resolved.layers == (
        "built-in",
        "defaults",
        "tier:thin",
        "category:crypto",
        MARKET_LABEL,
        "subscription",
    )
    assert resolved.rules_version == rules.version
    assert resolved.rule_id == p.params_id


def test_subscription_overrides_win_over_every_layer(rules: RuleSet) -> None:
    resolved = rules.resolve(
        snap(
            MARKET,
            liquidity=5000,
            tags=("crypto",),
            threshold=0.2,
            window_seconds=90.5,
            cooldown_seconds=0,
        )
    )
    assert (resolved.params.abs_move, resolved.params.window_seconds) == (0.2, 90.5)
    assert resolved.params.cooldown_seconds == 0
    assert {resolved.sources[k] for k in ("move.abs", "window", "cooldown")} == {"subscription"}


@pytest.mark.parametrize(
    ("liquidity", "tier"),
    [
        (0, "thin"),
        (9999.99, "thin"),
        (10000, "standard"),  # `from` is inclusive ...
        (249999.99, "standard"),
        (250000, None),  # ... `below` exclusive, and 250000-300000 is a gap
        (299999, None),
        (300000, "deep"),
        (1e12, "deep"),
        (None, None),  # unknown liquidity: no tier
    ],
)
def test_tier_boundaries(rules: RuleSet, liquidity: float | None, tier: str | None) -> None:
    resolved = rules.resolve(snap(liquidity=liquidity))
    assert resolved.tier == tier == rules.tier_of(snap(liquidity=liquidity))
    expected_window = 7200 if tier == "thin" else 3600
    assert resolved.params.window_seconds == expected_window
    assert resolved.sources["confirm.polls"] == ("tier:deep" if tier == "deep" else "built-in")


def test_tiers_by_volume_ignore_liquidity() -> None:
    rules = load_rules_text(
        "version: 1\ntiers:\n  by: volume\n  bands:\n    big: {from: 100, window: 6h}\n"
    )
    assert rules.tiers_by == "volume"
    assert rules.resolve(snap(volume=100, liquidity=0)).tier == "big"
    assert rules.resolve(snap(volume=99, liquidity=10**9)).tier is None
    assert rules.resolve(snap(liquidity=10**9)).tier is None
    assert load_rules_text("version: 1\n").tiers_by is None


@pytest.mark.parametrize(
    ("category", "tags", "expected"),
    [
        ("Crypto", (), "crypto"),  # by category, case-insensitive
        (None, ("Bitcoin", "CRYPTO"), "crypto"),  # by tag
        (None, (" politics ",), "politics"),
        ("Politics", ("crypto",), "crypto"),  # file order wins, not the market's
        (None, ("politics", "crypto"), "crypto"),
        ("Sports", ("NBA",), None),
        (None, (), None),
    ],
)
def test_category_matching(
    rules: RuleSet, category: str | None, tags: tuple[str, ...], expected: str | None
) -> None:
    snapshot = snap(category=category, tags=tags)
    resolved = rules.resolve(snapshot)
    assert resolved.category == expected == rules.category_of(snapshot)
    windows = {"crypto": 3 * 3600, "politics": 4 * 3600, None: 3600}
    assert resolved.params.window_seconds == windows[expected]


def test_market_layer_matches_its_condition_id_only(rules: RuleSet) -> None:
    assert rules.resolve(snap(MARKET)).params.enabled is False
    assert rules.resolve(snap(MARKET_KEY)).params.enabled is False
    assert rules.resolve(snap(OTHER)).params.enabled is True


def test_nested_sections_merge_per_field_and_severity_replaces() -> None:
    rules = load_rules_text(
        """\
version: 1
defaults:
  move: {abs: 0.05, log_odds: 0.5, combine: all}
  severity: {low: {}, high: {abs: 0.3}}
categories:
  c:
    move: {abs: 0.1}
    severity: {only: {}}
"""
    )
    base = rules.resolve(snap()).params
    assert base.severity == (SeverityBand("low"), SeverityBand("high", abs_move=0.3))
    params = rules.resolve(snap(tags=("c",))).params
    assert (params.abs_move, params.log_odds_move, params.combine) == (0.1, 0.5, "all")
    assert params.severity == (SeverityBand("only"),)


def test_yaml_merge_keys_share_settings() -> None:
    rules = load_rules_text(
        """\
version: 1
categories:
  politics: &calm
    cooldown: 15m
    window: 4h
  economy:
    <<: *calm
    window: 6h
"""
    )
    params = rules.resolve(snap(tags=("economy",))).params
    assert (params.cooldown_seconds, params.window_seconds) == (900, 6 * 3600)


# --- cache --------------------------------------------------------------------------------


def test_cache_returns_the_same_object_for_the_same_inputs(rules: RuleSet) -> None:
    first = rules.resolve(snap(MARKET, liquidity=5000, tags=("crypto",)))
    later = snap(MARKET, liquidity=6000, tags=("crypto",)).model_copy(
        update={"yes_price": 0.9, "taken_at": T0 + timedelta(hours=1), "spread": 0.01}
    )
    assert rules.resolve(later) is first


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (
            {"liquidity": 20000},
            "log_odds_move",
            DetectionParams().log_odds_move,
        ),  # thin -> standard
        ({"tags": ("politics",)}, "window_seconds", 4 * 3600),  # crypto -> politics
        ({"threshold": 0.11}, "abs_move", 0.11),  # subscription changed
    ],
)
def test_cache_misses_when_tier_category_or_subscription_change(
    rules: RuleSet, change: dict[str, Any], field: str, value: float
) -> None:
    fields: dict[str, Any] = {"liquidity": 5000, "tags": ("crypto",), **change}
    before = rules.resolve(snap(liquidity=5000, tags=("crypto",)))
    after = rules.resolve(snap(**fields))
    assert after != before
    assert getattr(after.params, field) == value
    assert rules.resolve(snap(liquidity=5000, tags=("crypto",))) is before


def test_cache_is_bounded(rules: RuleSet, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three different subscription overrides: three entries.
    monkeypatch.setattr(compiled, "CACHE_SIZE", 2)
    first = rules.resolve(snap(threshold=0.1))
    rules.resolve(snap(threshold=0.2))
    assert rules.resolve(snap(threshold=0.1)) is first  # refreshed: 0.2 is now the oldest
    rules.resolve(snap(threshold=0.3))
    assert rules.resolve(snap(threshold=0.1)) is first
    again = rules.resolve(snap(threshold=0.2))  # evicted: resolved afresh, to an equal result
    assert again is not first and again == rules.resolve(snap(threshold=0.2))


def test_markets_without_a_layer_of_their_own_share_one_entry(
    rules: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keyed by the layers that apply, not by market: any number of markets keeps hitting the
    # cache (keyed by market id, it thrashed above CACHE_SIZE markets: 10x slower detection).
    monkeypatch.setattr(compiled, "CACHE_SIZE", 2)
    first = rules.resolve(snap(f"0x{0:064x}", liquidity=5000, tags=("crypto",)))
    for n in range(1, 50):
        assert rules.resolve(snap(f"0x{n:064x}", liquidity=5000, tags=("crypto",))) is first
    own = rules.resolve(snap(MARKET, liquidity=5000, tags=("crypto",)))  # has a market layer
    assert own != first and own.sources != first.sources


def test_a_new_rule_set_has_its_own_cache() -> None:
    one, two = load_rules_text(LAYERED), load_rules_text(LAYERED)
    assert one.resolve(snap()) == two.resolve(snap())
    assert one.resolve(snap()) is not two.resolve(snap())
    assert hash(one.resolve(snap())) == hash(two.resolve(snap()))


# --- version and built-in -----------------------------------------------------------------

SAME_CONTENT = [
    LAYERED,
    "# a comment\n" + LAYERED.replace("window: 1h", "window: 60m   # spelled differently"),
    LAYERED.replace("move: {abs: 0.05}", "move:\n    abs: 5.0e-2").replace(
        "name: base", "name: 'base'"
    ),
    LAYERED.replace("version: 1\ndefaults:", "defaults:").replace("tiers:", "version: 1\ntiers:"),
    # tier bands and markets have no meaningful order
    LAYERED.replace("    thin: {below: 10000, window: 2h, move: {log_odds: 0.5}}\n", "").replace(
        "    deep:", "    thin: {below: 10000, window: 2h, move: {log_odds: 0.5}}\n    deep:"
    ),
]


def test_version_ignores_comments_layout_and_spelling() -> None:
    versions = {load_rules_text(text).version for text in SAME_CONTENT}
    assert len(versions) == 1
    [version] = versions
    assert len(version) == 12
    int(version, 16)


@pytest.mark.parametrize(
    "text",
    [
        LAYERED.replace("abs: 0.05", "abs: 0.06"),
        LAYERED.replace("below: 10000,", "below: 10001,").replace("from: 10000,", "from: 10001,"),
        # category order decides which one matches first: it is content
        LAYERED.replace("  crypto: {window: 3h, move: {floor: 0.03}}\n", "")
        + "  crypto: {window: 3h, move: {floor: 0.03}}\n",
        LAYERED + "  other: {}\n",
    ],
)
def test_version_changes_with_content(text: str) -> None:
    assert load_rules_text(text).version != load_rules_text(LAYERED).version


def test_builtin_rules() -> None:
    builtin = RuleSet.builtin()
    assert builtin.source == "<built-in>"
    assert builtin.version == load_rules_text("version: 1\n").version
    resolved = builtin.resolve(snap(liquidity=5, tags=("crypto",)))
    assert resolved.params == DetectionParams()
    assert set(resolved.sources.values()) == {"built-in"}
    assert (resolved.tier, resolved.category) == (None, None)
    assert resolved.layers == ("built-in",)
    assert repr(builtin) == f"RuleSet(source='<built-in>', version='{builtin.version}')"


def test_layers_in_resolution_order(rules: RuleSet, tmp_path: Path) -> None:
    labels = [layer.label for layer in rules.layers]
    assert labels == [
        "defaults",
        "tier:thin",
        "tier:standard",
        "tier:deep",
        "category:crypto",
        "category:politics",
        MARKET_LABEL,
    ]
    assert [layer.name for layer in rules.layers][:2] == ["defaults", "thin"]
    assert rules.layers[1].settings == {"window": 7200.0, "move.log_odds": 0.5}
    assert rules.source == str(tmp_path / "rules.yaml")
    assert rules.document.tiers is not None


def test_layer_settings_cover_every_parameter() -> None:
    full = Parameters.model_validate(
        {
            "name": "n",
            "enabled": False,
            "window": "1h",
            "cooldown": "0s",
            "hysteresis": 0,
            "move": {"abs": 1, "log_odds": 2, "combine": "all", "floor": 0},
            "confirm": {"polls": 1, "for": "1m", "retain": 1, "ramp": 0.5},
            "volatility": {
                "z": 2,
                "floor": 0.01,
                "prior": 0.02,
                "half_life": "6h",
                "min_horizon": "5m",
            },
            "watch": {"min_liquidity": 1, "min_volume": 2, "max_spread": 1, "max_data_age": "1d"},
            "catch_up": "rebaseline",
            "severity": {"a": {}, "b": {"abs": 0.5}},
        }
    )
    settings = layer_settings(full)
    assert list(settings) == list(PARAMETER_NAMES)
    assert settings["window"] == 3600.0
    assert settings["confirm.for"] == 60.0
    assert settings["watch.max_data_age"] == 86400.0
    assert settings["volatility.half_life"] == 6 * 3600.0
    assert settings["volatility.min_horizon"] == 300.0
    assert settings["severity"] == (SeverityBand("a"), SeverityBand("b", abs_move=0.5))
    params = DetectionParams(**{PARAMETER_NAMES[k]: v for k, v in settings.items()})
    assert params.abs_move == 1.0
