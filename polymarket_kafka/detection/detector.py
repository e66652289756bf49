"""The detector: one state machine per market over its snapshots (pure).

Why this file is over 400 lines: one state machine (observe, confirm, glitch, close, reload,
export/restore) over one per-market state; its parts share that state's invariants, and the
hot path is written inline on purpose (a quiet observation must cost a few microseconds).

`Detector.observe(snapshot, rules, now)` takes a snapshot and returns the conviction changes
to publish (a list, usually empty). It never reads a clock, never logs and never does I/O;
the same code runs in the service and in `replay`. The design is described in the package
docstring (`polymarket_kafka.detection`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from polymarket_kafka.detection.changes import ConvictionChange, DetectorStats, StateReset
from polymarket_kafka.detection.moves import (
    PRECISION,
    at_least,
    qualifies,
    required_move,
    severity_of,
)
from polymarket_kafka.detection.window import MarketWindow, bucket_width
from polymarket_kafka.detector_state import ClosedMarket, MarketState, PendingMove
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams, ResolvedRule

__all__ = ["CLOSED_RULE", "MAX_CLOSED_MARKETS", "Detector", "RuleSource", "resolution_key"]

CLOSED_RULE = "market_closed"
#: Default bound of `Detector.max_closed`.
MAX_CLOSED_MARKETS = 100_000


class RuleSource(Protocol):
    """What the detector needs from the rule engine (see `ruleset.RuleSet`).

    `resolve` must depend only on the snapshot's market id, liquidity, volume, category, tags
    and subscription overrides (`threshold`, `window_seconds`, `cooldown_seconds`): the
    detector reuses a market's resolution while those and the rule source are unchanged.
    """

    @property
    def version(self) -> str: ...

    def resolve(self, snapshot: MarketSnapshot) -> ResolvedRule: ...


def resolution_key(snapshot: MarketSnapshot) -> tuple[object, ...]:
    """What a resolution depends on besides the market id (see `RuleSource`)."""
    return (
        snapshot.liquidity,
        snapshot.volume,
        snapshot.category,
        snapshot.tags,
        snapshot.threshold,
        snapshot.window_seconds,
        snapshot.cooldown_seconds,
    )


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _MarketState:
    """Everything the detector holds about one tracked market (times: float seconds)."""

    __slots__ = (
        "cooldown_until",
        "gap",
        "last_at",
        "last_event",
        "last_price",
        "last_snapshot",
        "pending",
        "previous_at",
        "previous_price",
        "resolution",
        "resumed",
        "state_key",
        "window",
    )

    def __init__(
        self,
        window: MarketWindow,
        last_snapshot: MarketSnapshot,
        state_key: str,
        *,
        previous: tuple[float, float] | None = None,
        cooldown_until: float | None = None,
        pending: PendingMove | None = None,
        last_event: tuple[float, int] | None = None,
        resumed: bool = False,
    ) -> None:
        self.window = window
        self.last_snapshot = last_snapshot
        self.last_at = last_snapshot.taken_at.timestamp()
        self.last_price = last_snapshot.yes_price
        self.state_key = state_key
        #: The observation before the last one (time, price): a ramp is judged with it.
        self.previous_at: float | None = None if previous is None else previous[0]
        self.previous_price = 0.0 if previous is None else previous[1]
        self.cooldown_until = cooldown_until
        self.pending: _Pending | None = None if pending is None else _Pending(**vars(pending))
        #: (time, sign) of the last event, for hysteresis.
        self.last_event = last_event
        #: Restored (`restore_state`) and not observed since: the next observation ends a gap.
        self.resumed = resumed
        #: (last observation before the gap, its length in seconds) while a move measured
        #: from before the gap can still fire: such a move is a catch-up (not part of the
        #: exported state: it marks events, it does not decide them).
        self.gap: tuple[float, float] | None = None
        #: (rule source, resolution key, resolved rule, watched) of the last resolution.
        self.resolution: tuple[object, tuple[object, ...], ResolvedRule, bool] | None = None


class _Pending:
    """A move seen once and waiting for confirmation."""

    __slots__ = ("baseline_at", "baseline_price", "first_at", "first_move", "polls")

    def __init__(
        self,
        baseline_at: float,
        baseline_price: float,
        first_at: float,
        first_move: float,
        polls: int = 1,
    ) -> None:
        self.baseline_at = baseline_at
        self.baseline_price = baseline_price
        self.first_at = first_at
        self.first_move = first_move
        self.polls = polls

    def exported(self) -> PendingMove:
        return PendingMove(
            self.baseline_at, self.baseline_price, self.first_at, self.first_move, self.polls
        )


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
        state = self._markets.get(market_id)
        # The market's resolution is reused while the rule source and what it depends on are
        # unchanged (`RuleSource`): resolving costs more than the rest of a quiet observation.
        key = resolution_key(snapshot)
        memo = None if state is None else state.resolution
        if memo is not None and memo[0] is rules and memo[1] == key:
            resolved, watched = memo[2], memo[3]
        else:
            resolved = rules.resolve(snapshot)
            watched = _watched(snapshot, resolved.params)
            if state is not None:
                state.resolution = (rules, key, resolved, watched)
        params = resolved.params
        if snapshot.closed:
            return self._close(snapshot, state, resolved)
        if not watched:
            self.stats.unwatched += 1
            self._markets.pop(market_id, None)
            return []
        if snapshot.spread is not None and snapshot.spread > params.max_spread:
            self.stats.thin_book += 1
            return []
        if (now - snapshot.taken_at).total_seconds() > params.max_data_age_seconds:
            self.stats.stale += 1
            return []

        at, price = snapshot.taken_at.timestamp(), snapshot.yes_price
        if state is None:
            state = _MarketState(MarketWindow.start(at, price, params), snapshot, params.state_key)
            state.resolution = (rules, key, resolved, watched)
            self._markets[market_id] = state
            return []
        if at <= state.last_at:
            return []
        if state.state_key != params.state_key:
            # Another tier, category or override since the last snapshot: the new parameters
            # apply to the state as a reload would apply them.
            _reshape(state, params)
        rebaseline = False
        if state.resumed:
            rebaseline = params.catch_up == "rebaseline"
            _end_resumption(state, at)
        state.previous_at = state.last_at
        state.previous_price = state.last_price
        state.last_snapshot = snapshot
        state.last_at = at
        state.last_price = price
        window = state.window
        if rebaseline:
            # The rule wants no catch-up: what happened while the service was down is not
            # reported, this price is the new baseline (the cooldown stands).
            window.restart(at, price, params)
            state.pending = None
            state.gap = None
            return []
        if at < window.bucket_end:  # the current bucket: its latest observation (inline)
            window.times[-1] = at
            window.prices[-1] = price
        else:
            window.add(at, price, params)
            if state.gap is not None:
                _end_gap_if_behind(state)
        if state.pending is not None:
            return self._confirm(state, state.pending, snapshot, resolved, at)
        if state.cooldown_until is not None and at < state.cooldown_until:
            return []
        if window.quiet(price, params) and abs(price - state.previous_price) < window.reach:
            return []
        return self._evaluate(state, snapshot, resolved, at)

    def _evaluate(
        self,
        state: _MarketState,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
        at: float,
        *,
        previous: bool = True,
    ) -> list[ConvictionChange]:
        """No move pending: open one if this price moved enough from a candidate — a bucket
        before the current one, or (`previous`) the previous observation, which may be in
        the current bucket when polls are closer together than a bucket."""
        params = resolved.params
        price = snapshot.yes_price
        window = state.window
        variance = window.variance
        candidates: Iterable[tuple[float, float]] = window.candidates()
        since = state.previous_at
        if previous and since is not None and (window.anchor is None or since >= window.anchor):
            candidates = itertools.chain(candidates, ((since, state.previous_price),))
        best: tuple[float, float, float] | None = None
        for since, level in candidates:
            judged = _handicapped(state, at, level, price, params)
            if not qualifies(level, judged, params):
                continue
            size = round(abs(judged - level), PRECISION)
            if not at_least(size, required_move(variance, at - since, params)):
                continue
            if best is None or size > best[2]:
                best = (since, level, size)
        if best is None:
            return []
        since, level, _ = best
        pending = _Pending(since, level, first_at=at, first_move=price - level)
        state.pending = pending
        ramp = _ramp(state, pending, at, params)
        return self._confirm_if_due(state, pending, snapshot, resolved, at, ramp=ramp)

    def _confirm(
        self,
        state: _MarketState,
        pending: _Pending,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
        at: float,
    ) -> list[ConvictionChange]:
        params = resolved.params
        pending.polls += 1
        move = snapshot.yes_price - pending.baseline_price
        # Persistence, not re-qualification: a move that keeps `retain` of its first crossing
        # (and the floor) is confirmed even if it sagged a little below the threshold.
        holds = (
            move * pending.first_move > 0
            and at_least(abs(move), params.confirm_retain * abs(pending.first_move))
            and at_least(abs(move), params.floor)
        )
        if not holds:
            return self._glitch(state, pending, snapshot, resolved, at)
        return self._confirm_if_due(state, pending, snapshot, resolved, at, ramp=False)

    def _glitch(
        self,
        state: _MarketState,
        pending: _Pending,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
        at: float,
    ) -> list[ConvictionChange]:
        """The pending move retraced: it was a glitch. Its polls never become a baseline."""
        self.stats.glitches += 1
        state.pending = None
        price = snapshot.yes_price
        window = state.window
        # The spike is no baseline, but it is the market's noise: both its legs count in the
        # volatility, or a market that turns choppy after a calm spell would never learn it.
        params = resolved.params
        window.learn(pending.first_move, pending.first_at - pending.baseline_at, params)
        window.learn(
            price - pending.baseline_price - pending.first_move, at - pending.first_at, params
        )
        window.drop_since(pending.first_at)  # and the quiet band is recomputed
        window.add(at, price, params)
        through = (price - pending.baseline_price) * pending.first_move < 0
        if through and any(True for _ in window.candidates()):
            # Through the baseline to the other side: a move in its own right, measured from
            # the observations before the spike (the previous one was part of it).
            if state.cooldown_until is not None and at < state.cooldown_until:
                return []
            return self._evaluate(state, snapshot, resolved, at, previous=False)
        # Back part way on the spike's side: the level is unknowable, measure from here.
        window.anchor_at(at)
        state.gap = None
        return []

    def _confirm_if_due(
        self,
        state: _MarketState,
        pending: _Pending,
        snapshot: MarketSnapshot,
        resolved: ResolvedRule,
        at: float,
        *,
        ramp: bool,
    ) -> list[ConvictionChange]:
        params = resolved.params
        elapsed = at - pending.first_at
        due = pending.polls >= params.confirm_polls and elapsed >= params.confirm_seconds
        if not (due or ramp):
            return []
        price = snapshot.yes_price
        state.pending = None
        state.window.anchor_at(at)
        state.cooldown_until = at + params.cooldown_seconds if params.cooldown_seconds > 0 else None
        state.last_event = (at, 1 if price > pending.baseline_price else -1)
        gap_seconds = _gap_spanned(state, pending.baseline_at)
        state.gap = None  # measured from here on
        return [
            ConvictionChange(
                snapshot=snapshot,
                rule=params.name,
                baseline_price=pending.baseline_price,
                baseline_at=_time(pending.baseline_at),
                severity=severity_of(pending.baseline_price, price, params),
                resolved=resolved,
                gap_seconds=gap_seconds,
            )
        ]

    def _close(
        self, snapshot: MarketSnapshot, state: _MarketState | None, resolved: ResolvedRule
    ) -> list[ConvictionChange]:
        self._remember_closed(snapshot.market_id)
        self._markets.pop(snapshot.market_id, None)
        if state is None:
            return []
        if snapshot.resolution == "void":
            # No winner: Gamma's ["0", "0"] is no price, and reporting it would say NO won.
            # The last price observed is what the market said before it closed.
            snapshot = snapshot.model_copy(update={"yes_price": state.last_snapshot.yes_price})
        baseline_at, baseline_price = state.window.first()
        _end_resumption(state, snapshot.taken_at.timestamp())  # it may have closed while down
        return [
            ConvictionChange(
                snapshot=snapshot,
                rule=CLOSED_RULE,
                baseline_price=baseline_price,
                baseline_at=_time(baseline_at),
                final=True,
                severity=severity_of(baseline_price, snapshot.yes_price, resolved.params),
                resolved=resolved,
                gap_seconds=_gap_spanned(state, baseline_at),
            )
        ]

    def _remember_closed(self, market_id: str) -> None:
        self._closed[market_id] = None
        while len(self._closed) > self.max_closed:
            del self._closed[next(iter(self._closed))]

    def apply_rules(self, rules: RuleSource) -> list[StateReset]:
        """Adopt reloaded rules. A market whose state-shaping parameters changed keeps the
        prices it observed and is re-evaluated under the new ones (`_reshape`); one the new
        rules no longer watch is dropped. Returns every market that changed."""
        resets: list[StateReset] = []
        for market_id, state in list(self._markets.items()):
            resolved = rules.resolve(state.last_snapshot)
            params = resolved.params
            watched = _watched(state.last_snapshot, params)
            state.resolution = (rules, resolution_key(state.last_snapshot), resolved, watched)
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
        window = state.window
        return MarketState(
            market_id=market_id,
            state_key=state.state_key,
            last_snapshot=state.last_snapshot,
            times=tuple(window.times),
            prices=tuple(window.prices),
            bucket_end=window.bucket_end,
            variance=window.variance,
            anchor=window.anchor,
            exit=window.exit,
            previous=None
            if state.previous_at is None
            else (state.previous_at, state.previous_price),
            cooldown_until=state.cooldown_until,
            pending=None if state.pending is None else state.pending.exported(),
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
            self._remember_closed(market_id)
            return
        window = MarketWindow(
            deque(state.times),
            deque(state.prices),
            state.bucket_end,
            state.variance,
            anchor=state.anchor,
            exit=state.exit,
        )
        self._markets[market_id] = _MarketState(
            window,
            state.last_snapshot,
            state.state_key,
            previous=state.previous,
            cooldown_until=state.cooldown_until,
            pending=state.pending,
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


def _ramp(state: _MarketState, pending: _Pending, at: float, params: DetectionParams) -> bool:
    """Whether the crossing continues a move already under way: the previous observation,
    after the baseline and at least a bucket's width and `confirm.for` before this one,
    already showed `confirm.ramp` of the move, the same way. (Polls closer together than a
    bucket are many: they confirm a move poll by poll, and two of them in a row are no ramp
    but possibly one spike.)"""
    since = state.previous_at
    if params.confirm_ramp <= 0 or since is None:
        return False
    before = state.previous_price - pending.baseline_price
    return (
        since > pending.baseline_at
        and before * pending.first_move > 0
        and at - since >= max(params.confirm_seconds, bucket_width(params))
        and at_least(abs(before), params.confirm_ramp * abs(pending.first_move))
    )


def _end_resumption(state: _MarketState, at: float) -> None:
    """The first observation `at` of a restored market ends the gap in observation."""
    if state.resumed:
        state.resumed = False
        state.gap = (state.last_at, at - state.last_at)


def _gap_spanned(state: _MarketState, baseline_at: float) -> float | None:
    """The gap's length when a move from `baseline_at` spans it (a catch-up), else None."""
    if state.gap is None or baseline_at > state.gap[0]:
        return None
    return state.gap[1]


