"""The live part of the container smoke test: the image against real servers on loopback.

A Tansu broker, a SecantusDB server and recorded Polymarket data run on the host; the
service container joins them with `--network=host`. See `container_smoke.py` for the whole
story.

Polymarket is `CassetteServer` replaying cassettes/demo.yaml, the recording the demo replays
in-process: real response shapes, three real markets, a synthetic calm day of hourly cycles
(cassettes/make_cassettes.py, DEMO_LEAD_IN) and then ten hourly cycles of the 2024
election-night price path. The container polls it on real time, and that fits the
recording: the cassette answers identical requests with their recorded interactions in
order, so each `POST /midpoints` of the 1-second poll gets the next recorded hour (then the
last one again), and the container asks exactly what was recorded -- one Gamma request for
the three subscribed markets (sorted condition ids; the 300 s metadata refresh never comes
due here), then the same three YES tokens every cycle. Seconds apart, every cycle is within
the bundled rules' 2-hour window and cooldowns, so each election market fires once, on its
first confirmed move, and the Fed market never does (tests/component/test_cassette_server.py
shows the same in-process).
"""

# ruff: noqa: S603  (subprocess with fixed argument lists; tools found on PATH)

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from smoke_support import (
    IMAGE,
    IMAGE_RULES_DIR,
    REPO,
    SmokeFailure,
    Steps,
    run,
    tail,
    wait_until,
)

