"""Shared by the container smoke scripts: running commands, waiting, timing steps."""

# ruff: noqa: S603  (subprocess with fixed argument lists; tools found on PATH)

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/polymarket-kafka:smoke"
IMAGE_RULES_DIR = "/etc/polymarket-kafka/rules"


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


class Skipped(Exception):
    """The smoke test cannot run on this machine; the message says why."""


class Steps:
    """Prints each step with its duration, and the total at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        began = time.monotonic()
        yield
        took = time.monotonic() - began
        self.timings.append((name, took))
        print(f"    ok ({took:.1f}s)", flush=True)

    def summary(self) -> str:
        lines = [f"  {took:6.1f}s  {name}" for name, took in self.timings]
        lines.append(f"  {time.monotonic() - self.started:6.1f}s  total")
        return "\n".join(lines)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command`, capturing its output; with `check`, a non-zero exit is a SmokeFailure."""
    result = subprocess.run(
        list(command),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise SmokeFailure(
            f"`{' '.join(command)}` exited with {result.returncode}:\n"
            f"{tail(result.stdout + result.stderr)}"
        )
    return result


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `predicate` every 0.25 s until it is true; SmokeFailure after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.25)
