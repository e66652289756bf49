"""The committed consumer schema accepts what actually reaches the topic: every event the
embedded demo reads back from a real broker validates against it."""

from __future__ import annotations

import io
import json

import pytest
from jsonschema import Draft202012Validator

from polymarket_kafka.testing.demo import run_demo
from tests.unit.test_event_schema import FORMATS, SCHEMA_FILE

pytestmark = [pytest.mark.broker, pytest.mark.anyio]


async def test_every_event_the_demo_reads_back_matches_the_schema(anyio_backend: str) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema, format_checker=FORMATS)
    out = io.StringIO()
    stats, read_back = await run_demo(interval_seconds=0.01, out=out, handle_signals=False)
    values = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(values) == read_back == stats.events_acknowledged > 0
    for value in values:
        assert [e.message for e in validator.iter_errors(value)] == [], value
    # Real events set the optional fields (tests/unit/test_event_schema.py covers them null).
    assert all(v["published_at"] and v["severity"] and v["liquidity"] for v in values)
