"""Several instances sharing the markets, the pure side: `Ownership` (which markets are this
instance's, and what changed), the subscriptions filtered by it (`LatestSubscriptions`),
`StateBook.dropped` and `StateKeeper.take_over` (a lost partition's markets are dropped
without a tombstone, a gained one's states restored), and the configuration of a group."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from polymarket_kafka.config import ConfigError, KafkaConfig, known_variables, load_config
from polymarket_kafka.detection import Detector
from polymarket_kafka.detector_state import (
    ClosedMarket,
    MarketState,
    StateRecord,
    decode,
    encode,
)
from polymarket_kafka.kafka.partition import MarketPartitions, partition_for
from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.service.checkpoints import Checkpoint, StateBook
from polymarket_kafka.service.durable import DurableState, Records, StateKeeper
from polymarket_kafka.service.ownership import MAX_CACHED, Ownership, PartitionChange
from polymarket_kafka.service.stages import LatestSubscriptions
from tests.factories import FixedRules, make_event

PARTITIONS = 3
MARKETS = [f"0x{n:064x}" for n in range(1, 41)]
T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
RULES = FixedRules()


def by_partition(
    markets: list[str] = MARKETS, partitions: int = PARTITIONS
) -> dict[int, list[str]]:
    """The markets of each partition (murmur2 of the market id, as the producer does)."""
    grouped: defaultdict[int, list[str]] = defaultdict(list)
    for market_id in markets:
        grouped[partition_for(market_id.encode(), partitions)].append(market_id)
    return dict(grouped)


SPLIT = by_partition()


def test_the_test_markets_cover_every_partition() -> None:
    assert sorted(SPLIT) == list(range(PARTITIONS))
    assert all(len(markets) >= 3 for markets in SPLIT.values())


# --- Ownership ------------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 3, 12, 100])
def test_partition_of_is_the_producers_murmur2_partition(partitions: int) -> None:
    ownership = Ownership(partitions)
    for market_id in MARKETS:
        expected = partition_for(market_id.encode(), partitions)
        assert ownership.partition_of(market_id) == expected
        # The key the producer writes the market's events (and its state record) with.
        assert make_event(market_id=market_id).kafka_key == market_id.encode()
        assert partition_for(make_event(market_id=market_id).kafka_key, partitions) == expected


def test_partition_of_is_stable_and_memoised() -> None:
    ownership = Ownership(PARTITIONS)
    first = [ownership.partition_of(m) for m in MARKETS]
    again = [ownership.partition_of(m) for m in MARKETS]
    assert first == again
    assert len(ownership._partition_of) == len(MARKETS)


def test_non_ascii_market_ids_hash_their_utf8_bytes() -> None:
    ownership = Ownership(7)
    assert ownership.partition_of("marché") == partition_for("marché".encode(), 7)


def test_the_memo_is_bounded_and_starts_over_when_full() -> None:
    assert MAX_CACHED == 200_000
    assert Ownership(PARTITIONS)._partition_of._max_memo == MAX_CACHED
    partition_of = MarketPartitions(PARTITIONS, max_memo=5)
    for market_id in MARKETS[:5]:
        partition_of(market_id)
    assert len(partition_of) == 5
    # The sixth id clears the memo first: it never holds more than the bound.
    assert partition_of(MARKETS[5]) == partition_for(MARKETS[5].encode(), PARTITIONS)
    assert len(partition_of) == 1
    for market_id in MARKETS:
        partition_of(market_id)
        assert len(partition_of) <= 5
    # Still right after starting over.
    assert [partition_of(m) for m in MARKETS] == [
        partition_for(m.encode(), PARTITIONS) for m in MARKETS
    ]
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        MarketPartitions(0)


@pytest.mark.parametrize("partitions", [0, -1])
def test_a_topic_has_at_least_one_partition(partitions: int) -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        Ownership(partitions)


def test_a_new_ownership_owns_nothing() -> None:
    ownership = Ownership(PARTITIONS)
    assert ownership.owned == frozenset()
    assert ownership.version == 0
    assert ownership.take_changes() == []
    assert not any(ownership.owns(m) for m in MARKETS)


def test_gain_owns_the_partitions_markets_and_records_a_change() -> None:
    ownership = Ownership(PARTITIONS)
    state = ClosedMarket(SPLIT[1][0])
    ownership.gain(1, [state])
    assert ownership.owned == {1}
    assert ownership.version == 1
    assert {m for m in MARKETS if ownership.owns(m)} == set(SPLIT[1])
    assert ownership.take_changes() == [PartitionChange(1, True, (state,))]
    # Taken: the next call has nothing, and nothing else changed.
    assert ownership.take_changes() == []
    assert ownership.owned == {1}
    assert ownership.version == 1


def test_gain_keeps_its_states_as_a_tuple_even_from_a_generator() -> None:
    ownership = Ownership(PARTITIONS)
    ownership.gain(0, (ClosedMarket(m) for m in SPLIT[0]))
    (change,) = ownership.take_changes()
    assert change.states == tuple(ClosedMarket(m) for m in SPLIT[0])


def test_lose_gives_the_markets_up_and_records_a_change() -> None:
    ownership = Ownership(PARTITIONS)
    ownership.gain(0, [])
    ownership.gain(2, [])
    ownership.take_changes()
    ownership.lose(2)
    assert ownership.owned == {0}
    assert ownership.version == 3
    assert not any(ownership.owns(m) for m in SPLIT[2])
    assert all(ownership.owns(m) for m in SPLIT[0])
    assert ownership.take_changes() == [PartitionChange(2, False)]


def test_losing_a_partition_never_owned_changes_nothing() -> None:
    ownership = Ownership(PARTITIONS)
    ownership.lose(1)
    assert ownership.version == 0
    assert ownership.take_changes() == []
    assert ownership.owned == frozenset()


def test_the_latest_change_of_a_partition_wins() -> None:
    ownership = Ownership(PARTITIONS)
    first, second = ClosedMarket(SPLIT[0][0]), ClosedMarket(SPLIT[0][1])
    ownership.gain(0, [first])
    ownership.lose(0)  # before detect took the gain: the loss replaces it
    assert ownership.owned == frozenset()
    assert ownership.take_changes() == [PartitionChange(0, False)]

    ownership.gain(0, [first])
    ownership.take_changes()
    ownership.lose(0)
    ownership.gain(0, [second])  # a gain replaces a loss (and drops what was held first)
    assert ownership.owned == {0}
    assert ownership.take_changes() == [PartitionChange(0, True, (second,))]


def test_a_loss_pending_for_a_partition_no_longer_owned_is_recorded_again() -> None:
    ownership = Ownership(PARTITIONS)
    ownership.gain(1, [])
    ownership.lose(1)
    version = ownership.version
    ownership.lose(1)  # revoked, then fenced: still one pending loss
    assert ownership.version == version + 1
    assert ownership.take_changes() == [PartitionChange(1, False)]


def test_changes_are_one_per_partition() -> None:
    ownership = Ownership(PARTITIONS)
    for partition in range(PARTITIONS):
        ownership.gain(partition, [])
    ownership.lose(1)
    ownership.gain(1, [])
    ownership.lose(2)
    changes = ownership.take_changes()
    assert sorted((c.partition, c.gained) for c in changes) == [(0, True), (1, True), (2, False)]
    assert ownership.owned == {0, 1}
    assert ownership.version == 6


def test_every_change_bumps_the_version() -> None:
    ownership = Ownership(PARTITIONS)
    versions = [ownership.version]
    ownership.gain(0, [])
    versions.append(ownership.version)
    ownership.gain(0, [])  # gained again (a new assignment): still a change
    versions.append(ownership.version)
    ownership.lose(0)
    versions.append(ownership.version)
    ownership.gain(2, [])
    versions.append(ownership.version)
    assert versions == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("partition", [-1, PARTITIONS, 99])
def test_a_partition_out_of_bounds_is_refused(partition: int) -> None:
    ownership = Ownership(PARTITIONS)
    with pytest.raises(ValueError, match=rf"partition {partition} out of 0\.\.2"):
        ownership.gain(partition, [])
    with pytest.raises(ValueError, match=rf"partition {partition} out of 0\.\.2"):
        ownership.lose(partition)
    assert ownership.version == 0
    assert ownership.owned == frozenset()
    assert ownership.take_changes() == []


# --- LatestSubscriptions filtered by the owner ------------------------------------------------


def subs(markets: list[str]) -> tuple[PolymarketSubscription, ...]:
    return tuple(PolymarketSubscription(market_id=m, ref_count=1) for m in markets)


@pytest.mark.anyio
async def test_subscriptions_without_an_owner_hold_everything() -> None:
    cell = LatestSubscriptions()
    everything = subs(MARKETS[:5])
    cell.set(everything)
    assert cell.value == cell.everything == everything
    assert cell.loaded.is_set()
    assert cell.market_ids() == frozenset(MARKETS[:5])


@pytest.mark.anyio
async def test_subscriptions_hold_only_the_owners_markets_and_everything_apart() -> None:
    ownership = Ownership(PARTITIONS)
    ownership.gain(0, [])
    cell = LatestSubscriptions(ownership.owns)
    everything = subs(MARKETS)
    cell.set(everything)
    assert cell.everything == everything
    assert cell.value == tuple(s for s in everything if s.market_id in SPLIT[0])
    assert cell.market_ids() == frozenset(SPLIT[0])
    assert cell.loaded.is_set()


@pytest.mark.anyio
async def test_refilter_applies_a_change_of_ownership_without_a_new_set() -> None:
    ownership = Ownership(PARTITIONS)
    cell = LatestSubscriptions(ownership.owns)
    cell.set(subs(MARKETS))
    assert cell.market_ids() == frozenset()  # owns nothing yet
    version = cell.version
    ownership.gain(1, [])
    ownership.gain(2, [])
    assert cell.market_ids() == frozenset()  # not until refiltered
    cell.refilter()
    assert cell.market_ids() == frozenset(SPLIT[1] + SPLIT[2])
    assert cell.version == version + 1
    ownership.lose(1)
    cell.refilter()
    assert cell.market_ids() == frozenset(SPLIT[2])
    assert cell.version == version + 2
    # The order of the set is kept.
    assert [sub.market_id for sub in cell.value] == [m for m in MARKETS if m in SPLIT[2]]


@pytest.mark.anyio
async def test_refilter_before_any_set_holds_nothing() -> None:
    cell = LatestSubscriptions(lambda market_id: True)
    cell.refilter()
    assert cell.value == cell.everything == ()
    assert not cell.loaded.is_set()  # only a set from the store loads it
    assert cell.version == 1


# --- StateBook.dropped ----------------------------------------------------------------------


def test_a_dropped_market_is_neither_written_nor_tombstoned() -> None:
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xa")
    book.forgotten("0xb")
    book.touched("0xc")
    book.dropped("0xa")
    book.dropped("0xb")
    book.dropped("0xunknown")  # dropping a market the book never saw is harmless
    assert book.take(60.0) == Checkpoint(("0xc",), ())
    assert book.dirty == set() and book.tombstones == set()


def test_a_dropped_market_keeps_its_events_in_flight_counted() -> None:
    """Its events on their way are the publisher's to hand over; their release still
    balances the count."""
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xa")
    book.hold("0xa")
    book.dropped("0xa")
    assert book.held["0xa"] == 1
    book.release("0xa")
    assert "0xa" not in book.held
    assert not book.take(60.0)


def test_a_dropped_market_touched_again_is_written_again() -> None:
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xa")
    book.dropped("0xa")
    book.touched("0xa")  # its partition came back
    assert book.take(60.0) == Checkpoint(("0xa",), ())


# --- StateKeeper.take_over ------------------------------------------------------------------


class RecordingStager:
    """`StateStager` double: what the keeper stages, in order."""

    def __init__(self) -> None:
        self.staged: list[list[StateRecord]] = []

    def stage(self, records: Sequence[StateRecord]) -> None:
        self.staged.append(list(records))

    def records(self) -> dict[str, bytes | None]:
        return {market_id: value for batch in self.staged for market_id, value in batch}


def snapshot(market_id: str, price: float, at: datetime = T0) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market_id, question="q", yes_price=price, taken_at=at, liquidity=5000.0
    )


def observed_state(market_id: str, price: float = 0.5) -> MarketState:
    """A detector's state of `market_id` after one observation."""
    detector = Detector()
    detector.observe(snapshot(market_id, price), RULES, T0)
    state = detector.export_state(market_id)
    assert isinstance(state, MarketState)
    return state


