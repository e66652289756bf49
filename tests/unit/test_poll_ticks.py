"""The poll schedule: after a cycle that overran, skip the missed ticks, never burst."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.service.polling import next_poll_tick


def test_a_cycle_within_the_interval_runs_on_the_next_tick() -> None:
    assert next_poll_tick(100.0, 30.0, 112.0) == (130.0, 0)
    assert next_poll_tick(100.0, 30.0, 130.0) == (130.0, 0)  # exactly on time


def test_a_five_second_cycle_at_one_second_intervals_skips_four_ticks() -> None:
    # The measured burst: 5 polls in the same 10 ms after one 5 s cycle. Now: one poll, at 5.
    assert next_poll_tick(0.0, 1.0, 5.0) == (5.0, 4)
    assert next_poll_tick(0.0, 1.0, 5.2) == (6.0, 5)


def test_a_tick_reached_within_float_rounding_is_not_missed() -> None:
    tick, missed = next_poll_tick(0.1, 0.1, 0.30000000000000004)
    assert missed == 1
    assert tick == pytest.approx(0.3)


@given(
    previous=st.floats(0, 1e6),
    interval=st.floats(0.01, 3600),
    late=st.floats(0, 1e5),
)
def test_the_next_tick_is_on_the_grid_not_past_and_counts_what_it_skipped(
    previous: float, interval: float, late: float
) -> None:
    now = previous + late
    tick, missed = next_poll_tick(previous, interval, now)
    assert missed >= 0
    assert tick == pytest.approx(previous + (missed + 1) * interval, rel=1e-9, abs=1e-6)
    assert tick >= now - 1e-6 * max(1.0, interval)  # never already past: no burst
    assert tick - interval < now + 1e-6 * max(1.0, interval) or missed == 0  # the first such
