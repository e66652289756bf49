"""Restoring detector state from a real state topic: N markets, end to end, on Tansu.

    .venv/bin/python bench/state_restore.py [--markets 10000] [--window-hours 2] [--poll 30]

One in-memory Tansu broker on loopback. N copies (one per market id) of a full-window state
(bench/state_size.py's random walk) are written to a fresh compacted state topic with the
service's `StateWriter`; then `app.restore_states` -- create-if-missing, read to the fence,
decode every record -- is timed, as the service runs it before its first poll. Prints the
write time, the restore time and its read/decode split. Nothing asserts on it.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from state_size import full_state

from polymarket_kafka.app import restore_states
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.detector_state import decode, encode
from polymarket_kafka.kafka.state_topic import StateWriter, ensure_state_topic, read_state
from polymarket_kafka.testing.local_broker import open_tansu_broker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=10_000)
    parser.add_argument("--window-hours", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=30.0, help="poll interval, seconds")
    args = parser.parse_args()
    state = full_state(args.window_hours * 3600, args.poll)
    ids = [f"0x{i:064x}" for i in range(args.markets)]
    records = [(market_id, encode(replace(state, market_id=market_id))) for market_id in ids]
    size = sum(len(value) for _, value in records)
    with open_tansu_broker() as broker:
        kafka = KafkaConfig(
            bootstrap_servers=broker.bootstrap_servers,
            state_topic=f"bench-state-{uuid.uuid4().hex[:8]}",
        )
        ensure_state_topic(kafka)
        writer = StateWriter(kafka)
        started = time.perf_counter()
        failed = writer.write(records, timeout=120)
        wrote = time.perf_counter() - started
        writer.close()
        assert not failed, f"{len(failed)} records not written"

        started = time.perf_counter()
        restored = anyio.run(restore_states, AppConfig(kafka=kafka))
        total = time.perf_counter() - started
        assert len(restored) == args.markets, len(restored)

        started = time.perf_counter()
        raw = read_state(kafka)
        read = time.perf_counter() - started
        started = time.perf_counter()
        for value in raw.values():
            decode(value)
        decoded = time.perf_counter() - started
    print(
        f"{args.markets} markets, {len(state.times)} window buckets each, "
        f"{size / args.markets:,.0f} bytes per record ({size / 1e6:.1f} MB)"
    )
    print(f"  write (StateWriter, acknowledged):   {wrote:6.2f} s")
    print(f"  restore_states (read + decode):      {total:6.2f} s")
    print(f"    of which read to the fence:        {read:6.2f} s")
    print(f"    of which decode:                   {decoded:6.2f} s")


if __name__ == "__main__":
    main()
