"""The `rules check` table and the `rules explain` listing."""

from __future__ import annotations

from datetime import UTC, datetime

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset import (
    PARAMETER_NAMES,
    DetectionParams,
    RuleSet,
    SeverityBand,
    format_explain,
    format_ruleset,
    format_value,
    load_rules_text,
)

LONG_ID = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
RULES = f"""\
version: 1
defaults: {{window: 90m, enabled: true}}
tiers:
  bands:
    thin: {{below: 10000, confirm: {{polls: 3, for: 2m}}}}
    mid: {{from: 10000, below: 250000}}
    deep: {{from: 250000}}
categories: {{crypto: {{move: {{abs: 0.05}}}}}}
markets: {{"{LONG_ID}": {{enabled: false}}}}
"""


def test_ruleset_table() -> None:
    rules = load_rules_text(RULES, "r.yaml")
    assert format_ruleset(rules).splitlines() == [
        f"rules r.yaml  version {rules.version}",
        "3 tiers by liquidity, 1 category, 1 market (the first category in file order that "
        "matches wins)",
        "",
        "LAYER                     MATCHES                    SETS",
        "built-in                  every market               every parameter no layer below sets",
        "defaults                  every market               enabled=true  window=1h30m",
        "tier:thin                 liquidity [0, 10000)       confirm.polls=3  confirm.for=2m",
        "tier:mid                  liquidity [10000, 250000)  -",
        "tier:deep                 liquidity [250000, inf)    -",
        "category:crypto           category or tag 'crypto'   move.abs=0.05",
        "market:0xdd22472e55…0917  condition id               enabled=false",
        "subscription              subscription document      threshold → move.abs, window, "
        "cooldown",
    ]


def test_long_settings_wrap_under_their_column() -> None:
    every = "\n".join(
        [
            "version: 1",
            "defaults:",
            "  name: a_rather_long_rule_name",
            "  move: {abs: 0.05, log_odds: 0.5, combine: all, floor: 0.01}",
            "  confirm: {polls: 3, for: 2m, retain: 0.25}",
            "  watch: {min_liquidity: 5000, min_volume: 1000, max_spread: 0.05}",
        ]
    )
    lines = format_ruleset(load_rules_text(every)).splitlines()
    start = lines.index(next(line for line in lines if line.startswith("defaults")))
    assert all(len(line) <= 100 for line in lines)
    column = lines[start].index("name=")
    continued = lines[start + 1 : start + 3]
    assert all(line[:column].strip() == "" and line[column] != " " for line in continued)
    assert "watch.max_spread=0.05" in " ".join(lines)
    assert "0 tiers, 0 categories, 0 markets" in lines[1]


def test_explain_lists_every_parameter_with_its_layer() -> None:
    rules = load_rules_text(RULES, "r.yaml")
    snapshot = MarketSnapshot(
        market_id="0x1",
        question="q",
        yes_price=0.5,
        taken_at=datetime(2024, 1, 1, tzinfo=UTC),
        liquidity=10,
        tags=("Crypto",),
        cooldown_seconds=5.5,
    )
    resolved = rules.resolve(snapshot)
    lines = format_explain(resolved, "0x1").splitlines()
    assert lines[:7] == [
        "market    0x1",
        f"rules     version {rules.version}, rule_id {resolved.rule_id}",
        "tier      thin",
        "category  crypto",
        "layers    built-in, defaults, tier:thin, category:crypto, subscription",
        "",
        "PARAMETER               SET BY           VALUE",
    ]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[7:] if line[0] != " "}
    assert list(rows) == list(PARAMETER_NAMES)
    assert rows["window"] == ["defaults", "1h30m"]
    assert rows["enabled"] == ["defaults", "true"]
    assert rows["move.abs"] == ["category:crypto", "0.05"]
    assert rows["cooldown"] == ["subscription", "5.5s"]
    assert rows["confirm.polls"] == ["tier:thin", "3"]
    assert rows["confirm.for"] == ["tier:thin", "2m"]
    assert rows["volatility.half_life"] == ["built-in", "12h"]
    assert rows["volatility.min_horizon"] == ["built-in", "15m"]
    defaults = DetectionParams()
    assert rows["watch.max_data_age"] == [
        "built-in",
        format_value("watch.max_data_age", defaults.max_data_age_seconds),
    ]


def test_explain_without_tier_or_category() -> None:
    resolved = RuleSet.builtin().resolve(
        MarketSnapshot(market_id="m", question="q", yes_price=0.5, taken_at=datetime.now(UTC))
    )
    text = format_explain(resolved, "m")
    assert "tier      (none)\ncategory  (none)\nlayers    built-in\n" in text


def test_values_are_written_as_in_a_rules_file() -> None:
    assert format_value("window", 5400.0) == "1h30m"
    assert format_value("confirm.for", 0.0) == "0s"
    assert format_value("enabled", False) == "false"
    assert format_value("watch.min_liquidity", 250000.0) == "250000"
    assert format_value("move.abs", 0.035) == "0.035"
    assert format_value("move.combine", "all") == "all"
    bands = (SeverityBand("low"), SeverityBand("high", log_odds_move=1.5))
    assert format_value("severity", bands) == "low < high (log_odds 1.5)"