def _end_gap_if_behind(state: _MarketState) -> None:
    """Forget the gap once nothing observed before it can be a baseline any more."""
    gap = state.gap
    if gap is None or state.window.first()[0] <= gap[0]:
        return
    if state.pending is None or state.pending.baseline_at > gap[0]:
        state.gap = None


def _reshape(state: _MarketState, params: DetectionParams) -> bool:
    """Re-evaluate `state` under new state-shaping parameters, losing no observed price:
    the window is re-bucketed and trimmed to its new length, the cooldown recomputed from the
    last event, and a pending move kept while its latest price still qualifies from its
    baseline under the new thresholds (its polls count on). The next snapshot is then judged
    on the kept window as usual. Returns True when a pending move was dropped."""
    state.state_key = params.state_key
    state.window.reshape(state.last_at, params)
    state.cooldown_until = (
        None
        if state.last_event is None or params.cooldown_seconds <= 0
        else state.last_event[0] + params.cooldown_seconds
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


def _handicapped(
    state: _MarketState, at: float, baseline: float, price: float, params: DetectionParams
) -> float:
    """`price`, pulled back toward `baseline` by `hysteresis` when it reverses the last event
    within one window (never past the baseline)."""
    if state.last_event is None or params.hysteresis <= 0:
        return price
    event_at, sign = state.last_event
    if at - event_at > params.window_seconds or (price - baseline) * sign >= 0:
        return price
    pulled = price + sign * params.hysteresis
    return baseline if (pulled - baseline) * sign > 0 else pulled
