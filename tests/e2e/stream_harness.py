"""The streaming service assembled for end-to-end tests, in process or as a real process.

`streaming_service` runs `run_service` the way `testing.demo.run_demo` assembles it -- the
real REST client and poller against the fake Polymarket, the real market-channel client
(`open_market_stream`) against a `FakeMarketChannel`, the real Kafka publisher on a real
broker -- with the wall clock, until the test leaves the block. The coordinator is the real
one, counting the poll stage's ticks (`CountingCoordinator`: a tick on which the stream serves
every market asks REST nothing and records no poll cycle). Unless a test sets
`ws_silence_seconds`, connections never go silent (quiet markets stay on the stream).
`Ticker` keeps a channel's books busy (no silence while it runs); `ServiceProcess` runs
`polymarket-kafka run` as a real process and reads its stderr in a thread, so the pipe never
fills up.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.polymarket.stream import MarketStream, open_market_stream
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.ports import SubscriptionStore
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stages import Stopper
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.service.streaming import Plan, StreamCoordinator
from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import read_events
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore

__all__ = [
    "IMMEDIATE_RULES_YAML",
    "CountingCoordinator",
    "ServiceProcess",
    "Streaming",
    "Ticker",
    "operations",
    "read_back",
    "streaming_service",
]

#: Every move of the built-in thresholds fires on its first observation, judged by the
#: thresholds alone (no confirmation poll, no volatility test); the 10-minute cooldown stays,
#: so each market reports one move per test.
IMMEDIATE_RULES_YAML = "version: 1\ndefaults:\n  confirm: {polls: 1}\n  volatility: {z: 0}\n"

#: How long any awaited condition may take on a busy machine.
WAIT_SECONDS = 20.0
#: `ws_silence_seconds` of the tests that do not test silence (the highest allowed).
NEVER_SILENT_SECONDS = 3600.0


class CountingCoordinator(StreamCoordinator):
    """The real coordinator; it also counts the poll stage's ticks. `after_poll` ends every
    tick once, whether REST was asked (a poll cycle) or not (the stream served everything)."""

    ticks = 0

    def after_poll(
        self,
        subscriptions: Collection[PolymarketSubscription],
        plan: Plan,
        snapshots: Sequence[MarketSnapshot],
        clock: Callable[[], datetime],
    ) -> list[MarketSnapshot]:
        sent = super().after_poll(subscriptions, plan, snapshots, clock)
        self.ticks += 1
        return sent


@dataclass
class Streaming:
    """A running streaming service and what it published (in publish order)."""

    server: FakePolymarketServer
    channel: FakeMarketChannel
    coordinator: CountingCoordinator
    stats: ServiceStats
    published: list[PolymarketEvent] = field(default_factory=list)

    @property
    def stream(self) -> MarketStream:
        return self.coordinator.stream

    def rest_polls(self) -> int:
        """Batch price requests the fake Polymarket answered so far."""
        return self.server.request_count("POST /midpoints")

    def events(self, market_id: str) -> list[PolymarketEvent]:
        return [e for e in self.published if e.market_id == market_id]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail naming `what` after `WAIT_SECONDS`."""
        try:
            with anyio.fail_after(WAIT_SECONDS):
                while not condition():  # noqa: ASYNC110 (the state of threads and of the service)
                    await anyio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"not within {WAIT_SECONDS:g}s: {what}") from None

    @property
    def tick_count(self) -> int:
        """Poll-stage ticks ended so far (with or without a REST request)."""
        return self.coordinator.ticks

    async def until_live(self, *market_ids: str) -> None:
        """Until the stream serves these markets, and a whole tick was planned since (no
        tick planned while they were on REST fallback is still in flight)."""
        wanted = set(market_ids)
        await self.until(lambda: wanted <= self.stream.live_markets(), f"{wanted} live")
        await self.ticks(2)

    async def ticks(self, count: int) -> None:
        """Until `count` more poll-stage ticks have ended."""
        target = self.coordinator.ticks + count
        await self.until(lambda: self.coordinator.ticks >= target, f"{count} more ticks")


