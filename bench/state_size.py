"""Size and cost of one market's detector-state record (`detector_state`), per window/poll.

    .venv/bin/python bench/state_size.py [--markets 10000]

For each (window, poll interval), a detector with the default rules but that window observes
a random walk for two windows of polls, so its history is full; then one record is measured
(bytes; the window is kept in at most 62 buckets, whatever the polling rate), and
`--markets` records are encoded and decoded (what a checkpoint and a restore of
that many markets cost in CPU, without Kafka). Nothing asserts on it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polymarket_kafka.detection import Detector
from polymarket_kafka.detector_state import MarketState, decode, encode
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams
from tests.factories import FixedRules

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
MARKET = "0x" + "ab" * 32
QUESTION = "Will the Federal Reserve cut interest rates by 50 bps at its September 2024 meeting?"


def full_state(window_seconds: float, poll_seconds: float) -> MarketState:
    rules = FixedRules(DetectionParams(window_seconds=window_seconds, abs_move=1.0, floor=1.0))
    detector, rng, price = Detector(), random.Random(7), 0.5
    at = T0
    for _ in range(int(2 * window_seconds / poll_seconds)):
        at += timedelta(seconds=poll_seconds, microseconds=rng.randrange(1_000_000))
        price = min(0.99, max(0.01, round(price + rng.choice((-0.001, 0, 0.001)), 4)))
        snap = MarketSnapshot(
            market_id=MARKET,
            question=QUESTION,
            yes_price=price,
            taken_at=at,
            liquidity=250_000.0,
            volume=1_500_000.0,
            category="economy",
            tags=("Fed", "Economy"),
            spread=0.01,
        )
        detector.observe(snap, rules, at)
    state = detector.export_state(MARKET)
    assert isinstance(state, MarketState)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=10_000)
    args = parser.parse_args()
    print(f"{'window':>8} {'poll':>6} {'buckets':>7} {'bytes':>7} {'encode':>9} {'decode':>9}")
    for window, poll in [
        (3600.0, 60.0),
        (3600.0, 5.0),
        (7200.0, 30.0),
        (7200.0, 5.0),
        (21600.0, 300.0),
    ]:
        state = full_state(window, poll)
        record = encode(state)
        started = time.perf_counter()
        records = [encode(state) for _ in range(args.markets)]
        encoded = time.perf_counter() - started
        started = time.perf_counter()
        for item in records:
            decode(item)
        decoded = time.perf_counter() - started
        print(
            f"{window / 3600:>6.0f} h {poll:>5.0f}s {len(state.times):>7} {len(record):>7} "
            f"{encoded:>8.2f}s {decoded:>8.2f}s"
        )
    print(f"(encode/decode: {args.markets} markets, one core)")


if __name__ == "__main__":
    main()
