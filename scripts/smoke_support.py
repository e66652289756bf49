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
#: Seconds the smoke test may spend on everything but building the image (the issue: keep
#: the container step under ~3 minutes). Building may take longer on a cold machine (apt-get,
#: mmdebstrap, pip downloads), so those steps only have their own timeouts.
BUDGET_SECONDS = 180.0
#: Timeout of each image-building command (apt-get install, mmdebstrap, podman build).
BUILD_TIMEOUT = 600.0


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


class Skipped(Exception):
    """The smoke test cannot run on this machine; the message says why."""


class Steps:
    """Prints each step with its duration, holds the budget, and sums up at the end.

    Steps are budgeted unless marked `budgeted=False` (building the image): once the
    budgeted steps together took longer than `budget_seconds`, the step that crossed the
    line raises `SmokeFailure`. `clock` is a monotonic clock in seconds.
    """

    def __init__(
        self, budget_seconds: float = BUDGET_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget_seconds
        self.clock = clock
        self.started = clock()
        self.spent = 0.0
        self.timings: list[tuple[str, float, bool]] = []

    @contextlib.contextmanager
    def step(self, name: str, *, budgeted: bool = True) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        began = self.clock()
        yield
        took = self.clock() - began
        self.timings.append((name, took, budgeted))
        print(f"    ok ({took:.1f}s)", flush=True)
        if budgeted:
            self.spent += took
            if self.spent > self.budget:
                raise SmokeFailure(
                    f"over budget: the steps other than building the image took "
                    f"{self.spent:.1f}s, more than the {self.budget:g}s allowed "
                    f"(this step: {took:.1f}s; timings below)"
                )

    def summary(self) -> str:
        lines = [
            f"  {took:6.1f}s  {name}{'' if budgeted else '  [build: not budgeted]'}"
            for name, took, budgeted in self.timings
        ]
        lines.append(f"  {self.spent:6.1f}s  budgeted steps (budget {self.budget:g}s)")
        lines.append(f"  {self.clock() - self.started:6.1f}s  total")
        return "\n".join(lines)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command`, capturing its output; with `check`, a non-zero exit is a SmokeFailure.

    Running longer than `timeout` seconds is a SmokeFailure, whatever `check` says.
    """
    try:
        result = subprocess.run(
            list(command),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part
            for part in (exc.stdout, exc.stderr)
            if part
        )
        raise SmokeFailure(
            f"`{' '.join(command)}` did not finish within {timeout:g}s:\n{tail(output)}"
        ) from None
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
