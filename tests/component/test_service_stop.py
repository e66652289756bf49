"""Every way the service stops ends in bounded time and counts what it lost.

The publisher is a Kafka that is down: it takes the first event (`publish` returns) but never
acknowledges it, and every later `publish` waits until cancelled (the in-flight bound is
reached). One poll cycle moves all four markets, so four events are detected with the event
channel holding one: one taken, one inside `publish`, the others queued or waiting to be
sent. Each stop path -- SIGTERM, SIGINT, `max_cycles`, a failing helper, a failing
publisher -- must end within the drain grace (`anyio.fail_after` is only the safety net),
account for every detected event exactly once, and leave a truthful last line
(`log_stopped`): nothing was acknowledged, so every detected event is NOT delivered.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta

import anyio
import pytest

from polymarket_kafka.models import MarketSnapshot, PolymarketEvent
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.service.pipeline import _detect, run_service
from polymarket_kafka.service.polling import Polled
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stages import LatestSubscriptions
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats, log_stopped
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.component.test_service import ONE_POLL, T0, ScriptedClock

pytestmark = pytest.mark.anyio

MARKETS = 4
#: The drain grace of the paths that drain: long enough to detect four snapshots, short
#: because every one of these runs waits for it to run out.
GRACE = 0.2
#: The grace of the failure paths: a failure must not wait for it at all.
NEVER = 3600.0
SAFETY_NET = 20


class NeverAcknowledges:
    """A Kafka that is down, following the `Publisher` contract: it takes the first event,
    which stays unacknowledged, then every `publish` waits until it is cancelled. `blocked`
    is set, and `on_blocked` called, when one starts waiting. With `error`, the waiting
    `publish` raises it once every other task is blocked too (the pipeline is full)."""

    def __init__(
        self, *, on_blocked: Callable[[], object] = lambda: None, error: Exception | None = None
    ) -> None:
        self.taken: list[PolymarketEvent] = []
        #: `publish` calls that did not return: the event is not the publisher's.
        self.interrupted = 0
        self.blocked = anyio.Event()
        self._on_blocked, self._error = on_blocked, error

    async def publish(self, event: PolymarketEvent, state: object = None) -> None:
        if not self.taken:
            self.taken.append(event)
            return
        try:
            self.blocked.set()
            self._on_blocked()
            if self._error is not None:
                await anyio.wait_all_tasks_blocked()
                raise self._error
            await anyio.sleep_forever()
        finally:
            self.interrupted += 1

    def close(self, stats: ServiceStats) -> None:
        """What the owner does once the publisher has closed: nothing was acknowledged, the
        event it took was still pending."""
        log_stopped(stats, acknowledged=0, unacknowledged=len(self.taken))


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="polymarket_kafka")


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=MARKETS, price=lambda i: 0.50) as fake:
        yield fake


async def run(
    server: FakePolymarketServer,
    publisher: NeverAcknowledges,
    settings: ServiceSettings,
    stats: ServiceStats,
    background: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    markets = [m.condition_id for m in server.markets]
    clock = ScriptedClock(server, {1: dict.fromkeys(markets, 0.80)})
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        with anyio.fail_after(SAFETY_NET):
            await run_service(
                store=InMemorySubscriptionStore(seed=markets),
                poller=MarketPoller(client, metadata_refresh_seconds=3600),
                publisher=publisher,
                settings=settings,
                clock=clock,
                rules=RulesHolder(ONE_POLL),
                stats=stats,
                background=background,
            )


def settings(
    *, grace: float, max_cycles: int | None = None, signals: bool = False
) -> ServiceSettings:
    return ServiceSettings(
        poll_interval_seconds=0.01,
        event_buffer=1,
        max_cycles=max_cycles,
        handle_signals=signals,
        drain_grace_seconds=grace,
    )


def last_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    return [r for r in caplog.records if r.name.startswith("polymarket_kafka")][-1]


def assert_accounted(stats: ServiceStats, publisher: NeverAcknowledges) -> None:
    """Every detected event is in exactly one place, and the last line says so."""
    assert stats.events_published == len(publisher.taken) == 1
    assert stats.events_detected == (
        stats.events_published + stats.events_undelivered + publisher.interrupted
    )


def assert_last_line(caplog: pytest.LogCaptureFixture, stats: ServiceStats) -> None:
    line = last_line(caplog)
    assert line.levelno == logging.ERROR
    assert line.getMessage().endswith(
        f": {stats.events_detected} events detected, 0 acknowledged by Kafka, "
        f"{stats.events_detected} NOT delivered"
    )
    assert not stats.everything_delivered


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_ends_within_the_grace_with_kafka_down(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture, signum: signal.Signals
) -> None:
    publisher = NeverAcknowledges(on_blocked=lambda: os.kill(os.getpid(), signum))
    stats = ServiceStats()
    await run(server, publisher, settings(grace=GRACE, signals=True), stats)
    publisher.close(stats)

    assert f"{signum.name} received: stopping gracefully" in caplog.text
    # The sources stopped, detection drained all four snapshots, delivery ran out of time.
    assert stats.events_detected == MARKETS
    assert_accounted(stats, publisher)
    assert (publisher.interrupted, stats.events_undelivered) == (1, MARKETS - 2)
    assert caplog.text.count("event NOT delivered (stopped before publishing)") == MARKETS - 2
    assert "the pipeline did not drain within 0.2s" in caplog.text
    assert_last_line(caplog, stats)


async def test_max_cycles_ends_within_the_grace_with_kafka_down(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = NeverAcknowledges()
    stats = ServiceStats()
    await run(server, publisher, settings(grace=GRACE, max_cycles=2), stats)
    publisher.close(stats)

    assert stats.poll_cycles == 2
    assert stats.events_detected == MARKETS
    assert_accounted(stats, publisher)
    assert (publisher.interrupted, stats.events_undelivered) == (1, MARKETS - 2)
    assert "the pipeline did not drain within 0.2s" in caplog.text
    assert_last_line(caplog, stats)


async def test_a_failing_helper_stops_at_once_with_kafka_down(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Like the ops server failing: an error does not wait for a drain, it cancels all."""
    publisher = NeverAcknowledges()
    stats = ServiceStats()

    async def ops_server() -> None:
        await publisher.blocked.wait()
        await anyio.wait_all_tasks_blocked()  # the pipeline is full
        raise OSError("the ops server broke")

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="the ops server broke")):
        await run(server, publisher, settings(grace=NEVER), stats, background=[ops_server])
    publisher.close(stats)

    assert stats.events_detected == MARKETS
    assert_accounted(stats, publisher)
    assert (publisher.interrupted, stats.events_undelivered) == (1, MARKETS - 2)
    assert caplog.text.count("event NOT delivered (stopped before publishing)") == MARKETS - 2
    assert "did not drain" not in caplog.text  # no drain: the error cancelled everything
    assert_last_line(caplog, stats)


