"""Credentials never reach a golden file: URL passwords, API keys and Authorization headers are redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmtrace.trace.model import Span, SpanEvent, Status, Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace
from pytest_llmtrace.trace.secrets import (
    REDACTED,
    is_secret_key,
    redact_secrets,
    redact_text,
    redact_trace,
    redact_url_password,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"
PHOENIX_KEY = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJBcGlLZXk6MSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        ("postgresql://app:p@ss@db/shop", "postgresql://app:***@db/shop"),  # '@' in the password, unencoded
        (
            "postgresql://app@db/shop?password=s3cret&sslmode=require",
            "postgresql://app@db/shop?password=***&sslmode=require",
        ),
        ("postgresql://db/shop?sslpassword=k3y", "postgresql://db/shop?sslpassword=***"),
        ("https://api.example.com/v1?api_key=abc123&q=1", "https://api.example.com/v1?api_key=***&q=1"),
        ("http://user:@host/", "http://user:***@host/"),
        ("postgresql://app@db/shop", "postgresql://app@db/shop"),
        ("mailto:someone@example.com", "mailto:someone@example.com"),
        ("no url here", "no url here"),
    ],
)
def test_redact_url_password(url: str, expected: str) -> None:
    assert redact_url_password(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect to postgresql://app:s3cret@db/shop failed", "connect to postgresql://app:***@db/shop failed"),
        ("Authorization: Bearer abc123def456ghi", "Authorization: Bearer ***"),
        (f"key {OPENAI_KEY} end", f"key {REDACTED} end"),
        (f"token={PHOENIX_KEY}", "token=***"),
        (
            '{"model": "gpt-4o", "api_key": "x\\"y", "temperature": 0}',
            '{"model": "gpt-4o", "api_key": "***", "temperature": 0}',
        ),
        ("{'api_key': 'sk-x', 'n': 1}", "{'api_key': '***', 'n': 1}"),
        # prose and SQL are left alone
        ("Bearer responsibilities", "Bearer responsibilities"),
        ("SELECT * FROM users WHERE password = 'x'", "SELECT * FROM users WHERE password = 'x'"),
        ("sk-learn-is-a-python-library", "sk-learn-is-a-python-library"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_libpq_keyword_passwords_are_redacted_only_in_connection_attributes() -> None:
    dsn = "host=db port=5432 password='a b' dbname=shop sslpassword=k3y"

    assert redact_text(dsn, connection=True) == "host=db port=5432 password=*** dbname=shop sslpassword=***"
    assert redact_text(dsn) == dsn


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("http.request.header.authorization", True),
        ("http.request.header.x-api-key", True),
        ("metadata.openai_api_key", True),
        ("phoenix.api_key", True),
        ("db.password", True),
        ("session.auth_token", True),
        ("llm.token_count.total", False),
        ("gen_ai.usage.input_tokens", False),
        ("llm.invocation_parameters", False),
        ("input.value", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def leaky_trace() -> Trace:
    root = Span(
        trace_id=TRACE_ID,
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        name="text_to_sql",
        start_time_unix_nano=100,
        end_time_unix_nano=900,
        attributes={
            "input.value": "How many customers are in Berlin?",
            "llm.invocation_parameters": f'{{"model": "qwen", "api_key": "{OPENAI_KEY}"}}',
            "http.request.header.authorization": ("Bearer abc123def456ghi",),
            "metadata": {"phoenix_api_key": PHOENIX_KEY, "region": "eu"},
            # an OTLP array of key-value lists: each mapping's keys decide again
            "tool.calls": ({"name": "lookup", "api_key": "plain-secret-value", "note": "Bearer zyx987wvu654"},),
            "llm.token_count.total": 42,
        },
        status=Status.OK,
        resource_attributes={"service.name": "text2sql", "db.url": "postgresql://app:s3cret@db/shop"},
    )
    sql = Span(
        trace_id=TRACE_ID,
        span_id="00f067aa0ba902b7",
        parent_span_id=root.span_id,
        name="SELECT shop",
        start_time_unix_nano=200,
        end_time_unix_nano=300,
        attributes={
            "db.query.text": "SELECT count(*) FROM users WHERE password = 'x'",
            "db.connection_string": "host=db user=app password=s3cret dbname=shop",
            "server.address": "postgresql://app:s3cret@db:5432/shop?sslpassword=hunter2",
        },
        status=Status.ERROR,
        status_message="could not connect to postgresql://app:s3cret@db/shop",
        events=(SpanEvent("exception", 250, {"exception.message": "auth failed for Bearer abc123def456ghi"}),),
    )
    return Trace([root, sql])


def test_redact_secrets_removes_every_seeded_secret_and_keeps_the_rest() -> None:
    redaction = redact_trace(leaky_trace())
    trace = redaction.trace
    text = repr([(s.name, s.status_message, dict(s.attributes), s.resource_attributes, s.events) for s in trace])

    for secret in (OPENAI_KEY, PHOENIX_KEY, "s3cret", "hunter2", "abc123def456ghi", "plain-secret-value", "zyx987"):
        assert secret not in text
    root, sql = trace.spans
    assert root.attributes["input.value"] == "How many customers are in Berlin?"
    assert root.attributes["metadata"] == {"phoenix_api_key": REDACTED, "region": "eu"}
    assert root.attributes["http.request.header.authorization"] == REDACTED
    assert root.attributes["llm.token_count.total"] == 42
    assert root.attributes["tool.calls"] == ({"name": "lookup", "api_key": REDACTED, "note": f"Bearer {REDACTED}"},)
    assert root.resource_attributes["db.url"] == "postgresql://app:***@db/shop"
    assert sql.attributes["db.query.text"] == "SELECT count(*) FROM users WHERE password = 'x'"  # SQL replays as is
    assert sql.attributes["db.connection_string"] == "host=db user=app password=*** dbname=shop"
    assert sql.status_message == "could not connect to postgresql://app:***@db/shop"
    assert redaction.fields == {
        "db.connection_string": 1,
        "db.url": 1,
        "exception.message": 1,
        "http.request.header.authorization": 1,
        "llm.invocation_parameters": 1,
        "metadata.phoenix_api_key": 1,
        "server.address": 1,
        "span status_message": 1,
        "tool.calls": 1,
    }
    assert redact_secrets(trace) is trace  # idempotent, and nothing to do returns the same trace


def test_write_trace_redacts_unless_told_not_to(tmp_path: Path) -> None:
    path = write_trace(leaky_trace(), tmp_path / "golden.json")

    assert "s3cret" not in path.read_text(encoding="utf-8")
    assert read_trace(path) == redact_secrets(leaky_trace())

    raw = write_trace(leaky_trace(), tmp_path / "raw.json", redact=False)
    assert read_trace(raw) == leaky_trace()
