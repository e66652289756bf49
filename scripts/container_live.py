"""The live part of the container smoke test: the image against real servers on loopback.

A Tansu broker, a SecantusDB server and the fake Polymarket run on the host; the service
container joins them with `--network=host`. See `container_smoke.py` for the whole story.
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

import httpx
from smoke_support import IMAGE, IMAGE_RULES_DIR, SmokeFailure, Steps, run, tail, wait_until

TOPIC = "polymarket-events"
# The fake Polymarket's markets are thin (liquidity 2,500 USDC): the bundled rules confirm a
# move on them over 2 minutes. The mounted rules confirm on the next 1-second poll instead.
SMOKE_RULES = """\
version: 1
defaults:
  move: {{abs: {abs_move}}}
  confirm: {{polls: 2, for: 0s}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def write_rules(directory: Path, abs_move: float) -> None:
    """Replace default.yaml like an editor does (new file, rename): a new inode every time."""
    staged = directory / ".default.yaml.new"
    staged.write_text(SMOKE_RULES.format(abs_move=abs_move))
    staged.chmod(0o644)
    staged.replace(directory / "default.yaml")


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

    def __init__(self, env: dict[str, str], work: Path, broker: str, mongo_uri: str) -> None:
        from polymarket_kafka.testing import FakePolymarketServer

        self.env = env
        self.work = work
        self.broker = broker
        self.name = f"pmk-smoke-{uuid.uuid4().hex[:8]}"
        self.http_port = free_port()
        self.fake = FakePolymarketServer(n_markets=2, price=lambda i: 0.40).start()
        self.moving, self.still = (m.condition_id for m in self.fake.markets)
        self.rules_dir = work / "rules"
        settings = {
            "POLYMARKET_BASE_URL": self.fake.url,
            "POLYMARKET_GAMMA_URL": self.fake.url,
            "POLYMARKET_RATE_LIMIT_DELAY_MS": "0",
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
        self.fake.stop()

    def logs(self) -> list[str]:
        return container_logs(self.env, self.name)

    def subscribe(self) -> None:
        for market_id in (self.moving, self.still):
            command = ["podman", "run", "--rm", "--no-healthcheck", *self.host, IMAGE]
            run([*command, "subscribe", market_id], env=self.env)

    def start_until_ready(self) -> None:
        self.rules_dir.mkdir()
        self.rules_dir.chmod(0o755)  # the container's user (uid 10001) must read it
        write_rules(self.rules_dir, abs_move=0.04)
        volume = f"{self.rules_dir}:{IMAGE_RULES_DIR}:ro"
        # No healthcheck timer (podman would want systemd for it): the checks run by hand.
        command = ["podman", "run", "-d", "--name", self.name, "--health-interval=disable"]
        run([*command, "-v", volume, *self.host, IMAGE], env=self.env)
        wait_until(self._ready, timeout=90, what="the service to report ready")

    def _ready(self) -> bool:
        inspect = ["podman", "inspect", "--format", "{{.State.Running}}", self.name]
        if run(inspect, env=self.env).stdout.strip() != "true":
            raise SmokeFailure("the service container exited before it was ready")
        check = run(["podman", "healthcheck", "run", self.name], env=self.env, check=False)
        return check.returncode == 0

    def event_reaches_broker(self) -> None:
        from polymarket_kafka.local_broker import read_events
        from polymarket_kafka.models import ConvictionDirection, PolymarketEvent

        self.fake.set_price(self.moving, 0.65)
        messages = read_events(self.broker, TOPIC, expected=1, timeout=60)
        if not messages or messages[0].value is None:
            raise SmokeFailure("no event reached the broker within 60 s")
        event = PolymarketEvent.model_validate_json(messages[0].value)
        if event.market_id != self.moving or event.direction != ConvictionDirection.TOWARD_YES:
            raise SmokeFailure(f"unexpected event: {event}")
        if messages[0].key != self.moving.encode():
            raise SmokeFailure(f"event keyed {messages[0].key!r}, want the market id")
        print(f"    {len(messages)} event(s): {event.market_id[:10]}... {event.direction.value}")

    def metrics_count_it(self) -> None:
        name = "polymarket_kafka_events_published_total"
        wait_until(lambda: metric_value(self.http_port, name) >= 1, timeout=30, what=name)

    def sighup_reloads(self) -> None:
        write_rules(self.rules_dir, abs_move=0.05)
        run(["podman", "kill", "--signal", "HUP", self.name], env=self.env)
        wait_until(
            lambda: any("rules reloaded" in line and "->" in line for line in self.logs()),
            timeout=30,
            what="a rules reload to a new version in the logs",
        )

    def sigterm_drains(self) -> None:
        run(["podman", "stop", "--time", "30", self.name], env=self.env, timeout=60)
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
    from polymarket_kafka.local_broker import create_topic, open_tansu_broker

    with contextlib.ExitStack() as stack:
        with steps.step("start Tansu, SecantusDB and the fake Polymarket on loopback"):
            broker = stack.enter_context(open_tansu_broker())
            create_topic(broker.bootstrap_servers, TOPIC, partitions=3)
            (work / "secantus").mkdir()
            mongo_uri = stack.enter_context(secantus_server(work / "secantus"))
            live = LiveRun(env, work, broker.bootstrap_servers, mongo_uri)
            stack.callback(live.close)
        plan: list[tuple[str, Callable[[], None]]] = [
            ("subscribe both markets with the image's own CLI", live.subscribe),
            ("run the service; wait until `podman healthcheck run` passes", live.start_until_ready),
            (
                "move a price 0.40 -> 0.65; read the event back from the broker",
                live.event_reaches_broker,
            ),
            ("GET /metrics counts the published event", live.metrics_count_it),
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
            raise


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
