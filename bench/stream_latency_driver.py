"""The market side of bench/stream_latency.py, in its own process (its CPU is not counted).

    python bench/stream_latency_driver.py --markets N --rate R --moves M --seconds S
        [--warmup W] [--seed 7]

Serves N synthetic markets (`FakeMarket.make(i)`, YES mid 0.10..0.89) on a
`FakePolymarketServer` (REST) and a `FakeMarketChannel` (WebSocket), with the same midpoints
on both. Talks to its parent over stdin/stdout, one JSON object a line:

1. prints `{"rest": url, "ws": url}` and waits for a `go` line (the parent sends it once
   its stream serves every market);
2. sends, from one thread in time order (so no stale frame can undo a move):
   * the background load: `price_change` frames at `--rate` a second in all, round-robin
     over a random permutation of the markets, each carrying the market's current best bid
     and ask with one side jittered by at most one tick (the mid moves by at most 0.005:
     never a move for the rules);
   * `--moves` moving frames a second (one per 1/M s slot, at a random time within it), each
     `FakeMarketChannel.move` of a random market not moved in the last `--gap` seconds by
     0.25 (away from its home mid, or back home: each is a move), stamped with
     `timestamp_ms` = the wall-clock time (`time.time()`) taken just before the send; the
     REST fake's midpoint follows (`set_price`), so REST and the stream agree throughout;
3. after `--warmup` seconds prints `{"phase": "measure", "at": t}`; after `--seconds` more,
   prints one line with every move `[market_id, yes_mid, sent_at, warmup, previous]`
   (`previous`: when that market's frame before it was sent), the load frames
   sent in the measured window and how far the sender fell behind its schedule;
4. serves on until stdin reaches end of file (so the parent's stream is not cut off while
   it drains), then stops. The last line also has the driver's CPU time over the window.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from typing import Any

from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel
from polymarket_kafka.testing.fake_polymarket import FakeMarket, FakePolymarketServer

#: Moves are this far (in cents of YES price): far above any threshold of the bench rules.
JUMP_CENTS = 25
#: Background jitter of one side of the book, in cents (the mid moves by half of it).
JITTER = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def _price(cents: int) -> str:
    return f"{cents / 100:g}"


def _load_frame(asset_id: str, market: str, bid: int, ask: int, n: int) -> str:
    """A current-shape `price_change` of one level under the best bid (as `flood` sends)."""
    depth = 1 + n % 3
    item = {
        "asset_id": asset_id,
        "price": _price(bid - depth),
        "size": str(100 + 50 * depth),
        "side": "BUY",
        "hash": hashlib.sha256(f"{asset_id}|{n}".encode()).hexdigest()[:40],
        "best_bid": _price(bid),
        "best_ask": _price(ask),
    }
    message = {
        "event_type": "price_change",
        "market": market,
        "price_changes": [item],
        "timestamp": str(time.time_ns() // 1_000_000),
    }
    return json.dumps(message, separators=(",", ":"))


def _emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    markets = [FakeMarket.make(i) for i in range(args.markets)]
    home = [10 + i % 80 for i in range(args.markets)]  # cents: FakePolymarketServer's default
    mid = list(home)
    with FakePolymarketServer(args.markets) as rest, FakeMarketChannel() as channel:
        for market, cents in zip(markets, home, strict=True):
            channel.add_asset(
                market.yes_token_id,
                market=market.condition_id,
                best_bid=(cents - 1) / 100,
                best_ask=(cents + 1) / 100,
            )
        _emit({"rest": rest.url, "ws": channel.url})
        if sys.stdin.readline().strip() != "go":
            return
        order = list(range(args.markets))
        rng.shuffle(order)
        moved_at = [-1e9] * args.markets
        moves: list[tuple[str, float, float, bool, float]] = []
        last_frame = [-1e9] * args.markets  # wall time of each market's latest frame
        total = args.warmup + args.seconds
        load_sent = load_measured = unsent = 0
        max_lag = 0.0
        measuring = False
        cpu_started = 0.0
        slot_offsets: list[float] = []
        start = time.perf_counter()
        k = j = 0
        while True:
            load_due = k / args.rate
            while len(slot_offsets) <= j:
                slot_offsets.append(rng.random())
            move_due = (j + slot_offsets[j]) / args.moves
            due = min(load_due, move_due)
            if due >= total:
                break
            if not measuring and due >= args.warmup:
                measuring = True
                cpu_started = time.process_time()
                _emit({"phase": "measure", "at": time.time()})
            delay = start + due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            if move_due <= load_due:
                j += 1
                now = time.perf_counter()
                i = rng.randrange(args.markets)
                while now - moved_at[i] < args.gap:
                    i = rng.randrange(args.markets)
                moved_at[i] = now
                target = (
                    home[i]
                    if mid[i] != home[i]
                    else home[i] + (JUMP_CENTS if home[i] < 50 else -JUMP_CENTS)
                )
                mid[i] = target
                market = markets[i]
                sent = time.time()
                written = channel.move(
                    market.yes_token_id,
                    (target - 1) / 100,
                    (target + 1) / 100,
                    timestamp_ms=int(sent * 1000),
                )
                rest.set_price(market.condition_id, target / 100)
                unsent += written == 0
                moves.append(
                    (market.condition_id, target / 100, sent, not measuring, last_frame[i])
                )
                last_frame[i] = sent
            else:
                i = order[k % args.markets]
                k += 1
                d_bid, d_ask = JITTER[rng.randrange(len(JITTER))]
                market = markets[i]
                text = _load_frame(
                    market.yes_token_id,
                    market.condition_id,
                    mid[i] - 1 + d_bid,
                    mid[i] + 1 + d_ask,
                    k,
                )
                last_frame[i] = time.time()
                unsent += channel.send_raw(text, asset_id=market.yes_token_id) == 0
                load_sent += 1
                load_measured += measuring
        _emit(
            {
                "moves": moves,
                "load_sent": load_sent,
                "load_measured": load_measured,
                "unsent": unsent,
                "max_lag_ms": max_lag * 1000,
                "cpu_seconds": time.process_time() - cpu_started,
                "ended": time.time(),
            }
        )
        while sys.stdin.readline():
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="load frames a second")
    parser.add_argument("--moves", type=float, required=True, help="moving frames a second")
    parser.add_argument("--seconds", type=float, required=True, help="measured window")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before it")
    parser.add_argument("--gap", type=float, default=3.0, help="min seconds between moves")
    parser.add_argument("--seed", type=int, default=7)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