@contextmanager
def keeper_with_stager(stager: RecordingStager) -> Iterator[StateKeeper]:
    """A keeper staging into `stager` (exactly once); its channel is closed after."""
    send, receive = anyio.create_memory_object_stream[Records](1)
    durable = DurableState(None, checkpoint_seconds=3600.0, stager=stager)
    with send, receive:
        yield StateKeeper(durable, send, now=0.0)


@contextmanager
def keeper_off() -> Iterator[StateKeeper]:
    keeper = StateKeeper.off()
    with keeper.checkpoints:
        yield keeper


@pytest.mark.anyio
async def test_take_over_drops_a_lost_partitions_markets_without_tombstones() -> None:
    stager = RecordingStager()
    with keeper_with_stager(stager) as keeper:
        ownership = Ownership(PARTITIONS)
        for partition in range(PARTITIONS):
            ownership.gain(partition, [])
        ownership.take_changes()
        detector = Detector()
        for market_id in MARKETS:
            keeper.observe(detector, snapshot(market_id, 0.5), RULES, T0)
        assert detector.known() == frozenset(MARKETS)

        ownership.lose(1)
        assert keeper.take_over(detector, ownership.take_changes(), ownership) == 0
        assert detector.known() == frozenset(SPLIT[0] + SPLIT[2])
        assert not set(SPLIT[1]) & (keeper.book.dirty | keeper.book.tombstones)

        await keeper.final(detector)
        # The other partitions' states are written; nothing at all of the lost one's markets
        # (no tombstone: their records are the new owner's).
        assert set(stager.records()) == set(SPLIT[0] + SPLIT[2])
        assert all(value is not None for value in stager.records().values())


