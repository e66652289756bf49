"""Shared by bench/group_takeover.py and bench/group_split.py: a group of real instances.

Not a benchmark itself. It starts the three servers the service needs, on loopback -- an
in-memory Tansu broker (`open_tansu_broker`), SecantusDB (`tests.plugins.mongo_server`, a
process with in-memory storage) and the `FakePolymarketServer` (in this process, so a
benchmark can move its prices; its CPU is this process's, never an instance's) -- and runs
`python -m polymarket_kafka run` as real processes (`Instance`): JSON logs to a file per
instance (parsed as they grow), the health/metrics port read from the log line that announces
it, `/metrics` and `/health/ready` read over HTTP, CPU from `/proc/<pid>/stat`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pymongo import MongoClient

from polymarket_kafka.kafka.state_topic import FENCE_PREFIX
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer, _Server
from polymarket_kafka.testing.local_broker import open_tansu_broker
from tests.e2e.service_process import service_env
from tests.plugins.mongo_server import _start_secantus, _stop

__all__ = [
    "Cluster",
    "Instance",
    "LogLine",
    "StateCounter",
    "load",
    "open_cluster",
    "percentile",
]

REPO = Path(__file__).resolve().parent.parent
DATABASE = "bench"
_LISTENING = re.compile(r"health/metrics on http://[^:]+:(\d+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100), linear between the closest ranks (numpy's default):
    of 10 values, p99 is 91 % of the way from the 9th to the 10th (almost the max)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and core count, for the printed notes."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


@dataclass(frozen=True)
class LogLine:
    """One JSON log record of an instance: wall-clock time (epoch seconds, ms), logger,
    level and message."""

    at: float
    logger: str
    level: str
    message: str


def _parse_line(raw: str) -> LogLine | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return LogLine(time.time(), "<stdout>", "RAW", raw) if raw.strip() else None
    if not isinstance(record, dict):
        return None
    stamp = str(record.get("timestamp", ""))
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        at = time.time()
    return LogLine(
        at, str(record.get("logger", "")), str(record.get("level", "")), str(record["message"])
    )


class _QuietServer(_Server):
    """The fake's HTTP server, without a traceback when an instance that was killed or
    stopped drops its keep-alive connection."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class QuietFakePolymarketServer(FakePolymarketServer):
    def _make_server(self) -> _Server:
        return _QuietServer(self._state)


class Instance:
    """One `python -m polymarket_kafka run` process with its log file (`python_args` go
    before `-m`, e.g. a profiler's)."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        logdir: Path,
        python_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.started_at = time.time()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *python_args, "-m", "polymarket_kafka", "run"],
                env=dict(env),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.lines: list[LogLine] = []
        self._offset = 0
        self._partial = b""
        self.port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def read_log(self) -> list[LogLine]:
        """Parse what the log gained since the last call; returns the new lines."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        new = [
            line
            for raw in complete
            if (line := _parse_line(raw.decode("utf-8", errors="replace"))) is not None
        ]
        for line in new:
            if self.port is None and (match := _LISTENING.search(line.message)):
                self.port = int(match[1])
        self.lines.extend(new)
        return new

    def wait_port(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.port is None:
            self.read_log()
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} never listened: {self.tail()}")
            time.sleep(0.05)
        return self.port

    def tail(self, lines: int = 15) -> str:
        self.read_log()
        return "\n".join(f"  {line.level} {line.message}" for line in self.lines[-lines:])

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.wait_port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def readiness(self) -> tuple[bool, frozenset[int], str]:
        """/health/ready: ready or not, the partitions its "group" component owns, and the
        details of the components that are not ok."""
        try:
            status, body = self.get("/health/ready")
            report = json.loads(body)
        except (OSError, ValueError) as exc:
            return False, frozenset(), str(exc)
        components = report.get("components", {})
        group = components.get("group", {})
        failing = "; ".join(
            f"{name}: {c.get('detail')}"
            for name, c in components.items()
            if c.get("status") != "ok"
        )
        return status == 200, frozenset(int(p) for p in group.get("owned", [])), failing

    def ready(self) -> tuple[bool, frozenset[int]]:
        ready, owned, _ = self.readiness()
        return ready, owned

    def metrics(self) -> dict[str, float]:
        """/metrics, every sample summed over its labels (by metric name)."""
        _, body = self.get("/metrics")
        values: dict[str, float] = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0].removeprefix("polymarket_kafka_")
            values[name] = values.get(name, 0.0) + float(value)
        return values

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads) so far, from /proc."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def kill(self) -> float:
        """SIGKILL; returns the wall-clock time just before it was sent."""
        at = time.time()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        return at

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.read_log()


