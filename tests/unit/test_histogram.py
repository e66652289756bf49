"""The plain latency histogram behind every `_seconds` histogram metric."""

from __future__ import annotations

import math

import pytest

from polymarket_kafka.histogram import DEFAULT_SECONDS_BOUNDS, Histogram


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.1, 1.0, 0.1000001, 5.0, -1.0):
        histogram.observe(value)

    # Buckets: (-inf, 0.1], (0.1, 1.0], (1.0, +inf).
    assert histogram.counts == [2, 2, 1]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(0.1 + 1.0 + 0.1000001 + 5.0 - 1.0)


def test_cumulative_view_ends_with_inf_and_the_count() -> None:
    histogram = Histogram((0.5, 2.0, 10.0))
    for value in (0.2, 0.7, 1.9, 3.0, 100.0):
        histogram.observe(value)

    assert histogram.cumulative() == [(0.5, 1), (2.0, 3), (10.0, 4), (math.inf, 5)]


def test_an_empty_histogram_exports_zeros() -> None:
    histogram = Histogram()

    assert histogram.bounds == DEFAULT_SECONDS_BOUNDS
    assert [n for _, n in histogram.cumulative()] == [0] * (len(DEFAULT_SECONDS_BOUNDS) + 1)
    assert (histogram.count, histogram.sum) == (0, 0.0)


def test_histograms_do_not_share_their_counts() -> None:
    first, second = Histogram(), Histogram()
    first.observe(0.3)

    assert second.count == 0 and sum(second.counts) == 0


def test_integer_bounds_are_taken_as_floats() -> None:
    assert Histogram((1, 2)).bounds == (1.0, 2.0)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ((), "at least one"),
        ((1.0, 1.0), "strictly increasing"),
        ((2.0, 1.0), "strictly increasing"),
        ((1.0, math.inf), "finite"),
        ((math.nan,), "finite"),
    ],
)
def test_bad_bounds_are_refused(bounds: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram(bounds)


def test_nan_is_refused_and_changes_nothing() -> None:
    histogram = Histogram((1.0,))

    with pytest.raises(ValueError, match="NaN"):
        histogram.observe(math.nan)

    assert histogram.count == 0 and histogram.counts == [0, 0]
