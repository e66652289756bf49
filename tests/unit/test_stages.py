"""`Stopper` and `run_stage`: the stop request and named stages, on both backends."""

from __future__ import annotations

import functools

import anyio
import pytest

from polymarket_kafka.ops.health import ServiceHealth, StageState
from polymarket_kafka.service.stages import Stopper, run_stage, task_name

pytestmark = pytest.mark.anyio


async def test_first_stop_cancels_the_sources_and_runs_the_callbacks_once() -> None:
    stopper = Stopper()
    calls: list[str] = []
    stopper.on_stop(lambda: calls.append("first"))
    stopper.stop()
    assert stopper.requested
    assert stopper.sources.cancel_called and not stopper.pipeline.cancel_called
    # A callback registered after the request runs at once; none runs twice.
    stopper.on_stop(lambda: calls.append("late"))
    assert calls == ["first", "late"]


async def test_second_stop_cancels_the_pipeline() -> None:
    stopper = Stopper()
    calls: list[str] = []
    stopper.on_stop(lambda: calls.append("stop"))
    stopper.stop()
    stopper.stop()
    assert stopper.pipeline.cancel_called
    assert calls == ["stop"]


async def test_run_stage_passes_its_arguments_and_records_the_stage() -> None:
    health = ServiceHealth()
    received: list[tuple[int, str]] = []

    async def task(number: int, word: str) -> None:
        received.append((number, word))

    await run_stage(health, "task", task, 7, "seven")
    assert received == [(7, "seven")]
    assert health.stages["task"] is StageState.STOPPED


def test_task_name_of_a_partial_is_its_function() -> None:
    async def serve(port: int) -> None:
        return None

    assert task_name(serve) == "serve"
    assert task_name(functools.partial(serve, 1)) == "serve"


async def test_the_arguments_of_a_stage_are_type_checked() -> None:
    """mypy checks every stage start against the stage's function, as anyio's `start_soon`
    does: the two wrong calls below are flagged, and since mypy runs strict over the tests
    (an unused `type: ignore` is an error), `make test` fails if that checking is ever lost.
    At run time they do what such mistakes do."""
    health = ServiceHealth()
    received: list[tuple[int, str]] = []

    async def stage(number: int, word: str) -> None:
        received.append((number, word))

    async with anyio.create_task_group() as group:
        group.start_soon(run_stage, health, "right", stage, 7, "seven")
        group.start_soon(run_stage, health, "swapped", stage, "seven", 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await run_stage(health, "missing", stage, 7)  # type: ignore[arg-type]
    assert sorted(received, key=str) == [("seven", 7), (7, "seven")]
    assert health.stages["missing"] is StageState.CRASHED