async def test_a_failing_publisher_stops_at_once_and_names_what_it_left(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = NeverAcknowledges(error=RuntimeError("the producer is fenced"))
    stats = ServiceStats()

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="fenced"), flatten_subgroups=True):
        await run(server, publisher, settings(grace=NEVER), stats)
    publisher.close(stats)

    assert stats.events_detected == MARKETS
    assert_accounted(stats, publisher)
    assert (publisher.interrupted, stats.events_undelivered) == (1, MARKETS - 2)
    assert caplog.text.count("event NOT delivered (stopped before publishing)") == MARKETS - 2
    assert_last_line(caplog, stats)


async def test_detect_names_the_events_it_could_not_hand_over_when_deliver_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other side of the shielded send: `deliver` ended (it failed) before `detect` sent
    its event. Driven directly, since in a full service the order depends on the scheduler."""
    market = "0x" + "a" * 64
    snapshots, received = anyio.create_memory_object_stream[Polled](2)
    events, gone = anyio.create_memory_object_stream[PolymarketEvent](1)
    gone.close()
    subscriptions = LatestSubscriptions()
    stats = ServiceStats()
    for hour, price in ((0, 0.50), (1, 0.80)):  # a baseline, then a move that fires
        taken_at = T0 + timedelta(hours=hour)
        snapshot = MarketSnapshot(
            market_id=market, question="q", yes_price=price, taken_at=taken_at
        )
        snapshots.send_nowait((snapshot, anyio.current_time()))
    snapshots.close()

    with anyio.fail_after(SAFETY_NET):
        await _detect(received, events, RulesHolder(ONE_POLL), subscriptions, stats)

    assert (stats.events_detected, stats.events_undelivered) == (1, 1)
    assert f"event NOT delivered (stopped before publishing): market {market}" in caplog.text
