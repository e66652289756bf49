"""The committed files under rules/: they load, and cannot drift from the code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset import PARAMETER_NAMES, DetectionParams, format_value, load_rules
from polymarket_kafka.ruleset.jsonschema import main, render_schema, rules_json_schema

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yaml"))


def test_schema_json_is_current() -> None:
    committed = (RULES_DIR / "schema.json").read_text(encoding="utf-8")
    assert committed == render_schema(), (
        "rules/schema.json is stale: python -m polymarket_kafka.ruleset.jsonschema "
        "> rules/schema.json"
    )


def test_schema_describes_what_may_be_written() -> None:
    schema = rules_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["title"] == "polymarket-kafka detection rules"
    assert schema["required"] == ["version"]
    assert "null" not in json.dumps(schema)  # omitted keys are absent, never null
    for name, definition in {"<root>": schema, **schema["$defs"]}.items():
        assert definition["additionalProperties"] is False, name
    parameters = schema["$defs"]["Parameters"]["properties"]
    assert {key.split(".")[0] for key in PARAMETER_NAMES} == set(parameters)
    window = parameters["window"]
    assert window["type"] == "string" and window["pattern"].startswith("^")
    assert "Built-in default" in window["description"]


def test_jsonschema_module_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    main()
    assert capsys.readouterr().out == render_schema()


@pytest.mark.parametrize("path", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_every_rules_file_loads(path: Path) -> None:
    rules = load_rules(path)
    assert rules.version
    assert path.read_text(encoding="utf-8").startswith(
        "# yaml-language-server: $schema=./schema.json\n"
    )


def test_default_rules_exist_with_tiers_and_categories() -> None:
    rules = load_rules(RULES_DIR / "default.yaml")
    assert rules.tiers_by == "liquidity"
    labels = {layer.label for layer in rules.layers}
    assert {"tier:thin", "tier:standard", "tier:deep"} <= labels
    assert {f"category:{c}" for c in ("politics", "crypto", "sports")} <= labels


def test_default_rules_spell_out_the_builtin_defaults() -> None:
    """`defaults` writes every parameter, equal to its built-in default (tuned together)."""
    rules = load_rules(RULES_DIR / "default.yaml")
    plain = MarketSnapshot(market_id="m", question="q", yes_price=0.5, taken_at=datetime.now(UTC))
    resolved = rules.resolve(plain)
    assert resolved.params == DetectionParams()
    assert set(resolved.sources.values()) == {"defaults"}


def test_readme_documents_every_parameter_with_its_builtin_default() -> None:
    readme = (RULES_DIR / "README.md").read_text(encoding="utf-8")
    defaults = DetectionParams()
    for dotted, attribute in PARAMETER_NAMES.items():
        row = f"| `{dotted}` | `{format_value(dotted, getattr(defaults, attribute))}` |"
        assert row in readme, f"rules/README.md: no row {row!r}"


def test_jsonschema_runs_as_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    import runpy
    import sys

    sys.modules.pop("polymarket_kafka.ruleset.jsonschema", None)
    try:
        runpy.run_module("polymarket_kafka.ruleset.jsonschema", run_name="__main__")
    finally:
        sys.modules.pop("polymarket_kafka.ruleset.jsonschema", None)
    assert json.loads(capsys.readouterr().out)["title"] == "polymarket-kafka detection rules"
