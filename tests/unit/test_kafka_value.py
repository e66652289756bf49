"""`kafka.value.stamped_value`: the bytes of the stamped copy, without making the copy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.kafka.value import stamped_value
from polymarket_kafka.models import PolymarketEvent
from tests.factories import make_event

T = datetime(2024, 11, 6, 5, 30, 1, 123456, tzinfo=UTC)


def copied(event: PolymarketEvent, at: datetime) -> bytes:
    """What the publisher used to send: a stamped copy, serialised."""
    return event.model_copy(update={"published_at": at}).model_dump_json().encode()


#: Questions and rule names that try to look like the key being spliced, or to break out of
#: their string: quotes, backslashes, the key's own text, non-ASCII and control characters.
tricky_text = st.one_of(
    st.text(),
    st.sampled_from(
        [
            '"published_at":null',
            '\\"published_at\\":null',
            'x", "published_at":null, "y": "',
            "\\",
            '\\"',
            "published_at",
            "\u2028\x00\x1f",
        ]
    ),
)


@given(
    question=tricky_text,
    rule=tricky_text.filter(bool),
    severity=st.none() | tricky_text,
    microsecond=st.integers(0, 999_999),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_the_same_bytes_as_the_stamped_copy(
    question: str, rule: str, severity: str | None, microsecond: int, offset_minutes: int
) -> None:
    event = make_event(question=question, rule=rule, severity=severity)
    # The clock gives UTC; any aware time is written as given, like the copy writes it.
    at = T.replace(microsecond=microsecond).astimezone(timezone(timedelta(minutes=offset_minutes)))
    value = stamped_value(event, at)
    assert value == copied(event, at)
    assert json.loads(value)["published_at"] == at.isoformat()
    assert event.published_at is None  # the caller's event is not changed


def test_an_event_stamped_already_takes_the_copying_road() -> None:
    event = make_event(published_at=T - timedelta(seconds=5))
    assert stamped_value(event, T) == copied(event, T)
    assert json.loads(stamped_value(event, T))["published_at"] == T.isoformat()


def test_the_kafka_value_is_model_dump_json_as_bytes() -> None:
    event = make_event(question='Ünïcode ✓ "quoted" \\ back')
    assert event.to_kafka_value() == event.model_dump_json().encode("utf-8")
