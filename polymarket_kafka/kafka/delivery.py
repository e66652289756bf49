"""What the Kafka publisher reports and how it judges errors: its counters, the events it
gave up on, the classification of librdkafka's errors for the ledger, the dead-letter
headers and the one log line per event. Plain data and pure functions (no I/O)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException

from polymarket_kafka.histogram import Histogram
from polymarket_kafka.kafka.ledger import Entry, Failure
from polymarket_kafka.models import PolymarketEvent

__all__ = [
    "REFUSED_RECORD_CODES",
    "DeliveryStats",
    "FailedDelivery",
    "classify",
    "dead_letter_headers",
    "kafka_error",
    "log_event",
    "needs_new_producer",
]

logger = logging.getLogger("polymarket_kafka.kafka.publisher")

# Errors after which the producer itself is unusable (see the module docstring).
_NEW_PRODUCER_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.PRODUCER_FENCED,
    }
)
#: Errors that no retry cures because the record itself is refused (too large, invalid).
REFUSED_RECORD_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
    }
)
# Errors that no retry on the same topic will cure: the record, or the topic, is refused.
_PERMANENT_CODES = REFUSED_RECORD_CODES | frozenset(
    {
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
    }
)


@dataclass
class DeliveryStats:
    """Plain counters of the publisher (`ops.metrics` exports them at scrape time)."""

    published: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    #: Acknowledged on the dead-letter topic (not on the events topic).
    dead_lettered: int = 0
    producer_recreated: int = 0
    buffer_full_waits: int = 0
    #: Publishes that waited because `max_in_flight` events were pending.
    in_flight_waits: int = 0
    pending: int = 0
    #: From `publish` to the successful delivery report (count, sum and buckets).
    delivery_latency: Histogram = field(default_factory=Histogram)
    #: Brokers `UP` in the latest statistics of the current producer (0 before any).
    brokers_up: int = 0
    #: Confirmed Kafka outages (each logged once at WARNING).
    outages: int = 0
    #: Exactly-once delivery: transactions committed and aborted (each retried), and the
    #: detector state records committed with them.
    transactions_committed: int = 0
    transactions_aborted: int = 0
    state_records_committed: int = 0
    #: Events still pending when the publisher closed (logged at ERROR, maybe not in Kafka).
    unacknowledged_at_close: int = 0
    #: With a consumer group: events not committed when their partition moved to another
    #: instance (left to it: it detects them again from the committed state).
    handed_over: int = 0
    #: With a consumer group: partitions whose producer was fenced by a newer owner.
    fenced_partitions: int = 0

    @property
    def unacknowledged(self) -> int:
        """Events handed to the publisher that Kafka never acknowledged on the events topic:
        given up, dead-lettered, or still pending at close. Final once it has closed."""
        return self.failed + self.dead_lettered + self.unacknowledged_at_close


@dataclass(frozen=True)
class FailedDelivery:
    """An event the publisher gave up on: it was logged at ERROR and is NOT in Kafka."""

    event: PolymarketEvent
    reason: str
    attempts: int


def needs_new_producer(error: object) -> bool:
    return isinstance(error, KafkaError) and bool(
        error.fatal() or error.code() in _NEW_PRODUCER_CODES
    )


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The `KafkaError` a `KafkaException` carries (confluent-kafka puts it in `args[0]`)."""
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def classify(error: KafkaError) -> Failure:
    """How the ledger should treat a failed delivery or a refused `produce`."""
    if needs_new_producer(error):
        return Failure.PRODUCER
    if error.code() in _PERMANENT_CODES:
        return Failure.PERMANENT
    return Failure.RETRIABLE


_JSON = b"application/json"


def dead_letter_headers(topic: str, entry: Entry) -> list[tuple[str, str | bytes | None]]:
    """Why an event is on the dead-letter topic, for the operator who reads it there."""
    return [
        ("dlq-reason", (entry.dead_letter or "").encode()),
        ("dlq-original-topic", topic.encode()),
        ("dlq-attempts", str(entry.topic_attempts).encode()),
    ]


def log_event(
    level: int, message: str, entry: Entry, reason: str, attempts: int, suffix: str = ""
) -> None:
    """One line about one event, with its context fields."""
    event = entry.event
    logger.log(
        level,
        "%s: event_id=%s market %s after %d attempt(s): %s%s",
        message,
        event.event_id,
        event.market_id,
        attempts,
        reason,
        suffix,
        extra={
            "market_id": event.market_id,
            "event_id": event.event_id,
            "rule": event.rule,
            "attempt": attempts,
        },
    )
