"""The rule engine: declarative YAML detection rules, compiled once, resolved per market.

    rules = load_rules("rules/default.yaml")      # RulesError lists every issue, with lines
    resolved = rules.resolve(snapshot)            # parameters + the layer that set each one

A rules file layers parameters (built-in → defaults → liquidity tier → category → market →
subscription, later wins); `rules/README.md` documents the format and every parameter.
"""

from polymarket_kafka.ruleset.compiled import Layer, RuleSet
from polymarket_kafka.ruleset.durations import format_duration, parse_duration
from polymarket_kafka.ruleset.errors import RuleIssue, RulesError
from polymarket_kafka.ruleset.format import format_explain, format_ruleset, format_value
from polymarket_kafka.ruleset.loader import (
    DEFAULT_RULES_PATH,
    default_rules_path,
    load_rules,
    load_rules_text,
)
from polymarket_kafka.ruleset.params import (
    BUILT_IN,
    PARAMETER_NAMES,
    STATE_PARAMETERS,
    DetectionParams,
    ResolvedRule,
    SeverityBand,
)

__all__ = [
    "BUILT_IN",
    "DEFAULT_RULES_PATH",
    "PARAMETER_NAMES",
    "STATE_PARAMETERS",
    "DetectionParams",
    "Layer",
    "ResolvedRule",
    "RuleIssue",
    "RuleSet",
    "RulesError",
    "SeverityBand",
    "default_rules_path",
    "format_duration",
    "format_explain",
    "format_ruleset",
    "format_value",
    "load_rules",
    "load_rules_text",
    "parse_duration",
]
