"""Code that runs with the coverage tracer stopped: the property tests, and `untraced()` blocks.

Coverage is measured on the example-based tests. Property tests (hypothesis) run with every
running coverage instance stopped, because under the tracer they took 2-4 times their CPU (a
fifth of the suite's) while adding no line or branch to the report: measured, the report is
the same with and without them. The replay of the real histories (tests/e2e) uses
`untraced()` for the same reason. A branch that only such code reaches shows as missed: pin
it with an example test.

Not pytest-cov's `no_cover`: in a pytest-xdist worker it pauses one of the two coverage
instances there, and the other one goes on tracing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from coverage import Coverage
from hypothesis import is_hypothesis_test

__all__ = ["untraced"]


@contextmanager
def untraced() -> Iterator[None]:
    """Stop every running coverage instance for the block; start them again after it."""
    stopped: list[Coverage] = []
    while (running := Coverage.current()) is not None:
        running.stop()
        stopped.append(running)
    try:
        yield
    finally:
        for coverage in reversed(stopped):  # outermost first: each start pauses the one before
            coverage.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if not is_hypothesis_test(getattr(item, "obj", None)):
        yield
        return
    with untraced():
        yield
