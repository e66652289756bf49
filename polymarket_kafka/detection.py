"""Conviction-change detection: a pure state machine over market snapshots.

Why this file is over 400 lines: one state machine (observe, confirm, glitch, close, reload)
over one per-market state; its parts share that state's invariants, and issue 12 rewrites it
whole.

The detector never reads a clock, never logs and never does I/O. The caller feeds it
snapshots with `observe(snapshot, rules, now)` and gets back the conviction changes to publish
(a list, usually empty). The same code runs in the service and in `replay`, so a replay of a
recorded history emits exactly what the service would have. The parameters come from the
rule engine (`ruleset.RuleSet.resolve(snapshot)`), resolved per market on every snapshot.

Design:

* **Watch guards.** A disabled market, or one whose known liquidity/volume is below the
  `watch` minimums, has no state and emits nothing. A snapshot whose known spread is wider
  than `max_spread` (a thin book's midpoint is not a price anyone trades at) or that is older
  than `max_data_age` when it arrives (`now - taken_at`) is ignored — not even recorded.
* **Baseline.** The first snapshot of a market sets its baseline and emits nothing.
* **Rolling window.** A move is measured from the observation farthest from the current
  price among those within `window`, plus always the previous observation: with 1-minute
  polling the window decides, with coarse data (or after an outage) consecutive points still
  compare, and `window_seconds` on the event says how long the move took.
* **Qualifying move.** |Δp| ≥ `floor` and, combined by `any`/`all`, |Δp| ≥ `abs` and
  |Δlogit(p)| ≥ `log_odds`. Log-odds make 0.02 → 0.06 as strong as 0.50 → 0.60; the
  absolute `floor` keeps a market pinned at 0.99 from firing on tick noise, where log-odds
  alone would explode.
* **Confirmation (glitch guard).** The first qualifying poll only opens a *pending* move with
  its baseline fixed. Every following poll must show the move persisting: same direction, at
  least `confirm.retain` of the first crossing still standing, and at least `floor`. It fires
  on the poll where `confirm.polls` polls have seen it and `confirm.for` has elapsed. A poll
  where it retraced makes it a glitch: dropped, counted, and the market re-baselines at the
  current price, so the spike is never anyone's baseline afterwards.
* **Re-anchoring and cooldown.** After an event the window restarts at the event price, and
  for `cooldown` nothing new starts (observations are still recorded): an oscillating price
  cannot spam, and a move that persists past the cooldown fires once.
* **Hysteresis (re-arm).** Within one window after an event, a move *against* it is judged
  as if `hysteresis` smaller, so a price that jumps and sags back a little does not fire the
  mirror event.
* **Out of order / repeats.** A snapshot not newer than the last one seen is ignored, so
  re-delivering the same snapshot never fires twice.
* **Closing.** A tracked market that reports `closed` emits one final event (rule
  `market_closed`, `final=True`), measured from its oldest retained observation, and is then
  dropped; later snapshots of it are ignored. A market already closed when first seen emits
  nothing: we never saw it trade. The final price is the closing snapshot's outcome price,
  except for a market that resolved with no winner (`resolution == "void"`): its outcome
  prices are `["0", "0"]`, so its final event reports the last price observed instead.
* **Reloads.** `apply_rules(new_rules)` keeps the state of every market whose state-shaping
  parameters (`DetectionParams.state_key`) are unchanged. The others keep the prices they
  observed and are re-evaluated under the new parameters (window trimmed, cooldown recomputed,
  a pending move kept while it still qualifies), so a reload loses no pending move that the
  new rules would also see; a market the new rules do not watch is dropped. Every market
  that changed is returned, so the caller can log it. A change of tier or category between
  snapshots applies the new parameters to the existing state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from polymarket_kafka.detector_state import ClosedMarket, MarketState, PendingMove
from polymarket_kafka.models import ConvictionDirection, MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams, ResolvedRule

__all__ = [
    "CLOSED_RULE",
    "MAX_CLOSED_MARKETS",
    "ConvictionChange",
    "Detector",
    "DetectorStats",
    "RuleSource",
    "StateReset",
    "log_odds",
    "qualifies",
    "severity_of",
]

CLOSED_RULE = "market_closed"
#: Default bound of `Detector.max_closed`.
MAX_CLOSED_MARKETS = 100_000

# Prices are quoted on a 0.001 tick at best; comparing at 1e-9 absorbs float noise such as
# 0.60 - 0.55 = 0.04999999999999993 without ever merging two distinct ticks.
_PRECISION = 9
_LOGIT_CLAMP = 0.001


def log_odds(price: float) -> float:
    """logit(p) with p clamped to [0.001, 0.999], so 0 and 1 stay finite."""
    p = min(max(price, _LOGIT_CLAMP), 1.0 - _LOGIT_CLAMP)
    return math.log(p / (1.0 - p))


def _at_least(value: float, threshold: float) -> bool:
    return round(value, _PRECISION) >= round(threshold, _PRECISION)


def qualifies(baseline: float, price: float, params: DetectionParams) -> bool:
    """Whether a move from `baseline` to `price` is a conviction change under `params`."""
    move = abs(price - baseline)
    if not _at_least(move, params.floor) or move == 0:
        return False
    by_abs = _at_least(move, params.abs_move)
    by_log_odds = _at_least(abs(log_odds(price) - log_odds(baseline)), params.log_odds_move)
    if params.combine == "all":
        return by_abs and by_log_odds
    return by_abs or by_log_odds


def severity_of(baseline: float, price: float, params: DetectionParams) -> str:
    """The highest severity band the move reaches (the first band when it reaches none)."""
    move = abs(price - baseline)
    logit_move = abs(log_odds(price) - log_odds(baseline))
    reached = params.severity[0].name if params.severity else ""
    for band in params.severity[1:]:
        by_abs = band.abs_move is not None and _at_least(move, band.abs_move)
        by_log_odds = band.log_odds_move is not None and _at_least(logit_move, band.log_odds_move)
        if by_abs or by_log_odds:
            reached = band.name
    return reached


class RuleSource(Protocol):
    """What the detector needs from the rule engine (see `ruleset.RuleSet`)."""

    @property
    def version(self) -> str: ...

    def resolve(self, snapshot: MarketSnapshot) -> ResolvedRule: ...


@dataclass(frozen=True)
class ConvictionChange:
    """A detected conviction change: what the event builder turns into a `PolymarketEvent`."""

    snapshot: MarketSnapshot
    rule: str
    baseline_price: float
    baseline_at: datetime
    final: bool = False
    severity: str | None = None
    resolved: ResolvedRule | None = None
    #: Set when the move spans a gap in observation (after a restore): the gap's length.
    gap_seconds: float | None = None

    @property
    def market_id(self) -> str:
        return self.snapshot.market_id

    @property
    def price(self) -> float:
        return self.snapshot.yes_price

    @property
    def observed_at(self) -> datetime:
        return self.snapshot.taken_at

    @property
    def price_change(self) -> float:
        """Signed move of the YES price, rounded to absorb float noise."""
        return round(self.price - self.baseline_price, _PRECISION)

    @property
    def direction(self) -> ConvictionDirection:
        change = self.price_change
        if change > 0 or (change == 0 and self.price >= 0.5):
            return ConvictionDirection.TOWARD_YES
        return ConvictionDirection.TOWARD_NO

    @property
    def log_odds_change(self) -> float:
        return log_odds(self.price) - log_odds(self.baseline_price)

    @property
    def window_seconds(self) -> float:
        return max(0.0, (self.observed_at - self.baseline_at).total_seconds())


@dataclass(frozen=True)
class StateReset:
    """A market whose state-shaping parameters a reload changed: re-evaluated under the new
    ones (its prices kept), or dropped when the new rules no longer watch it."""

    market_id: str
    old_state_key: str
    new_state_key: str | None  # None: the market is no longer watched under the new rules
    #: True when a pending move no longer qualified under the new thresholds and was dropped.
    pending_dropped: bool = False


@dataclass
class DetectorStats:
    """Plain counters of what the detector dropped (exported by the metrics layer)."""

    glitches: int = 0
    stale: int = 0
    thin_book: int = 0
    unwatched: int = 0
    resets: int = 0


@dataclass
class _Pending:
    baseline_at: datetime
    baseline_price: float
    first_at: datetime
    first_move: float
    polls: int = 1


@dataclass
class _MarketState:
    history: deque[tuple[datetime, float]]
    last_snapshot: MarketSnapshot
    state_key: str
    cooldown_until: datetime | None = None
    pending: _Pending | None = None
    #: (time, sign) of the last event, for hysteresis.
    last_event: tuple[datetime, int] | None = None
    #: Restored (`restore_state`) and not observed since: the next observation ends a gap.
    resumed: bool = False
    #: (last observation before the gap, its length in seconds) while a move measured from
    #: before the gap can still fire: such a move is a catch-up (not part of the exported
    #: state: it marks events, it does not decide them).
    gap: tuple[datetime, float] | None = None

    @property
    def last_seen(self) -> datetime:
        return self.last_snapshot.taken_at


@dataclass
class Detector:
    """Per-market detection state. Pure: no clock, no I/O; `now` is always passed in."""

    stats: DetectorStats = field(default_factory=DetectorStats)
    #: How many closed markets are remembered (oldest forgotten first). Remembering one only
    #: saves evaluating its snapshots: its state was dropped when its final event was built,
    #: so a forgotten closed market that is polled again re-enters as closed, with no event.
    max_closed: int = MAX_CLOSED_MARKETS
    _markets: dict[str, _MarketState] = field(default_factory=dict)
    #: Closed markets in the order they closed (a dict is an insertion-ordered set).
    _closed: dict[str, None] = field(default_factory=dict)

    def observe(
        self, snapshot: MarketSnapshot, rules: RuleSource, now: datetime
    ) -> list[ConvictionChange]:
        """Feed one snapshot; return the conviction changes it triggers (usually none)."""
        market_id = snapshot.market_id
        if market_id in self._closed:
            return []
        resolved = rules.resolve(snapshot)
        params = resolved.params
        state = self._markets.get(market_id)
        if snapshot.closed:
            return self._close(snapshot, state, resolved)
        if not _watched(snapshot, params):
            self.stats.unwatched += 1
            self._markets.pop(market_id, None)
            return []
        if snapshot.spread is not None and snapshot.spread > params.max_spread:
            self.stats.thin_book += 1
            return []
        if (now - snapshot.taken_at).total_seconds() > params.max_data_age_seconds:
            self.stats.stale += 1
            return []

        at, price = snapshot.taken_at, snapshot.yes_price
        if state is None:
            self._markets[market_id] = _MarketState(
                history=deque([(at, price)]), last_snapshot=snapshot, state_key=params.state_key
            )
            return []
        if at <= state.last_seen:
            return []
        rebaseline = state.resumed and params.catch_up == "rebaseline"
        _end_resumption(state, at)
        state.last_snapshot = snapshot
        state.state_key = params.state_key
        if rebaseline:
            # The rule wants no catch-up: what happened while the service was down is not
            # reported, this price is the new baseline (the cooldown stands).
            state.history = deque([(at, price)])
            state.pending = None
            state.gap = None
            return []
        _trim(state.history, at, params.window_seconds)
        _end_gap_if_behind(state)

        if state.pending is not None:
            return self._confirm(state, state.pending, snapshot, resolved)

        return self._evaluate(state, snapshot, resolved)

    def _evaluate(
        self, state: _MarketState, snapshot: MarketSnapshot, resolved: ResolvedRule
    ) -> list[ConvictionChange]:
        """No move pending: open one if this snapshot's move qualifies."""
        params = resolved.params
        at, price = snapshot.taken_at, snapshot.yes_price
        baseline_at, baseline_price = _farthest(state.history, price)
        state.history.append((at, price))
        if state.cooldown_until is not None and at < state.cooldown_until:
            return []
        judged = _handicapped(state, at, baseline_price, price, params)
        if not qualifies(baseline_price, judged, params):
            return []
        state.pending = _Pending(
            baseline_at=baseline_at,
            baseline_price=baseline_price,
            first_at=at,
            first_move=price - baseline_price,
        )
        return self._confirm_if_due(state, state.pending, snapshot, resolved)

    def _confirm(
        self,
        state: _MarketState,
        pending: _Pending,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
    ) -> list[ConvictionChange]:
        params = resolved.params
        at, price = snapshot.taken_at, snapshot.yes_price
        pending.polls += 1
        move = price - pending.baseline_price
        # Persistence, not re-qualification: a move that keeps `retain` of its first crossing
        # (and the floor) is confirmed even if it sagged a little below the threshold.
        holds = (
            move * pending.first_move > 0
            and _at_least(abs(move), params.confirm_retain * abs(pending.first_move))
            and _at_least(abs(move), params.floor)
        )
        if not holds:
            return self._glitch(state, pending, snapshot, resolved)
        state.history.append((at, price))
        return self._confirm_if_due(state, pending, snapshot, resolved)

    def _glitch(
        self,
        state: _MarketState,
        pending: _Pending,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
    ) -> list[ConvictionChange]:
        """The pending move retraced: it was a glitch. Its polls never become a baseline."""
        self.stats.glitches += 1
        state.pending = None
        at, price = snapshot.taken_at, snapshot.yes_price
        before = deque(obs for obs in state.history if obs[0] < pending.first_at)
        if (price - pending.baseline_price) * pending.first_move < 0 and before:
            # Through the baseline to the other side: a move in its own right, measured from
            # the observations before the spike.
            state.history = before
            return self._evaluate(state, snapshot, resolved)
        # Back part way on the spike's side: the level is unknowable, measure from here.
        state.history = deque([(at, price)])
        state.gap = None
        return []

    def _confirm_if_due(
        self,
        state: _MarketState,
        pending: _Pending,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
    ) -> list[ConvictionChange]:
        params = resolved.params
        at, price = snapshot.taken_at, snapshot.yes_price
        elapsed = (at - pending.first_at).total_seconds()
        if pending.polls < params.confirm_polls or elapsed < params.confirm_seconds:
            return []
        state.pending = None
        state.history = deque([(at, price)])
        state.cooldown_until = _after(at, params.cooldown_seconds)
        state.last_event = (at, 1 if price > pending.baseline_price else -1)
        gap_seconds = _gap_spanned(state, pending.baseline_at)
        state.gap = None  # measured from here on
        return [
            ConvictionChange(
                snapshot=snapshot,
                rule=params.name,
                baseline_price=pending.baseline_price,
                baseline_at=pending.baseline_at,
                severity=severity_of(pending.baseline_price, price, params),
                resolved=resolved,
                gap_seconds=gap_seconds,
            )
        ]

    def _close(
        self, snapshot: MarketSnapshot, state: _MarketState | None, resolved: ResolvedRule
    ) -> list[ConvictionChange]:
        self._closed[snapshot.market_id] = None
        while len(self._closed) > self.max_closed:
            del self._closed[next(iter(self._closed))]
        self._markets.pop(snapshot.market_id, None)
        if state is None:
            return []
        if snapshot.resolution == "void":
            # No winner: Gamma's ["0", "0"] is no price, and reporting it would say NO won.
            # The last price observed is what the market said before it closed.
            snapshot = snapshot.model_copy(update={"yes_price": state.last_snapshot.yes_price})
        baseline_at, baseline_price = state.history[0]
        _end_resumption(state, snapshot.taken_at)  # it may have closed while we were down
        return [
            ConvictionChange(
                snapshot=snapshot,
                rule=CLOSED_RULE,
                baseline_price=baseline_price,
                baseline_at=baseline_at,
                final=True,
                severity=severity_of(baseline_price, snapshot.yes_price, resolved.params),
                resolved=resolved,
                gap_seconds=_gap_spanned(state, baseline_at),
            )
        ]

    def apply_rules(self, rules: RuleSource) -> list[StateReset]:
        """Adopt reloaded rules. A market whose state-shaping parameters changed keeps the
        prices it observed and is re-evaluated under the new ones (`_reshape`); one the new
        rules no longer watch is dropped. Returns every market that changed."""
        resets: list[StateReset] = []
        for market_id, state in list(self._markets.items()):
            params = rules.resolve(state.last_snapshot).params
            watched = _watched(state.last_snapshot, params)
            if watched and params.state_key == state.state_key:
                continue
            self.stats.resets += 1
            old_key = state.state_key
            if not watched:
                del self._markets[market_id]
                resets.append(StateReset(market_id, old_key, None))
                continue
            dropped = _reshape(state, params)
            resets.append(StateReset(market_id, old_key, params.state_key, dropped))
        return resets

    def export_state(self, market_id: str) -> MarketState | ClosedMarket | None:
        """What the detector holds about `market_id`, as plain data (`detector_state`), or
        None when it holds nothing. A copy: later observations do not change it."""
        if market_id in self._closed:
            return ClosedMarket(market_id)
        state = self._markets.get(market_id)
        if state is None:
            return None
        pending = state.pending
        return MarketState(
            market_id=market_id,
            state_key=state.state_key,
            history=tuple(state.history),
            last_snapshot=state.last_snapshot,
            cooldown_until=state.cooldown_until,
            pending=None if pending is None else PendingMove(**vars(pending)),
            last_event=state.last_event,
        )

    def restore_state(self, state: MarketState | ClosedMarket) -> None:
        """Take over `state` (from `export_state`, possibly of another process), replacing
        whatever the detector held about that market. A restored market is observed exactly
        as if the detector had never stopped (catch-up marking aside), unless its rule says
        `catch_up: rebaseline`: then its first observation after the restore is its new
        baseline, and nothing measured from before the restore fires (a pending move is
        dropped; only a close still gives the final event)."""
        market_id = state.market_id
        self.forget(market_id)
        if isinstance(state, ClosedMarket):
            self._closed[market_id] = None
            while len(self._closed) > self.max_closed:
                del self._closed[next(iter(self._closed))]
            return
        pending = state.pending
        self._markets[market_id] = _MarketState(
            history=deque(state.history),
            last_snapshot=state.last_snapshot,
            state_key=state.state_key,
            cooldown_until=state.cooldown_until,
            pending=None if pending is None else _Pending(**vars(pending)),
            last_event=state.last_event,
            resumed=True,
        )

    def forget(self, market_id: str) -> None:
        """Drop all state of a market (unsubscribed): a later snapshot starts afresh."""
        self._markets.pop(market_id, None)
        self._closed.pop(market_id, None)

    def tracked(self) -> frozenset[str]:
        """Markets with live detection state."""
        return frozenset(self._markets)

    def known(self) -> frozenset[str]:
        """Every market the detector holds anything about: tracked or remembered as closed."""
        return frozenset(self._markets) | frozenset(self._closed)

    def knows(self, market_id: str) -> bool:
        """True while the detector holds anything about the market (`known`, for one)."""
        return market_id in self._markets or market_id in self._closed

    def is_closed(self, market_id: str) -> bool:
        """True once a market's final event was emitted (it will not be tracked again)."""
        return market_id in self._closed

    def pending(self, market_id: str) -> bool:
        """True while a move of this market waits for confirmation."""
        state = self._markets.get(market_id)
        return state is not None and state.pending is not None