@asynccontextmanager
async def streaming_service(
    server: FakePolymarketServer,
    channel: FakeMarketChannel,
    *,
    bootstrap_servers: str,
    topic: str,
    store: SubscriptionStore | None = None,
    poll_interval_seconds: float = 0.05,
    subscription_refresh_seconds: float = 3600.0,
    **ws: Any,
) -> AsyncIterator[Streaming]:
    """The service streaming from `channel`, polling `server`, publishing to `topic`.

    `ws` sets `PolymarketConfig.ws_*` options (`ws_silence_seconds`: never silent unless
    given). On exit the service is stopped, drains, and the publisher flushes: every event in
    `Streaming.published` was acknowledged by Kafka.
    """
    ws.setdefault("ws_silence_seconds", NEVER_SILENT_SECONDS)
    polymarket = server.polymarket_config(max_retries=0, ws_url=channel.url, **ws)
    kafka = KafkaConfig(bootstrap_servers=bootstrap_servers, topic=topic)
    store = store or InMemorySubscriptionStore(seed=[m.condition_id for m in server.markets])
    rules = RulesHolder(load_rules_text(IMMEDIATE_RULES_YAML, "immediate.yaml"))
    settings = ServiceSettings(
        poll_interval_seconds=poll_interval_seconds,
        subscription_refresh_seconds=subscription_refresh_seconds,
        handle_signals=False,
    )
    stopper = Stopper()
    async with (
        open_polymarket_client(polymarket) as client,
        open_kafka_publisher(kafka, grace_seconds=10.0) as publisher,
        open_market_stream(polymarket, clock=now_utc) as stream,
    ):
        poller = MarketPoller(client, metadata_refresh_seconds=polymarket.metadata_refresh_seconds)
        coordinator = CountingCoordinator(
            stream,
            poller,
            reconcile_seconds=polymarket.ws_reconcile_seconds,
            tolerance=polymarket.ws_tolerance,
        )
        running = Streaming(server, channel, coordinator, ServiceStats())

        async def on_published(event: PolymarketEvent) -> None:
            running.published.append(event)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                partial(
                    run_service,
                    store=store,
                    poller=poller,
                    publisher=publisher,
                    settings=settings,
                    clock=now_utc,
                    rules=rules,
                    stats=running.stats,
                    stopper=stopper,
                    on_published=on_published,
                    stream=coordinator,
                )
            )
            try:
                yield running
            finally:
                stopper.stop()
        assert running.stats.events_undelivered == 0
        assert await publisher.flush(10) == 0


async def read_back(bootstrap_servers: str, topic: str, expected: int) -> list[PolymarketEvent]:
    """Every event on `topic` (waiting for `expected` of them, then half a second more)."""
    read = partial(read_events, expected=expected, timeout=WAIT_SECONDS, linger=0.5)
    messages = await anyio.to_thread.run_sync(read, bootstrap_servers, topic)
    return [PolymarketEvent.model_validate_json(m.value or b"") for m in messages]


def operations(channel: FakeMarketChannel) -> list[tuple[int, str, frozenset[str]]]:
    """(connection id, operation, assets) of every live subscription change clients sent on
    the open connections, in order per connection."""
    found = []
    for connection in channel.connections():
        for text in connection.messages:
            try:
                message = json.loads(text)
            except ValueError:
                continue
            if isinstance(message, dict) and "operation" in message:
                assets = frozenset(message.get("assets_ids", ()))
                found.append((connection.id, str(message["operation"]), assets))
    return found


class Ticker:
    """Pushes every asset's current best bid and ask on the channel every `interval` seconds
    (a `price_change` that moves nothing), as a live market does; `quote` changes them. A
    connection does not go silent while it runs (unless the channel is frozen).

    Run `run` in a task group. While the channel is frozen the pushes reach no one, but they
    still set the channel's books (what a later subscription's dump reports)."""

    def __init__(self, channel: FakeMarketChannel, interval: float = 0.1) -> None:
        self._channel = channel
        self._interval = interval
        self._quotes: dict[str, tuple[float, float]] = {}

    def quote(self, asset_id: str, best_bid: float, best_ask: float) -> None:
        self._quotes[asset_id] = (best_bid, best_ask)
        self._channel.move(asset_id, best_bid, best_ask)

    async def run(self) -> None:
        while True:
            for asset_id, (bid, ask) in list(self._quotes.items()):
                await anyio.to_thread.run_sync(partial(self._channel.move, asset_id, bid, ask))
            await anyio.sleep(self._interval)


_LISTENING = re.compile(r"health/metrics on http://([0-9.]+):(\d+)")


class ServiceProcess:
    """`python -m polymarket_kafka run` with `env`; stderr collected line by line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="service-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self._lines.append(line)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def base_url(self, timeout: float = 30.0) -> str:
        """The URL of the health/metrics server, once the service logged it is listening."""
        end = time.monotonic() + timeout
        while (found := _LISTENING.search(self.stderr)) is None:
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(f"the service exited early:\n{self.stderr}")
            if time.monotonic() > end:
                raise AssertionError(f"the service never listened:\n{self.stderr}")
            time.sleep(0.05)
        return f"http://{found[1]}:{found[2]}"

    @classmethod
    @contextmanager
    def running(cls, env: dict[str, str]) -> Iterator[ServiceProcess]:
        """The service, killed on the way out if still running."""
        process = subprocess.Popen(
            [sys.executable, "-m", "polymarket_kafka", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        service = cls(process)
        try:
            yield service
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            service._reader.join(timeout=5)
            assert process.stderr is not None
            process.stderr.close()
