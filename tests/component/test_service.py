"""The service's task group: stages, channels, signals, drain, error isolation.

Polymarket is the fake HTTP server on loopback (real client, real poller), subscriptions are
the in-process store, and the publisher is a recording double at the Kafka boundary (the real
broker is exercised in tests/e2e). Prices are scripted per cycle through the injected clock,
so every test is deterministic.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from polymarket_kafka.detection import Detector
from polymarket_kafka.models import ConvictionDirection, MarketSnapshot, PolymarketEvent
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller, PollResult
from polymarket_kafka.ruleset import ResolvedRule, RuleSet, load_rules_text
from polymarket_kafka.service.pipeline import DurableState, run_service
from polymarket_kafka.service.ports import SubscriptionStore
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stages import Stopper
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.subscriptions import (
    ActiveSubscriptions,
    InvalidDocument,
)
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.factories import ONE_POLL_YAML

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
#: The pipeline tests script one price per hourly cycle: fire on the first qualifying poll.
ONE_POLL = load_rules_text(ONE_POLL_YAML, "one-poll.yaml")


@dataclass
class RecordingPublisher:
    """Kafka boundary double: records what the service hands over; can block on demand."""

    events: list[PolymarketEvent] = field(default_factory=list)
    gate: anyio.Event | None = None

    async def publish(self, event: PolymarketEvent, state: object = None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.events.append(event)


class ScriptedClock:
    """Cycle n happens at T0 + n hours; before returning, it applies that cycle's prices."""

    def __init__(self, server: FakePolymarketServer, script: dict[int, dict[str, float]]) -> None:
        self.server, self.script, self.cycle = server, script, 0

    def __call__(self) -> datetime:
        for market_id, price in self.script.get(self.cycle, {}).items():
            self.server.set_price(market_id, price)
        now = T0 + timedelta(hours=self.cycle)
        self.cycle += 1
        return now


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=3, price=lambda i: 0.50) as fake:
        yield fake


async def run(
    server: FakePolymarketServer,
    clock: Callable[[], datetime],
    *,
    publisher: RecordingPublisher | None = None,
    store: SubscriptionStore | None = None,
    settings: ServiceSettings | None = None,
    rules: RulesHolder | None = None,
    stopper: Stopper | None = None,
    durable: DurableState | None = None,
) -> tuple[ServiceStats, RecordingPublisher]:
    publisher = publisher or RecordingPublisher()
    markets = [m.condition_id for m in server.markets]
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        stats = await run_service(
            store=store or InMemorySubscriptionStore(seed=markets),
            poller=MarketPoller(client, metadata_refresh_seconds=3600),
            publisher=publisher,
            settings=settings
            or ServiceSettings(poll_interval_seconds=0.01, max_cycles=4, handle_signals=False),
            clock=clock,
            rules=rules or RulesHolder(ONE_POLL),
            stopper=stopper,
            durable=durable,
        )
    return stats, publisher


async def test_pipeline_publishes_detected_moves(server: FakePolymarketServer) -> None:
    a, b, c = (m.condition_id for m in server.markets)
    clock = ScriptedClock(server, {1: {a: 0.65}, 2: {b: 0.30}, 3: {c: 0.52}})
    stats, publisher = await run(server, clock)
    assert [(e.market_id, e.direction) for e in publisher.events] == [
        (a, ConvictionDirection.TOWARD_YES),
        (b, ConvictionDirection.TOWARD_NO),
    ]
    first = publisher.events[0]
    assert first.baseline_yes_price == 0.50
    assert first.yes_price == 0.65
    assert first.timestamp == T0 + timedelta(hours=1)
    assert stats.poll_cycles == 4
    assert stats.snapshots == 12
    assert stats.events_detected == stats.events_published == 2
    assert stats.last_poll_at == T0 + timedelta(hours=3)


async def test_closed_market_emits_final_event_once(server: FakePolymarketServer) -> None:
    a = server.markets[0].condition_id

    class Clock(ScriptedClock):
        def __call__(self) -> datetime:
            if self.cycle == 2:
                server.close_market(a, winner_yes=True)
            return super().__call__()

    _, publisher = await run(server, Clock(server, {}))
    finals = [e for e in publisher.events if e.final]
    assert [(e.market_id, e.rule, e.yes_price) for e in finals] == [(a, "market_closed", 1.0)]


