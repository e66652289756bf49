"""JSON Schema of the Kafka value, generated from `models.PolymarketEvent`: the contract for
the teams that consume the topic.

It describes what the service *writes* (pydantic's serialization mode), and tightens that
mode where it would describe the wire format less precisely than the model does:

* every key is required: `to_kafka_value()` always writes every field, an unknown optional
  value as `null` (so a consumer may read any key without checking it exists);
* a timestamp is an ISO-8601 `date-time` string (the model's serializer is typed `str | None`,
  which would make the required timestamps nullable and drop their format);
* `event_id` has the `uuid` format.

Field descriptions come from the model's `Field(description=...)`. Regenerate the committed
copy with

    python -m polymarket_kafka.event_schema > schemas/polymarket-event.schema.json

a unit test fails while the committed copy differs from the generated one.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from polymarket_kafka.models import PolymarketEvent

__all__ = ["SCHEMA_ID", "event_json_schema", "main", "render_schema"]

SCHEMA_ID = "urn:polymarket-kafka:polymarket-event:v1"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TITLE = "polymarket-kafka event"
_DESCRIPTION = (
    "The value of every message on the `polymarket-events` topic (the name is "
    "`{KAFKA_TOPIC_PREFIX}{KAFKA_TOPIC}`): one conviction change in one Polymarket market, as "
    "UTF-8 JSON. The message key is `market_id` (UTF-8), so the events of one market keep "
    "their order on one partition; headers: `event_id` (the same UUID) and `content-type: "
    "application/json`. Delivery is at least once: deduplicate on `event_id`, which a re-sent "
    "event keeps. With durable state and KAFKA_DELIVERY=exactly_once the events are written in "
    "Kafka transactions: read with isolation.level=read_committed to see each committed event "
    "once and never one of an aborted transaction. Every timestamp is UTC, ISO-8601."
)
_FORMATS = {"event_id": "uuid"}


class _WireSchema(GenerateJsonSchema):
    """Serialization mode, with every field required and timestamps as `date-time`."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        return True

    def ser_schema(
        self,
        schema: core_schema.SerSchema
        | core_schema.IncExSeqSerSchema
        | core_schema.IncExDictSerSchema,
    ) -> JsonSchemaValue | None:
        # The ISO-8601 serializer writes a datetime as the text its validation schema already
        # describes (`date-time`): fall back to that instead of the serializer's `str | None`.
        if schema.get("function") is PolymarketEvent._iso:
            return None
        return super().ser_schema(schema)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the Kafka value (one `PolymarketEvent`)."""
    generated = PolymarketEvent.model_json_schema(
        mode="serialization", schema_generator=_WireSchema
    )
    for name, value in _FORMATS.items():
        generated["properties"][name]["format"] = value
    return {
        "$schema": _DIALECT,
        "$id": SCHEMA_ID,
        **generated,
        "title": _TITLE,
        "description": _DESCRIPTION,
    }


def render_schema() -> str:
    """The schema as the committed `schemas/polymarket-event.schema.json` holds it."""
    return json.dumps(event_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render_schema())


if __name__ == "__main__":
    main()
