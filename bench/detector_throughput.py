"""Detector throughput and memory at N markets, side by side with a naive detector.

    .venv/bin/python bench/detector_throughput.py [--markets 10000] [--cycles 5]
        [--window-hours 1] [--poll 5] [--rounds 3]

Every market starts with a full window (one market observes `--window-hours` of
`--poll`-second snapshots, a small random walk, and every market restores its state), so the figures
are the steady state of a service that has run for a while, not of an empty detector. Then
`--cycles` cycles of one snapshot per market (built beforehand, not timed) go through
`Detector.observe` with the default rules (`rules/default.yaml`), timed with the process CPU
clock; the same snapshots go through a naive detector (a dict of each market's last price,
a 4-point threshold) in the same round. Rounds alternate which runs first. Memory per
market: what the detector's state of `--memory-markets` markets allocates (tracemalloc, each
market with its own time and price objects, as in a service), divided by their number.
Nothing asserts on it; the figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polymarket_kafka.detection import Detector, RuleSource
from polymarket_kafka.detector_state import MarketState
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset import load_rules

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def snapshot(market_id: str, price: float, at: datetime) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market_id,
        question="Benchmark market?",
        yes_price=price,
        taken_at=at,
        liquidity=50_000.0,
        volume=100_000.0,
        spread=0.01,
        tags=("politics",),
    )


def filled_detector(
    ids: list[str], rules: RuleSource, window_seconds: float, poll: float, *, own: bool = False
) -> tuple[Detector, datetime]:
    """A detector whose every market has a full window: one market observes `window_seconds`
    of `poll`-second snapshots (a small random walk), and every market restores a copy of its
    exported state; with `own`, each copy has its own objects (as in a service: memory)."""
    rng = random.Random(1)
    points = int(window_seconds // poll)
    price = 0.5
    seed = Detector()
    at = T0
    for n in range(points + 1):
        price = min(0.9, max(0.1, price + rng.uniform(-0.002, 0.002)))
        at = T0 + timedelta(seconds=poll * n)
        first = snapshot(ids[0], round(price, 4), at)
        seed.observe(first, rules, at)
    template = seed.export_state(ids[0])
    assert isinstance(template, MarketState)
    detector = Detector()
    for market_id in ids:
        last = template.last_snapshot.model_copy(update={"market_id": market_id})
        state = replace(template, market_id=market_id, last_snapshot=last)
        if own:
            state = replace(
                state,
                times=tuple(t + 0.0 for t in state.times),
                prices=tuple(p + 0.0 for p in state.prices),
            )
        detector.restore_state(state)
    following = at + timedelta(seconds=poll)
    for market_id in ids:  # the first observation after a restore ends its resumption
        detector.observe(snapshot(market_id, round(price, 4), following), rules, following)
    return detector, following


def cycles_of(ids: list[str], start: datetime, cycles: int, poll: float) -> list[MarketSnapshot]:
    rng = random.Random(2)
    out = []
    for c in range(1, cycles + 1):
        at = start + timedelta(seconds=poll * c)
        out += [snapshot(m, round(0.5 + rng.uniform(-0.01, 0.01), 4), at) for m in ids]
    return out


def timed(run: Callable[[], object]) -> float:
    gc.collect()
    started = time.process_time()
    run()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--window-hours", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-markets", type=int, default=500, help="measured apart")
    args = parser.parse_args()
    rules = load_rules(ROOT / "rules" / "default.yaml")
    ids = [f"0x{i:064x}" for i in range(args.markets)]
    window = args.window_hours * 3600

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    measured = filled_detector(ids[: args.memory_markets], rules, window, args.poll, own=True)
    per_market = (tracemalloc.get_traced_memory()[0] - before) / args.memory_markets
    tracemalloc.stop()
    del measured

    rates: dict[str, list[float]] = {"detector": [], "naive": []}
    for round_ in range(args.rounds):
        detector, start = filled_detector(ids, rules, window, args.poll)
        snaps = cycles_of(ids, start, args.cycles, args.poll)
        last: dict[str, float] = {}

        def naive(snaps: list[MarketSnapshot] = snaps, last: dict[str, float] = last) -> int:
            fired = 0
            for snap in snaps:
                previous = last.get(snap.market_id)
                if previous is not None and abs(snap.yes_price - previous) >= 0.04:
                    fired += 1
                last[snap.market_id] = snap.yes_price
            return fired

        def detect(snaps: list[MarketSnapshot] = snaps, detector: Detector = detector) -> int:
            return sum(len(detector.observe(s, rules, s.taken_at)) for s in snaps)

        order: list[tuple[str, Callable[[], object]]] = [("detector", detect), ("naive", naive)]
        for name, run in order if round_ % 2 == 0 else order[::-1]:
            rates[name].append(len(snaps) / timed(run))
    points = int(window // args.poll)
    print(
        f"{args.markets} markets, full windows of {points} observations "
        f"({args.window_hours:g} h of {args.poll:g} s polls), {args.cycles} cycles, "
        f"{args.rounds} rounds"
    )
    for name, values in rates.items():
        print(
            f"  {name:>8}: {statistics.median(values):>12,.0f} snapshots/s "
            f"(range {min(values):,.0f}-{max(values):,.0f})"
        )
    print(
        f"  detector state: {per_market / 1024:.1f} KiB per market ({args.memory_markets} measured)"
    )


if __name__ == "__main__":
    main()
