"""The rules of the house, computed from the code (docs/ARCHITECTURE.md states them).

The import graph is read statically (ast): module-level imports, including those under
`if TYPE_CHECKING:`, are edges; imports inside functions are lazy and not edges, except that
the testing package may be imported lazily only by the CLI's `demo` command.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "polymarket_kafka"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES = 400
REASON = "Why this file is over 400 lines:"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The package module an imported name lives in (a submodule or its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, *, lazy: bool) -> set[str]:
    """Package modules `path` imports at module level (lazy=False) or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom) and in_function == lazy:
                names = (
                    [alias.name for alias in child.names]
                    if isinstance(child, ast.Import)
                    else [f"{child.module}.{alias.name}" for alias in child.names]
                    if child.module and child.level == 0
                    else []
                )
                for name in names:
                    target = resolve(name)
                    if target is not None and target.startswith("polymarket_kafka"):
                        found.add(target)
            visit(child, nested)

    visit(tree, False)
    return found - {module_name(path)}


GRAPH = {name: imports(path, lazy=False) for name, path in MODULES.items()}


def test_there_are_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_nothing_on_the_runtime_path_imports_the_testing_package() -> None:
    offenders = {
        name: sorted(t for t in targets if t.startswith("polymarket_kafka.testing"))
        for name, targets in GRAPH.items()
        if not name.startswith("polymarket_kafka.testing")
    }
    assert {name: t for name, t in offenders.items() if t} == {}
    lazy = {
        name: sorted(
            t for t in imports(path, lazy=True) if t.startswith("polymarket_kafka.testing")
        )
        for name, path in MODULES.items()
        if not name.startswith("polymarket_kafka.testing")
    }
    # The CLI's `demo` command is the one way in, and only when it runs.
    assert {name: t for name, t in lazy.items() if t} == {
        "polymarket_kafka.cli": ["polymarket_kafka.testing.demo"]
    }


def test_the_service_commands_load_no_testing_module() -> None:
    code = (
        "import sys, polymarket_kafka.cli, polymarket_kafka.app\n"
        "print(sorted(m for m in sys.modules if m.startswith('polymarket_kafka.testing')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


def test_the_pure_core_does_no_io_and_reads_no_clock() -> None:
    core = [
        "models",
        "detection",
        "events",
        "kafka.ledger",
        "kafka.transaction_book",
        "redact",
        "histogram",
        "backoff",
        "polymarket.snapshots",
        "polymarket.stream.frames",
        "polymarket.stream.quotes",
        "polymarket.stream.coalesce",
        "service.ownership",
        "kafka.partition",
        "repeats",
    ]
    forbidden = {"socket", "httpx", "pymongo", "confluent_kafka", "anyio", "trio", "time"}
    for name in core:
        tree = ast.parse(MODULES[f"polymarket_kafka.{name}"].read_text())
        imported = {
            (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported & forbidden == set(), name
        assert "datetime.now" not in MODULES[f"polymarket_kafka.{name}"].read_text(), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_file_says_why(name: str) -> None:
    path = MODULES[name]
    lines = path.read_text().count("\n")
    if lines > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert REASON in docstring, f"{path.relative_to(ROOT)}: {lines} lines and no reason"


def test_the_architecture_document_lists_every_module() -> None:
    text = DOC.read_text()
    listed = {
        word.strip("`|*")
        for line in text.splitlines()
        for word in line.split()
        if word.strip("`|*").startswith("polymarket_kafka/") and word.strip("`|*").endswith(".py")
    }
    actual = {str(path.relative_to(ROOT)) for path in MODULES.values()}
    assert sorted(actual - listed) == [], "modules missing from docs/ARCHITECTURE.md"
    assert sorted(listed - actual) == [], "docs/ARCHITECTURE.md lists modules that are gone"
