"""Measure: what the Kafka publisher logs while its broker is down, and after it closed.

    python bench/kafka_outage_logs.py [--down 30] [--after 10] [--publish-every 1]
                                      [--shutdown-while-down] [--json]

A real Tansu broker runs on a free loopback port; a child process opens the real publisher
(`open_kafka_publisher`, production settings, statistics every 5 s) with the service's own
logging (`configure_logging("INFO", "text")`, stderr to a file) and publishes one event
every `--publish-every` seconds (0: one event at start only). Once the first event is
acknowledged, the broker is stopped for `--down` seconds, started again on the same port
(in memory: it forgot the producer ids, as in a real broker that lost its state), and
`--after` seconds later the child is asked to stop (SIGTERM): it closes the publisher, logs
a marker line and lingers 2 s, so anything logged after the publisher closed is seen too.
With `--shutdown-while-down` the child is stopped during the outage instead.

Every stderr line of the child is counted by phase (before / outage / recovery / shutdown /
after close), logger and level. Lines without a timestamp (tracebacks, anything written to
stderr behind logging's back) count in the phase of the line before them, as `<raw>`.
It is a measurement, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

_MARKER = "bench: publisher closed"
_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<level>[A-Z]+)\s+(?P<logger>[^:]+): "
)


# --- child: the publisher under the service's logging ---------------------------------------


def child(bootstrap: str, topic: str, publish_every: float) -> None:
    import anyio

    from polymarket_kafka.config import KafkaConfig
    from polymarket_kafka.kafka.publisher import open_kafka_publisher
    from polymarket_kafka.logs import configure_logging

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*
    from tests.component.test_kafka_tansu import make_event

    configure_logging("INFO", "text")
    import logging

    log = logging.getLogger("bench")
    stop = anyio.Event()

    async def main() -> None:
        config = KafkaConfig(bootstrap_servers=bootstrap, topic=topic)
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        stop.set()
                        return

            tg.start_soon(on_signal)
            async with open_kafka_publisher(config, grace_seconds=5) as publisher:
                await publisher.publish(make_event(f"0x{1:064x}", 0))
                if await publisher.flush(30) == 0:
                    print("connected", flush=True)
                n = 1
                while not stop.is_set():
                    with anyio.move_on_after(publish_every if publish_every > 0 else 3600):
                        await stop.wait()
                    if not stop.is_set() and publish_every > 0:
                        await publisher.publish(make_event(f"0x{1 + n % 3:064x}", n))
                        n += 1
            log.info(_MARKER)
            stats = publisher.stats
            print(
                json.dumps(
                    {
                        "published": stats.published,
                        "delivered": stats.delivered,
                        "pending": stats.pending,
                        "producer_recreated": stats.producer_recreated,
                    }
                ),
                flush=True,
            )
            tg.cancel_scope.cancel()
        await anyio.sleep(2)  # anything late (producer destruction, stray callbacks) shows up

    anyio.run(main, backend="trio")


# --- parent: broker outage and the count ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse_ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def count(lines: list[str], phases: list[tuple[str, float]]) -> dict[str, Counter[str]]:
    """Lines per phase, keyed `LEVEL logger` (a phase starts at its wall clock time)."""
    result: dict[str, Counter[str]] = {name: Counter() for name, _ in phases}
    result["after close"] = Counter()
    phase = phases[0][0]
    closed = False
    for line in lines:
        match = _LINE.match(line)
        if match is None:
            result["after close" if closed else phase]["<raw>"] += 1
            continue
        at = _parse_ts(match["ts"])
        if not closed:
            for name, start in phases:
                if at >= start:
                    phase = name
        key = f"{match['level']} {match['logger']}"
        if _MARKER in line:
            closed = True
            continue
        result["after close" if closed else phase][key] += 1
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--down", type=float, default=30.0, help="outage, seconds")
    parser.add_argument("--after", type=float, default=10.0, help="run after the restart, s")
    parser.add_argument("--publish-every", type=float, default=1.0)
    parser.add_argument("--shutdown-while-down", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("BOOTSTRAP", "TOPIC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.publish_every)
        return 0

    from polymarket_kafka.testing.local_broker import create_topic, open_tansu_broker

    port = _free_port()
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    root = Path(__file__).resolve().parent.parent
    with ExitStack() as broker_stack, tempfile.TemporaryFile("w+") as stderr:
        broker = broker_stack.enter_context(open_tansu_broker(port=port))
        create_topic(broker.bootstrap_servers, topic, partitions=1)
        command = [sys.executable, str(Path(__file__).resolve()), "--child"]
        command += [broker.bootstrap_servers, topic, "--publish-every", str(args.publish_every)]
        started = time.time()
        process = subprocess.Popen(
            command, cwd=root, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != "connected":
            process.kill()
            raise SystemExit("the child never delivered its first event")
        time.sleep(2)
        phases = [("before", started)]
        phases.append(("outage", time.time()))
        broker_stack.close()
        time.sleep(args.down)
        if not args.shutdown_while_down:
            phases.append(("recovery", time.time()))
            broker = broker_stack.enter_context(open_tansu_broker(port=port))
            create_topic(broker.bootstrap_servers, topic, partitions=1)
            time.sleep(args.after)
        phases.append(("shutdown", time.time()))
        os.kill(process.pid, signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        broker_stack.close()
        stderr.seek(0)
        lines = stderr.read().splitlines()
    counts = count(lines, phases)
    durations = {
        name: round((phases[i + 1][1] if i + 1 < len(phases) else time.time()) - start, 1)
        for i, (name, start) in enumerate(phases)
    }
    stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    if args.json:
        print(json.dumps({"durations": durations, "counts": counts, "stats": stats}))
        return 0
    print(f"broker down {args.down:g}s, publish every {args.publish_every:g}s; stats {stats}")
    for name, counter in counts.items():
        seconds = f" ({durations[name]:g}s)" if name in durations else ""
        print(f"{name}{seconds}: {sum(counter.values())} line(s)")
        for key, n in counter.most_common():
            print(f"  {n:5d}  {key}")
    if os.environ.get("BENCH_SHOW_LINES"):
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
