"""The librdkafka producer configuration, and keeping the SASL password out of sight."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from polymarket_kafka.config import ConfigError, KafkaConfig
from polymarket_kafka.kafka.publisher import (
    open_kafka_publisher,
    producer_config,
    redacted_producer_config,
)

PASSWORD = "s3cr3t-Pa55w0rd-do-not-log"

#: The specification's section 8, value for value, plus the murmur2 partitioner (so that Java
#: and kafka-python clients agree with us on key -> partition).
COMMON = {
    "bootstrap.servers": "broker-1:9093,broker-2:9093",
    "client.id": "pm-test",
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "zstd",
    "batch.num.messages": 10000,
    "linger.ms": 10,
    "queue.buffering.max.kbytes": 32768,
    "delivery.timeout.ms": 60000,
    "message.max.bytes": 5242880,
    "partitioner": "murmur2_random",
}
SASL_KEYS = {"sasl.mechanisms", "sasl.username", "sasl.password"}


def kafka_config(protocol: str, **overrides: Any) -> KafkaConfig:
    values: dict[str, Any] = {
        "bootstrap_servers": "broker-1:9093,broker-2:9093",
        "client_id": "pm-test",
        "security_protocol": protocol,
    }
    if protocol.startswith("SASL_"):
        values |= {"sasl_mechanisms": "SCRAM-SHA-512", "sasl_username": "svc-pm"}
        values["sasl_password"] = PASSWORD
    return KafkaConfig(**(values | overrides))


def test_the_default_client_id_is_the_specifications() -> None:
    assert producer_config(KafkaConfig())["client.id"] == "polymarket-kafka-producer"


def test_plaintext_has_the_delivery_guarantees_and_no_credentials() -> None:
    conf = producer_config(kafka_config("PLAINTEXT"))
    assert conf == COMMON | {"security.protocol": "PLAINTEXT"}
    assert redacted_producer_config(kafka_config("PLAINTEXT")) == conf


def test_ssl_adds_only_the_protocol() -> None:
    conf = producer_config(kafka_config("SSL"))
    assert conf == COMMON | {"security.protocol": "SSL"}
    assert not SASL_KEYS & conf.keys()


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_passes_the_credentials_to_the_producer_only(protocol: str) -> None:
    config = kafka_config(protocol)
    conf = producer_config(config)
    assert conf == COMMON | {
        "security.protocol": protocol,
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "svc-pm",
        "sasl.password": PASSWORD,
    }
    redacted = redacted_producer_config(config)
    assert redacted == conf | {"sasl.password": "***"}
    assert PASSWORD not in repr(redacted)
    assert PASSWORD not in repr(config)
    assert conf["sasl.password"] == PASSWORD  # redacting did not touch the real config


@pytest.mark.parametrize("missing", ["sasl_username", "sasl_password"])
def test_sasl_without_credentials_is_a_config_error(missing: str) -> None:
    config = kafka_config("SASL_SSL", **{missing: ""})
    with pytest.raises(ConfigError, match=f"KAFKA_{missing.upper()}"):
        producer_config(config)


class RecordingProducer:
    """Accepts everything, delivers nothing; remembers the configuration it was built with."""

    configs: list[dict[str, object]] = []

    def __init__(self, conf: dict[str, object]) -> None:
        self.configs.append(conf)

    def produce(self, topic: str, **kwargs: Any) -> None:
        raise AssertionError("nothing is published in this test")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        pass


@pytest.mark.anyio
async def test_the_publisher_never_logs_the_password(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    RecordingProducer.configs = []
    config = kafka_config("SASL_SSL")
    async with open_kafka_publisher(config, producer_factory=RecordingProducer) as publisher:
        assert PASSWORD not in repr(publisher)
    (conf,) = RecordingProducer.configs
    assert conf["sasl.password"] == PASSWORD  # the producer does get it
    assert caplog.records, "the publisher logs its (redacted) configuration"
    assert any("sasl.password" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