@pytest.mark.anyio
async def test_take_over_restores_a_gained_partitions_states() -> None:
    stager = RecordingStager()
    with keeper_with_stager(stager) as keeper:
        ownership = Ownership(PARTITIONS)
        detector = Detector()
        states: list[MarketState | ClosedMarket] = [observed_state(m, 0.3) for m in SPLIT[2][:-1]]
        states.append(ClosedMarket(SPLIT[2][-1]))
        ownership.gain(2, states)
        restored = keeper.take_over(detector, ownership.take_changes(), ownership)
        assert restored == len(SPLIT[2])
        assert detector.known() == frozenset(SPLIT[2])
        assert detector.is_closed(SPLIT[2][-1])
        for state in states[:-1]:
            assert detector.export_state(state.market_id) == state
        # Restored, not changed: nothing to write until they are observed again.
        assert not keeper.book.dirty and not keeper.book.tombstones
        await keeper.final(detector)
        assert stager.staged == []


@pytest.mark.anyio
async def test_a_gain_replaces_what_the_detector_held_about_the_partition() -> None:
    """Lost then gained back before `detect` took the loss: the partition's markets are
    dropped first (one the new states do not have is not kept), then the states restored."""
    stager = RecordingStager()
    with keeper_with_stager(stager) as keeper:
        ownership = Ownership(PARTITIONS)
        ownership.gain(0, [])
        ownership.gain(1, [])
        ownership.take_changes()
        detector = Detector()
        for market_id in SPLIT[0] + SPLIT[1]:
            keeper.observe(detector, snapshot(market_id, 0.5), RULES, T0)
        ownership.lose(0)
        newer = observed_state(SPLIT[0][0], 0.8)
        ownership.gain(0, [newer])
        assert keeper.take_over(detector, ownership.take_changes(), ownership) == 1
        assert detector.known() == frozenset([SPLIT[0][0], *SPLIT[1]])
        assert detector.export_state(SPLIT[0][0]) == newer
        await keeper.final(detector)
        # Partition 1's markets only: partition 0's were dropped quietly, the restored one is
        # clean, and the one left out of the new states got no tombstone.
        assert set(stager.records()) == set(SPLIT[1])


