"""Benchmark: the real poller + detector vs the specification's naive loop, on loopback.

    python bench/poller_bench.py [--markets 100,1000,10000] [--latency-ms 50] [--cycles 5]
                                 [--delay-ms 100] [--naive-markets 20] [--json]

For every N a fresh fake Polymarket
(`python -m polymarket_kafka.testing.fake_polymarket`, real response shapes, `--latency-ms`
slept in every response) runs in its own process, and the service side
runs in another fresh process (spawned), so CPU time and peak RSS are the service's alone and
one N does not inherit the memory of the previous one.

Batched (the service): `open_polymarket_client` + `MarketPoller` + `Detector` (+ `build_event`
for any change), with `rate_limit_delay_ms=--delay-ms`, which the batched client honours too.
Cycle 1 also loads Gamma metadata for every market; the later cycles are the steady state.
Simulated poll times are 30 s apart (the detector sees a 30 s cadence), but the cycles run
back to back, with one unmeasured `--delay-ms` pause between them: in the service cycles are
30 s apart, so the rate limiter's spacing never spills from one cycle into the next.

Naive (the specification's loop): a plain `httpx.AsyncClient`, one `GET /midpoint?token_id=`
per market, `--delay-ms` asleep between two calls, each price turned into a `MarketSnapshot`
and fed to the `Detector`. Measured for `--naive-markets` markets and extrapolated linearly
(marked `~`) to the other N. It is given the token ids for free (no Gamma calls counted).

Requests are counted client-side (`ClientStats` for the batched client, a counter in the
naive loop) and cross-checked against the fake server's own count when it shuts down.
CPU per snapshot = `time.process_time()` over the cycle (poll + detection) / snapshots.
Everything runs under anyio with the trio backend, the service default.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.detection import Detector
from polymarket_kafka.events import build_event
from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.polymarket import ClientStats, open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.ruleset import RuleSet, load_rules
from polymarket_kafka.testing.fake_polymarket import FakeMarket

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 11, 5, 21, tzinfo=UTC)
POLL_INTERVAL_SECONDS = 30.0  # POLL_INTERVAL_SECONDS default of the service
BACKEND = "trio"


# --- measurements --------------------------------------------------------------------------


@dataclass
class Cycle:
    requests: int
    wall_seconds: float
    cpu_seconds: float
    snapshots: int
    skipped: int
    events: int


@dataclass
class Run:
    loop: str  # "batched" | "naive"
    markets: int
    cycles: list[Cycle]
    peak_rss_mib: float
    client_requests: int
    server_requests: dict[str, int] = field(default_factory=dict)

    @property
    def steady(self) -> list[Cycle]:
        return self.cycles[1:] or self.cycles

    def steady_requests(self) -> int:
        return round(statistics.median(c.requests for c in self.steady))

    def steady_wall(self) -> float:
        return statistics.median(c.wall_seconds for c in self.steady)

    def cpu_us_per_snapshot(self) -> float:
        cycles = self.steady
        snapshots = sum(c.snapshots for c in cycles)
        return 1e6 * sum(c.cpu_seconds for c in cycles) / max(snapshots, 1)


def _subscriptions(markets: list[FakeMarket]) -> list[PolymarketSubscription]:
    return [
        PolymarketSubscription(market_id=m.condition_id, ref_count=1, created_at=T0, updated_at=T0)
        for m in markets
    ]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _detect(detector: Detector, rules: RuleSet, snapshots: list[MarketSnapshot]) -> int:
    events = 0
    for snapshot in snapshots:
        for change in detector.observe(snapshot, rules, snapshot.taken_at):
            build_event(change)
            events += 1
    return events


async def _batched(url: str, n: int, cycles: int, delay_ms: float) -> Run:
    config = PolymarketConfig(base_url=url, gamma_url=url, rate_limit_delay_ms=delay_ms)
    subscriptions = _subscriptions([FakeMarket.make(i) for i in range(n)])
    stats = ClientStats()
    detector, rules = Detector(), load_rules(ROOT / "rules" / "default.yaml")
    measured: list[Cycle] = []
    async with open_polymarket_client(config, stats=stats) as client:
        poller = MarketPoller(client, metadata_refresh_seconds=config.metadata_refresh_seconds)
        for i in range(cycles):
            if i:
                await anyio.sleep(delay_ms / 1000)  # unmeasured: see the module docstring
            now = T0 + timedelta(seconds=POLL_INTERVAL_SECONDS * i)
            requests0 = stats.total_requests()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            result = await poller.poll_once(subscriptions, now)
            events = _detect(detector, rules, result.snapshots)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            measured.append(
                Cycle(
                    requests=stats.total_requests() - requests0,
                    wall_seconds=wall,
                    cpu_seconds=cpu,
                    snapshots=len(result.snapshots),
                    skipped=len(result.skipped),
                    events=events,
                )
            )
    return Run("batched", n, measured, _peak_rss_mib(), stats.total_requests())


async def _naive(url: str, n: int, cycles: int, delay_ms: float) -> Run:
    markets = [FakeMarket.make(i) for i in range(n)]
    subscriptions = _subscriptions(markets)
    detector, rules = Detector(), load_rules(ROOT / "rules" / "default.yaml")
    measured: list[Cycle] = []
    total = 0
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        for i in range(cycles):
            if i:
                await anyio.sleep(delay_ms / 1000)  # unmeasured, as for the batched loop
            now = T0 + timedelta(seconds=POLL_INTERVAL_SECONDS * i)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            snapshots: list[MarketSnapshot] = []
            requests = skipped = 0
            for j, (market, subscription) in enumerate(zip(markets, subscriptions, strict=True)):
                if j:
                    await anyio.sleep(delay_ms / 1000)  # POLYMARKET_RATE_LIMIT_DELAY_MS
                requests += 1
                response = await http.get("/midpoint", params={"token_id": market.yes_token_id})
                if response.status_code != 200:
                    skipped += 1
                    continue
                snapshots.append(
                    MarketSnapshot(
                        market_id=subscription.market_id,
                        question=subscription.question or "",
                        yes_price=float(response.json()["mid"]),
                        taken_at=now,
                    )
                )
            events = _detect(detector, rules, snapshots)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            total += requests
            measured.append(Cycle(requests, wall, cpu, len(snapshots), skipped, events))
    return Run("naive", n, measured, _peak_rss_mib(), total)


def _measure(loop: str, url: str, n: int, cycles: int, delay_ms: float) -> Run:
    """Runs in a fresh spawned process: one loop, one N."""
    work = _batched if loop == "batched" else _naive
    return anyio.run(work, url, n, cycles, delay_ms, backend=BACKEND)


@contextmanager
def fake_polymarket(n: int, latency_ms: float) -> Iterator[tuple[str, dict[str, int]]]:
    """A fake server process; yields its URL and a dict filled with its counts on exit."""
    command = [
        sys.executable,
        "-m",
        "polymarket_kafka.testing.fake_polymarket",
        "--markets",
        str(n),
    ]
    command += ["--latency-ms", str(latency_ms)]
    counts: dict[str, int] = {}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdin is not None
        assert p.stdout is not None
        url = p.stdout.readline().strip()
        if not url.startswith("http://"):
            p.kill()
            raise RuntimeError(f"the fake server did not start (got {url!r})")
        try:
            yield url, counts
        finally:
            p.stdin.close()
            line = p.stdout.readline()
            p.wait(timeout=30)
        counts.update(json.loads(line)["requests"])


def run_one(loop: str, n: int, args: argparse.Namespace) -> Run:
    with fake_polymarket(n, args.latency_ms) as (url, server_counts):
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            run = pool.submit(_measure, loop, url, n, args.cycles, args.delay_ms).result()
    run.server_requests = server_counts
    return run


# --- report --------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 100 else f"{value:,.0f} s"


def _rows(batched: list[Run], naive: Run, interval: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    per_market_wall = naive.steady_wall() / naive.markets
    for run in batched:
        first = run.cycles[0]
        rows.append(
            {
                "markets": run.markets,
                "loop": "batched",
                "extrapolated": False,
                "requests_first_cycle": first.requests,
                "requests_per_cycle": run.steady_requests(),
                "wall_first_cycle_s": first.wall_seconds,
                "wall_per_cycle_s": run.steady_wall(),
                "cpu_us_per_snapshot": run.cpu_us_per_snapshot(),
                "peak_rss_mib": run.peak_rss_mib,
                "fits_poll_interval": run.steady_wall() < interval,
                "snapshots_per_cycle": [c.snapshots for c in run.cycles],
            }
        )
        extrapolated = run.markets != naive.markets
        wall = per_market_wall * run.markets if extrapolated else naive.steady_wall()
        rows.append(
            {
                "markets": run.markets,
                "loop": "naive",
                "extrapolated": extrapolated,
                "requests_first_cycle": run.markets,
                "requests_per_cycle": run.markets,
                "wall_first_cycle_s": (
                    naive.cycles[0].wall_seconds * run.markets / naive.markets
                    if extrapolated
                    else naive.cycles[0].wall_seconds
                ),
                "wall_per_cycle_s": wall,
                "cpu_us_per_snapshot": naive.cpu_us_per_snapshot(),
                "peak_rss_mib": None if extrapolated else naive.peak_rss_mib,
                "fits_poll_interval": wall < interval,
                "snapshots_per_cycle": None,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]], naive: Run) -> str:
    header = (
        f"{'markets':>8}  {'loop':<8} {'req 1st':>8} {'req/cycle':>10} {'wall 1st':>10} "
        f"{'wall/cycle':>11} {'CPU/snap':>10} {'peak RSS':>9}  {'<30 s?':<6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        t = "~" if row["extrapolated"] else ""
        rss = "-" if row["peak_rss_mib"] is None else f"{row['peak_rss_mib']:.0f} MiB"
        line = (
            f"{row['markets']:>8,}  {row['loop']:<8} "
            f"{t + format(row['requests_first_cycle'], ','):>8} "
            f"{t + format(row['requests_per_cycle'], ','):>10} "
            f"{t + _seconds(row['wall_first_cycle_s']):>10} "
            f"{t + _seconds(row['wall_per_cycle_s']):>11} "
            f"{t + format(row['cpu_us_per_snapshot'], '.0f') + ' us':>10} "
            f"{rss:>9}  {'yes' if row['fits_poll_interval'] else 'NO':<6}"
            + ("  (extrapolated)" if row["extrapolated"] else "")
        )
        lines.append(line.rstrip())
    first = naive.cycles[0]
    lines += [
        "",
        f"naive loop measured at {naive.markets} markets: {_seconds(naive.steady_wall())} per "
        f"cycle (first {_seconds(first.wall_seconds)}), {naive.cpu_us_per_snapshot():.0f} us "
        f"CPU per snapshot, peak RSS {naive.peak_rss_mib:.0f} MiB; `~` rows scale it linearly "
        "(RSS not extrapolated).",
    ]
    return "\n".join(lines)


def _check(run: Run) -> list[str]:
    problems = []
    if run.client_requests != sum(run.server_requests.values()):
        problems.append(
            f"{run.loop} N={run.markets}: client counted {run.client_requests} requests, "
            f"the server {run.server_requests}"
        )
    if any(c.snapshots != run.markets for c in run.cycles):
        problems.append(
            f"{run.loop} N={run.markets}: snapshots per cycle {[c.snapshots for c in run.cycles]}"
        )
    return problems


def _markets(text: str) -> list[int]:
    values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=_markets, default=[100, 1000, 10000])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--naive-markets", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.cycles < 2:
        parser.error("--cycles must be >= 2 (cycle 1 also loads metadata)")

    started = time.perf_counter()
    batched = []
    for n in args.markets:
        print(f"batched: {n:,} markets ...", file=sys.stderr, flush=True)
        batched.append(run_one("batched", n, args))
    print(f"naive: {args.naive_markets:,} markets ...", file=sys.stderr, flush=True)
    naive = run_one("naive", args.naive_markets, args)
    rows = _rows(batched, naive, POLL_INTERVAL_SECONDS)
    problems = [p for run in [*batched, naive] for p in _check(run)]
    settings = {
        "latency_ms": args.latency_ms,
        "delay_ms": args.delay_ms,
        "cycles": args.cycles,
        "naive_markets": args.naive_markets,
        "backend": BACKEND,
        "python": platform.python_version(),
        "cpus": multiprocessing.cpu_count(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        runs = [asdict(run) for run in [*batched, naive]]
        print(json.dumps({"settings": settings, "rows": rows, "runs": runs, "problems": problems}))
    else:
        print(
            f"fake Polymarket on loopback: {args.latency_ms:g} ms per response; "
            f"POLYMARKET_RATE_LIMIT_DELAY_MS={args.delay_ms:g}; {args.cycles} cycles per N "
            f"(1st = cycle 1, with Gamma metadata; req/cycle, wall/cycle = median and "
            f"CPU/snap = mean of cycles 2..{args.cycles}); anyio {BACKEND}; "
            f"Python {settings['python']}, {settings['cpus']} CPUs"
        )
        print()
        print(_table(rows, naive))
        for problem in problems:
            print(f"WARNING: {problem}")
        print(f"(benchmark took {settings['elapsed_s']} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
