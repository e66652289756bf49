"""Build the vcrpy cassettes in this folder from real Polymarket shapes and identifiers.

Usage (from the repository root):

    python cassettes/make_cassettes.py            # rewrite the synthetic cassettes (offline)
    python cassettes/make_cassettes.py --check    # exit 1 if a committed cassette is stale

Every cassette is written in vcrpy's format (`interactions: [{request, response}]`,
`version: 1`), so the tests replay them with vcrpy (`record_mode="none"`) or, without vcrpy,
with `polymarket_kafka.testing.cassette.CassetteTransport`. Tests never touch the network.

Where the content comes from (see /work/shared/polymarket-api.md, "the doc" below):
- Identifiers (condition ids, token ids, questions, slugs) are real, from the doc §6, except
  the Harris "No" token id, which is not in the doc; it is taken from public code that uses
  it as the Harris No token in two independent repositories (a recorded-capture test and a
  CLOB order-book script).
- Shapes are the live ones (doc §1.5, §2.1, §3): Gamma `outcomes`/`outcomePrices`/
  `clobTokenIds` are JSON arrays inside strings, `volume`/`liquidity` are strings while
  `volumeNum`/`liquidityNum` are numbers, fields are often missing; `/midpoints` prices are
  strings; errors are `{"error": ...}`; Cloudflare's block is an HTML 403.
- The Fed item is the doc's recorded Gamma market (fetched 2025-12-10), trimmed; its `events`
  entry is the doc's recorded parent event. Volumes/liquidity/spreads of the other markets
  are illustrative, not recorded.
- protocol_v2.yaml (doc §8.1): no recorded Protocol V2 body exists publicly yet, so its two
  v2 markets are built from the documented shape (`version: "v2"`, `positionIds` a plain
  JSON array of decimal strings, `clobTokenIds` still present as a JSON-encoded string) with
  illustrative questions and ids (decimal/hex digests of a seed, see `_illustrative_id`),
  next to the recorded Fed market tagged `version: "v1"`. The midpoints request carries the
  v2 market's YES *position* id: a client that read `clobTokenIds` would not match it.
- void_market.yaml (doc §8.3): the closed item is a recorded Gamma response of a legacy
  market resolved with no winner, "Will Joe Biden get Coronavirus before the election?",
  `outcomePrices` `["0", "0"]` (nautilus_trader `crates/adapters/polymarket/test_data/
  gamma_market_closed_zero_zero_legacy.json`, trimmed). Its open phase (one cycle, with a
  midpoint) is illustrative: in 2020 that market traded on an AMM, before the CLOB existed.
- demo.yaml: the Trump and Harris midpoints are ten consecutive hourly points of the real
  election-night series (2024-11-05 21:00 UTC → 11-06 06:00 UTC, unix 1730840402...1730872802)
  from /work/shared/data/real/pres2024-{trump,harris}-national-hourly.history.json
  (Polymarket website exports, MIT-licensed `ngu-khoi/prediction-market-visualization`).
  The Fed prices are synthetic small wiggles around its recorded 0.0025 (no event expected).
  Before them come DEMO_LEAD_IN (24) synthetic hourly cycles holding the first recorded
  prices: the detector judges a move against the market's own volatility, and a market it
  has watched for a day is not one it has never seen (rules/default.yaml, volatility.prior).
- demo_channel.yaml: the market-channel frames the demo streams through a loopback
  WebSocket server (`testing.demo`), one list per demo cycle from the second on. They carry
  the same prices as demo.yaml's midpoints at the same hours, in the message shapes of doc
  §4 (no public recording of election night's market channel exists): cycle 1 is one array
  frame of `book`s (as the dump after a subscription), then per hour one frame per market,
  Trump as `price_change` (the current shape, best bid and ask inside `price_changes[]`),
  Harris as `best_bid_ask`, the Fed as an array of the 2024 top-level `price_change`s
  (no best bid/ask: the client keeps the book), with a `last_trade_price` every 6 hours.
  Each book is one level a side around the price (DEMO_HALF_SPREAD); timestamps are Unix
  ms, 2 s before the hour the cycle stands for.

Re-recording against the live API (never done by the tests; needs internet and vcrpy):

    POLYMARKET_RECORD=1 python cassettes/make_cassettes.py
    POLYMARKET_RECORD=1 POLYMARKET_RECORD_MODE=new_episodes python cassettes/make_cassettes.py

This runs the real client once (Gamma metadata for the §6 markets, then their midpoints)
under `vcr.use_cassette(..., record_mode=POLYMARKET_RECORD_MODE or "once")` and writes
`cassettes/recorded/live_cycle.yaml`. The synthetic cassettes above are not touched: most of
them capture failures (429, 5xx, Cloudflare) that cannot be provoked on demand, and the live
markets of §6 are resolved now, so a fresh recording looks "closed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

HERE = Path(__file__).resolve().parent
CLOB = "https://clob.polymarket.com"
GAMMA = "https://gamma-api.polymarket.com"

# --- real identifiers (doc §6) ---------------------------------------------------------------
TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
TRUMP_YES = "21742633143463906290569050155826241533067272736897614950488156847949938836455"
TRUMP_NO = "48331043336612883890938759509493159234755048973500640148014422747788308965732"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
HARRIS_YES = "69236923620077691027083946871148646972011131466059644796654161903044970987404"
HARRIS_NO = "87584955359245246404952128082451897287778571240979823316620093987046202296181"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
FED_YES = "60487116984468020978247225474488676749601001829886755968952521846780452448915"
FED_NO = "81104637750588840860328515305303028259865221573278091453716127842023614249200"
DESANTIS = "0x12a0cb60174abc437bf1178367c72d11f069e1a3add20b148fb0ab4279b772b2"
DESANTIS_YES = "10715043962341292242163832255523703116280692082153281340642602592290195499485"
DESANTIS_NO = "80085489243215790077454313513728486445319747473476157602131800551595373270758"
BTC100K = "0x9c66114d2dfe2139325cc7a408a5cd5d2e73b55d919e2141b3a0ed83fc15895d"
BTC100K_YES = "64903093311385616430821497488306433314807585397286521531639186532059591846310"
# Recorded legacy void market (see the module docstring, void_market.yaml).
BIDEN_COVID = "0xe3b423dfad8c22ff75c9899c4e8176f628cf4ad4caa00481764d320e7415f7a9"
BIDEN_COVID_YES = "53135072462907880191400140706440867753044989936304433583131786753949599718775"
BIDEN_COVID_NO = "60869871469376321574904667328762911501870754872924453995477779862968218702336"


def _illustrative_id(seed: str, *, condition: bool = False) -> str:
    """A stable id of the real form: 0x + 64 hex (condition) or a decimal uint256 (outcome)."""
    digest = hashlib.sha256(f"polymarket-kafka cassette {seed}".encode()).digest()
    return "0x" + digest.hex() if condition else str(int.from_bytes(digest, "big"))


# Protocol V2 markets (illustrative ids, documented shape; see protocol_v2.yaml).
V2_ETH = _illustrative_id("v2-eth", condition=True)
V2_ETH_POSITIONS = [_illustrative_id("v2-eth-yes-position"), _illustrative_id("v2-eth-no-position")]
V2_ETH_TOKENS = [_illustrative_id("v2-eth-yes-token"), _illustrative_id("v2-eth-no-token")]
V2_NEW = _illustrative_id("v2-new", condition=True)
V2_NEW_TOKENS = [_illustrative_id("v2-new-yes-token"), _illustrative_id("v2-new-no-token")]

# demo.yaml price path: (Trump YES, Harris YES) from the real hourly series, Fed synthetic.
DEMO_TRUMP = [0.6085, 0.6155, 0.58, 0.706, 0.711, 0.828, 0.9245, 0.9695, 0.9865, 0.9935]
DEMO_HARRIS = [0.39, 0.3855, 0.4215, 0.297, 0.288, 0.2005, 0.068, 0.0335, 0.014, 0.006]
DEMO_FED = [0.0025, 0.003, 0.0025, 0.002, 0.0025, 0.003, 0.0035, 0.003, 0.0025, 0.0025]
#: Synthetic calm hours before the recorded ten (see the module docstring).
DEMO_LEAD_IN = 24
#: The demo's first cycle: 2024-11-04 23:00 UTC (testing.demo.DEMO_START), in Unix ms.
DEMO_START_MS = 1730761200000
#: Half the bid-ask spread of each demo market's one-level book (the midpoint is the price).
DEMO_HALF_SPREAD = {"trump": 0.005, "harris": 0.005, "fed": 0.0005}

CLOUDFLARE_403 = """<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<head>
<title>Attention Required! | Cloudflare</title>
<meta charset="UTF-8" />
</head>
<body>
<div id="cf-wrapper">
  <h1 data-translate="block_headline">Sorry, you have been blocked</h1>
  <h2 class="cf-subheadline">You are unable to access polymarket.com</h2>
  <p>This website is using a security service to protect itself from online attacks.</p>
  <span>Cloudflare Ray ID: <strong>8d2f6c1b9a3e4f51</strong></span>