@pytest.mark.anyio
async def test_take_over_without_changes_does_nothing() -> None:
    with keeper_with_stager(RecordingStager()) as keeper:
        detector = Detector()
        keeper.observe(detector, snapshot(MARKETS[0], 0.5), RULES, T0)
        assert keeper.take_over(detector, [], Ownership(PARTITIONS)) == 0
        assert detector.known() == {MARKETS[0]}
        assert keeper.book.dirty == {MARKETS[0]}


def test_take_over_works_with_durable_state_off() -> None:
    ownership = Ownership(PARTITIONS)
    detector = Detector()
    for market_id in MARKETS:
        detector.observe(snapshot(market_id, 0.5), RULES, T0)
    state = observed_state(SPLIT[1][0], 0.7)
    ownership.gain(1, [state])
    ownership.lose(0)  # never owned: no change
    with keeper_off() as keeper:
        assert keeper.take_over(detector, ownership.take_changes(), ownership) == 1
    assert detector.known() == frozenset([*SPLIT[0], *SPLIT[2], SPLIT[1][0]])


def test_restored_states_survive_the_record_format() -> None:
    """The states handed to `gain` come from records (`detector_state.decode`); a decoded
    state restores the same detector state."""
    state = observed_state(MARKETS[0], 0.42)
    ownership = Ownership(PARTITIONS)
    ownership.gain(ownership.partition_of(MARKETS[0]), [decode(encode(state))])
    detector = Detector()
    with keeper_off() as keeper:
        keeper.take_over(detector, ownership.take_changes(), ownership)
    assert detector.export_state(MARKETS[0]) == state
    # And it goes on from there: a later observation is measured against it.
    later = snapshot(MARKETS[0], 0.42, T0 + timedelta(minutes=1))
    assert detector.observe(later, RULES, later.taken_at) == []