async def test_sigterm_drains_and_stops(server: FakePolymarketServer) -> None:
    a = server.markets[0].condition_id
    clock = ScriptedClock(server, {1: {a: 0.70}})
    publisher = RecordingPublisher()

    class SignallingPublisher(RecordingPublisher):
        async def publish(self, event: PolymarketEvent, state: object = None) -> None:
            await publisher.publish(event)
            os.kill(os.getpid(), signal.SIGTERM)

    settings = ServiceSettings(poll_interval_seconds=0.01, handle_signals=True)
    with anyio.fail_after(10):
        stats, _ = await run(server, clock, publisher=SignallingPublisher(), settings=settings)
    assert [e.market_id for e in publisher.events] == [a]
    assert stats.events_undelivered == 0


async def test_drain_grace_reports_undelivered_events(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = server.markets[0].condition_id, server.markets[1].condition_id
    stopper = Stopper()
    blocked = RecordingPublisher(gate=anyio.Event())  # the "broker" never accepts

    class Clock(ScriptedClock):
        def __call__(self) -> datetime:
            if self.cycle == 3:
                stopper.stop()
            return super().__call__()

    settings = ServiceSettings(
        poll_interval_seconds=0.01, drain_grace_seconds=0.2, handle_signals=False
    )
    clock = Clock(server, {1: {a: 0.70, b: 0.20}})
    with anyio.fail_after(10):
        stats, _ = await run(server, clock, publisher=blocked, settings=settings, stopper=stopper)
    assert blocked.events == []
    # One event was inside publish() when the grace ran out, the other still queued.
    assert stats.events_detected == 2
    assert stats.events_undelivered == 1
    assert "event NOT delivered" in caplog.text


async def test_max_cycles_with_a_stuck_publisher_ends_within_the_drain_grace(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No stop request at all: the run ends by `max_cycles` while the "broker" never accepts.
    The drain still has its deadline, and what is left is reported, not waited for."""
    a, b = server.markets[0].condition_id, server.markets[1].condition_id
    blocked = RecordingPublisher(gate=anyio.Event())
    settings = ServiceSettings(
        poll_interval_seconds=0.01, max_cycles=3, drain_grace_seconds=0.2, handle_signals=False
    )
    with anyio.fail_after(10):
        stats, _ = await run(
            server,
            ScriptedClock(server, {1: {a: 0.70, b: 0.20}}),
            publisher=blocked,
            settings=settings,
        )
    assert blocked.events == []
    assert stats.poll_cycles == 3
    assert stats.events_detected == 2
    # One event was inside publish() (the publisher's to account for), the other queued.
    assert stats.events_undelivered == 1
    assert "event NOT delivered" in caplog.text


async def test_helpers_are_cancelled_once_the_pipeline_has_drained(
    server: FakePolymarketServer,
) -> None:
    """A helper that would run forever (like the ops server) does not keep the service up."""
    helper_cancelled = anyio.Event()

    async def helper() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            helper_cancelled.set()

    a = server.markets[0].condition_id
    markets = [m.condition_id for m in server.markets]
    publisher = RecordingPublisher()
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        with anyio.fail_after(10):
            stats = await run_service(
                store=InMemorySubscriptionStore(seed=markets),
                poller=MarketPoller(client, metadata_refresh_seconds=3600),
                publisher=publisher,
                settings=ServiceSettings(
                    poll_interval_seconds=0.01, max_cycles=3, handle_signals=False
                ),
                clock=ScriptedClock(server, {1: {a: 0.7}}),
                rules=RulesHolder(ONE_POLL),
                background=[helper],
            )
    assert helper_cancelled.is_set()
    # It was cancelled after the pipeline drained: the event was delivered first.
    assert [e.market_id for e in publisher.events] == [a]
    assert stats.events_published == 1


async def test_rules_that_cannot_be_adopted_keep_the_rules_in_force(
    server: FakePolymarketServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception while adopting reloaded rules is isolated like a per-snapshot error:
    logged once, counted, and detection goes on with the previous rules."""
    a, b = server.markets[0].condition_id, server.markets[1].condition_id
    holder = RulesHolder(ONE_POLL)
    strict = ONE_POLL_YAML + "  move: {abs: 0.50, log_odds: 5}\n"
    broken = load_rules_text(strict, "broken.yaml")
    adoptions: list[str] = []

    def fail_to_adopt(detector: Detector, rules: object) -> list[object]:
        adoptions.append(getattr(rules, "version", "?"))
        raise RuntimeError("adoption exploded")

    monkeypatch.setattr(Detector, "apply_rules", fail_to_adopt)

    class Clock(ScriptedClock):
        def __call__(self) -> datetime:
            if self.cycle == 2:  # what a reload does, between two snapshots
                holder.current, holder.metrics.version = broken, broken.version
            return super().__call__()

    settings = ServiceSettings(poll_interval_seconds=0.01, max_cycles=5, handle_signals=False)
    stats, publisher = await run(
        server, Clock(server, {1: {a: 0.7}, 3: {b: 0.7}}), settings=settings, rules=holder
    )
    # b's 20-point move fires under the rules in force (the broken set would need 50).
    assert [e.market_id for e in publisher.events] == [a, b]
    assert {e.rules_version for e in publisher.events} == {ONE_POLL.version}
    assert adoptions == [broken.version]  # tried once, not once per snapshot
    assert stats.rule_adoption_failures == 1
    assert caplog.text.count("could not be adopted") == 1
    # The holder (and the rules_version metric) name the rules actually in force.
    assert holder.current is ONE_POLL
    assert holder.metrics.version == ONE_POLL.version


async def test_second_stop_request_stops_at_once(server: FakePolymarketServer) -> None:
    stopper = Stopper()
    blocked = RecordingPublisher(gate=anyio.Event())
    a = server.markets[0].condition_id

    class Clock(ScriptedClock):
        def __call__(self) -> datetime:
            if self.cycle == 3:
                stopper.stop()
                stopper.stop()
            return super().__call__()

    settings = ServiceSettings(
        poll_interval_seconds=0.01, drain_grace_seconds=60, handle_signals=False
    )
    with anyio.fail_after(10):
        stats, _ = await run(
            server,
            Clock(server, {1: {a: 0.7}}),
            publisher=blocked,
            settings=settings,
            stopper=stopper,
        )
    assert stats.events_detected == 1
    assert blocked.events == []


async def test_store_failure_keeps_last_known_subscriptions(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    markets = [m.condition_id for m in server.markets]

    class FlakyStore(InMemorySubscriptionStore):
        calls = 0

        async def active(self) -> ActiveSubscriptions:
            self.calls += 1
            if self.calls > 1:
                raise ConnectionError("mongodb unreachable")
            return await super().active()

    store = FlakyStore(seed=markets)
    a = markets[0]
    settings = ServiceSettings(
        poll_interval_seconds=0.01,
        subscription_refresh_seconds=0.001,
        max_cycles=6,
        handle_signals=False,
    )
    clock = ScriptedClock(server, {5: {a: 0.9}})
    stats, publisher = await run(server, clock, store=store, settings=settings)
    assert store.calls >= 2
    assert stats.subscription_failures >= 1
    assert stats.snapshots == 18  # all three markets polled every cycle throughout
    assert [e.market_id for e in publisher.events] == [a]
    assert "subscription refresh failed (mongodb unreachable)" in caplog.text


async def test_poll_failure_is_counted_and_retried(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail_next(
        "/midpoints",
        403,
        body="<html>Attention Required! | Cloudflare</html>",
        headers={"Content-Type": "text/html"},
    )
    stats, _ = await run(server, ScriptedClock(server, {}))
    assert stats.poll_failures == 1
    assert stats.poll_cycles == 3
    assert stats.snapshots == 9
    assert stats.poll_duration.count == 4  # the failed cycle is timed too
    assert "poll cycle 1 failed" in caplog.text


async def test_detection_error_is_isolated_per_market(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = server.markets[0].condition_id, server.markets[1].condition_id

    class PickyRules(RuleSet):
        def resolve(self, snapshot: MarketSnapshot) -> ResolvedRule:
            if snapshot.market_id == a:
                raise RuntimeError("rule resolution failed")
            return super().resolve(snapshot)

    picky = PickyRules(ONE_POLL.document, "picky.yaml")
    clock = ScriptedClock(server, {1: {a: 0.9, b: 0.9}})
    stats, publisher = await run(server, clock, rules=RulesHolder(picky))
    assert [e.market_id for e in publisher.events] == [b]
    assert stats.detection_errors == 4
    assert f"detection failed for market {a}" in caplog.text


async def test_unsubscribed_market_is_no_longer_polled(server: FakePolymarketServer) -> None:
    a = server.markets[0].condition_id
    store = InMemorySubscriptionStore(seed=[m.condition_id for m in server.markets])
    unsubscribed = anyio.Event()

    class Clock(ScriptedClock):
        def __call__(self) -> datetime:
            if self.cycle == 2:
                unsubscribed.set()
            return super().__call__()

    class UnsubscribingStore(InMemorySubscriptionStore):
        async def active(self) -> ActiveSubscriptions:
            if unsubscribed.is_set() and a in (await store.active()).market_ids:
                await store.unsubscribe(a)
            return await store.active()

    settings = ServiceSettings(
        poll_interval_seconds=0.05,
        subscription_refresh_seconds=0.001,
        max_cycles=5,
        handle_signals=False,
    )
    stats, publisher = await run(
        server, Clock(server, {4: {a: 0.9}}), store=UnsubscribingStore(), settings=settings
    )
    assert publisher.events == []
    assert stats.snapshots < 15


async def test_invalid_subscription_documents_are_warned_about_once(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    markets = [m.condition_id for m in server.markets]
    broken = "0x" + "e" * 64

    class StoreWithBadDocuments(InMemorySubscriptionStore):
        refreshes = 0

        async def active(self) -> ActiveSubscriptions:
            self.refreshes += 1
            bad = [InvalidDocument("665f0c", broken, "threshold: must be <= 1")]
            if self.refreshes >= 2:  # a second document breaks later, without a market_id
                bad.append(InvalidDocument("665f0d", None, "market_id: field required"))
            if self.refreshes >= 4:  # and the first one breaks differently
                bad[0] = InvalidDocument("665f0c", broken, "ref_count: must be >= 0, got -1")
            active = await super().active()
            return ActiveSubscriptions(active.subscriptions, tuple(bad))

    settings = ServiceSettings(
        poll_interval_seconds=0.05,
        subscription_refresh_seconds=0.01,
        max_cycles=8,
        handle_signals=False,
    )
    store = StoreWithBadDocuments(seed=markets)
    stats, _ = await run(server, ScriptedClock(server, {}), store=store, settings=settings)
    assert store.refreshes >= 5
    warnings = [r for r in caplog.records if r.getMessage().startswith("invalid subscription")]
    assert [r.getMessage() for r in warnings] == [
        f"invalid subscription document market_id={broken} (_id=665f0c) skipped: "
        "threshold: must be <= 1",
        "invalid subscription document _id=665f0d skipped: market_id: field required",
        f"invalid subscription document market_id={broken} (_id=665f0c) skipped: "
        "ref_count: must be >= 0, got -1",
    ]
    assert [getattr(r, "market_id", None) for r in warnings] == [broken, None, broken]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert stats.invalid_subscription_documents == 2
    assert stats.snapshots == 24  # the valid subscriptions are polled all along


async def test_a_slow_cycle_skips_the_missed_ticks_instead_of_bursting(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 0.05
    markets = [m.condition_id for m in server.markets]
    started: list[float] = []

    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        inner = MarketPoller(client, metadata_refresh_seconds=3600)

        class SlowFirstCycle:
            async def poll_once(self, subscriptions: Any, now: datetime) -> PollResult:
                started.append(anyio.current_time())
                if len(started) == 1:
                    await anyio.sleep(5.5 * interval)  # overruns five ticks and a half
                return await inner.poll_once(subscriptions, now)

        stats = await run_service(
            store=InMemorySubscriptionStore(seed=markets),
            poller=SlowFirstCycle(),
            publisher=RecordingPublisher(),
            settings=ServiceSettings(
                poll_interval_seconds=interval, max_cycles=4, handle_signals=False
            ),
            clock=ScriptedClock(server, {}),
            rules=RulesHolder(ONE_POLL),
        )
    assert stats.poll_ticks_skipped >= 5
    # Never two cycles back to back: after the slow one, cycles start on the ticks of the
    # grid, about an interval apart (a burst would start them within microseconds). The
    # first tick after the slow cycle may come a little sooner than a whole interval.
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(gaps) == 3 and gaps[0] >= 5.5 * interval, gaps
    assert min(gaps[1:]) >= interval / 2, gaps
    # The slow cycle is reported (a busy machine may make a later one overrun too).
    warning = next(r for r in caplog.records if "tick(s) skipped" in r.getMessage())
    assert warning.levelno == logging.WARNING and getattr(warning, "cycle", None) == 1
