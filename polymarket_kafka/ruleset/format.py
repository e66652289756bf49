"""Human-readable views of rules: the layer table of `rules check` and `rules explain`.

Values are shown the way they are written in a rules file (durations as `1h30m`, booleans as
`true`), so what the tools print can be pasted back into the file.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from polymarket_kafka.ruleset.compiled import SUBSCRIPTION, RuleSet
from polymarket_kafka.ruleset.durations import format_duration
from polymarket_kafka.ruleset.params import BUILT_IN, PARAMETER_NAMES, ResolvedRule, SeverityBand

__all__ = ["DURATION_KEYS", "format_explain", "format_ruleset", "format_value"]

#: Dotted parameters holding seconds, written as durations.
DURATION_KEYS = frozenset(
    {
        "window",
        "cooldown",
        "confirm.for",
        "watch.max_data_age",
        "volatility.half_life",
        "volatility.min_horizon",
    }
)

_WIDTH = 100
_SHORT_ID = 19  # "0x" + 10 hex + "…" + 4 hex: enough to recognise a condition id


def format_value(dotted: str, value: Any) -> str:
    """One parameter value as it would be written in a rules file."""
    if dotted in DURATION_KEYS:
        return format_duration(float(value))
    if dotted == "severity":
        return _severity(value)
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def _severity(bands: Iterable[SeverityBand]) -> str:
    shown = []
    for band in bands:
        thresholds = [
            f"{label} {_scalar(value)}"
            for label, value in (("abs", band.abs_move), ("log_odds", band.log_odds_move))
            if value is not None
        ]
        shown.append(f"{band.name} ({', '.join(thresholds)})" if thresholds else band.name)
    return " < ".join(shown)


def _short(label: str) -> str:
    kind, _, name = label.partition(":")
    if kind == "market" and len(name) > _SHORT_ID:
        return f"{kind}:{name[:12]}…{name[-4:]}"
    return label


def _count(count: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{count} {noun if count == 1 else plural}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the last column wraps under itself to stay within _WIDTH."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    indent = sum(widths) + 2 * len(widths)
    lines = []
    for row in (header, *rows):
        lead = "".join(cell.ljust(width + 2) for cell, width in zip(row, widths, strict=False))
        wrapped = textwrap.wrap(row[-1], max(_WIDTH - indent, 30)) or [""]
        lines.append((lead + wrapped[0]).rstrip())
        lines.extend(" " * indent + more for more in wrapped[1:])
    return lines


def format_ruleset(rules: RuleSet) -> str:
    """A compact table of the compiled rules: one row per layer, what it matches, and the
    parameters it sets (`rules check`). No trailing newline, ready for `print`."""
    layers = rules.layers
    kinds = [layer.label.partition(":")[0] for layer in layers]
    summary = (
        _count(kinds.count("tier"), "tier")
        + (f" by {rules.tiers_by}" if rules.tiers_by else "")
        + f", {_count(kinds.count('category'), 'category')}"
        + f", {_count(kinds.count('market'), 'market')}"
    )
    rows = [[BUILT_IN, "every market", "every parameter no layer below sets"]]
    for layer in layers:
        sets = [f"{key}={format_value(key, value)}" for key, value in layer.settings.items()]
        rows.append([_short(layer.label), layer.matcher, "  ".join(sets) or "-"])
    rows.append([SUBSCRIPTION, "subscription document", "threshold → move.abs, window, cooldown"])
    lines = [
        f"rules {rules.source}  version {rules.version}",
        f"{summary} (the first category in file order that matches wins)",
        "",
        *_table(["LAYER", "MATCHES", "SETS"], rows),
    ]
    return "\n".join(lines)


def format_explain(resolved: ResolvedRule, market_id: str) -> str:
    """Every parameter in force for one market, the layer that set it and its value
    (`rules explain`). The value comes last so a long severity list can wrap. No trailing
    newline."""
    params = resolved.params
    rows = [
        [
            dotted,
            resolved.sources.get(dotted, BUILT_IN),
            format_value(dotted, getattr(params, attribute)),
        ]
        for dotted, attribute in PARAMETER_NAMES.items()
    ]
    lines = [
        f"market    {market_id}",
        f"rules     version {resolved.rules_version}, rule_id {resolved.rule_id}",
        f"tier      {resolved.tier or '(none)'}",
        f"category  {resolved.category or '(none)'}",
        f"layers    {', '.join(resolved.layers)}",
        "",
        *_table(["PARAMETER", "SET BY", "VALUE"], rows),
    ]
    return "\n".join(lines)
