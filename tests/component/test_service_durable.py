"""The pipeline with durable state: restore at start, checkpoints, the `checkpoint` stage.

The state sink is a recording double (the real state topic is in tests/e2e); Polymarket is
the fake server and the publisher the recording double of test_service.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import pytest

from polymarket_kafka.detector_state import ClosedMarket, MarketState, StateRecord, decode
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.service.durable import already_read
from polymarket_kafka.service.pipeline import DurableState
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceSettings
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.component.test_service import T0, ScriptedClock, run, server  # noqa: F401

pytestmark = pytest.mark.anyio


@dataclass
class RecordingSink:
    """`StateSink` double: records every write; fails the ids in `refuse` once each."""

    writes: list[list[tuple[str, bytes | None]]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    slow: float = 0.0

    async def write(self, records: Sequence[tuple[str, bytes | None]]) -> Collection[str]:
        await anyio.sleep(self.slow)
        failed = [market_id for market_id, _ in records if market_id in self.refuse]
        self.refuse -= set(failed)
        self.writes.append([r for r in records if r[0] not in failed])
        return failed

    def unacknowledged(self) -> Collection[str]:
        return self.pending

    def latest(self) -> dict[str, bytes | None]:
        return {market_id: value for batch in self.writes for market_id, value in batch}


#: Four hourly cycles from T0 (ScriptedClock).
LAST_POLL = T0 + timedelta(hours=3)
SETTINGS = ServiceSettings(poll_interval_seconds=0.01, max_cycles=4, handle_signals=False)


async def states_after_a_first_run(
    fake: FakePolymarketServer,
) -> list[MarketState | ClosedMarket]:
    """What the final checkpoint of a four-cycle run (prices unchanged) wrote, decoded."""
    first = RecordingSink()
    await run(
        fake,
        ScriptedClock(fake, {}),
        settings=SETTINGS,
        durable=DurableState(first, checkpoint_seconds=3600.0),
    )
    return [decode(value or b"") for value in first.latest().values()]


async def test_every_market_is_checkpointed_and_a_refused_record_is_written_later(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    a, b, c = (m.condition_id for m in server.markets)
    sink = RecordingSink(refuse={a})
    durable = DurableState(sink, checkpoint_seconds=0.0)  # due at every snapshot
    stats, _ = await run(server, ScriptedClock(server, {}), settings=SETTINGS, durable=durable)
    latest = sink.latest()
    assert set(latest) == {a, b, c}
    for market_id, value in latest.items():
        state = decode(value or b"")
        assert isinstance(state, MarketState) and state.market_id == market_id
        assert state.times[-1] == LAST_POLL.timestamp()  # the final checkpoint has the last poll
    assert stats.state_write_failures == 1
    assert stats.state_records_written == sum(len(batch) for batch in sink.writes)


async def test_a_market_whose_event_is_unacknowledged_keeps_its_old_record(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    a = server.markets[0].condition_id
    sink = RecordingSink(pending={a})  # Kafka never acknowledges a's events
    durable = DurableState(sink, checkpoint_seconds=0.0)
    _, publisher = await run(
        server, ScriptedClock(server, {2: {a: 0.9}}), settings=SETTINGS, durable=durable
    )
    assert [e.market_id for e in publisher.events] == [a]
    assert sink.latest().get(a) is None  # never written: a restart measures from 0.50


async def test_a_slow_sink_never_holds_detection_up(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    sink = RecordingSink(slow=0.2)
    durable = DurableState(sink, checkpoint_seconds=0.0)
    stats, _ = await run(server, ScriptedClock(server, {}), settings=SETTINGS, durable=durable)
    assert stats.snapshots == 12
    # One write at a time: the checkpoints that came due meanwhile waited in the book; the
    # final one has every market's latest state.
    assert len(sink.writes) < 12
    for value in sink.latest().values():
        state = decode(value or b"")
        assert isinstance(state, MarketState) and state.times[-1] == LAST_POLL.timestamp()


async def test_restored_states_are_resumed_and_unsubscribed_ones_deleted(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    a, b, c = (m.condition_id for m in server.markets)
    restored = await states_after_a_first_run(server)
    # Restart with b unsubscribed; a moves at once: measured from the restored 0.50.
    second = RecordingSink()
    clock = ScriptedClock(server, {10: {a: 0.9}})
    clock.cycle = 10  # the restart, hours later
    stats, publisher = await run(
        server,
        clock,
        settings=ServiceSettings(poll_interval_seconds=0.01, max_cycles=1, handle_signals=False),
        store=InMemorySubscriptionStore(seed=[a, c]),
        durable=DurableState(second, checkpoint_seconds=3600.0, restore=already_read(restored)),
    )
    assert stats.state_markets_restored == 3
    assert [(e.market_id, e.baseline_yes_price) for e in publisher.events] == [(a, 0.5)]
    assert second.latest()[b] is None  # tombstone


async def test_restored_states_are_re_evaluated_under_changed_rules(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    """Rules changed while the service was down: the restored markets keep their prices and
    are re-evaluated, as on a reload; a market the new rules do not watch is deleted."""
    restored = await states_after_a_first_run(server)
    wider = RulesHolder(
        load_rules_text(
            "version: 1\ndefaults:\n  confirm: {polls: 1}\n  volatility: {z: 0}\n  window: 4h\n"
            f"markets:\n  '{server.markets[2].condition_id}': {{enabled: false}}\n",
            "wider.yaml",
        )
    )
    second = RecordingSink()
    clock = ScriptedClock(server, {})
    clock.cycle = 10
    stats, _ = await run(
        server,
        clock,
        settings=ServiceSettings(poll_interval_seconds=0.01, max_cycles=1, handle_signals=False),
        rules=wider,
        durable=DurableState(second, checkpoint_seconds=3600.0, restore=already_read(restored)),
    )
    assert stats.rule_resets == 3
    kept, disabled = server.markets[:2], server.markets[2]
    latest = second.latest()
    assert latest[disabled.condition_id] is None  # tombstone
    for market in kept:
        state = decode(latest[market.condition_id] or b"")
        assert isinstance(state, MarketState)
        # The price before the restart is kept, then the restart's own observation.
        assert list(state.times) == [LAST_POLL.timestamp(), (T0 + timedelta(hours=10)).timestamp()]


# --- exactly once: states staged for the publisher's transactions ---------------------------


@dataclass
class TransactionLog:
    """Transactional publisher double (`Publisher` and `StateStager`): one ordered log of
    what would be committed. `publish` waits until `hold_until_staged` stagings happened."""

    log: list[tuple[str, str, bytes | None]] = field(default_factory=list)
    events: list[PolymarketEvent] = field(default_factory=list)
    hold_until_staged: int = 0
    stagings: int = 0
    released: anyio.Event = field(default_factory=anyio.Event)

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None:
        if self.stagings < self.hold_until_staged:
            await self.released.wait()
        self.events.append(event)
        self.log.append(("event", event.market_id, event.event_id.encode()))
        if state is not None:
            self.log.append(("state", *state))

    def stage(self, records: Sequence[StateRecord]) -> None:
        self.stagings += 1
        if self.stagings >= self.hold_until_staged:
            self.released.set()
        self.log += [("state", market_id, value) for market_id, value in records]

    def states_of(self, market_id: str) -> list[MarketState]:
        found = [decode(v or b"") for kind, m, v in self.log if kind == "state" and m == market_id]
        return [state for state in found if isinstance(state, MarketState)]


async def test_exactly_once_each_event_carries_its_markets_state(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    a, b, c = (m.condition_id for m in server.markets)
    publisher = TransactionLog()
    durable = DurableState(None, checkpoint_seconds=3600.0, stager=publisher)
    stats, _ = await run(
        server,
        ScriptedClock(server, {2: {a: 0.9}}),
        settings=SETTINGS,
        durable=durable,
        publisher=publisher,  # type: ignore[arg-type]
    )
    [event] = publisher.events
    kinds = [(kind, market_id) for kind, market_id, _ in publisher.log]
    # The event, then its market's state (one transaction's worth), then the final checkpoint.
    assert kinds[:2] == [("event", a), ("state", a)]
    carried = publisher.states_of(a)[0]
    # The state right after the event: its window ends at the event's observation.
    assert (carried.times[-1], carried.prices[-1]) == (event.timestamp.timestamp(), 0.9)
    assert sorted(kinds[2:]) == sorted([("state", a), ("state", b), ("state", c)])
    assert stats.state_records_written == 0  # exactly once: committed by the publisher


async def test_exactly_once_a_state_is_never_staged_ahead_of_its_event(
    server: FakePolymarketServer,  # noqa: F811
) -> None:
    a = server.markets[0].condition_id
    # The event of cycle 1 waits in the pipeline while three checkpoints come due.
    publisher = TransactionLog(hold_until_staged=3)
    durable = DurableState(None, checkpoint_seconds=0.0, stager=publisher)
    await run(
        server,
        ScriptedClock(server, {1: {a: 0.9}}),
        settings=SETTINGS,
        durable=durable,
        publisher=publisher,  # type: ignore[arg-type]
    )
    [event] = publisher.events
    position = publisher.log.index(("event", a, event.event_id.encode()))
    for kind, market_id, value in publisher.log[:position]:
        if kind == "state" and market_id == a:
            state = decode(value or b"")
            assert isinstance(state, MarketState)
            assert state.times[-1] < event.timestamp.timestamp()  # only states from before the move
    assert publisher.stagings >= 3


def test_durable_state_needs_exactly_one_destination() -> None:
    with pytest.raises(ValueError, match="exactly one of sink and stager"):
        DurableState(None, 60.0)
    with pytest.raises(ValueError, match="exactly one of sink and stager"):
        DurableState(RecordingSink(), 60.0, stager=TransactionLog())
