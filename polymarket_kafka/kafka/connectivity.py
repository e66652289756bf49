"""Is Kafka reachable? One WARNING when it goes away, a reminder while it stays away, one INFO
when it is back -- instead of a line for every failed connection attempt.

Measured before this module (bench/kafka_outage_logs.py): a 30 s broker outage produced ~130
lines, two per failed reconnection attempt (librdkafka's own `FAIL` line plus the same failure
through `error_cb`), and not one line saying that Kafka was back. The tracker turns the same
inputs into transitions; the publisher logs those and keeps each attempt at DEBUG.

Inputs are plain data, with times on the caller's monotonic clock; nothing here reads a clock,
logs or does I/O:

* client errors from librdkafka's `error_cb`, by name (`KafkaError.name()`). `_ALL_BROKERS_DOWN`
  is librdkafka's own verdict that no broker is connected (emitted once per transition, also
  at start-up when none can be reached). `_TRANSPORT`, `_RESOLVE`, `_AUTHENTICATION`, `_SSL`
  and `_TIMED_OUT` are the failure of one connection attempt to one broker: they say *why*
  (the latest is quoted), not *whether* -- in a cluster another broker may be up.
* the brokers `UP` in each statistics document of the current producer (`statistics`);
* successful delivery reports: the broker acknowledged, so it is reachable.

States: `unknown` (nothing seen yet), `up`, `suspect` (evidence of an outage, not confirmed)
and `down`. An outage is *confirmed* only when the evidence has lasted `confirm_seconds`
without a broker coming back: a reconnection blip (a broker closing an idle connection, a
producer that is still connecting, a metadata change after a broker restart -- seen with
Tansu for about a second) then logs nothing. So a flapping broker logs at most one WARNING and
one INFO per flap longer than `confirm_seconds`. While down, `tick` returns a reminder every
`reminder_seconds` after the confirmation (at most one per tick: a late tick never makes a
burst). Kafka is back at the first broker `UP` in the statistics or the first delivered event.

`RepeatLimiter` is the same idea for lines that are not about connectivity: the first of a run
of repeated lines goes through, then one per window, with how many were left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from polymarket_kafka.redact import hide_server_credentials
from polymarket_kafka.repeats import RepeatLimiter

__all__ = [
    "ALL_BROKERS_DOWN",
    "CONNECTION_ERRORS",
    "CameBack",
    "ConnectivityTracker",
    "RepeatLimiter",
    "StillDown",
    "Transition",
    "WentDown",
]

#: librdkafka's verdict that no broker is connected.
ALL_BROKERS_DOWN = "_ALL_BROKERS_DOWN"
#: The failure of one connection attempt to one broker (names as `KafkaError.name()` gives).
CONNECTION_ERRORS = frozenset(
    {ALL_BROKERS_DOWN, "_TRANSPORT", "_RESOLVE", "_AUTHENTICATION", "_SSL", "_TIMED_OUT"}
)

_State = Literal["unknown", "up", "suspect", "down"]


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def _pending(n: int) -> str:
    return "no event pending" if n == 0 else f"{n} event{'' if n == 1 else 's'} pending"


def _errors(n: int) -> str:
    return f"{n} failed connection attempt{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class _Outage:
    """What both outage lines say: why, where, the latest error, for how long, what waits."""

    reason: str
    brokers: str
    last_error: str | None
    down_seconds: float
    pending: int


@dataclass(frozen=True)
class WentDown(_Outage):
    """Kafka has been unreachable for `down_seconds` (at least `confirm_seconds`): a WARNING."""

    #: True when no broker was ever reached since the start.
    never_connected: bool

    def message(self) -> str:
        since = " since start-up" if self.never_connected else ""
        text = (
            f"Kafka unreachable{since} for {_seconds(self.down_seconds)}: {self.reason} "
            f"(bootstrap servers {self.brokers})"
        )
        if self.last_error:
            text += f"; last error: {self.last_error}"
        kept = ", kept and re-sent once it is back" if self.pending else ""
        return (
            f"{text}; {_pending(self.pending)}{kept} "
            "(connection errors are logged at DEBUG until then)"
        )


@dataclass(frozen=True)
class StillDown(_Outage):
    """Kafka is still unreachable, `down_seconds` after the outage began: a WARNING reminder."""

    errors: int

    def message(self) -> str:
        text = (
            f"Kafka still unreachable after {_seconds(self.down_seconds)}: {self.reason} "
            f"(bootstrap servers {self.brokers}); {_pending(self.pending)}; "
            f"{_errors(self.errors)}"
        )
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return text


@dataclass(frozen=True)
class CameBack:
    """Kafka is reachable again after an outage of `down_seconds`: an INFO."""

    down_seconds: float
    #: What showed it: `"statistics: 1/1 brokers up"` or `"an event was delivered"`.
    via: str
    errors: int

    def message(self) -> str:
        return (
            f"Kafka reachable again after {_seconds(self.down_seconds)} down ({self.via}); "
            f"{_errors(self.errors)} during the outage"
        )


Transition = WentDown | StillDown | CameBack


class ConnectivityTracker:
    """The connectivity of the publisher's producers (across replacements), as transitions.

    Call `connection_error`, `statistics` and `delivered` as the inputs arrive, and `tick`
    regularly (the publisher ticks after every batch of reports: at least once per statistics
    interval). `brokers` (the bootstrap servers) is quoted in the messages, with any user-info
    hidden (`redact.hide_server_credentials`). `outages` counts the confirmed outages.
    """

    def __init__(self, brokers: str, *, confirm_seconds: float, reminder_seconds: float) -> None:
        if confirm_seconds < 0:
            raise ValueError("confirm_seconds must be >= 0")
        if reminder_seconds <= 0:
            raise ValueError("reminder_seconds must be > 0")
        self.brokers = hide_server_credentials(brokers)
        self.confirm_seconds = confirm_seconds
        self.reminder_seconds = reminder_seconds
        self.outages = 0
        self._state: _State = "unknown"
        self._ever_up = False
        self._since = 0.0  # first evidence of the current (suspected) outage
        self._reason = ""
        self._last_error: str | None = None
        self._errors = 0  # failed connection attempts since `_since`
        self._next_reminder = 0.0

    @property
    def state(self) -> _State:
        """`unknown`, `up`, `suspect` (not confirmed yet) or `down`."""
        return self._state

    def connection_error(self, name: str, text: str, now: float) -> bool:
        """A client error named `name` (e.g. `_TRANSPORT`) with librdkafka's `text`.

        Returns False when it is not about connectivity (not in `CONNECTION_ERRORS`): the caller
        reports it itself. `_ALL_BROKERS_DOWN` starts a suspected outage; the others are only
        remembered (the latest is quoted as the reason) and counted while Kafka is not up.
        """
        if name not in CONNECTION_ERRORS:
            return False
        if name == ALL_BROKERS_DOWN:
            self._suspect("all brokers down", now)
        else:
            self._last_error = text
            if self._state in ("suspect", "down"):
                self._errors += 1
        return True

    def statistics(self, brokers_up: int, brokers_total: int, now: float) -> CameBack | None:
        """The brokers `UP` among `brokers_total` in the current producer's latest statistics."""
        if brokers_up > 0:
            return self._up(f"statistics: {brokers_up}/{brokers_total} brokers up", now)
        if brokers_total > 0:
            self._suspect("no broker up in the producer's statistics", now)
        return None

    def delivered(self, now: float) -> CameBack | None:
        """A successful delivery report: Kafka acknowledged an event."""
        return self._up("an event was delivered", now)

    def tick(self, now: float, pending: int) -> WentDown | StillDown | None:
        """Confirm a suspected outage, or remind that it goes on; `pending`: events waiting."""
        if self._state == "suspect" and now - self._since >= self.confirm_seconds:
            self._state = "down"
            self.outages += 1
            self._next_reminder = now + self.reminder_seconds
            return WentDown(*self._outage(now, pending), never_connected=not self._ever_up)
        if self._state == "down" and now >= self._next_reminder:
            while self._next_reminder <= now:  # on a fixed schedule, whatever the tick rate
                self._next_reminder += self.reminder_seconds
            return StillDown(*self._outage(now, pending), errors=self._errors)
        return None

    def _outage(self, now: float, pending: int) -> tuple[str, str, str | None, float, int]:
        """The fields every outage line shares, in `_Outage`'s order, as they stand at `now`."""
        return self._reason, self.brokers, self._last_error, now - self._since, pending

    def _suspect(self, reason: str, now: float) -> None:
        if self._state in ("unknown", "up"):
            self._state = "suspect"
            self._since = now
            self._reason = reason
            self._errors = 0
        elif reason == "all brokers down":
            self._reason = reason  # librdkafka's verdict is the better reason

    def _up(self, via: str, now: float) -> CameBack | None:
        was, self._state = self._state, "up"
        self._ever_up = True
        errors, self._errors, self._last_error = self._errors, 0, None
        if was != "down":
            return None  # never confirmed: a blip is not news
        return CameBack(max(0.0, now - self._since), via, errors)
