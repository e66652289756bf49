"""Rules file → validated `RulesDocument` → `RuleSet`, or a `RulesError` listing every issue.

PyYAML's constructors throw away positions, so the file is *composed* (a node tree that keeps
each node's start mark) and turned into plain data here, recording where every key and value
sits. Pydantic then validates the data, and each of its errors is mapped back, through its
`loc`, to the line and column of the offending node. Doing the construction ourselves is also
what lets a duplicate key be an error instead of silently keeping the last value.

Positions point at the key when the problem is the key itself (unknown, duplicate) or a whole
mapping (overlapping tier bands), and at the value otherwise.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from polymarket_kafka.paths import DEFAULT_RULES_PATH
from polymarket_kafka.ruleset.compiled import RuleSet
from polymarket_kafka.ruleset.errors import RuleIssue, RulesError
from polymarket_kafka.ruleset.schema import SEMANTIC_ERROR, RulesDocument

__all__ = ["DEFAULT_RULES_PATH", "load_document", "load_rules", "load_rules_text"]

Path_ = tuple[Any, ...]
Position = tuple[int, int]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


#: The rules file used when none is configured (relative to the working directory).


def default_rules_path(configured: Path | None) -> Path | None:
    """The rules file to load: `configured` if set, else rules/default.yaml if present, else
    None (the built-in defaults). One rule for the service, the demo and the CLI."""
    if configured is not None:
        return configured
    return DEFAULT_RULES_PATH if DEFAULT_RULES_PATH.is_file() else None


def load_rules(path: str | Path) -> RuleSet:
    """Load, validate and compile a rules file. Raises `RulesError` (never OSError)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RulesError([RuleIssue(source, None, None, "", f"cannot read: {reason}")]) from exc
    return load_rules_text(text, source)


def load_rules_text(text: str, source: str = "<string>") -> RuleSet:
    """Validate and compile rules given as YAML text; `source` names it in issues."""
    return RuleSet(load_document(text, source), source)


def load_document(text: str, source: str = "<string>") -> RulesDocument:
    """The validated model of a rules text. Raises `RulesError` with every issue found."""
    reader = _Reader(text, source)
    try:
        data = reader.read()
    except yaml.YAMLError as exc:
        raise RulesError([*reader.issues, _syntax_issue(exc, text, source)]) from None
    issues = list(reader.issues)
    if data is None:
        issues.append(RuleIssue(source, 1, 1, "", "the file is empty; it needs `version: 1`"))
        raise RulesError(issues)
    try:
        document = RulesDocument.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            issues.extend(_issues_of(error, source, reader.marks))
    if issues:
        raise RulesError(sorted(issues, key=lambda i: (i.line or 0, i.column or 0)))
    return document


