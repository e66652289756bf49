"""The consumer contract: the committed JSON Schema of the Kafka value cannot drift from the
model, real events validate against it, and what the model refuses it refuses too."""

from __future__ import annotations

import json
import re
import runpy
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, field_serializer

from polymarket_kafka.event_schema import (
    SCHEMA_ID,
    _WireSchema,
    event_json_schema,
    main,
    render_schema,
)
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.replay.engine import replay
from polymarket_kafka.replay.history import PricePoint, PriceSeries, ReplayMarket
from polymarket_kafka.ruleset import load_rules
from tests.factories import MARKET, T0, make_event

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "polymarket-event.schema.json"

# jsonschema checks `date-time` only with an optional extra installed: check it here instead.
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_aware_iso_datetime(value: object) -> bool:
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


def wire(event: PolymarketEvent) -> dict[str, Any]:
    """The Kafka value of `event`, decoded as a consumer does."""
    decoded = json.loads(event.to_kafka_value().decode("utf-8"))
    assert isinstance(decoded, dict)
    return decoded


def errors(validator: Draft202012Validator, value: object) -> list[str]:
    return [error.message for error in validator.iter_errors(value)]


# --- the committed file -------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_schema(), (
        "schemas/polymarket-event.schema.json is stale: "
        "python -m polymarket_kafka.event_schema > schemas/polymarket-event.schema.json"
    )


def test_schema_describes_the_wire_format() -> None:
    schema = event_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID
    assert schema["title"] == "polymarket-kafka event"
    for words in ("`polymarket-events`", "`market_id`", "`event_id`", "at least once"):
        assert words in schema["description"]
    assert schema["additionalProperties"] is False
    fields = PolymarketEvent.model_fields
    assert list(schema["properties"]) == list(fields)
    assert schema["required"] == list(fields)  # every key is always written
    for name, field in fields.items():
        assert schema["properties"][name]["description"] == field.description, name
    properties = schema["properties"]
    for name in ("timestamp", "baseline_timestamp"):
        assert properties[name] | {"description": "", "title": ""} == {
            "type": "string",
            "format": "date-time",
            "description": "",
            "title": "",
        }
    assert {"type": "string", "format": "date-time"} in properties["published_at"]["anyOf"]
    assert properties["event_id"]["format"] == "uuid"
    assert properties["signal_type"]["const"] == "polymarket"


def test_other_serializers_keep_their_own_schema() -> None:
    """Only the model's ISO-8601 serializer is replaced by the validation schema."""

    class Counted(BaseModel):
        items: list[str]

        @field_serializer("items")
        def _count(self, items: list[str]) -> int:
            return len(items)

    schema = Counted.model_json_schema(mode="serialization", schema_generator=_WireSchema)
    assert schema["properties"]["items"]["type"] == "integer"
    assert schema["required"] == ["items"]


def test_module_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    main()
    assert capsys.readouterr().out == render_schema()


def test_module_runs_as_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    sys.modules.pop("polymarket_kafka.event_schema", None)
    try:
        runpy.run_module("polymarket_kafka.event_schema", run_name="__main__")
    finally:
        sys.modules.pop("polymarket_kafka.event_schema", None)
    assert json.loads(capsys.readouterr().out)["$id"] == SCHEMA_ID


# --- real events validate -----------------------------------------------------------------


def test_event_with_optional_fields_null_validates(validator: Draft202012Validator) -> None:
    value = wire(make_event())
    assert value["published_at"] is None and value["severity"] is None
    assert errors(validator, value) == []


def test_event_with_every_optional_field_set_validates(validator: Draft202012Validator) -> None:
    value = wire(
        make_event(
            published_at=T0 + timedelta(seconds=1),
            volume=1_234_567.5,
            liquidity=0.0,
            severity="extreme",
            rules_version="b52c7faa22da",
            rule_id="3f2a9c0d1e4b",
            final=True,
            resolution="yes",
            rule="market_closed",
            yes_price=1.0,
            no_price=0.0,
            price_change=1.0,
            abs_price_change=1.0,
            catch_up=True,
            gap_seconds=36_000.0,
            price_source="ws",
            price_age_seconds=0.25,
        )
    )
    assert all(v is not None for v in value.values())
    assert errors(validator, value) == []


def test_events_built_by_the_detector_validate(validator: Draft202012Validator) -> None:
    """The service's own path (Detector -> build_event) under rules/default.yaml."""
    # Two flat days first: a market not seen before is judged against a prior volatility.
    prices = [0.30] * 48 + [0.45, 0.46, 0.47, 0.25, 0.24, 0.24]
    series = PriceSeries(
        name="s",
        source="test",
        points=tuple(PricePoint(T0 + timedelta(hours=i), p) for i, p in enumerate(prices)),
    )
    market = ReplayMarket(market_id=MARKET, question="Will it?", liquidity=50_000.0)
    events = replay(series, market, load_rules(ROOT / "rules" / "default.yaml")).events
    assert len(events) >= 2
    published = [e.model_copy(update={"published_at": datetime.now(UTC)}) for e in events]
    for event in [*events, *published]:
        assert errors(validator, wire(event)) == []


# --- what the model refuses, the schema refuses -------------------------------------------


def violations(validator: Draft202012Validator, value: object) -> list[tuple[str, str]]:
    """(where, which schema keyword) of each error: jsonschema's API, unlike its wording."""
    found = []
    for error in validator.iter_errors(value):
        keyword = str(error.validator)
        if keyword == "format":
            keyword = f"format {error.validator_value}"
        found.append(("/".join(map(str, error.absolute_path)), keyword))
    return found


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"partner_id": "x"}, ("", "additionalProperties")),
        ({"market_id": None}, ("market_id", "type")),
        ({"timestamp": None}, ("timestamp", "type")),
        ({"timestamp": "yesterday"}, ("timestamp", "format date-time")),
        ({"timestamp": "2024-11-06T01:00:00"}, ("timestamp", "format date-time")),
        ({"event_id": "not-a-uuid"}, ("event_id", "format uuid")),
        ({"yes_price": 1.5}, ("yes_price", "maximum")),
        ({"signal_type": "ohlcv"}, ("signal_type", "const")),
        ({"direction": "sideways"}, ("direction", "enum")),
        ({"market_id": ""}, ("market_id", "minLength")),
        ({"final": "yes"}, ("final", "type")),
        ({"resolution": "maybe"}, ("resolution", "anyOf")),
    ],
)
def test_invalid_values_are_rejected(
    validator: Draft202012Validator, change: dict[str, object], complaint: tuple[str, str]
) -> None:
    value = wire(make_event()) | change
    assert violations(validator, value) == [complaint]


@pytest.mark.parametrize("missing", ["event_id", "market_id", "yes_price", "rule", "severity"])
def test_a_missing_field_is_rejected(validator: Draft202012Validator, missing: str) -> None:
    value = wire(make_event())
    del value[missing]
    (error,) = validator.iter_errors(value)
    assert error.validator == "required"
    assert set(error.validator_value) - set(error.instance) == {missing}


# --- the README documents every field -----------------------------------------------------


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## For consumers of the topic\n", 1)[1].split("\n## ", 1)[0]


def test_readme_documents_every_field() -> None:
    section = readme_section()
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert documented == list(PolymarketEvent.model_fields)
    for words in ("schemas/polymarket-event.schema.json", "`event_id`", "content-type"):
        assert words in section


def test_readme_example_event_is_valid(validator: Draft202012Validator) -> None:
    (example,) = re.findall(r"```json\n(.*?)```", readme_section(), flags=re.DOTALL)
    value = json.loads(example)
    assert errors(validator, value) == []
    assert PolymarketEvent.model_validate(value).to_kafka_value() == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
