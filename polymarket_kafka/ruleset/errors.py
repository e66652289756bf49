"""Problems found in a rules file, each pinned to a file, line, column and dotted key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["RuleIssue", "RulesError"]


@dataclass(frozen=True)
class RuleIssue:
    """One problem in a rules file.

    `line` and `column` are 1-based, or None when the problem has no position (the file
    cannot be read). `key` is the dotted path of the offending key, e.g.
    `categories.crypto.move.abs`, or "" for the file as a whole.
    """

    file: str
    line: int | None
    column: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RulesError(ValueError):
    """A rules file that cannot be used; `issues` lists every problem found, in file order.

    `str(error)` is one line per issue, in the `FILE:LINE:COL: dotted.key: message` form
    editors and CI logs already know how to jump to.
    """

    def __init__(self, issues: Iterable[RuleIssue]) -> None:
        self.issues: tuple[RuleIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
