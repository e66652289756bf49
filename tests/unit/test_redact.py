"""`redact`: the one place that scrubs secrets (logs, health, store errors, outage lines)."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.redact import (
    Redactor,
    hide_server_credentials,
    redact_uri,
    uri_credentials,
)


def test_uri_credentials_as_written_and_decoded() -> None:
    assert uri_credentials("mongodb://alice:p%40ss@h:1/db") == {
        "alice:p%40ss",
        "alice:p@ss",
        "p%40ss",
        "p@ss",
    }
    assert uri_credentials("mongodb://h:1/db") == set()
    assert uri_credentials(None) == set()
    # An unescaped "@" is ambiguous: both readings are secrets.
    assert {"alice:pa", "pa", "alice:pa@ss", "pa@ss"} <= uri_credentials("mongodb://alice:pa@ss@h")


def test_a_uri_redactor_keeps_the_uri_readable_and_hides_its_parts() -> None:
    uri = "mongodb://alice:s3cret@db.example:27017/horizon"
    redact = Redactor(uri_credentials(uri), uris=[uri])
    assert (
        redact(f"cannot reach {uri}") == "cannot reach mongodb://***:***@db.example:27017/horizon"
    )
    assert redact("auth failed for alice:s3cret, password s3cret") == (
        "auth failed for ***, password ***"
    )
    # A URI without credentials is not touched.
    assert Redactor(uris=["mongodb://h:1"])("mongodb://h:1") == "mongodb://h:1"


def test_server_lists_hide_each_entry_user_info() -> None:
    assert (
        hide_server_credentials("SASL_SSL://u:p@b1:9093,b2:9093")
        == "SASL_SSL://***@b1:9093,b2:9093"
    )
    assert hide_server_credentials("u:p@w@b1:9092") == "***@b1:9092"
    assert hide_server_credentials("b1:9092") == "b1:9092"


def test_redact_uri_never_echoes_an_unparseable_uri() -> None:
    assert redact_uri("mongodb://u:p@[::1/db") == "<unparseable uri>"


SECRET_CHARS = st.characters(categories=["Lu", "P", "S"], exclude_characters="*")


@given(
    secret=st.text(alphabet=SECRET_CHARS, min_size=4, max_size=20),
    before=st.text(alphabet="abc xyz", max_size=10),
    after=st.text(alphabet="abc xyz", max_size=10),
)
def test_a_secret_never_survives_in_any_written_form(secret: str, before: str, after: str) -> None:
    """Around the secret only characters it cannot contain, so any survivor is a leak."""
    redact = Redactor([secret])
    line = before + secret + after
    for shown in (line, repr(line), json.dumps(line), json.dumps(line, ensure_ascii=False)):
        scrubbed = redact(shown)
        assert secret not in scrubbed
        assert "***" in scrubbed


@given(password=st.text(alphabet=SECRET_CHARS, min_size=4, max_size=16))
def test_a_uri_password_never_survives_percent_encoded_or_not(password: str) -> None:
    uri = f"mongodb://user:{quote(password, safe='')}@host:27017/db"
    redact = Redactor(uri_credentials(uri), uris=[uri])
    for text in (uri, f"error: {uri}", f"bad password {password}", quote(password, safe="")):
        scrubbed = redact(text)
        assert password not in scrubbed
        assert quote(password, safe="") not in scrubbed
