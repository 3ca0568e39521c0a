"""Security review, finding 1: a DSN or URL with credentials never reaches what the plugin prints or writes, whatever
its password holds (``/ @ % : ? #`` typed raw or percent-encoded) and in whatever form (URL or libpq keywords)."""

from __future__ import annotations

import pytest

from pytest_llmtrace.core.settings import Resolved
from pytest_llmtrace.services.base import ServiceStartError, redact_text, redact_url, url_secrets
from pytest_llmtrace.services.choice import check_setting
from pytest_llmtrace.sources.phoenix_client import public_url

# Every piece between URL delimiters is distinctive, so a partial leak is seen too.
PIECES = ("Alpha1", "Bravo2", "Charlie3", "Delta4", "Echo5", "Fox6")
RAW_PASSWORD = "Alpha1/Bravo2@Charlie3%Delta4:Echo5?Fox6"


def _no_piece(text: str) -> None:
    leaked = [piece for piece in PIECES if piece in text]
    assert not leaked, f"{leaked} leaked in {text!r}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://llt:{RAW_PASSWORD}@db.example:5432/shop", "postgresql://llt:***@db.example:5432/shop"),
        ("postgresql://llt:Alpha1/Bravo2@db.example/shop", "postgresql://llt:***@db.example/shop"),
        ("postgresql://llt:Alpha1?Bravo2@db.example/shop", "postgresql://llt:***@db.example/shop"),
        ("postgresql://llt:Alpha1#Bravo2@db.example/shop", "postgresql://llt:***@db.example/shop"),
        ("postgresql://llt:Alpha1%2FBravo2%40Charlie3@db.example/shop", "postgresql://llt:***@db.example/shop"),
        (
            "postgres://llt@db.example/shop?password=Alpha1/Bravo2#Charlie3",
            "postgres://llt@db.example/shop?password=***",
        ),
        ("postgresql:llt:Alpha1/Bravo2@db.example/shop", "postgresql:llt:***@db.example/shop"),
        (f"http://user:{RAW_PASSWORD}@127.0.0.1:6006", "http://user:***@127.0.0.1:6006"),
        ("https://Alpha1Bravo2@phoenix.example/v1", "https://***@phoenix.example/v1"),
        ("http://127.0.0.1:11434/?api_key=Alpha1:Bravo2&x=1", "http://127.0.0.1:11434/?api_key=***&x=1"),
        ("host=db.example password=Alpha1/Bravo2@Charlie3 dbname=shop", "host=db.example password=*** dbname=shop"),
        ("host=db.example password = 'Alpha1 Bravo2\\'Charlie3' port=5", "host=db.example password = *** port=5"),
    ],
)
def test_redact_url_hides_every_password_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    _no_piece(redact_url(url))


def test_redact_text_hides_urls_in_a_message_and_the_pieces_a_driver_echoes() -> None:
    url = f"postgresql://llt:{RAW_PASSWORD}@127.0.0.1:1/db"
    # what libpq says about that URL: a raw "/" ends its user part, so the password's first piece is a "port"
    echoed = 'invalid integer value "Alpha1" for connection option "port"'
    text = f"cannot connect to {url}: {echoed}\nClient error for url 'http://u:{RAW_PASSWORD}@h:1/api/tags'"
    _no_piece(redact_text(text, url))
    assert "postgresql://llt:***@127.0.0.1:1/db" in redact_text(text, url)
    assert "for url 'http://u:***@h:1/api/tags'" in redact_text(text)
    assert set(PIECES) <= set(url_secrets(url))


def test_a_service_error_hides_the_secrets_in_its_reason_log_and_fix() -> None:
    url = f"http://user:{RAW_PASSWORD}@127.0.0.1:9"
    error = ServiceStartError(
        "ollama", "url", f"GET {url}/api/version did not answer", log=[f"dialing {url}"], fix=f"fix {url}", urls=[url]
    )
    _no_piece(str(error))
    assert "GET http://user:***@127.0.0.1:9/api/version did not answer" in str(error)


def test_a_keyword_dsn_in_a_bad_setting_is_not_echoed() -> None:
    setting = Resolved("host=db.example password=Alpha1/Bravo2 dbname=shop", "command line", "--llmtrace-postgres")
    with pytest.raises(pytest.UsageError) as raised:
        check_setting("postgres", setting, ["embedded", "docker"], ["postgresql", "postgres"])
    _no_piece(str(raised.value))
    assert "password=***" in str(raised.value)
    assert "postgresql://USER:PASSWORD@HOST:PORT/DB" in str(raised.value)
    _no_piece(str(setting))


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pa/ss@phoenix.local:6006/x",
        "http://user:p@ss@phoenix.local:6006/x",
        "https://user:p%2Fss#frag@phoenix.local:6006/x",
    ],
)
def test_capture_and_export_print_a_phoenix_url_without_any_piece_of_its_password(url: str) -> None:
    # urlsplit ends the user part at a raw "/" and printed "http://user/ss@h": a piece of the password as the path
    shown = public_url(url)
    assert shown == ("https" if url.startswith("https") else "http") + "://phoenix.local:6006/x"
    assert not any(piece in shown for piece in url_secrets(url))
