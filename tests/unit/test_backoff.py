"""`backoff.doubling`: the delays of the retry loops (state restore, Kafka transactions)."""

from __future__ import annotations

import itertools

from polymarket_kafka.backoff import doubling


def test_delays_double_up_to_the_cap_and_stay_there() -> None:
    assert list(itertools.islice(doubling(0.5, 3.0), 6)) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert list(itertools.islice(doubling(0.0, 0.0), 3)) == [0.0, 0.0, 0.0]