</div>
</body>
</html>
"""


# --- vcrpy building blocks -------------------------------------------------------------------


def _compact(payload: object) -> str:
    # The same bytes httpx sends for `json=` (compact separators), so raw matching works too.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _request(method: str, uri: str, body: str | None = None) -> dict[str, Any]:
    headers = {"accept": ["application/json"]}
    if body is not None:
        headers["content-type"] = ["application/json"]
    # vcrpy records an httpx request without a body as an empty string, not null.
    return {"method": method, "uri": uri, "body": body or "", "headers": headers}


def _response(
    status: int,
    body: object,
    *,
    message: str = "OK",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    text = body if isinstance(body, str) else _compact(body)
    all_headers = {"Content-Type": [content_type]}
    all_headers.update({name: [value] for name, value in (headers or {}).items()})
    return {
        "status": {"code": status, "message": message},
        "headers": all_headers,
        "body": {"string": text},
    }


def _interaction(request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return {"request": request, "response": response}


def gamma_request(ids: list[str], *, closed: bool = False) -> dict[str, Any]:
    params = [("condition_ids", i) for i in ids] + [("limit", str(len(ids)))]
    if closed:
        params.append(("closed", "true"))
    return _request("GET", f"{GAMMA}/markets?{urlencode(params)}")


def midpoints_request(tokens: list[str]) -> dict[str, Any]:
    return _request("POST", f"{CLOB}/midpoints", _compact([{"token_id": t} for t in tokens]))


def _strings(values: list[str]) -> str:
    """Gamma's JSON-array-inside-a-string encoding."""
    return json.dumps(values)


