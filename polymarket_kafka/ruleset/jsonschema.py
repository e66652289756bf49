"""JSON Schema of the rules file, generated from the pydantic models in `schema`.

Editors use it (the `# yaml-language-server: $schema=./schema.json` line of a rules file) for
completion and inline errors. Regenerate the committed copy with

    python -m polymarket_kafka.ruleset.jsonschema > rules/schema.json

a unit test fails while the committed copy differs from the generated one.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from polymarket_kafka.ruleset.schema import RulesDocument

__all__ = ["SCHEMA_ID", "main", "render_schema", "rules_json_schema"]

SCHEMA_ID = "urn:polymarket-kafka:rules:v1"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _FileSchema(GenerateJsonSchema):
    """The schema of what may be *written*: optional keys are simply absent, never null.

    The models type an omitted key as None, and refuse an explicit null; without this the
    schema would advertise `null` as a valid value and `default: null` everywhere.
    """

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def rules_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a rules file."""
    generated = RulesDocument.model_json_schema(by_alias=True, schema_generator=_FileSchema)
    return {"$schema": _DIALECT, "$id": SCHEMA_ID, **generated}


def render_schema() -> str:
    """The schema as the committed `rules/schema.json` holds it."""
    return json.dumps(rules_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render_schema())


if __name__ == "__main__":
    main()
