"""Parsing of Gamma `/markets` items and `POST /midpoints` bodies, on the live shapes.

The shapes come from shared/polymarket-api.md: strings vs numbers, JSON arrays inside strings,
missing fields, resolved markets, non Yes/No outcomes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.polymarket.errors import (
    MalformedPayloadError,
    PolymarketBlockedError,
    PolymarketHTTPError,
    PolymarketUnavailableError,
    excerpt,
)
from polymarket_kafka.polymarket.parsing import (
    MalformedItemError,
    MarketMetadata,
    load_json,
    parse_decimal,
    parse_market,
    parse_markets,
    parse_midpoints,
    parse_probability,
)

FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
FED_YES = "60487116984468020978247225474488676749601001829886755968952521846780452448915"
FED_NO = "81104637750588840860328515305303028259865221573278091453716127842023614249200"
BTC_UPDOWN = "0xeb8d50cefcb367c18d701a405db7e20426e2065580231a8cfa1b40fc453caf49"
UP = "76113456775305083620588924844077855692564580220877311373887058720584900078128"
DOWN = "34812490117597092926676691594130607461359451376213032675677765803451137597140"

# The recorded Gamma market from polymarket-api.md §2.1 (trimmed as there).
FED_ITEM: dict[str, Any] = {
    "id": "516706",
    "question": "Fed rate hike in 2025?",
    "conditionId": FED,
    "slug": "fed-rate-hike-in-2025",
    "endDate": "2025-12-10T12:00:00Z",
    "startDate": "2024-12-29T22:50:33.584839Z",
    "liquidity": "51025.13654",
    "volume": "1089143.410872",
    "outcomes": '["Yes", "No"]',
    "outcomePrices": '["0.0025", "0.9975"]',
    "clobTokenIds": f'["{FED_YES}", "{FED_NO}"]',
    "active": True,
    "closed": False,
    "archived": False,
    "restricted": True,
    "volumeNum": 1089143.410872,
    "liquidityNum": 51025.13654,
    "endDateIso": "2025-12-10",
    "spread": 0.001,
    "oneDayPriceChange": -0.001,
    "lastTradePrice": 0.004,
    "bestBid": 0.002,
    "bestAsk": 0.003,
}


def fed(**changes: Any) -> dict[str, Any]:
    item = dict(FED_ITEM)
    for key, value in changes.items():
        if value is None:
            item.pop(key, None)
        else:
            item[key] = value
    return item


# --- one market ------------------------------------------------------------------------------


def test_recorded_gamma_market_parses_every_field() -> None:
    market = parse_market(FED_ITEM)

    assert market == MarketMetadata(
        market_id=FED,
        question="Fed rate hike in 2025?",
        yes_token_id=FED_YES,
        no_token_id=FED_NO,
        yes_outcome="Yes",
        outcomes=("Yes", "No"),
        active=True,
        closed=False,
        volume=1089143.410872,
        liquidity=51025.13654,
        category=None,
        tags=(),
        end_date=datetime(2025, 12, 10, 12, tzinfo=UTC),
        outcome_prices=(0.0025, 0.9975),
        yes_outcome_price=0.0025,
        spread=0.001,
        best_bid=0.002,
        best_ask=0.003,
    )


def test_volume_and_liquidity_fall_back_to_the_decimal_strings() -> None:
    market = parse_market(fed(volumeNum=None, liquidityNum="not a number"))

    assert market.volume == 1089143.410872
    assert market.liquidity == 51025.13654


def test_bad_or_negative_decorations_become_unknown_instead_of_failing() -> None:
    market = parse_market(
        fed(volumeNum=-5, volume="-5", liquidityNum=True, liquidity="", spread="wide")
    )

    assert market.volume is None
    assert market.liquidity is None
    assert market.spread is None


def test_real_json_arrays_are_accepted_as_well_as_strings() -> None:
    market = parse_market(
        fed(outcomes=["Yes", "No"], clobTokenIds=[FED_YES, FED_NO], outcomePrices=["0.25", 0.75])
    )

    assert (market.yes_token_id, market.no_token_id) == (FED_YES, FED_NO)
    assert market.outcome_prices == (0.25, 0.75)


def test_integer_token_ids_are_turned_into_decimal_strings() -> None:
    market = parse_market(fed(clobTokenIds=[int(FED_YES), int(FED_NO)]))

    assert market.yes_token_id == FED_YES


def test_yes_is_found_by_label_not_by_position() -> None:
    market = parse_market(
        fed(
            outcomes='["No", "YES"]',
            clobTokenIds=f'["{FED_NO}", "{FED_YES}"]',
            outcomePrices='["0.9975", "0.0025"]',
        )
    )

    assert market.yes_token_id == FED_YES
    assert market.no_token_id == FED_NO
    assert market.yes_outcome == "YES"
    assert market.yes_outcome_price == 0.0025


def test_yes_without_a_no_label_pairs_with_the_other_outcome() -> None:
    market = parse_market(fed(outcomes='["Yes", "Maybe"]'))

    assert market.no_token_id == FED_NO


def test_up_down_market_takes_the_first_outcome_as_yes() -> None:
    # Bitcoin Up or Down 5m, Gamma id 1689303, resolved Up (polymarket-api.md §6).
    item = {
        "question": "Bitcoin Up or Down - March 24, 2:35AM-2:40AM ET",
        "conditionId": BTC_UPDOWN,
        "outcomes": '["Up", "Down"]',
        "outcomePrices": '["1", "0"]',
        "clobTokenIds": f'["{UP}", "{DOWN}"]',
        "active": True,
        "closed": True,
        "closedTime": "2026-03-24 06:40:23+00",
    }

    market = parse_market(item)

    assert market.yes_outcome == "Up"
    assert (market.yes_token_id, market.no_token_id) == (UP, DOWN)
    assert market.closed is True
    assert market.yes_outcome_price == 1.0
    assert market.volume is None  # resolved markets lose their numeric fields


def test_team_name_outcomes_also_take_the_first_as_yes() -> None:
    market = parse_market(fed(outcomes='["Lakers", "Celtics"]'))

    assert market.yes_outcome == "Lakers"
    assert market.yes_token_id == FED_YES


def test_only_a_condition_id_is_required() -> None:
    market = parse_market({"conditionId": FED})

    assert market == MarketMetadata(market_id=FED)


def test_token_ids_without_outcomes_take_the_first_as_yes() -> None:
    market = parse_market({"conditionId": FED, "clobTokenIds": f'["{FED_YES}", "{FED_NO}"]'})

    assert (market.yes_token_id, market.no_token_id, market.yes_outcome) == (FED_YES, FED_NO, None)


@pytest.mark.parametrize("token_ids", ['["", ""]', "[]"])
def test_empty_token_ids_of_a_hydrating_market_are_unknown(token_ids: str) -> None:
    market = parse_market(fed(clobTokenIds=token_ids))

    assert market.yes_token_id is None
    assert market.no_token_id is None


def test_resolved_market_is_closed_with_a_final_price() -> None:
    item = fed(closed=True, outcomePrices='["1", "0"]', volumeNum=None, volume=None)

    market = parse_market(item)

    assert market.closed is True
    assert market.yes_outcome_price == 1.0
    assert market.volume is None


# --- trading ids by protocol version (polymarket-api.md §8.1) ---------------------------------

# Protocol V2 position ids: illustrative decimal uint256 values (no v2 body is recorded yet).
POS_YES = "31402581166233458186411372187306094547135216466125093187232914634931283613913"
POS_NO = "90112402855710434474734862880470215718372069545612389421372745926432719023874"


def v2(**changes: Any) -> dict[str, Any]:
    """The Fed item as Gamma serves a Protocol V2 market: `version` and `positionIds`."""
    return fed(**{"version": "v2", "positionIds": [POS_YES, POS_NO], **changes})


def test_a_v2_market_trades_under_its_position_ids_even_with_clob_token_ids() -> None:
    market = parse_market(v2())

    assert (market.yes_token_id, market.no_token_id) == (POS_YES, POS_NO)
    assert (market.protocol_version, market.token_problem) == ("v2", None)


def test_v2_position_ids_pair_with_outcomes_by_index() -> None:
    market = parse_market(v2(outcomes='["No", "Yes"]', outcomePrices='["0.9975", "0.0025"]'))

    assert (market.yes_token_id, market.no_token_id) == (POS_NO, POS_YES)
    assert market.yes_outcome_price == 0.0025


def test_v2_position_ids_are_also_accepted_as_a_json_encoded_string() -> None:
    market = parse_market(v2(positionIds=json.dumps([POS_YES, POS_NO])))

    assert (market.yes_token_id, market.no_token_id) == (POS_YES, POS_NO)


@pytest.mark.parametrize("position_ids", [None, "", [], ["", ""]])
def test_a_v2_market_without_position_ids_never_falls_back_to_clob_token_ids(
    position_ids: object,
) -> None:
    market = parse_market(v2(positionIds=position_ids))

    assert (market.yes_token_id, market.no_token_id) == (None, None)
    assert market.token_problem is not None
    assert "positionIds" in market.token_problem
    # Its metadata is still there (a closed one can still report its final price).
    assert (market.question, market.yes_outcome_price) == ("Fed rate hike in 2025?", 0.0025)


def test_a_v2_market_does_not_read_clob_token_ids_at_all() -> None:
    market = parse_market(v2(clobTokenIds='["truncated'))

    assert market.yes_token_id == POS_YES


@pytest.mark.parametrize("version", ["v1", "V1", " v1 "])
def test_a_v1_market_trades_under_its_clob_token_ids_even_with_position_ids(
    version: str,
) -> None:
    # Field presence is no discriminator: only `version` is.
    market = parse_market(fed(version=version, positionIds=[POS_YES, POS_NO]))

    assert (market.yes_token_id, market.no_token_id) == (FED_YES, FED_NO)
    assert (market.protocol_version, market.token_problem) == ("v1", None)


def test_a_market_without_version_is_a_legacy_v1_market() -> None:
    market = parse_market(fed(positionIds=[POS_YES, POS_NO]))

    assert (market.yes_token_id, market.protocol_version) == (FED_YES, None)


@pytest.mark.parametrize(("version", "shown"), [("v3", "'v3'"), (3, "'3'")])
def test_an_unsupported_version_selects_no_id_and_says_why(version: object, shown: str) -> None:
    market = parse_market(v2(version=version))

    assert (market.yes_token_id, market.no_token_id) == (None, None)
    assert (
        market.token_problem == f"unsupported Gamma market version {shown}: no trading id selected"
    )
    assert market.yes_outcome_price == 0.0025


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"positionIds": [POS_YES]}, "positionIds has 1 entries, expected 2"),
        ({"positionIds": '["1", '}, "positionIds is not valid JSON"),
        ({"positionIds": {"yes": POS_YES}}, "positionIds is not a list"),
        ({"positionIds": [POS_YES, 2.5]}, "positionIds holds a non-string"),
        ({"positionIds": [POS_YES, "0xabc"]}, "positionIds holds a non-decimal id: '0xabc'"),
        ({"positionIds": [POS_YES, -1]}, "positionIds holds a non-decimal id: '-1'"),
    ],
)
def test_malformed_position_ids_say_why(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedItemError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_market(v2(**changes))


def test_integer_position_ids_are_kept_as_decimal_strings() -> None:
    market = parse_market(v2(positionIds=[int(POS_YES), int(POS_NO)]))

    assert (market.yes_token_id, market.no_token_id) == (POS_YES, POS_NO)


def test_a_non_decimal_clob_token_id_is_malformed_too() -> None:
    with pytest.raises(MalformedItemError, match="clobTokenIds holds a non-decimal id"):
        parse_market(fed(clobTokenIds='["yes-token", "no-token"]'))


# --- the condition alias ---------------------------------------------------------------------


def test_condition_is_an_alias_of_condition_id() -> None:
    market = parse_market(fed(conditionId=None, condition=FED))

    assert market.market_id == FED


def test_condition_id_wins_over_its_alias() -> None:
    assert parse_market(fed(condition="0xother")).market_id == FED


def test_a_batch_keys_failures_by_the_condition_alias_too() -> None:
    bad = fed(conditionId=None, condition="0xbad", outcomePrices='["abc", "0.5"]')

    parsed = parse_markets([bad, fed(conditionId=None, condition=FED)])

    assert list(parsed.markets) == [FED]
    assert list(parsed.failures) == ["0xbad"]


# --- how a closed market resolved (polymarket-api.md §2.1, §8.3) ------------------------------


@pytest.mark.parametrize(
    ("outcomes", "prices", "resolution"),
    [
        ('["Yes", "No"]', '["1", "0"]', "yes"),
        ('["Yes", "No"]', '["0", "1"]', "no"),
        ('["No", "Yes"]', '["0", "1"]', "yes"),
        ('["Up", "Down"]', '["1", "0"]', "yes"),
        # Legacy markets closed with no winner: not "NO won".
        ('["Yes", "No"]', '["0", "0"]', "void"),
        ('["Yes", "No"]', '["0.5", "0"]', "void"),
        ('["Yes", "No"]', '["1", "1"]', "void"),
        # Sums to ~1 but no side at 1: a 50-50 resolution, or closed and still settling.
        ('["Yes", "No"]', '["0.5", "0.5"]', "unknown"),
        ('["Yes", "No"]', '["0.9995", "0.0005"]', "unknown"),
        ('["Yes", "No"]', '["0.995", "0.0149"]', "unknown"),
    ],
)
def test_a_closed_market_says_how_it_resolved(outcomes: str, prices: str, resolution: str) -> None:
    market = parse_market(fed(closed=True, outcomes=outcomes, outcomePrices=prices))

    assert market.resolution == resolution


@pytest.mark.parametrize(
    "changes",
    [{"closed": False, "outcomePrices": '["0", "0"]'}, {"closed": True, "outcomePrices": None}],
)
def test_an_open_market_or_one_without_prices_has_no_resolution(changes: dict[str, Any]) -> None:
    assert parse_market(fed(**changes)).resolution is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"conditionId": None}, "no conditionId"),
        ({"conditionId": "  "}, "no conditionId"),
        ({"clobTokenIds": '["123", '}, "clobTokenIds is not valid JSON"),
        ({"clobTokenIds": '{"a": 1}'}, "clobTokenIds is not a list"),
        ({"clobTokenIds": "[1.5, 2]"}, "clobTokenIds holds a non-string"),
        ({"outcomes": "[1, 2]"}, "outcomes holds a non-string"),
        ({"outcomes": '["Yes", "No", "Maybe"]'}, "clobTokenIds has 2 entries, expected 3"),
        ({"clobTokenIds": f'["{FED_YES}"]'}, "clobTokenIds has 1 entries, expected 2"),
        ({"outcomePrices": '["abc", "0.5"]'}, "outcomePrices: not a number"),
        ({"outcomePrices": '["1.7", "-0.7"]'}, "outcomePrices: price '1.7' outside [0, 1]"),
    ],
)
def test_malformed_items_say_why(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedItemError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_market(fed(**changes))


def test_a_non_object_item_is_malformed() -> None:
    with pytest.raises(MalformedItemError, match="not an object"):
        parse_market(["not", "a", "market"])


@pytest.mark.parametrize(
    ("extra", "category", "tags"),
    [
        ({"category": "Crypto", "tags": [{"label": "Bitcoin"}]}, "Crypto", ("Bitcoin",)),
        (
            {"tags": [{"id": "2", "label": "Politics"}, {"label": "Politics"}]},
            "Politics",
            ("Politics",),
        ),
        ({"tags": ["Politics", "US Election", ""]}, "Politics", ("Politics", "US Election")),
        (
            {"events": [{"tags": [{"label": "Fed Rates"}, {"label": "Business"}]}]},
            "Fed Rates",
            ("Fed Rates", "Business"),
        ),
        ({"events": [{"category": "Economy", "tags": []}]}, "Economy", ()),
        ({"events": "not a list", "tags": "nope"}, None, ()),
        ({"events": ["not an event"]}, None, ()),
    ],
)
def test_category_and_tags(
    extra: dict[str, Any], category: str | None, tags: tuple[str, ...]
) -> None:
    market = parse_market(fed(**extra))

    assert market.category == category
    assert market.tags == tags


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"endDate": "2024-11-05T00:00:00Z"}, datetime(2024, 11, 5, tzinfo=UTC)),
        ({"endDate": "2024-11-05T01:00:00+01:00"}, datetime(2024, 11, 5, tzinfo=UTC)),
        ({"endDate": "2024-11-05T00:00:00"}, datetime(2024, 11, 5, tzinfo=UTC)),
        ({"endDate": None}, datetime(2025, 12, 10, tzinfo=UTC)),
        ({"endDate": "soon", "endDateIso": None}, None),
        ({"endDate": 1733832000, "endDateIso": None}, None),
    ],
)
def test_end_date(changes: dict[str, Any], expected: datetime | None) -> None:
    assert parse_market(fed(**changes)).end_date == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("true", True), (" False ", False), ("yes", None), (1, None)],
)
def test_active_flag_accepts_booleans_and_their_strings(
    value: object, expected: bool | None
) -> None:
    assert parse_market(fed(active=value)).active is expected


# --- arrays of markets -----------------------------------------------------------------------


def test_a_bad_item_fails_alone_and_the_batch_survives() -> None:
    payload = [
        fed(),
        {"conditionId": "0xbad", "clobTokenIds": "not json"},
        "garbage",
        {"question": "no id"},
    ]

    parsed = parse_markets(payload)

    assert list(parsed.markets) == [FED]
    assert set(parsed.failures) == {"0xbad", "#2", "#3"}
    assert parsed.failures["0xbad"].startswith("malformed Gamma market: clobTokenIds")


def test_duplicate_ids_keep_the_first_good_item() -> None:
    bad = fed(outcomePrices='["abc"]')
    second = fed(question="second copy")

    parsed = parse_markets([bad, fed(), second, bad])

    assert parsed.markets[FED].question == "Fed rate hike in 2025?"
    assert parsed.failures == {}


@pytest.mark.parametrize("payload", [{"error": "x"}, None, "[]", 3])
def test_a_non_array_gamma_payload_is_malformed(payload: object) -> None:
    with pytest.raises(MalformedPayloadError, match="expected a JSON array"):
        parse_markets(payload)


# --- midpoints -------------------------------------------------------------------------------


def test_midpoints_accept_strings_and_numbers() -> None:
    parsed = parse_midpoints(
        {"a": "0.55", "b": 0.085, "c": 1, "d": "0", "extra": "0.5"}, ["a", "b", "c", "d"]
    )

    assert parsed.prices == {"a": 0.55, "b": 0.085, "c": 1.0, "d": 0.0}
    assert parsed.failures == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "not a number"),
        ("1.7", "outside [0, 1]"),
        (-0.1, "outside [0, 1]"),
        (True, "not a number"),
        (None, "not a number"),
        ({"mid": "0.5"}, "not a number"),
        ("NaN", "not a finite number"),
        ("Infinity", "not a finite number"),
    ],
)
def test_bad_midpoints_fail_per_token(value: object, reason: str) -> None:
    parsed = parse_midpoints({"bad": value, "good": "0.5"}, ["bad", "good"])

    assert parsed.prices == {"good": 0.5}
    assert parsed.failures["bad"].startswith("malformed midpoint: ")
    assert reason in parsed.failures["bad"]


def test_a_token_missing_from_the_response_fails() -> None:
    parsed = parse_midpoints({}, ["a"])

    assert parsed.failures == {"a": "no midpoint in the response"}


@pytest.mark.parametrize("payload", [["0.5"], "0.5", None])
def test_a_non_object_midpoints_payload_is_malformed(payload: object) -> None:
    with pytest.raises(MalformedPayloadError, match="expected a JSON object"):
        parse_midpoints(payload, ["a"])


def test_decimal_parsing_is_exact() -> None:
    assert parse_decimal("0.1") == Decimal("0.1")
    assert parse_decimal(0.1) == Decimal("0.1")
    assert parse_decimal(" 7 ") == Decimal(7)
    assert parse_probability("0.9975") == 0.9975


def test_load_json() -> None:
    assert load_json(b'{"a": 1}', "x") == {"a": 1}
    with pytest.raises(MalformedPayloadError, match=r"x: body is not JSON: '<html>"):
        load_json(b"<html>oops</html>", "x")


# --- properties ------------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=1, places=4, allow_nan=False)
# An explicit alphabet keeps generation cheap: st.text's default alphabet builds a Unicode
# table on first use, slow enough on a cold CI cache to trip Hypothesis' health check.
short_text = st.text(alphabet='01.-"[]{},:eE abcxyzé', max_size=8)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | short_text
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(short_text, children, max_size=3)
    ),
    max_leaves=8,
)


@given(prices, st.booleans())
def test_any_price_parses_the_same_as_string_or_number(price: Decimal, as_string: bool) -> None:
    raw: object = str(price) if as_string else float(price)
    assert parse_probability(raw) == float(Decimal(str(raw)))
    assert 0.0 <= parse_probability(raw) <= 1.0


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values),
    st.lists(st.sampled_from(["a", "b", "c", "d"])),
)
def test_every_requested_token_lands_in_exactly_one_map(
    payload: dict[str, object], requested: list[str]
) -> None:
    parsed = parse_midpoints(payload, requested)

    assert set(parsed.prices) | set(parsed.failures) == set(requested)
    assert not set(parsed.prices) & set(parsed.failures)
    assert all(0.0 <= p <= 1.0 for p in parsed.prices.values())


gamma_keys = st.sampled_from(
    [
        "conditionId",
        "outcomes",
        "outcomePrices",
        "clobTokenIds",
        "volume",
        "volumeNum",
        "closed",
        "active",
        "tags",
        "events",
        "category",
        "endDate",
        "spread",
        "question",
    ]
)


@given(st.dictionaries(gamma_keys, json_values | json_values.map(json.dumps)))
def test_arbitrary_items_never_raise_anything_but_malformed_item(item: dict[str, object]) -> None:
    try:
        market = parse_market(item)
    except MalformedItemError:
        return
    assert market.market_id
    assert market.volume is None or market.volume >= 0
    assert market.outcome_prices is None or all(0 <= p <= 1 for p in market.outcome_prices)


@given(st.lists(json_values, max_size=5))
def test_arbitrary_arrays_never_raise(payload: list[object]) -> None:
    parsed = parse_markets(payload)

    assert len(parsed.markets) + len(parsed.failures) <= len(payload)


# --- errors ----------------------------------------------------------------------------------


def test_error_messages() -> None:
    blocked = PolymarketBlockedError(
        "https://clob.polymarket.com/midpoints", "<html>\n  blocked </html>"
    )
    assert "geo/IP block" in str(blocked)
    assert blocked.body_excerpt == "<html> blocked </html>"

    http = PolymarketHTTPError(404, "https://x/midpoints", "No orderbook exists")
    assert (http.status, str(http)) == (
        404,
        "HTTP 404 from https://x/midpoints: No orderbook exists",
    )

    down = PolymarketUnavailableError("https://x", 5, "HTTP 503: busy")
    assert str(down) == "https://x unavailable after 5 attempt(s): HTTP 503: busy"

    assert excerpt("a" * 300, 10) == "a" * 9 + "…"