def _syntax_issue(exc: yaml.YAMLError, text: str, source: str) -> RuleIssue:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            started = exc.context_mark
            at = "" if started is None else f" at {started.line + 1}:{started.column + 1}"
            problem = f"{problem} ({exc.context}{at})"
        return RuleIssue(source, mark.line + 1, mark.column + 1, "", f"YAML syntax: {problem}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        message = f"YAML syntax: {exc.reason} ({shown})"
        return RuleIssue(source, line, column, "", message)
    return RuleIssue(source, None, None, "", f"YAML syntax: {' '.join(str(exc).split())}")


def _position(mark: yaml.Mark) -> Position:
    return (mark.line + 1, mark.column + 1)


class _Marks:
    """Where one key and its value sit in the file."""

    __slots__ = ("collection", "key", "value")

    def __init__(self, key: Position | None, value: Position, collection: bool) -> None:
        self.key = key
        self.value = value
        self.collection = collection


class _Reader:
    """Builds plain data from the composed node tree, recording marks and duplicate keys."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.marks: dict[Path_, _Marks] = {(): _Marks(None, (1, 1), True)}
        self.issues: list[RuleIssue] = []

    def read(self) -> object:
        loader = yaml.SafeLoader(self.text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            self.marks[()] = _Marks(None, _position(node.start_mark), True)
            return self._value(loader, node, (), frozenset())
        finally:
            loader.dispose()

    def _value(
        self, loader: yaml.SafeLoader, node: yaml.Node, path: Path_, active: frozenset[int]
    ) -> object:
        if id(node) in active:
            self._issue(node.start_mark, path, "an alias refers to its own ancestor")
            return {}
        if node.tag not in _PLAIN_COLLECTIONS and not isinstance(node, yaml.ScalarNode):
            # !!set, !!omap, or an unknown tag, which this raises a marked error for.
            return loader.construct_object(node, deep=True)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(loader, node, path, active | {id(node)})
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self._mark((*path, index), None, child)
                items.append(self._value(loader, child, (*path, index), active | {id(node)}))
            return items
        return loader.construct_object(node, deep=True)

    def _mapping(
        self, loader: yaml.SafeLoader, node: yaml.MappingNode, path: Path_, active: frozenset[int]
    ) -> dict[Any, object]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                self._issue(key_node.start_mark, (*path, key), "duplicate key")
            elif isinstance(key, Hashable):
                seen.add(key)
        # `<<: *anchor` merges, resolved the way PyYAML's own SafeLoader does; a key written
        # here after the merge legitimately overrides the merged one, so it is no duplicate.
        loader.flatten_mapping(node)
        out: dict[Any, object] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                self._issue(key_node.start_mark, path, "a key must be a plain value")
                continue
            self._mark((*path, key), key_node, value_node)
            out[key] = self._value(loader, value_node, (*path, key), active)
        return out

    def _mark(self, path: Path_, key_node: yaml.Node | None, value_node: yaml.Node) -> None:
        key = None if key_node is None else _position(key_node.start_mark)
        collection = isinstance(value_node, yaml.MappingNode | yaml.SequenceNode)
        self.marks[path] = _Marks(key, _position(value_node.start_mark), collection)

    def _issue(self, mark: yaml.Mark, path: Path_, message: str) -> None:
        line, column = _position(mark)
        self.issues.append(RuleIssue(self.source, line, column, _dotted(path), message))


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path)


def _locate(marks: dict[Path_, _Marks], path: Path_, at_key: bool) -> Position:
    """Position of `path`, or of its closest recorded ancestor (a missing key's mapping)."""
    for size in range(len(path), -1, -1):
        found = marks.get(path[:size])
        if found is None:
            continue
        wants_key = size < len(path) or at_key or found.collection
        return found.key if wants_key and found.key is not None else found.value
    raise AssertionError("the root is always recorded")  # pragma: no cover


def _issues_of(error: ErrorDetails, source: str, marks: dict[Path_, _Marks]) -> list[RuleIssue]:
    loc: Path_ = tuple(error["loc"])
    at_key = error["type"] == "extra_forbidden"
    if loc and loc[-1] == "[key]":
        loc, at_key = loc[:-1], True
    if error["type"] == SEMANTIC_ERROR:
        found = [(loc + tuple(sub), message) for sub, message in error["ctx"]["problems"]]
    else:
        found = [(loc, _message(error, loc))]
    issues = []
    for path, message in found:
        line, column = _locate(marks, path, at_key or error["type"] == SEMANTIC_ERROR)
        issues.append(RuleIssue(source, line, column, _dotted(path), message))
    return issues


_EXPECTED = {
    "float_type": "expected a number",
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "string_type": "expected text",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _message(error: ErrorDetails, loc: Path_) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    given = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required key is missing"
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        return f"must be {op} {ctx[name]:g}, got {_show(given)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {_show(given)}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "finite_number":
        return f"must be a finite number, got {_show(given)}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_show(given)}"
    return str(error["msg"])


def _show(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"text {value!r}"
    return repr(value)


def _unknown_key(loc: Path_) -> str:
    message = f"unknown key {str(loc[-1])!r}"
    allowed = _allowed_keys(loc[:-1])
    if not allowed:
        return message
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return f"{message}; allowed here: {', '.join(allowed)}"


def _allowed_keys(path: Path_) -> list[str]:
    """The keys the model at `path` accepts, following the schema's types."""
    annotation: Any = RulesDocument
    for part in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
            if part not in fields:
                return []
            annotation = fields[part].annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or name for name, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation
