"""The container smoke scripts' own logic, without podman: budget, commands, port, rules.

The smoke test itself (`make container-smoke`) is the end-to-end check of the image; these
tests pin what it relies on to fail clearly: the time budget, command timeouts, the held
health port and the rules edit that the SIGHUP step reloads.
"""

from __future__ import annotations

import errno
import importlib
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

from polymarket_kafka.ruleset import load_rules_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """(smoke_support, container_live), imported as the smoke script imports them."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    for name in ("container_smoke", "container_live", "smoke_support"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("smoke_support"), importlib.import_module("container_live")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the budget ------------------------------------------------------------------------------


def test_only_budgeted_steps_count_against_the_budget(
    scripts: tuple[ModuleType, ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    support, _ = scripts
    clock = FakeClock()
    steps = support.Steps(10, clock=clock)
    with steps.step("podman build", budgeted=False):
        clock.now += 500  # a cold build: slow, but not held to the budget
    with steps.step("check one"):
        clock.now += 4
    with steps.step("check two"):
        clock.now += 6  # exactly the budget: still fine
    assert steps.spent == 10
    out = capsys.readouterr().out
    assert "==> check two\n    ok (6.0s)\n" in out
    assert steps.summary().splitlines() == [
        "   500.0s  podman build  [build: not budgeted]",
        "     4.0s  check one",
        "     6.0s  check two",
        "    10.0s  budgeted steps (budget 10s)",
        "   510.0s  total",
    ]


def test_the_step_that_exceeds_the_budget_fails_the_run(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    support, _ = scripts
    clock = FakeClock()
    steps = support.Steps(180, clock=clock)
    with steps.step("start the servers"):
        clock.now += 100
    with pytest.raises(support.SmokeFailure) as failure, steps.step("wait until ready"):
        clock.now += 80.5
    assert str(failure.value) == (
        "over budget: the steps other than building the image took 180.5s, more than the "
        "180s allowed (this step: 80.5s; timings below)"
    )
    assert [name for name, _, _ in steps.timings] == ["start the servers", "wait until ready"]


def test_a_failing_step_is_not_timed(scripts: tuple[ModuleType, ModuleType]) -> None:
    support, _ = scripts
    steps = support.Steps(180, clock=FakeClock())
    with pytest.raises(support.SmokeFailure, match="broken"), steps.step("check"):
        raise support.SmokeFailure("broken")
    assert steps.timings == []


def test_the_default_budget_is_the_issues_three_minutes(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    support, _ = scripts
    assert support.Steps().budget == support.BUDGET_SECONDS == 180


# --- commands and waiting ----------------------------------------------------------------------


def test_a_command_running_past_its_timeout_is_a_smoke_failure(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    support, _ = scripts
    command = [sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"]
    with pytest.raises(support.SmokeFailure) as failure:
        support.run(command, timeout=2, check=False)
    message = str(failure.value)
    assert "did not finish within 2s" in message
    assert message.endswith("started")


def test_a_failing_command_is_a_smoke_failure_only_when_checked(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    support, _ = scripts
    command = [sys.executable, "-c", "import sys; print('nope'); sys.exit(3)"]
    assert support.run(command, check=False).returncode == 3
    with pytest.raises(support.SmokeFailure, match=r"exited with 3:\nnope"):
        support.run(command)


def test_waiting_in_vain_names_what_was_awaited(scripts: tuple[ModuleType, ModuleType]) -> None:
    support, _ = scripts
    with pytest.raises(support.SmokeFailure, match="timed out after 0s waiting for Godot"):
        support.wait_until(lambda: False, timeout=0, what="Godot")


# --- the live run's helpers ---------------------------------------------------------------------


def test_the_reserved_port_is_taken_for_others_but_the_service_can_listen_on_it(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    _, live = scripts
    with live.reserved_port() as port:
        # Another plain bind (a server picking the port explicitly) is refused ...
        in_use = os.strerror(errno.EADDRINUSE)
        with socket.socket() as other, pytest.raises(OSError, match=in_use) as taken:
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        # ... while the service's own listening socket (http_server._listen) binds it.
        with (
            socket.create_server(("127.0.0.1", port)) as service,
            socket.create_connection(("127.0.0.1", port), timeout=10),
        ):
            accepted, _ = service.accept()
            accepted.close()


def test_the_reserved_port_is_released_after_the_block(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    _, live = scripts
    with live.reserved_port() as port:
        pass
    with socket.socket() as later:
        later.bind(("127.0.0.1", port))


def test_the_reloaded_rules_are_the_bundled_ones_with_a_larger_move(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    _, live = scripts
    bundled = live.BUNDLED_RULES.read_text()
    edited = live.edited_rules(bundled)
    before, after = load_rules_text(bundled, "a.yaml"), load_rules_text(edited, "b.yaml")
    assert before.version != after.version
    assert before.document.defaults.move is not None
    assert after.document.defaults.move is not None
    assert before.document.defaults.move.abs == 0.03
    assert after.document.defaults.move.abs == 0.05
    other = after.document.model_copy(
        update={
            "defaults": after.document.defaults.model_copy(
                update={"move": before.document.defaults.move}
            )
        }
    )
    assert other == before.document  # nothing else changed


def test_rules_are_replaced_like_an_editor_does(
    scripts: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    _, live = scripts
    live.write_rules(tmp_path, "version: 1\n")
    first = (tmp_path / "default.yaml").stat().st_ino
    live.write_rules(tmp_path, "version: 1\ndefaults: {}\n")
    target = tmp_path / "default.yaml"
    assert target.read_text() == "version: 1\ndefaults: {}\n"
    assert target.stat().st_ino != first  # a new inode: a directory mount sees the change
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["default.yaml"]


def test_an_install_that_hangs_skips_the_smoke_test(
    scripts: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    support, _ = scripts
    smoke = importlib.import_module("container_smoke")
    monkeypatch.setattr(smoke.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        smoke.shutil,
        "which",
        lambda name, *a, **k: "/usr/bin/apt-get" if name == "apt-get" else None,
    )

    def hanging_run(command: list[str], **kwargs: object) -> object:
        raise support.SmokeFailure(f"`{' '.join(command)}` did not finish within 600s:\n")

    monkeypatch.setattr(smoke, "run", hanging_run)
    with pytest.raises(smoke.Skipped, match="apt-get update -qq` did not finish within 600s"):
        smoke.ensure_tools()