# --- configuration ---------------------------------------------------------------------------

GROUP_ENV = {
    "KAFKA_STATE_TOPIC": "state",
    "KAFKA_GROUP_ID": "markets",
}


def test_no_group_by_default() -> None:
    kafka = load_config({}, env_file=None).kafka
    assert kafka.group_id == ""
    assert not kafka.grouped
    assert kafka.group_session_timeout_ms == 10_000
    assert kafka.standby is False


def test_a_group_is_read_with_its_settings() -> None:
    env = GROUP_ENV | {"KAFKA_GROUP_SESSION_TIMEOUT_MS": "6000", "KAFKA_STANDBY": "true"}
    kafka = load_config(env, env_file=None).kafka
    assert kafka.group_id == "markets"
    assert kafka.grouped
    assert kafka.exactly_once
    assert kafka.group_session_timeout_ms == 6000
    assert kafka.standby is True
    assert "group_id='markets'" in repr(kafka)
    assert "standby=True" in repr(kafka)


@pytest.mark.parametrize("value", ["1000", "300000"])
def test_the_session_timeout_bounds_are_accepted(value: str) -> None:
    env = GROUP_ENV | {"KAFKA_GROUP_SESSION_TIMEOUT_MS": value}
    assert load_config(env, env_file=None).kafka.group_session_timeout_ms == int(value)


def test_an_empty_session_timeout_is_the_default() -> None:
    env = GROUP_ENV | {"KAFKA_GROUP_SESSION_TIMEOUT_MS": " "}
    assert load_config(env, env_file=None).kafka.group_session_timeout_ms == 10_000


