"""`Coalescer`: leading edge, trailing edge, coalesced offers, forget, heap bounds; and the
properties against a reference model (hypothesis)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.polymarket.stream.coalesce import Coalescer


@pytest.mark.parametrize("interval", [-0.001, -1.0, math.nan, -math.inf])
def test_a_negative_or_nan_interval_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be >= 0"):
        Coalescer(interval)


def test_nothing_pending_at_first() -> None:
    coalescer = Coalescer(1.0)
    assert coalescer.next_due() is None
    assert coalescer.take_due(100.0) == []
    assert coalescer.pending == 0
    assert coalescer.coalesced == 0


def test_leading_edge_the_first_change_is_due_at_once() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 10.0)
    assert coalescer.pending == 1
    assert coalescer.next_due() == 10.0
    assert coalescer.take_due(10.0) == ["m"]
    assert coalescer.pending == 0
    assert coalescer.next_due() is None


def test_trailing_edge_a_change_within_the_interval_waits_for_its_end() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 10.0)
    assert coalescer.take_due(10.0) == ["m"]
    coalescer.offer("m", 10.3)
    assert coalescer.next_due() == 11.0
    assert coalescer.take_due(10.999) == []
    assert coalescer.pending == 1
    assert coalescer.take_due(11.0) == ["m"]
    assert coalescer.take_due(20.0) == []


def test_a_change_after_a_quiet_spell_is_due_at_once_again() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 10.0)
    coalescer.take_due(10.0)
    coalescer.offer("m", 11.0)  # exactly one interval later: no wait
    assert coalescer.next_due() == 11.0
    coalescer.take_due(11.0)
    coalescer.offer("m", 15.0)
    assert coalescer.next_due() == 15.0


def test_an_emission_counts_at_the_time_it_was_taken() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 10.0)
    assert coalescer.take_due(12.5) == ["m"]  # taken late
    coalescer.offer("m", 13.0)
    assert coalescer.next_due() == 13.5


def test_changes_while_pending_are_coalesced_into_one_emission() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 10.0)
    coalescer.take_due(10.0)
    for t in (10.1, 10.2, 10.3, 10.9):
        coalescer.offer("m", t)
    assert coalescer.coalesced == 3
    assert coalescer.pending == 1
    assert coalescer.next_due() == 11.0  # the first offer set it; the others did not move it
    assert coalescer.take_due(11.0) == ["m"]
    assert coalescer.take_due(100.0) == []
    assert coalescer._heap == []  # one heap entry for the pending key, no more


def test_a_leading_edge_offer_repeated_at_once_is_coalesced() -> None:
    coalescer = Coalescer(0.1)
    coalescer.offer("m", 5.0)
    coalescer.offer("m", 5.0)
    assert coalescer.coalesced == 1
    assert coalescer.take_due(5.0) == ["m"]


def test_keys_are_independent_and_taken_in_due_order() -> None:
    coalescer = Coalescer(1.0)
    for key, t in (("a", 0.0), ("b", 0.2), ("c", 0.1)):
        coalescer.offer(key, t)
    assert coalescer.take_due(0.5) == ["a", "c", "b"]
    coalescer.offer("b", 0.6)  # b emitted at 0.5: due 1.5
    coalescer.offer("a", 0.7)  # a emitted at 0.5: due 1.5
    coalescer.offer("d", 0.8)  # new: due now
    assert coalescer.next_due() == 0.8
    assert coalescer.take_due(1.4) == ["d"]
    assert coalescer.take_due(2.0) == ["a", "b"]  # equal due times: by key


def test_take_due_takes_only_what_is_due() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("a", 1.0)
    coalescer.offer("b", 3.0)
    assert coalescer.take_due(2.0) == ["a"]
    assert coalescer.pending == 1
    assert coalescer.next_due() == 3.0


def test_a_zero_interval_emits_every_change_when_taken() -> None:
    coalescer = Coalescer(0.0)
    coalescer.offer("m", 1.0)
    assert coalescer.take_due(1.0) == ["m"]
    coalescer.offer("m", 1.0)
    assert coalescer.next_due() == 1.0
    assert coalescer.take_due(1.0) == ["m"]
    assert coalescer.coalesced == 0


def test_forget_drops_a_pending_key() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("a", 0.0)
    coalescer.offer("b", 0.0)
    coalescer.forget("a")
    assert coalescer.pending == 1
    assert coalescer.take_due(10.0) == ["b"]


def test_forget_of_an_unknown_key_is_harmless() -> None:
    coalescer = Coalescer(1.0)
    coalescer.forget("nobody")
    assert coalescer.pending == 0
    assert coalescer.next_due() is None


def test_forget_drops_the_last_emission_so_the_next_offer_is_due_at_once() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 0.0)
    coalescer.take_due(0.0)
    coalescer.forget("m")
    coalescer.offer("m", 0.2)
    assert coalescer.next_due() == 0.2
    assert coalescer.take_due(0.2) == ["m"]


def test_forget_then_offer_again_no_premature_emission_from_the_stale_entry() -> None:
    """The forgotten entry (due 1.0) stays in the heap; the key, offered again and emitted,
    is next due at 1.2: the stale entry must not emit it at 1.0."""
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 0.0)
    assert coalescer.take_due(0.0) == ["m"]
    coalescer.offer("m", 0.1)  # due 1.0
    coalescer.forget("m")
    coalescer.offer("m", 0.2)  # never emitted as far as it knows: due at once
    assert coalescer.take_due(0.2) == ["m"]
    coalescer.offer("m", 0.3)  # due 1.2
    assert coalescer.take_due(1.0) == []  # the stale (1.0, m) entry is skipped
    assert coalescer.pending == 1
    assert coalescer.take_due(1.19) == []
    assert coalescer.take_due(1.2) == ["m"]


def test_forget_then_offer_later_than_the_stale_entry() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 0.0)
    coalescer.take_due(0.0)
    coalescer.offer("m", 0.5)  # due 1.0
    coalescer.forget("m")
    coalescer.offer("m", 1.5)  # due 1.5
    assert coalescer.take_due(1.2) == []
    assert coalescer.take_due(1.5) == ["m"]
    assert coalescer.take_due(9.0) == []


def test_forget_then_offer_at_the_stale_due_time_emits_once() -> None:
    coalescer = Coalescer(1.0)
    coalescer.offer("m", 0.0)
    coalescer.take_due(0.0)
    coalescer.offer("m", 0.5)  # due 1.0
    coalescer.forget("m")
    coalescer.offer("m", 1.0)  # due 1.0, like the stale entry
    assert coalescer.take_due(1.0) == ["m"]
    assert coalescer.take_due(5.0) == []
    assert coalescer._heap == []


def test_the_next_due_time_is_never_later_than_the_earliest_pending_key() -> None:
    """A forgotten key's heap entry may make `next_due` early (a wake-up for nothing), never
    late."""
    coalescer = Coalescer(1.0)
    coalescer.offer("a", 1.0)
    coalescer.offer("b", 2.0)
    coalescer.forget("a")
    due = coalescer.next_due()
    assert due is not None and due <= 2.0
    assert coalescer.take_due(1.5) == []
    assert coalescer.next_due() == 2.0


def test_forget_compacts_a_heap_of_stale_entries() -> None:
    coalescer = Coalescer(1.0)
    keys = [f"k{i:03d}" for i in range(100)]
    for i, key in enumerate(keys):
        coalescer.offer(key, float(100 - i))  # due in reverse key order
    # 100 heap entries; compaction starts once they exceed 2 * pending + 64.
    for key in keys[:82]:
        coalescer.forget(key)
    assert len(coalescer._heap) == 100  # 100 <= 2 * 18 + 64: not yet
    coalescer.forget(keys[82])
    assert len(coalescer._heap) == 17  # 100 > 2 * 17 + 64: only the live entries stay
    assert coalescer.pending == 17
    assert coalescer.next_due() == 1.0
    assert coalescer.take_due(1000.0) == list(reversed(keys[83:]))  # still a heap
    assert coalescer.pending == 0


def test_compaction_keeps_a_key_offered_again_after_forget() -> None:
    coalescer = Coalescer(1.0)
    for i in range(70):
        coalescer.offer(f"k{i}", 5.0)
    coalescer.forget("k0")
    coalescer.offer("k0", 3.0)  # a new entry (3.0) and a stale one (5.0)
    for i in range(1, 70):
        coalescer.forget(f"k{i}")
    assert coalescer.pending == 1
    assert len(coalescer._heap) <= 3  # compacted on the way
    assert (3.0, "k0") in coalescer._heap
    assert (5.0, "k0") not in coalescer._heap  # the stale entry of the key offered again
    assert coalescer.take_due(3.0) == ["k0"]
    assert coalescer.take_due(10.0) == []


# --- properties against a reference model ---------------------------------------------------------


@dataclass
class Model:
    interval: int
    pending: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    coalesced: int = 0

    def offer(self, key: str, now: int) -> None:
        if key in self.pending:
            self.coalesced += 1
            return
        last = self.last.get(key)
        self.pending[key] = now if last is None else max(now, last + self.interval)

    def take_due(self, now: int) -> list[str]:
        due = sorted((at, key) for key, at in self.pending.items() if at <= now)
        for _, key in due:
            del self.pending[key]
            self.last[key] = now
        return [key for _, key in due]

    def forget(self, key: str) -> None:
        self.pending.pop(key, None)
        self.last.pop(key, None)


_keys = st.sampled_from(["a", "b", "c", "d"])
_ops = st.lists(
    st.tuples(st.sampled_from(["offer", "take", "forget"]), _keys, st.integers(0, 3)),
    max_size=60,
)


@given(st.integers(0, 5), _ops)
def test_the_coalescer_matches_the_model(interval: int, ops: list[tuple[str, str, int]]) -> None:
    coalescer = Coalescer(float(interval))
    model = Model(interval)
    now = 0
    emitted_at: dict[str, int] = {}
    forgets = 0
    for op, key, step in ops:
        now += step  # time never goes back
        if op == "offer":
            coalescer.offer(key, now)
            model.offer(key, now)
        elif op == "forget":
            coalescer.forget(key)
            model.forget(key)
            emitted_at.pop(key, None)
            forgets += 1
        else:
            taken = coalescer.take_due(now)
            assert taken == model.take_due(now)
            assert len(taken) == len(set(taken))  # once per take
            for k in taken:
                # Never twice within `interval` (unless forgotten in between).
                assert k not in emitted_at or now - emitted_at[k] >= interval
                emitted_at[k] = now
        assert coalescer.pending == len(model.pending)
        assert coalescer.coalesced == model.coalesced
        due = coalescer.next_due()
        if model.pending:
            assert due is not None and due <= min(model.pending.values())
        # One live heap entry per pending key; stale entries come only from `forget`.
        live = {(at, k) for at, k in coalescer._heap if coalescer._pending.get(k) == at}
        assert {k for _, k in live} == set(model.pending)
        assert len(live) == coalescer.pending
        assert len(coalescer._heap) - coalescer.pending <= forgets
    # Every pending key is emitted exactly once in the end, and then nothing is left.
    final = now + interval
    left = sorted(model.pending)
    assert sorted(coalescer.take_due(final)) == left
    assert coalescer.pending == 0
    assert coalescer.take_due(final + interval + 1) == []


@given(
    st.floats(0.0, 10.0, allow_nan=False),
    st.lists(st.tuples(_keys, st.floats(0.0, 2.0, allow_nan=False)), min_size=1, max_size=40),
)
def test_every_change_is_emitted_no_more_than_once_per_interval(
    interval: float, offers: list[tuple[str, float]]
) -> None:
    """Offers, each followed by a take at that moment: the emissions of a key are at least
    `interval` apart, and every key's last change is emitted once it is due."""
    coalescer = Coalescer(interval)
    now = 0.0
    emissions: dict[str, list[float]] = {}
    for key, step in offers:
        now += step
        coalescer.offer(key, now)
        for k in coalescer.take_due(now):
            emissions.setdefault(k, []).append(now)
    while (due := coalescer.next_due()) is not None:  # the trailing edges
        assert due >= now
        now = due
        for k in coalescer.take_due(now):
            emissions.setdefault(k, []).append(now)
    assert coalescer.pending == 0
    assert set(emissions) == {key for key, _ in offers}
    # Each offer opened a pending period (one emission) or was coalesced into one.
    assert sum(map(len, emissions.values())) == len(offers) - coalescer.coalesced
    for times in emissions.values():
        # Each emission at least `interval` after the one before (due = last + interval).
        assert all(b >= a + interval for a, b in itertools.pairwise(times))
