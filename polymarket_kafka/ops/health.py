"""Health of a running service: pure state, written by the service, read by the HTTP server.

The service (`run_service`) tells a `ServiceHealth` what happens -- a stage started or ended,
subscriptions were loaded or a refresh failed, a poll cycle finished, a stop was requested --
and the HTTP server asks it two questions, passing the time in:

* `live(now)`: should the process be restarted? Only if a stage ended while the service was
  not stopping (a crash, or a task that returned for no reason). Answering at all already
  proves the event loop runs, since the HTTP server shares it. A draining service stays live.
* `ready(now)`: is it doing its job? Kafka connected and delivering (a check the application
  adds), subscriptions loaded at least once, a successful poll cycle within twice the poll
  interval (a cycle in which Polymarket did not answer is not one), every stage running and
  no stop requested.

Nothing here does I/O or reads a clock: `now` is monotonic seconds on the event loop's clock
(`anyio.current_time()`), the same clock the service stamps poll cycles with, so transitions
are tested with plain numbers. Every text that leaves through a report -- details and the
strings inside `extra` -- goes through the log formatter's `redact.Redactor`: error messages
(from a store, a broker, Polymarket, a crashed task) may quote a configured password or a URL
with user-info.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from polymarket_kafka.redact import Redactor

__all__ = ["ComponentStatus", "HealthReport", "ServiceHealth", "StageState"]

#: Ready needs a poll cycle that finished within this many poll intervals.
POLL_FRESHNESS_INTERVALS = 2.0


@dataclass(frozen=True)
class ComponentStatus:
    """One component of a report: ok or not, a one-line `detail`, optional `extra` fields."""

    ok: bool
    detail: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """`{"status": "ok"|"fail", "detail": ..., **extra}`."""
        return {"status": "ok" if self.ok else "fail", "detail": self.detail, **self.extra}


@dataclass(frozen=True)
class HealthReport:
    """The answer to one health question: ok iff every component is ok."""

    ok: bool
    components: Mapping[str, ComponentStatus]

    @classmethod
    def of(cls, components: Mapping[str, ComponentStatus]) -> HealthReport:
        """A report whose `ok` is the conjunction of its components'."""
        return cls(all(c.ok for c in components.values()), dict(components))

    def to_json(self) -> dict[str, Any]:
        """`{"status": "ok"|"fail", "components": {name: component.to_json()}}`."""
        return {
            "status": "ok" if self.ok else "fail",
            "components": {name: c.to_json() for name, c in self.components.items()},
        }


class StageState(enum.Enum):
    """Where a long-lived task of the service is."""

    RUNNING = "running"
    #: Ended without an error: returned, or cancelled (a stop, or the service shutting down).
    STOPPED = "stopped"
    #: Ended with an exception.
    CRASHED = "crashed"


@dataclass
class _Stage:
    state: StageState = StageState.RUNNING
    error: str | None = None

    def describe(self) -> str:
        return self.state.value if self.error is None else f"{self.state.value}: {self.error}"