@pytest.mark.parametrize("value", ["999", "0", "-5", "300001", "ten", "1.5"])
def test_a_session_timeout_out_of_bounds_names_its_variable(value: str) -> None:
    env = GROUP_ENV | {"KAFKA_GROUP_SESSION_TIMEOUT_MS": value}
    with pytest.raises(ConfigError) as caught:
        load_config(env, env_file=None)
    assert caught.value.variable == "KAFKA_GROUP_SESSION_TIMEOUT_MS"
    assert str(caught.value).startswith("KAFKA_GROUP_SESSION_TIMEOUT_MS: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True), ("TRUE", True), ("yes", True), ("On", True), ("1", True),
        ("false", False), ("No", False), ("off", False), ("0", False),
    ],
)  # fmt: skip
def test_standby_is_a_flag(raw: str, expected: bool) -> None:
    env = GROUP_ENV | {"KAFKA_STANDBY": raw}
    assert load_config(env, env_file=None).kafka.standby is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_standby_refuses_other_words(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(GROUP_ENV | {"KAFKA_STANDBY": raw}, env_file=None)
    assert caught.value.variable == "KAFKA_STANDBY"
    assert repr(raw) in str(caught.value)


def test_a_group_needs_a_state_topic() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"KAFKA_GROUP_ID": "markets"}, env_file=None)
    assert caught.value.variable == "KAFKA_GROUP_ID"
    assert "KAFKA_STATE_TOPIC" in str(caught.value)


def test_a_group_needs_exactly_once_delivery() -> None:
    env = GROUP_ENV | {"KAFKA_DELIVERY": "at_least_once"}
    with pytest.raises(ConfigError) as caught:
        load_config(env, env_file=None)
    assert caught.value.variable == "KAFKA_GROUP_ID"
    assert "KAFKA_DELIVERY=exactly_once" in str(caught.value)


def test_group_settings_without_a_group_are_not_prerequisites() -> None:
    kafka = load_config({"KAFKA_STANDBY": "yes"}, env_file=None).kafka
    assert not kafka.grouped and kafka.standby


def test_the_new_variables_are_known() -> None:
    assert {"KAFKA_GROUP_ID", "KAFKA_GROUP_SESSION_TIMEOUT_MS", "KAFKA_STANDBY"} <= (
        known_variables()
    )


def test_partition_transactional_ids_are_the_same_across_client_ids() -> None:
    one = KafkaConfig(state_topic="state", topic_prefix="p.", group_id="g", client_id="a")
    two = KafkaConfig(state_topic="state", topic_prefix="p.", group_id="g", client_id="b")
    assert one.partition_transactional_id(0) == two.partition_transactional_id(0) == "g.p.state.0"
    assert one.partition_transactional_id(11) == "g.p.state.11"
    ids = {one.partition_transactional_id(p) for p in range(12)}
    assert len(ids) == 12
    # Not the single-instance id (which carries the client id).
    assert one.full_transactional_id not in ids


def test_partition_transactional_ids_use_kafka_transactional_id_when_set() -> None:
    env = GROUP_ENV | {"KAFKA_TRANSACTIONAL_ID": "tx", "KAFKA_CLIENT_ID": "me"}
    kafka = load_config(env, env_file=None).kafka
    assert kafka.partition_transactional_id(3) == "tx.3"
    other = load_config(GROUP_ENV | {"KAFKA_TRANSACTIONAL_ID": "tx"}, env_file=None).kafka
    assert other.partition_transactional_id(3) == "tx.3"


def test_partition_transactional_ids_differ_between_groups_and_state_topics() -> None:
    base = KafkaConfig(state_topic="state", group_id="g")
    assert base.partition_transactional_id(0) == "g.state.0"
    other_group = KafkaConfig(state_topic="state", group_id="h")
    other_topic = KafkaConfig(state_topic="state2", group_id="g")
    assert len({c.partition_transactional_id(0) for c in (base, other_group, other_topic)}) == 3