def _end_resumption(state: _MarketState, at: datetime) -> None:
    """The first observation `at` of a restored market ends the gap in observation."""
    if state.resumed:
        state.resumed = False
        state.gap = (state.last_seen, (at - state.last_seen).total_seconds())


def _gap_spanned(state: _MarketState, baseline_at: datetime) -> float | None:
    """The gap's length when a move from `baseline_at` spans it (a catch-up), else None."""
    if state.gap is None or baseline_at > state.gap[0]:
        return None
    return state.gap[1]


def _end_gap_if_behind(state: _MarketState) -> None:
    """Forget the gap once nothing observed before it can be a baseline any more."""
    gap = state.gap
    if gap is None or state.history[0][0] <= gap[0]:
        return
    if state.pending is None or state.pending.baseline_at > gap[0]:
        state.gap = None


def _reshape(state: _MarketState, params: DetectionParams) -> bool:
    """Re-evaluate `state` under new state-shaping parameters, losing no observed price:
    the window is trimmed to its new length, the cooldown recomputed from the last event, and
    a pending move kept while its latest price still qualifies from its baseline under the
    new thresholds (its polls count on). The next snapshot is then judged on the kept window
    as usual. Returns True when a pending move was dropped."""
    state.state_key = params.state_key
    _trim(state.history, state.last_seen, params.window_seconds)
    state.cooldown_until = (
        None if state.last_event is None else _after(state.last_event[0], params.cooldown_seconds)
    )
    pending = state.pending
    if pending is None:
        return False
    if qualifies(pending.baseline_price, state.last_snapshot.yes_price, params):
        return False
    state.pending = None
    return True