TOPIC = "polymarket-events"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
#: (market, direction) of every event the recording must produce: Harris's price falls,
#: Trump's rises (the calm Fed market of the cassette stays silent).
EXPECTED_MOVES = {(HARRIS, "toward_no"), (TRUMP, "toward_yes")}
BUNDLED_RULES = REPO / "rules" / "default.yaml"


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port nobody else gets while the block runs, yet the service can listen on.

    Picking a free port and closing it races with anything else picking one before the
    service binds it. Instead the port stays bound here, with SO_REUSEADDR and never
    listening: the kernel then hands it out neither to bind(port 0) nor to outgoing
    connections, while the service's listening socket (SO_REUSEADDR too: socket.create_server)
    may still bind it, since only a *listening* socket blocks that.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def secantus_server(workdir: Path) -> Iterator[str]:
    """A SecantusDB MongoDB wire-protocol server on a free loopback port; yields its URI."""
    config = workdir / "secantusd.toml"
    config.write_text("")  # an explicit empty config: no auto-discovered machine config
    log_path = workdir / "secantus.log"
    command = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", "0"]
    command += ["--storage-path", ":memory:", "--config", str(config), "--log-level", "INFO"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        listening = re.compile(r"listening on ([0-9.]+):(\d+)")
        found: list[str] = []

        def started() -> bool:
            if process.poll() is not None:
                raise SmokeFailure(f"SecantusDB exited:\n{tail(log_path.read_text())}")
            match = listening.search(log_path.read_text(errors="replace"))
            if match:
                found.append(f"mongodb://{match[1]}:{match[2]}/")
            return bool(found)

        wait_until(started, timeout=30, what="SecantusDB to listen")
        yield found[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_rules(directory: Path, text: str) -> None:
    """Replace default.yaml like an editor does (new file, rename): a new inode every time."""
    staged = directory / ".default.yaml.new"
    staged.write_text(text)
    staged.chmod(0o644)
    staged.replace(directory / "default.yaml")


def edited_rules(text: str) -> str:
    """`text` with a larger default move threshold: another rules version."""
    document: dict[str, Any] = yaml.safe_load(text)
    document["defaults"]["move"]["abs"] = 0.05
    return yaml.safe_dump(document, sort_keys=False)


def env_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("-e", f"{key}={value}")]


def container_logs(env: dict[str, str], name: str) -> list[str]:
    result = run(["podman", "logs", name], env=env, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def metric_value(port: int, name: str) -> float:
    """Sum of every sample of metric `name` on /metrics (0 when absent)."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    total = 0.0
    for line in body.splitlines():
        if line.startswith((f"{name} ", f"{name}{{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


class LiveRun:
    """The service container against real servers on loopback, one method per step."""

    def __init__(
        self, env: dict[str, str], work: Path, broker: str, mongo_uri: str, http_port: int
    ) -> None:
        from polymarket_kafka.testing.cassette_server import CassetteServer
        from polymarket_kafka.testing.demo import DEFAULT_CASSETTE, demo_market_ids, midpoint_cycles

        self.env = env
        self.work = work
        self.broker = broker
        self.name = f"pmk-smoke-{uuid.uuid4().hex[:8]}"
        self.http_port = http_port
        self.polymarket = CassetteServer(DEFAULT_CASSETTE).start()
        self.markets = demo_market_ids(DEFAULT_CASSETTE)
        self.cycles = midpoint_cycles(DEFAULT_CASSETTE)
        self.rules_dir = work / "rules"
        settings = {
            "POLYMARKET_BASE_URL": self.polymarket.url,
            "POLYMARKET_GAMMA_URL": self.polymarket.url,
            "POLYMARKET_RATE_LIMIT_DELAY_MS": "0",
            "POLYMARKET_WS_URL": "",
            "KAFKA_BOOTSTRAP_SERVERS": broker,
            "KAFKA_TOPIC": TOPIC,
            "MONGODB_URI": mongo_uri,
            "MONGODB_DATABASE": "smoke",
            "POLL_INTERVAL_SECONDS": "1",
            "MONGODB_POLL_INTERVAL_SECONDS": "1",
            # Host networking: keep the server on loopback rather than every host interface.
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
        }
        self.host = ["--network=host", *env_args(settings)]

    def close(self) -> None:
        run(["podman", "rm", "--force", "--time", "0", self.name], env=self.env, check=False)
        self.polymarket.stop()

    def logs(self) -> list[str]:
        return container_logs(self.env, self.name)

    def subscribe(self) -> None:
        for market_id in self.markets:
            command = ["podman", "run", "--rm", "--no-healthcheck", *self.host, IMAGE]
            run([*command, "subscribe", market_id], env=self.env)

    def start_until_ready(self) -> None:
        self.rules_dir.mkdir()
        self.rules_dir.chmod(0o755)  # the container's user (uid 10001) must read it
        write_rules(self.rules_dir, BUNDLED_RULES.read_text())
        volume = f"{self.rules_dir}:{IMAGE_RULES_DIR}:ro"
        # No healthcheck timer (podman would want systemd for it): the checks run by hand.
        command = ["podman", "run", "-d", "--name", self.name, "--health-interval=disable"]
        run([*command, "-v", volume, *self.host, IMAGE], env=self.env)
        wait_until(self._ready, timeout=60, what="the service to report ready")

    def _ready(self) -> bool:
        inspect = ["podman", "inspect", "--format", "{{.State.Running}}", self.name]
        if run(inspect, env=self.env).stdout.strip() != "true":
            raise SmokeFailure("the service container exited before it was ready")
        self.no_cassette_errors()
        check = run(["podman", "healthcheck", "run", self.name], env=self.env, check=False)
        return check.returncode == 0

    def no_cassette_errors(self) -> None:
        errors = self.polymarket.errors
        if errors:
            shown = "\n  ".join(errors[:5])
            raise SmokeFailure(
                f"the service made {len(errors)} request(s) the recording cannot answer:\n  {shown}"
            )

    def _replayed(self) -> bool:
        self.no_cassette_errors()
        return self.polymarket.all_played

    def recorded_moves_reach_broker(self) -> None:
        from polymarket_kafka.models import PolymarketEvent
        from polymarket_kafka.testing.local_broker import read_events

        # One cycle a second: the whole cassette, plus a margin.
        wait_until(
            self._replayed,
            timeout=self.cycles + 30,
            what=f"the service to poll the {self.cycles} cycles",
        )
        polls = self.polymarket.request_count("POST /midpoints")
        print(f"    {self.cycles} recorded cycles served ({polls} polls so far)")
        messages = read_events(self.broker, TOPIC, expected=len(EXPECTED_MOVES), timeout=30)
        events = []
        for message in messages:
            if message.value is None:
                raise SmokeFailure(f"an event without a value, keyed {message.key!r}")
            event = PolymarketEvent.model_validate_json(message.value)
            if message.key != event.market_id.encode():
                raise SmokeFailure(f"event keyed {message.key!r}, want its market id: {event}")
            events.append(event)
            print(
                f"    {event.market_id[:10]}... {event.direction.value} "
                f"{event.baseline_yes_price} -> {event.yes_price} ({event.severity})"
            )
        moves = {(event.market_id, event.direction.value) for event in events}
        if moves != EXPECTED_MOVES or len(events) != len(EXPECTED_MOVES):
            raise SmokeFailure(
                f"read {len(events)} event(s) {sorted(moves)} within 30 s, "
                f"want one per move {sorted(EXPECTED_MOVES)}"
            )

    def metrics_count_them(self) -> None:
        name = "polymarket_kafka_events_published_total"
        wait_until(
            lambda: metric_value(self.http_port, name) >= len(EXPECTED_MOVES),
            timeout=15,
            what=f"{name} >= {len(EXPECTED_MOVES)}",
        )

    def sighup_reloads(self) -> None:
        write_rules(self.rules_dir, edited_rules(BUNDLED_RULES.read_text()))
        run(["podman", "kill", "--signal", "HUP", self.name], env=self.env)
        wait_until(
            lambda: any("rules reloaded" in line and "->" in line for line in self.logs()),
            timeout=15,
            what="a rules reload to a new version in the logs",
        )

    def sigterm_drains(self) -> None:
        run(["podman", "stop", "--time", "30", self.name], env=self.env, timeout=45)
        inspect = ["podman", "inspect", "--format", "{{.State.ExitCode}}", self.name]
        status = run(inspect, env=self.env).stdout.strip()
        if status != "0":
            raise SmokeFailure(f"exit status {status} after SIGTERM, want 0")
        if not any("service stopped" in line for line in self.logs()):
            raise SmokeFailure("no 'service stopped' line in the logs after SIGTERM")

    def logs_are_json(self) -> None:
        lines = self.logs()
        bad = [line for line in lines if not _is_json_object(line)]
        if bad:
            shown = "\n".join(bad[:10])
            raise SmokeFailure(f"{len(bad)} of {len(lines)} log lines are not JSON:\n{shown}")
        print(f"    {len(lines)} lines:")
        for line in lines:
            print(f"    | {line}")


def live_run(env: dict[str, str], work: Path, steps: Steps) -> None:
    from polymarket_kafka.testing.local_broker import create_topic, open_tansu_broker

    with contextlib.ExitStack() as stack:
        with steps.step("start Tansu, SecantusDB and the recorded Polymarket on loopback"):
            broker = stack.enter_context(open_tansu_broker())
            create_topic(broker.bootstrap_servers, TOPIC, partitions=3)
            (work / "secantus").mkdir()
            mongo_uri = stack.enter_context(secantus_server(work / "secantus"))
            http_port = stack.enter_context(reserved_port())
            live = LiveRun(env, work, broker.bootstrap_servers, mongo_uri, http_port)
            stack.callback(live.close)
        plan: list[tuple[str, Callable[[], None]]] = [
            (
                f"subscribe the recording's {len(live.markets)} markets with the image's CLI",
                live.subscribe,
            ),
            (
                "run the service with the bundled rules; wait until `podman healthcheck run` "
                "passes",
                live.start_until_ready,
            ),
            (
                f"replay the {live.cycles} cycles (a calm day, then election night); read the "
                "moves back from the broker",
                live.recorded_moves_reach_broker,
            ),
            ("GET /metrics counts the published events", live.metrics_count_them),
            (
                "edit the mounted rules; `podman kill --signal HUP` reloads them",
                live.sighup_reloads,
            ),
            ("`podman stop` (SIGTERM) drains and exits 0", live.sigterm_drains),
            ("every log line is one JSON object", live.logs_are_json),
        ]
        try:
            for title, action in plan:
                with steps.step(title):
                    action()
        except SmokeFailure:
            print("---- service container logs ----", file=sys.stderr)
            print("\n".join(live.logs()[-60:]), file=sys.stderr)
            served = live.polymarket.request_count()
            print(f"---- recorded Polymarket: {served} request(s) served ----", file=sys.stderr)
            raise


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