class ServiceHealth:
    """What one run of the service did, as far as health is concerned.

    Mutated on the event loop thread only (by `run_service` and its stages); read by the HTTP
    server on the same thread, so no locking is needed. `poll_interval_seconds` is set by
    `run_service` from its settings. `secrets` and the user-info of any URL are replaced by
    `***` in every report (the same `redact.Redactor` as the log lines).
    """

    def __init__(self, *, poll_interval_seconds: float = 30.0, secrets: Sequence[str] = ()) -> None:
        self.poll_interval_seconds = poll_interval_seconds
        self._redact = Redactor(secrets)
        self._stages: dict[str, _Stage] = {}
        self._checks: dict[str, Callable[[], ComponentStatus]] = {}
        self._stopping = False
        self._subscriptions_loaded = False
        self._active_markets = 0
        self._refresh_failures = 0
        self._refresh_error: str | None = None
        self._last_poll: float | None = None
        self._poll_error: str | None = None

    # --- written by the service ------------------------------------------------------------

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Track the task running inside the block as stage `name` (running until it exits).

        An exception marks it crashed (with the error text) and propagates; a normal exit or
        a cancellation (any `BaseException` that is not an `Exception`) marks it stopped.
        """
        stage = self._stages[name] = _Stage()
        try:
            yield
        except Exception as exc:
            stage.state, stage.error = StageState.CRASHED, f"{type(exc).__name__}: {exc}"
            raise
        except BaseException:
            stage.state = StageState.STOPPED
            raise
        stage.state = StageState.STOPPED

    def mark_stopping(self) -> None:
        """A stop was requested (or the sources ended): not ready any more; stages may end."""
        self._stopping = True

    def record_subscriptions(self, active_markets: int) -> None:
        """A subscription refresh succeeded with `active_markets` active subscriptions."""
        self._subscriptions_loaded = True
        self._active_markets = active_markets
        self._refresh_failures = 0
        self._refresh_error = None

    def record_refresh_failure(self, error: str) -> int:
        """A subscription refresh failed with `error` (the last loaded set stays in force).

        Returns how many refreshes failed in a row, this one included.
        """
        self._refresh_failures += 1
        self._refresh_error = error
        return self._refresh_failures

    def record_poll(self, now: float) -> None:
        """A poll cycle succeeded, finishing at monotonic time `now`."""
        self._last_poll = now
        self._poll_error = None

    def record_poll_failure(self, error: str) -> None:
        """A poll cycle failed with `error`, or Polymarket did not answer it (the next tick
        retries); the last successful cycle keeps ageing."""
        self._poll_error = error

    def add_check(self, name: str, check: Callable[[], ComponentStatus]) -> None:
        """Add component `name` to `ready`: `check()` is called on every readiness request.

        It must not block (no I/O). An exception it raises makes the component fail.
        """
        self._checks[name] = check

    # --- read by the HTTP server -----------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping

    @property
    def stages(self) -> dict[str, StageState]:
        """The state of every stage seen so far."""
        return {name: stage.state for name, stage in self._stages.items()}

    def live(self, now: float) -> HealthReport:
        """Liveness: every stage running, or ended without error while stopping."""
        del now  # liveness does not age: a stalled poller is a readiness matter
        return HealthReport.of({"stages": self._stages_status(for_ready=False)})

    def ready(self, now: float) -> HealthReport:
        """Readiness: added checks (e.g. "kafka"), "subscriptions", "polling", "stages"."""
        components = {name: self._run_check(check) for name, check in self._checks.items()}
        components["subscriptions"] = self._subscriptions_status()
        components["polling"] = self._polling_status(now)
        components["stages"] = self._stages_status(for_ready=True)
        return HealthReport.of(components)

    # --- components ------------------------------------------------------------------------

    def _scrub_value(self, value: Any) -> Any:
        """`value` with every string in it scrubbed (mappings and sequences recursively)."""
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, Mapping):
            return {self._scrub_value(k): self._scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub_value(item) for item in value]
        return value

    def _run_check(self, check: Callable[[], ComponentStatus]) -> ComponentStatus:
        try:
            status = check()
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed component
            detail = f"check failed: {type(exc).__name__}: {exc}"
            return ComponentStatus(False, self._redact(detail))
        extra = self._scrub_value(status.extra)
        return ComponentStatus(status.ok, self._redact(status.detail), extra)

    def _stages_status(self, *, for_ready: bool) -> ComponentStatus:
        described = {name: self._redact(stage.describe()) for name, stage in self._stages.items()}
        extra = {"stages": described}
        crashed = [n for n, s in self._stages.items() if s.state is StageState.CRASHED]
        ended = [n for n, s in self._stages.items() if s.state is StageState.STOPPED]
        if crashed:
            detail = "; ".join(f"{name} {described[name]}" for name in crashed)
            return ComponentStatus(False, detail, extra)
        if self._stopping:
            # Draining is healthy (live) but no longer serving (ready).
            return ComponentStatus(not for_ready, "stopping: draining the pipeline", extra)
        if ended:
            return ComponentStatus(False, f"stopped unexpectedly: {', '.join(ended)}", extra)
        return ComponentStatus(True, f"{len(self._stages)} stages running", extra)

    def _subscriptions_status(self) -> ComponentStatus:
        extra: dict[str, Any] = {
            "loaded": self._subscriptions_loaded,
            "active_markets": self._active_markets,
            "consecutive_failures": self._refresh_failures,
        }
        failing = ""
        if self._refresh_error is not None:
            error = self._redact(self._refresh_error)
            extra["last_error"] = error
            failing = f"; latest refresh failed ({self._refresh_failures} in a row): {error}"
        if not self._subscriptions_loaded:
            return ComponentStatus(False, f"subscriptions not loaded{failing}", extra)
        markets = f"{self._active_markets} active market{'' if self._active_markets == 1 else 's'}"
        return ComponentStatus(True, f"{markets}{failing}", extra)

    def _polling_status(self, now: float) -> ComponentStatus:
        limit = POLL_FRESHNESS_INTERVALS * self.poll_interval_seconds
        extra: dict[str, Any] = {"max_age_seconds": limit}
        failing = ""
        if self._poll_error is not None:
            extra["last_error"] = error = self._redact(self._poll_error)
            failing = f"; latest cycle failed: {error}"
        if self._last_poll is None:
            return ComponentStatus(False, f"no successful poll cycle yet{failing}", extra)
        age = max(0.0, now - self._last_poll)
        extra["age_seconds"] = round(age, 3)
        detail = f"last successful poll cycle {age:.1f}s ago (limit {limit:g}s){failing}"
        return ComponentStatus(age <= limit, detail, extra)