def _watched(snapshot: MarketSnapshot, params: DetectionParams) -> bool:
    if not params.enabled:
        return False
    if snapshot.liquidity is not None and snapshot.liquidity < params.min_liquidity:
        return False
    return snapshot.volume is None or snapshot.volume >= params.min_volume


def _trim(history: deque[tuple[datetime, float]], at: datetime, window_seconds: float) -> None:
    """Drop observations older than the window, but always keep the latest one."""
    horizon = at - timedelta(seconds=window_seconds)
    while len(history) > 1 and history[0][0] < horizon:
        history.popleft()


def _farthest(history: deque[tuple[datetime, float]], price: float) -> tuple[datetime, float]:
    """The observation farthest from `price` (the earliest on ties)."""
    best = history[0]
    best_distance = -1.0
    for at, past in history:
        distance = round(abs(price - past), _PRECISION)
        if distance > best_distance:
            best, best_distance = (at, past), distance
    return best


def _handicapped(
    state: _MarketState, at: datetime, baseline: float, price: float, params: DetectionParams
) -> float:
    """`price`, pulled back toward `baseline` by `hysteresis` when it reverses the last event
    within one window (never past the baseline)."""
    if state.last_event is None or params.hysteresis <= 0:
        return price
    event_at, sign = state.last_event
    if (at - event_at).total_seconds() > params.window_seconds or (price - baseline) * sign >= 0:
        return price
    pulled = price + sign * params.hysteresis
    return baseline if (pulled - baseline) * sign > 0 else pulled


def _after(at: datetime, seconds: float) -> datetime | None:
    if seconds <= 0:
        return None
    return at + timedelta(seconds=seconds)