def _price(value: float) -> str:
    return format(value, "g")


def _complement(value: float) -> str:
    return _price(round(1 - value, 6))


# --- Gamma items -----------------------------------------------------------------------------


def trump_item(yes_price: float = 0.5865, *, closed: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = {
        "question": "Will Donald Trump win the 2024 US Presidential Election?",
        "conditionId": TRUMP,
        "slug": "will-donald-trump-win-the-2024-us-presidential-election",
        "endDate": "2024-11-05T00:00:00Z",
        "outcomes": _strings(["Yes", "No"]),
        "clobTokenIds": _strings([TRUMP_YES, TRUMP_NO]),
        "active": True,
        "closed": closed,
        "archived": False,
        "negRisk": True,
        "events": [
            {
                "slug": "presidential-election-winner-2024",
                "title": "Presidential Election Winner 2024",
                "tags": [
                    {"id": "2", "label": "Politics", "slug": "politics"},
                    {"id": "1101", "label": "US Election", "slug": "us-election"},
                ],
            }
        ],
    }
    if closed:
        item.update(outcomePrices=_strings(["1", "0"]), umaResolutionStatus="resolved")
    else:
        item.update(
            outcomePrices=_strings([_price(yes_price), _complement(yes_price)]),
            volume="1250000000.5",
            volumeNum=1250000000.5,
            liquidity="8350000.25",  # no liquidityNum on purpose: the string fallback
            spread=0.001,
            bestBid=round(yes_price - 0.0005, 6),
            bestAsk=round(yes_price + 0.0005, 6),
            acceptingOrders=True,
        )
    return item


def harris_item(yes_price: float = 0.4125) -> dict[str, Any]:
    return {
        "question": "Will Kamala Harris win the 2024 US Presidential Election?",
        "conditionId": HARRIS,
        "slug": "will-kamala-harris-win-the-2024-us-presidential-election",
        "endDate": "2024-11-05T00:00:00Z",
        "category": "Politics",  # the legacy field, as on older markets
        "outcomes": _strings(["Yes", "No"]),
        "outcomePrices": _strings([_price(yes_price), _complement(yes_price)]),
        "clobTokenIds": _strings([HARRIS_YES, HARRIS_NO]),
        "active": True,
        "closed": False,
        "negRisk": True,
        "volume": "1020000000.75",  # string only: no volumeNum on this item
        "liquidityNum": 5120000.5,
        "spread": 0.001,
    }


def fed_item(*, version: str | None = None) -> dict[str, Any]:
    """The doc's recorded Gamma market (trimmed), with its recorded parent event.

    `version` adds Gamma's newer `version` field (recorded before it existed, the item has
    none)."""
    item: dict[str, Any] = {
        "id": "516706",
        "question": "Fed rate hike in 2025?",
        "conditionId": FED,
        "slug": "fed-rate-hike-in-2025",
        "endDate": "2025-12-10T12:00:00Z",
        "startDate": "2024-12-29T22:50:33.584839Z",
        "liquidity": "51025.13654",
        "volume": "1089143.410872",
        "outcomes": _strings(["Yes", "No"]),
        "outcomePrices": _strings(["0.0025", "0.9975"]),
        "clobTokenIds": _strings([FED_YES, FED_NO]),
        "active": True,
        "closed": False,
        "archived": False,
        "restricted": True,
        "enableOrderBook": True,
        "orderPriceMinTickSize": 0.001,
        "orderMinSize": 5,
        "volumeNum": 1089143.410872,
        "liquidityNum": 51025.13654,
        "endDateIso": "2025-12-10",
        "volume24hr": 82453.682256,
        "acceptingOrders": True,
        "negRisk": False,
        "spread": 0.001,
        "oneDayPriceChange": -0.001,
        "lastTradePrice": 0.004,
        "bestBid": 0.002,
        "bestAsk": 0.003,
        "events": [
            {
                "id": "100205",
                "ticker": "FED-RATE-HIKE-2025",
                "slug": "fed-rate-hike-in-2025",
                "title": "Fed rate hike in 2025?",
                "liquidity": "51025.13654",
                "volume": "1089143.410872",
                "tags": [
                    {"id": "100196", "label": "Fed Rates", "slug": "fed-rates"},
                    {"id": "107", "label": "Business", "slug": "business"},
                ],
            }
        ],
    }
    if version is not None:
        item["version"] = version
    return item


def desantis_closed_item() -> dict[str, Any]:
    """Resolved No: numeric fields gone, outcomePrices collapsed to ["0", "1"]."""
    return {
        "question": "[Single Market] Will Ron DeSantis win the U.S. 2024 Republican "
        "presidential nomination?",
        "conditionId": DESANTIS,
        "outcomes": _strings(["Yes", "No"]),
        "outcomePrices": _strings(["0", "1"]),
        "clobTokenIds": _strings([DESANTIS_YES, DESANTIS_NO]),
        "active": True,
        "closed": True,
        "archived": False,
        "umaResolutionStatus": "resolved",
        "closedTime": "2024-01-22 02:36:13+00",
    }


def v2_eth_item(yes_price: float = 0.315) -> dict[str, Any]:
    """An open Protocol V2 market: trading ids in `positionIds`, `clobTokenIds` still there."""
    return {
        "id": "1712044",
        "question": "Will ETH close above $5,000 on June 30, 2027?",
        "conditionId": V2_ETH,
        "slug": "will-eth-close-above-5000-on-june-30-2027",
        "version": "v2",
        "endDate": "2027-06-30T16:00:00Z",
        "outcomes": _strings(["Yes", "No"]),
        "outcomePrices": _strings([_price(yes_price), _complement(yes_price)]),
        "clobTokenIds": _strings(V2_ETH_TOKENS),
        "positionIds": list(V2_ETH_POSITIONS),  # a plain array, not a string
        "active": True,
        "closed": False,
        "archived": False,
        "negRisk": False,
        "enableOrderBook": True,
        "acceptingOrders": True,
        "volume": "48210.5",
        "volumeNum": 48210.5,
        "liquidity": "9120.25",
        "liquidityNum": 9120.25,
        "spread": 0.01,
        "bestBid": round(yes_price - 0.005, 6),
        "bestAsk": round(yes_price + 0.005, 6),
        "events": [
            {
                "id": "301877",
                "slug": "eth-above-5000-june-2027",
                "title": "ETH above $5,000 on June 30, 2027?",
                "tags": [{"id": "21", "label": "Crypto", "slug": "crypto"}],
            }
        ],
    }


def v2_new_item() -> dict[str, Any]:
    """A v2 market whose position ids are not assigned yet: only its clobTokenIds are there."""
    return {
        "id": "1712391",
        "question": "Will SOL close above $400 on June 30, 2027?",
        "conditionId": V2_NEW,
        "slug": "will-sol-close-above-400-on-june-30-2027",
        "version": "v2",
        "endDate": "2027-06-30T16:00:00Z",
        "outcomes": _strings(["Yes", "No"]),
        "outcomePrices": _strings(["0.5", "0.5"]),
        "clobTokenIds": _strings(V2_NEW_TOKENS),
        "positionIds": [],
        "active": True,
        "closed": False,
        "archived": False,
        "negRisk": False,
    }


def biden_covid_item(*, closed: bool) -> dict[str, Any]:
    """The recorded legacy market closed with no winner (`["0", "0"]`), trimmed.

    Open (`closed=False`) it is a reconstruction: the same item before the close, with a
    price and no `closedTime` (illustrative values)."""
    item: dict[str, Any] = {
        "id": "12",
        "question": "Will Joe Biden get Coronavirus before the election?",
        "conditionId": BIDEN_COVID,
        "slug": "will-joe-biden-get-coronavirus-before-the-election",
        "endDate": "2020-11-04T00:00:00Z",
        "category": "US-current-affairs",
        "outcomes": _strings(["Yes", "No"]),
        "active": True,
        "marketType": "normal",
        "archived": False,
        "restricted": False,
        "endDateIso": "2020-11-04",
        "clobTokenIds": _strings([BIDEN_COVID_YES, BIDEN_COVID_NO]),
    }
    if closed:
        item.update(
            outcomePrices=_strings(["0", "0"]),
            closed=True,
            closedTime="2020-11-02 16:31:01+00",
            volume="32257.445115",
            volumeNum=32257.45,
            liquidity="0",
            liquidityNum=0,
            spread=1,
            bestBid=0,
            bestAsk=1,
            umaResolutionStatuses="[]",
        )
    else:
        item.update(
            outcomePrices=_strings(["0.115", "0.885"]),
            closed=False,
            volume="30110.5",
            volumeNum=30110.5,
            liquidity="4210.75",
            liquidityNum=4210.75,
            spread=0.01,
        )
    return item


# --- scenarios -------------------------------------------------------------------------------


def normal_cycle() -> list[dict[str, Any]]:
    # In the poller's order: sorted by condition id (Fed 0x4319, Harris 0xc648, Trump 0xdd22).
    ids = [FED, HARRIS, TRUMP]
    return [
        _interaction(gamma_request(ids), _response(200, [fed_item(), harris_item(), trump_item()])),
        _interaction(
            midpoints_request([FED_YES, HARRIS_YES, TRUMP_YES]),
            _response(200, {FED_YES: "0.0025", HARRIS_YES: "0.4125", TRUMP_YES: "0.5865"}),
        ),
    ]


def retry_429() -> list[dict[str, Any]]:
    request = midpoints_request([TRUMP_YES])
    too_many = {"error": "Too Many Requests", "code": "RATE_LIMITED", "retry_after_seconds": 5}
    return [
        _interaction(
            request,
            _response(429, too_many, message="Too Many Requests", headers={"Retry-After": "2"}),
        ),
        _interaction(request, _response(200, {TRUMP_YES: "0.5865"})),
    ]


def retry_5xx() -> list[dict[str, Any]]:
    gamma = gamma_request([FED])
    midpoints = midpoints_request([FED_YES])
    return [
        _interaction(
            gamma,
            _response(
                500,
                {"type": "internal error", "error": "cannot get the information"},
                message="Internal Server Error",
            ),
        ),
        _interaction(gamma, _response(200, [fed_item()])),
        _interaction(
            midpoints, _response(425, {"error": "service not ready"}, message="Too Early")
        ),
        _interaction(
            midpoints,
            _response(
                502,
                "<html><body>502 Bad Gateway</body></html>",
                message="Bad Gateway",
                content_type="text/html",
            ),
        ),
        _interaction(midpoints, _response(200, {FED_YES: "0.0025"})),
    ]


def blocked_403() -> list[dict[str, Any]]:
    return [
        _interaction(
            midpoints_request([TRUMP_YES]),
            _response(
                403, CLOUDFLARE_403, message="Forbidden", content_type="text/html; charset=UTF-8"
            ),
        )
    ]


def malformed() -> list[dict[str, Any]]:
    trump = trump_item()
    trump["clobTokenIds"] = '["' + TRUMP_YES + '", '  # truncated JSON inside the string
    harris = harris_item()
    del harris["conditionId"]
    return [
        # 200 with a non-JSON body (a proxy's error text).
        _interaction(
            midpoints_request([TRUMP_YES]),
            _response(
                200,
                "upstream connect error or disconnect/reset before headers",
                content_type="text/plain",
            ),
        ),
        # 200 with the wrong top-level type.
        _interaction(midpoints_request([HARRIS_YES]), _response(200, ["0.4125"])),
        # Per-token problems: a non-number and an out-of-range price next to a good one.
        _interaction(
            midpoints_request([TRUMP_YES, HARRIS_YES, FED_YES]),
            _response(200, {TRUMP_YES: "abc", HARRIS_YES: "1.7", FED_YES: "0.0025"}),
        ),
        # Gamma: one unparseable item, one without conditionId, one good.
        _interaction(
            gamma_request([TRUMP, HARRIS, FED]), _response(200, [trump, harris, fed_item()])
        ),
        _interaction(gamma_request([HARRIS], closed=True), _response(200, [])),
        # Gamma: an object where an array belongs.
        _interaction(
            gamma_request([DESANTIS]),
            _response(200, {"type": "validation error", "error": "unexpected"}),
        ),
    ]


def closed_market() -> list[dict[str, Any]]:
    ids = [TRUMP, DESANTIS]
    return [
        # Without closed=true Gamma silently drops resolved markets...
        _interaction(gamma_request(ids), _response(200, [])),
        # ...and finds them with it.
        _interaction(
            gamma_request(ids, closed=True),
            _response(200, [trump_item(closed=True), desantis_closed_item()]),
        ),
    ]


def no_orderbook() -> list[dict[str, Any]]:
    no_book = {"error": "No orderbook exists for the requested token id"}
    return [
        _interaction(
            midpoints_request([TRUMP_YES, BTC100K_YES]),
            _response(404, no_book, message="Not Found"),
        ),
        _interaction(midpoints_request([TRUMP_YES]), _response(200, {TRUMP_YES: "0.5865"})),
        _interaction(
            midpoints_request([BTC100K_YES]), _response(404, no_book, message="Not Found")
        ),
    ]


def protocol_v2() -> list[dict[str, Any]]:
    # One cycle: a v1 market, a priced v2 market and a v2 market without position ids yet.
    items = {FED: fed_item(version="v1"), V2_ETH: v2_eth_item(), V2_NEW: v2_new_item()}
    ids = sorted(items)  # the poller's order
    # Only open markets with a YES trading id are priced, in condition-id order: the Fed's CTF
    # token and the v2 market's YES *position* id; never a v2 market's clobTokenIds.
    yes_ids = {FED: FED_YES, V2_ETH: V2_ETH_POSITIONS[0]}
    tokens = [yes_ids[i] for i in ids if i in yes_ids]
    return [
        _interaction(gamma_request(ids), _response(200, [items[i] for i in ids])),
        _interaction(
            midpoints_request(tokens),
            _response(200, {FED_YES: "0.0025", V2_ETH_POSITIONS[0]: "0.315"}),
        ),
    ]


def void_market() -> list[dict[str, Any]]:
    # Cycles 1-2: open and priced. Cycle 3 (metadata refresh): gone from the open markets,
    # found closed with outcomePrices ["0", "0"]: resolved with no winner.
    midpoints = midpoints_request([BIDEN_COVID_YES])
    return [
        _interaction(
            gamma_request([BIDEN_COVID]), _response(200, [biden_covid_item(closed=False)])
        ),
        _interaction(midpoints, _response(200, {BIDEN_COVID_YES: "0.115"})),
        _interaction(midpoints, _response(200, {BIDEN_COVID_YES: "0.13"})),
        _interaction(gamma_request([BIDEN_COVID]), _response(200, [])),
        _interaction(
            gamma_request([BIDEN_COVID], closed=True),
            _response(200, [biden_covid_item(closed=True)]),
        ),
    ]


def demo() -> list[dict[str, Any]]:
    # The poller asks in sorted condition-id order: Fed (0x4319), Harris (0xc648), Trump (0xdd22).
    ids = sorted([TRUMP, HARRIS, FED])
    tokens = [FED_YES, HARRIS_YES, TRUMP_YES]
    interactions = [
        _interaction(
            gamma_request(ids),
            _response(200, [fed_item(), harris_item(DEMO_HARRIS[0]), trump_item(DEMO_TRUMP[0])]),
        )
    ]
    for trump, harris, fed in _demo_prices():
        prices = {FED_YES: _price(fed), HARRIS_YES: _price(harris), TRUMP_YES: _price(trump)}
        interactions.append(_interaction(midpoints_request(tokens), _response(200, prices)))
    return interactions


def _demo_prices() -> list[tuple[float, float, float]]:
    """(Trump, Harris, Fed) YES per demo cycle: the lead-in hours, then the recorded ones."""
    lead_in = [(DEMO_TRUMP[0], DEMO_HARRIS[0], DEMO_FED[0])] * DEMO_LEAD_IN
    return lead_in + list(zip(DEMO_TRUMP, DEMO_HARRIS, DEMO_FED, strict=True))


def _level(value: float) -> str:
    return f"{round(value, 4):.4f}".rstrip("0").rstrip(".")


def _channel_book(asset: str, market: str, price: float, half: float, ts: int) -> dict[str, Any]:
    return {
        "event_type": "book",
        "asset_id": asset,
        "market": market,
        "bids": [{"price": _level(price - half), "size": "1500"}],
        "asks": [{"price": _level(price + half), "size": "1500"}],
        "timestamp": str(ts),
        "hash": hashlib.sha1(f"{asset}{ts}".encode()).hexdigest(),  # noqa: S324 - an id
        "tick_size": "0.001" if half < 0.001 else "0.01",
        "last_trade_price": _level(price),
    }


def demo_channel() -> dict[str, Any]:
    """The frames of demo_channel.yaml (see the module docstring)."""
    prices = _demo_prices()
    cycles: list[list[str]] = []
    previous = prices[0]
    markets = (
        ("trump", TRUMP_YES, TRUMP),
        ("harris", HARRIS_YES, HARRIS),
        ("fed", FED_YES, FED),
    )
    for cycle, current in enumerate(prices):
        if cycle == 0:
            continue  # the first cycle is REST's: it finds the markets the stream subscribes to
        ts = DEMO_START_MS + cycle * 3_600_000 - 2_000
        if cycle == 1:
            books = [
                _channel_book(asset, market, price, DEMO_HALF_SPREAD[name], ts)
                for (name, asset, market), price in zip(markets, current, strict=True)
            ]
            cycles.append([_compact(books)])
            previous = current
            continue
        frames = []
        (_, trump_asset, trump_market), (_, harris_asset, harris_market), fed = markets
        trump, harris, fed_price = current
        half = DEMO_HALF_SPREAD["trump"]
        frames.append(
            _compact(
                {
                    "event_type": "price_change",
                    "market": trump_market,
                    "price_changes": [
                        {
                            "asset_id": trump_asset,
                            "price": _level(trump - half),
                            "size": "1500",
                            "side": "BUY",
                            "hash": hashlib.sha1(f"t{cycle}".encode()).hexdigest(),  # noqa: S324
                            "best_bid": _level(trump - half),
                            "best_ask": _level(trump + half),
                        }
                    ],
                    "timestamp": str(ts),
                }
            )
        )
        half = DEMO_HALF_SPREAD["harris"]
        frames.append(
            _compact(
                {
                    "event_type": "best_bid_ask",
                    "market": harris_market,
                    "asset_id": harris_asset,
                    "best_bid": _level(harris - half),
                    "best_ask": _level(harris + half),
                    "spread": _level(2 * half),
                    "timestamp": str(ts),
                }
            )
        )
        _, fed_asset, fed_market = fed
        half = DEMO_HALF_SPREAD["fed"]
        old = previous[2]
        changes = []
        if old != fed_price:
            for side, before, after in (
                ("BUY", old - half, fed_price - half),
                ("SELL", old + half, fed_price + half),
            ):
                changes += [
                    {"price": _level(after), "size": "1500", "side": side},
                    {"price": _level(before), "size": "0", "side": side},
                ]
        elif cycle % 6 == 0:
            changes = [{"price": _level(fed_price - half), "size": "1600", "side": "BUY"}]
        messages: list[dict[str, Any]] = [
            {
                "event_type": "price_change",
                "asset_id": fed_asset,
                "market": fed_market,
                **change,
                "hash": hashlib.sha1(f"f{cycle}{i}".encode()).hexdigest(),  # noqa: S324
                "timestamp": str(ts),
            }
            for i, change in enumerate(changes)
        ]
        if cycle % 6 == 0:
            messages.append(
                {
                    "event_type": "last_trade_price",
                    "asset_id": fed_asset,
                    "market": fed_market,
                    "price": _level(fed_price),
                    "side": "BUY",
                    "size": "25",
                    "fee_rate_bps": "0",
                    "timestamp": str(ts),
                }
            )
        if messages:
            frames.append(_compact(messages))
        cycles.append(frames)
        previous = current
    return {"version": 1, "first_cycle": 1, "cycles": cycles}


SCENARIOS = {
    "normal_cycle": normal_cycle,
    "retry_429": retry_429,
    "retry_5xx": retry_5xx,
    "blocked_403": blocked_403,
    "malformed": malformed,
    "closed_market": closed_market,
    "no_orderbook": no_orderbook,
    "protocol_v2": protocol_v2,
    "void_market": void_market,
    "demo": demo,
}


def render(interactions: list[dict[str, Any]]) -> str:
    header = "# Generated by cassettes/make_cassettes.py; edit the script, not this file.\n"
    body = yaml.safe_dump(
        {"interactions": interactions, "version": 1}, sort_keys=True, width=1_000_000
    )
    return header + body


def build_all() -> dict[str, str]:
    """File name → YAML text of every synthetic cassette."""
    files = {f"{name}.yaml": render(make()) for name, make in SCENARIOS.items()}
    header = "# Generated by cassettes/make_cassettes.py; edit the script, not this file.\n"
    files["demo_channel.yaml"] = header + yaml.safe_dump(
        demo_channel(), sort_keys=True, width=1_000_000
    )
    return files


# --- live recording (opt-in, needs internet) -------------------------------------------------


def record_live() -> None:  # pragma: no cover - needs the live API
    import anyio
    import vcr

    from polymarket_kafka.config import PolymarketConfig
    from polymarket_kafka.polymarket import open_polymarket_client

    async def cycle() -> None:
        async with open_polymarket_client(PolymarketConfig()) as client:
            metadata = await client.fetch_markets([TRUMP, HARRIS, FED, DESANTIS, BTC100K])
            tokens = [m.yes_token_id for m in metadata.markets.values() if m.yes_token_id]
            await client.fetch_midpoints(tokens)

    recorder = vcr.VCR(
        cassette_library_dir=str(HERE / "recorded"),
        record_mode=os.environ.get("POLYMARKET_RECORD_MODE", "once"),
        match_on=["method", "path", "query", "body"],
        decode_compressed_response=True,
    )
    with recorder.use_cassette("live_cycle.yaml"):
        anyio.run(cycle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a cassette is stale")
    args = parser.parse_args(argv)
    if os.environ.get("POLYMARKET_RECORD") == "1":  # pragma: no cover - needs the live API
        record_live()
        return 0
    stale = []
    for name, text in build_all().items():
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale cassettes (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
