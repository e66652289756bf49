"""The librdkafka producer configuration, and the part of the producer the publisher uses.

Kept apart from the publisher (`kafka`), which re-exports everything here: this is plain
data about settings, with no threads and no event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, Message

from polymarket_kafka.config import KafkaConfig, require_sasl_credentials

__all__ = [
    "DELIVERY_TIMEOUT_MS",
    "PARTITIONER",
    "ProducerLike",
    "producer_config",
    "redacted_producer_config",
    "transactional_producer_config",
]

#: librdkafka's `delivery.timeout.ms` (the specification's 60 s): how long it tries to deliver
#: a message before reporting it timed out (the publisher then replaces the producer and
#: re-sends). An event pending for longer has failed at least once: readiness reports the
#: delivery as stalled.
DELIVERY_TIMEOUT_MS = 60_000

#: Key -> partition as the Java client and kafka-python compute it (murmur2), so every client
#: of the topic agrees where a market's events live; librdkafka's own default
#: (`consistent_random`, CRC32) sends the same key to a different partition.
PARTITIONER = "murmur2_random"


def producer_config(config: KafkaConfig) -> dict[str, object]:
    """The librdkafka configuration of the specification (section 8): acks=all, idempotence,
    zstd, its batching, queue, timeout and size settings; plus the murmur2 partitioner.

    SASL protocols add the mechanism and credentials (required: `ConfigError` otherwise); SSL
    adds only `security.protocol`. The result holds the SASL password: never log it, log
    `redacted_producer_config` instead.
    """
    conf: dict[str, object] = {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
        "batch.num.messages": 10_000,
        "linger.ms": 10,
        "queue.buffering.max.kbytes": 32768,
        "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
        "message.max.bytes": 5_242_880,
        "partitioner": PARTITIONER,
        "security.protocol": config.security_protocol,
    }
    require_sasl_credentials(config)
    if config.security_protocol.startswith("SASL_"):
        conf["sasl.mechanisms"] = config.sasl_mechanisms
        conf["sasl.username"] = config.sasl_username
        conf["sasl.password"] = config.sasl_password
    return conf


def transactional_producer_config(config: KafkaConfig) -> dict[str, object]:
    """`producer_config` plus `transactional.id` (`KafkaConfig.full_transactional_id`): the
    producer of exactly-once delivery. librdkafka's `transaction.timeout.ms` (60 s) stays:
    the broker aborts a transaction left open by a crashed instance after it, and at once
    when the next instance with the same id starts."""
    return {**producer_config(config), "transactional.id": config.full_transactional_id}


def redacted_producer_config(config: KafkaConfig) -> dict[str, object]:
    """`producer_config` with the SASL password replaced by `***`: safe to log."""
    conf = producer_config(config)
    if "sasl.password" in conf:
        conf["sasl.password"] = "***"
    return conf


class ProducerLike(Protocol):
    """The part of `confluent_kafka.Producer` the publisher uses (tests pass a fake)."""

    def produce(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def purge(
        self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True
    ) -> None: ...
