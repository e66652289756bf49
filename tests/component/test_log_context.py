"""Log lines carry their context fields (`market_id`, `event_id`, `rule`, `cycle`, `endpoint`,
`attempt`) from the real call sites, and the JSON format puts them on the line.

The service runs against the fake Polymarket server (real client, real poller) with a
recording publisher; the Kafka lines come from the publisher over the fake producer of
tests/unit/test_kafka_publisher_fake.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError

from polymarket_kafka.logs import JsonFormatter
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceSettings
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.factories import ONE_POLL_YAML
from tests.unit.test_kafka_publisher_fake import EVENTS, Factory, Sent, publisher_for

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
ONE_POLL = load_rules_text(ONE_POLL_YAML, "one-poll.yaml")


@dataclass
class RecordingPublisher:
    events: list[PolymarketEvent] = field(default_factory=list)

    async def publish(self, event: PolymarketEvent, state: object = None) -> None:
        self.events.append(event)


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=2, price=lambda i: 0.50) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka")


async def run(
    server: FakePolymarketServer, script: dict[int, Callable[[], None]]
) -> list[PolymarketEvent]:
    """Three hourly cycles, numbered from 1 like the service's; `script[n]` runs just before
    cycle n polls. Returns the published events."""
    cycle = 0

    def clock() -> datetime:
        nonlocal cycle
        cycle += 1
        script.get(cycle, lambda: None)()
        return T0 + timedelta(hours=cycle)

    publisher = RecordingPublisher()
    markets = [m.condition_id for m in server.markets]
    config = server.polymarket_config(max_retries=1, rate_limit_delay_ms=0)
    async with open_polymarket_client(config) as client:
        await run_service(
            store=InMemorySubscriptionStore(seed=markets),
            poller=MarketPoller(client, metadata_refresh_seconds=3600),
            publisher=publisher,
            settings=ServiceSettings(
                poll_interval_seconds=0.01, max_cycles=3, handle_signals=False
            ),
            clock=clock,
            rules=RulesHolder(ONE_POLL),
        )
    return publisher.events


def only(caplog: pytest.LogCaptureFixture, prefix: str) -> logging.LogRecord:
    (found,) = [r for r in caplog.records if r.getMessage().startswith(prefix)]
    return found


def context(record: logging.LogRecord) -> dict[str, Any]:
    line = json.loads(JsonFormatter().format(record))
    assert isinstance(line, dict)
    return {k: v for k, v in line.items() if k not in ("timestamp", "level", "logger", "message")}


async def test_a_conviction_change_names_market_event_and_rule(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    a = server.markets[0].condition_id
    (event,) = await run(server, {2: lambda: server.set_price(a, 0.70)})
    assert context(only(caplog, "conviction change")) == {
        "market_id": a,
        "event_id": event.event_id,
        "rule": "conviction_move",
    }


async def test_failures_name_cycle_endpoint_attempt_and_market(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    market = server.markets[1]
    # Cycle 1: a 503 is retried (max_retries=1), then a Cloudflare block fails the cycle.
    server.fail_next("/midpoints", 503)
    server.fail_next(
        "/midpoints", 403, body="<html>Cloudflare</html>", headers={"Content-Type": "text/html"}
    )
    # Cycle 2 on: the market has no order book any more, so it is skipped.
    events = await run(server, {2: lambda: server.remove_orderbook(market.yes_token_id)})
    assert events == []
    assert context(only(caplog, "POST /midpoints: HTTP 503")) == {
        "endpoint": "POST /midpoints",
        "attempt": 1,
    }
    failed = only(caplog, "poll cycle 1 failed")
    assert context(failed) == {"cycle": 1, "exc_info": failed.exc_text}
    # Each skipped market is logged once per cycle, with its reason, and nowhere else.
    mentions = [r for r in caplog.records if market.condition_id in r.getMessage()]
    assert [context(r) for r in mentions] == [
        {"cycle": 2, "market_id": market.condition_id, "skip_reason": "midpoint"},
        {"cycle": 3, "market_id": market.condition_id, "skip_reason": "midpoint"},
    ]
    assert all(" skipped market " in r.getMessage() for r in mentions)


async def test_kafka_retry_and_give_up_name_event_market_rule_and_attempt(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(sent: Sent) -> KafkaError | None:
        return KafkaError(KafkaError.NOT_ENOUGH_REPLICAS)

    event = EVENTS[0]
    async with publisher_for(Factory({"outcome": refuse}), max_attempts=2) as publisher:
        await publisher.publish(event)
        assert await publisher.flush(5) == 0
    expected = {"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule}
    retries = [
        context(r)
        for r in caplog.records
        if r.getMessage().startswith(f"delivery failed: event_id={event.event_id}")
    ]
    # One retry on the events topic, then one on the dead-letter topic (refused as well).
    assert retries == [{**expected, "attempt": 1}, {**expected, "attempt": 1}]
    assert context(only(caplog, "refused for good, routing to")) == {**expected, "attempt": 2}
    assert context(only(caplog, "event NOT delivered to")) == {**expected, "attempt": 2}
