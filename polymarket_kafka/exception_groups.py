"""What ended a task, out of the exception groups structured concurrency wraps it in.

A task group (anyio's, and httpx-ws's own inside its session) raises an exception group even
for one error, and groups nest when task groups do; reporting the group says nothing useful
("Exceptions from Trio nursery (1 sub-exception)"). `innermost` finds the error itself.
"""

from __future__ import annotations

__all__ = ["innermost"]


def innermost(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups (`exc` itself when it is not a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
