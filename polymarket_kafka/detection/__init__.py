"""Conviction-change detection: a pure state machine over market snapshots.

The detector never reads a clock, never logs and never does I/O. The caller feeds it
snapshots with `observe(snapshot, rules, now)` and gets back the conviction changes to publish
(a list, usually empty). The same code runs in the service and in `replay`, so a replay of a
recorded history emits exactly what the service would have. The parameters come from the
rule engine (`ruleset.RuleSet.resolve(snapshot)`), resolved per market and reused while what
they depend on is unchanged.

Modules: `moves` (thresholds, the volatility test, severity: math), `window` (one market's
bucketed window and volatility), `detector` (the state machine), `changes` (what it reports).

Design (detection v2):

* **Watch guards.** A disabled market, or one whose known liquidity/volume is below the
  `watch` minimums, has no state and emits nothing. A snapshot whose known spread is wider
  than `max_spread` (a thin book's midpoint is not a price anyone trades at) or that is older
  than `max_data_age` when it arrives (`now - taken_at`) is ignored — not even recorded.
* **Baseline.** The first snapshot of a market starts its window and emits nothing.
* **Bucketed window.** The last `window` of prices is kept in 60 time buckets (the last
  price of each), plus always the previous observation, so memory and work per market do not
  grow with the polling rate (`window.MarketWindow`). With coarse data (hourly, daily) each
  observation is its own bucket.
* **Reference.** A move is measured from a candidate level of the window — the last price
  of a bucket before the current one, since the last event, or the previous observation —
  and the largest move that passes every test is taken. Each candidate is judged against
  the volatility over its own age, so an old extreme needs a larger move than a recent one.
  A one-poll spike never becomes a reference: a spike is a pending move that retraced, and
  its buckets are dropped (`glitch`). A dip too small to open a pending move stays a level;
  a move from it must still pass every test. (A 3-bucket running median of the levels, which
  would also smooth those, was tried on the labelled real data: it cost a false alarm in a
  calm window of the Fed 2024 market and was not kept.)
* **Qualifying move.** |Δp| ≥ `floor` and, combined by `any`/`all`, |Δp| ≥ `abs` and
  |Δlogit(p)| ≥ `log_odds` (`moves.qualifies`) — *and* the volatility test: the move must be
  at least `volatility.z` times the market's own volatility over the move's duration, never
  below `volatility.floor` per sqrt(hour) (`moves.required_move`). The volatility is measured
  from the prices that left the window, so a move never raises the bar it is judged against;
  a market not yet known starts at `volatility.prior`. A quiet market (the national
  presidential market moved < 1 point an hour for weeks) then reports a 3-point step, and a
  market that swings 5 points an hour does not report its next 10-point swing.
* **Confirmation in time and polls (glitch guard).** The first qualifying poll opens a
  *pending* move with its baseline fixed. It fires on the poll where `confirm.polls` polls
  have seen it and `confirm.for` has elapsed, each keeping the move's direction, at least
  `confirm.retain` of the first crossing and the floor. A crossing that continues a move
  already under way on the previous poll (a ramp: `confirm.ramp` of the move, at least a
  bucket and `confirm.for` before) is confirmed at once, so an hourly series that moves over
  two bars fires on the second instead of a third; polls closer than a bucket confirm poll by
  poll. A poll where the move retraced makes it a glitch: dropped and counted, its buckets
  never a baseline, but both its legs fold into the volatility (a market that turns choppy
  after a calm spell learns it); through the baseline to the other side it is judged as a
  move of its own from before the spike, else the market measures from the current price.
* **Re-anchoring and cooldown.** After an event the window's candidates start at the event,
  and for `cooldown` nothing new starts (observations are still recorded).
* **Hysteresis (re-arm).** Within one window after an event, a move *against* it is judged
  as if `hysteresis` smaller.
* **Out of order / repeats.** A snapshot not newer than the last one seen is ignored.
* **Closing.** A tracked market that reports `closed` emits one final event (rule
  `market_closed`, `final=True`), measured from the oldest observation kept since the last
  event, and is then dropped; later snapshots of it are ignored. A market already closed when
  first seen emits nothing. A market that resolved with no winner (`resolution == "void"`)
  reports the last price observed instead of its ["0", "0"] outcome prices.
* **Reloads.** `apply_rules(new_rules)` keeps the state of every market whose state-shaping
  parameters (`DetectionParams.state_key`) are unchanged. The others keep their prices and
  volatility and are re-evaluated under the new parameters (window re-bucketed and trimmed,
  cooldown recomputed, a pending move kept while it still qualifies); a market the new rules
  do not watch is dropped. A change of tier or category between snapshots applies the new
  parameters the same way.

Cost: an observation that stays inside the market's quiet band (the prices within
`max(floor, required move at min_horizon)` of every candidate) is an O(1) update of the
current bucket and one comparison; the band is recomputed when a bucket closes.
"""

from polymarket_kafka.detection.changes import ConvictionChange, DetectorStats, StateReset
from polymarket_kafka.detection.detector import (
    CLOSED_RULE,
    MAX_CLOSED_MARKETS,
    Detector,
    RuleSource,
    resolution_key,
)
from polymarket_kafka.detection.moves import log_odds, qualifies, required_move, severity_of

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
    "required_move",
    "resolution_key",
    "severity_of",
]