@dataclass
class Cluster:
    """The servers, the subscriptions collection and where the logs go."""

    bootstrap_servers: str
    mongo_uri: str
    collection: str
    fake: FakePolymarketServer
    workdir: Path
    instances: list[Instance] = field(default_factory=list)

    def env(self, topic: str, **extra: str) -> dict[str, str]:
        """The service's environment (tests.e2e.service_process: rules that fire on the
        first qualifying poll, no market channel, no client pacing), JSON logs, any free
        HTTP port, `extra` on top."""
        return service_env(
            self.fake,
            self.bootstrap_servers,
            topic,
            (self.mongo_uri, DATABASE, self.collection),
            self.workdir,
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            MONGODB_POLL_INTERVAL_SECONDS="30",
            **extra,
        )

    def start(self, name: str, env: Mapping[str, str], python_args: Sequence[str] = ()) -> Instance:
        instance = Instance(name, env, self.workdir, python_args)
        self.instances.append(instance)
        return instance

    def subscribe_all(self) -> float:
        """One active subscription document per fake market, inserted in bulk; seconds."""
        started = time.perf_counter()
        at = datetime.now(UTC).replace(microsecond=0)
        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo_uri, tz_aware=True)
        with client:
            collection = client[DATABASE][self.collection]
            documents = [
                {"market_id": m.condition_id, "ref_count": 1, "created_at": at, "updated_at": at}
                for m in self.fake.markets
            ]
            for start in range(0, len(documents), 5000):
                collection.insert_many(documents[start : start + 5000], ordered=False)
            count = collection.count_documents({"ref_count": {"$gt": 0}})
        if count != len(documents):
            raise RuntimeError(f"{count} subscriptions stored, {len(documents)} inserted")
        return time.perf_counter() - started


@contextmanager
def open_cluster(markets: int, keep_logs: Path | None = None) -> Iterator[Cluster]:
    """SecantusDB, Tansu and a fake Polymarket of `markets` markets, for the block; every
    instance started through the cluster is killed on the way out. The logs are kept in
    `keep_logs`, else in a temporary folder removed at the end."""
    workdir = keep_logs or Path(tempfile.mkdtemp(prefix="bench-group-"))
    workdir.mkdir(parents=True, exist_ok=True)
    mongo, uri = _start_secantus(workdir)
    cluster: Cluster | None = None
    try:
        with (
            open_tansu_broker() as broker,
            QuietFakePolymarketServer(
                n_markets=markets, price=lambda i: 0.40 + (i % 20) / 100
            ) as fake,
        ):
            cluster = Cluster(
                broker.bootstrap_servers, uri, f"subs_{uuid.uuid4().hex[:8]}", fake, workdir
            )
            try:
                yield cluster
            finally:
                for instance in cluster.instances:
                    if instance.alive():
                        instance.process.kill()
                        instance.process.wait(10)
    finally:
        _stop(mongo)
        if keep_logs is None:
            shutil.rmtree(workdir, ignore_errors=True)


class StateCounter:
    """Counts the records of some state topics, per partition, as they are committed (a
    consumer thread of this process, read_committed, fence markers included: a restore
    reads them too)."""

    def __init__(self, bootstrap_servers: str, topics: Iterable[str], partitions: int) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.fences: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"bench-counter-{uuid.uuid4().hex}",  # never joined
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 100,
            }
        )
        self._consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
        )
        self._thread = threading.Thread(target=self._run, name="state-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(num_messages=10_000, timeout=0.2)
            with self._lock:
                for message in messages:
                    if message.error() is not None:
                        continue
                    key = (str(message.topic()), message.partition() or 0)
                    self.counts[key] = self.counts.get(key, 0) + 1
                    if (message.key() or b"").startswith(FENCE_PREFIX):
                        self.fences[key] = self.fences.get(key, 0) + 1
        self._consumer.close()

    def records(self, topic: str, partitions: Iterable[int] | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (t, p), n in self.counts.items()
                if t == topic and (partitions is None or p in partitions)
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
