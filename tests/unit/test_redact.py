"""Redaction of personal data and secrets: each kind, what must not be taken for one, and one placeholder per value
everywhere in a trace, so the redacted question still replays the redacted prompt."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
from pathlib import Path

import pytest
from support import load_traces

from pytest_llmtrace.sources.redact import Redactor, luhn_ok
from pytest_llmtrace.sources.redaction_flags import RedactionError, add_arguments, from_args
from pytest_llmtrace.trace.model import Span, SpanEvent, Status, Trace
from pytest_llmtrace.trace.otlp import dumps, read_trace

REPO = Path(__file__).resolve().parents[2]


PLACEHOLDER = re.compile(r"<([A-Z_]+):[0-9a-f]{8}>")
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def numbered(text: str, seen: dict[str, str] | None = None) -> str:
    """Keyed placeholders (``<EMAIL:3f9a1c2b>``) numbered per kind in order of first appearance (``<EMAIL_1>``), so
    an expectation says which values are the same without spelling out hashes; ``seen`` carries the numbering on
    from string to string."""
    seen = {} if seen is None else seen

    def number(match: re.Match[str]) -> str:
        if match.group() not in seen:
            kind = match.group(1)
            seen[match.group()] = f"<{kind}_{sum(1 for v in seen.values() if v.startswith(f'<{kind}_')) + 1}>"
        return seen[match.group()]

    return PLACEHOLDER.sub(number, text)


def red(text: str, redactor: Redactor | None = None) -> str:
    return numbered((redactor or Redactor()).text(text))


def is_documentation_address(text: str) -> bool:
    return any(ipaddress.ip_address(text) in net for net in DOC_NETS)


# -- each kind --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe@acme.io today", "write to <EMAIL_1> today"),
        ("billing+7@customer7.example.com", "<EMAIL_1>"),
        ("Jane.Doe@ACME.io and jane.doe@acme.io", "<EMAIL_1> and <EMAIL_1>"),  # one address, two spellings
        ("a@x.io, b@x.io, a@x.io", "<EMAIL_1>, <EMAIL_2>, <EMAIL_1>"),
        ("<mailto:ops@acme.io>", "<mailto:<EMAIL_1>>"),
    ],
)
def test_emails(text: str, expected: str) -> None:
    assert red(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +1 415 555 0134", "call <PHONE_1>"),
        ("call +1-415-555-0134.", "call <PHONE_1>."),
        ("(415) 555-0134 or 415.555.0134 or 415-555-0134", "<PHONE_1> or <PHONE_1> or <PHONE_1>"),
        ("+44 20 7946 0958", "<PHONE_1>"),
        ("+4915112345678", "<PHONE_1>"),
        ("0049 30 1234567 and +49 30 1234567", "<PHONE_1> and <PHONE_1>"),
    ],
)
def test_phone_numbers(text: str, expected: str) -> None:
    assert red(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-15 10:00:00+00:00",  # dates, times, offsets
        "ordered_at >= '2024-01-01' AND ordered_at < '2025-01-01'",
        "amount numeric(12,2), discount numeric(4,2)",
        "1234567890",  # a bare run of digits is an id, not a phone number
        "revenue went up +12.5% to 1234567.89",
        "LIMIT 10 OFFSET 20",
        "version 1.45.2",
    ],
)
def test_numbers_that_are_not_personal_data_stay(text: str) -> None:
    assert red(text) == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("1234567812345678")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 expires", "card <CARD_1> expires"),
        ("4111-1111-1111-1111 and 4111111111111111", "<CARD_1> and <CARD_1>"),  # same number, two spellings
        ("amex 378282246310005", "amex <CARD_1>"),
        ("mastercard 5555555555554444, visa 4012888888881881", "mastercard <CARD_1>, visa <CARD_2>"),
    ],
)
def test_card_numbers(text: str, expected: str) -> None:
    assert red(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails the Luhn check
        "4111111111111112",
        "1234567812345670",  # passes Luhn but no card network starts with 1
        "trace 1732000000000000000",  # 19 digits, epoch nanoseconds
        "12345678901234567890123",  # too long to be a card
    ],
)
def test_numbers_that_are_not_cards_stay(text: str) -> None:
    assert red(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "key <API_KEY_1>"),
        ("OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz0123", "OPENAI_API_KEY=<API_KEY_1>"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token <API_KEY_1>"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws <API_KEY_1>"),
        (
            "id eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "id <JWT_1>",
        ),
        ("Authorization: Bearer abc123def456ghi789", "Authorization: Bearer <TOKEN_1>"),
        (
            "postgresql://app:s3cr3t-pw@db.example.com:5432/sales",
            "postgresql://app:<PASSWORD_1>@db.example.com:5432/sales",
        ),
    ],
)
def test_api_keys_tokens_and_url_passwords(text: str, expected: str) -> None:
    assert red(text) == expected


def test_a_token_found_after_bearer_is_redacted_where_it_appears_alone() -> None:
    assert red("Bearer abc123def456ghi789; retried with abc123def456ghi789") == (
        "Bearer <TOKEN_1>; retried with <TOKEN_1>"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from 10.20.30.40 and 10.20.30.40:8080", "from A and A:8080"),
        ("10.0.0.1 then 172.16.5.4", "A then B"),
        ("fe80::1 and 2a00:1450:4001:81c::200e", "A and B"),
        ("'10.1.2.3'::inet", "'A'::inet"),  # still an address where SQL casts it
    ],
)
def test_ip_addresses_become_documentation_addresses(text: str, expected: str) -> None:
    out = red(text)
    address = r"\d+\.\d+\.\d+\.\d+|2001:db8:[0-9a-f:]*[0-9a-f]"
    addresses = list(dict.fromkeys(re.findall(address, out)))
    assert all(is_documentation_address(a) for a in addresses), out
    # whole addresses, each at once: with str.replace, 192.0.2.1 also took the front of a 192.0.2.14 after it
    letters = dict(zip(addresses, "AB", strict=False))
    assert re.sub(address, lambda found: letters.get(found.group(0), found.group(0)), out) == expected, out


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:11434 and ::1 and 0.0.0.0",  # loopback and unspecified identify nobody
        "192.0.2.7 and 2001:db8::5",  # documentation ranges: what redaction itself writes
        "SELECT sum(amount)::numeric, '2024-01-01'::date, x::bigint",  # SQL casts are not IPv6
        "10:15:30.123 and 00:1a:2b:3c:4d:5e",  # times and MAC addresses
    ],
)
def test_addresses_that_are_not_personal_stay(text: str) -> None:
    assert red(text) == text


def test_custom_patterns_and_values() -> None:
    redactor = Redactor(patterns=[r"customer #(\d+)", r"ACME-\d{4}"], values=["Globex Corp"])
    assert numbered(redactor.text("customer #4211 of GLOBEX corp has ticket ACME-0042; see 4211")) == (
        "customer #<PATTERN_1> of <VALUE_1> has ticket <PATTERN_2>; see <PATTERN_1>"
    )
    assert redactor.text("ids 142110 stay") == "ids 142110 stay"  # a found number is replaced as a whole word only


def test_kept_values_are_never_redacted() -> None:
    redactor = Redactor(keep=["support@acme.io"])
    assert red("mail support@acme.io or jane@acme.io", redactor) == "mail support@acme.io or <EMAIL_1>"


# -- whole traces -----------------------------------------------------------------------------------------------------

QUESTION = "Which tier is jane.doe@acme.io in? She called from +1 415 555 0134 and paid with 4111 1111 1111 1111."
SQL = "SELECT tier FROM customers WHERE email = 'jane.doe@acme.io' OR email = 'ops@acme.io'"
PII = [
    "jane.doe@acme.io",
    "ops@acme.io",
    "+1 415 555 0134",
    "4111 1111 1111 1111",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
    "Zoë",
]


def _trace() -> Trace:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    messages = [{"role": "system", "content": "Answer with SQL."}, {"role": "user", "content": QUESTION + " Zoë"}]
    root = Span(
        trace_id,
        "00f067aa0ba902b7",
        None,
        "text2sql.request",
        1_000,
        9_000,
        attributes={
            "openinference.span.kind": "CHAIN",
            "input.value": QUESTION + " Zoë",
            "user.id": "ops@acme.io",
            "output.value": json.dumps({"sql": SQL, "rows": [{"tier": "SMB"}], "error": None}),
        },
        resource_attributes={"service.name": "gateway", "host.ip": "10.20.30.40"},
    )
    llm = Span(
        trace_id,
        "00f067aa0ba902b8",
        root.span_id,
        "ollama.chat",
        2_000,
        5_000,
        attributes={
            "openinference.span.kind": "LLM",
            "input.value": json.dumps({"messages": messages}),  # ensure_ascii: Zoë is written Zo\u00eb here
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": messages[0]["content"],
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": messages[1]["content"],
            "llm.output_messages.0.message.content": SQL,
            "llm.invocation_parameters": '{"api_key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"}',
            "llm.token_count.prompt": 41,
            "tag.tags": ("vip", "jane.doe@acme.io"),
        },
    )
    sql = Span(
        trace_id,
        "00f067aa0ba902b9",
        root.span_id,
        "sql.execute",
        6_000,
        8_000,
        attributes={"db.query.text": SQL},
        status=Status.ERROR,
        status_message='invalid input for "jane.doe@acme.io"',
        events=(SpanEvent("exception", 7_000, {"exception.message": 'invalid input for "jane.doe@acme.io"'}),),
    )
    return Trace([root, llm, sql])


def test_one_placeholder_per_value_everywhere_in_a_trace() -> None:
    redactor = Redactor(values=["Zoë"])
    trace = redactor.trace(_trace())

    text = dumps(trace)
    for value in PII:
        assert value not in text
    assert "Zo\\u00eb" not in text  # the JSON-escaped spelling inside the LLM span's input.value too
    question = trace.input or ""
    seen: dict[str, str] = {}
    assert numbered(question, seen) == (
        "Which tier is <EMAIL_1> in? She called from <PHONE_1> and paid with <CARD_1>. <VALUE_1>"
    )
    call = trace.llm_calls[0]
    assert call.input_messages[1].content == question  # the app asked the redacted question sends this prompt
    assert json.loads(call.span.input_value or "")["messages"][1]["content"] == question
    redacted_sql = call.output_text or ""
    assert numbered(redacted_sql, seen) == "SELECT tier FROM customers WHERE email = '<EMAIL_1>' OR email = '<EMAIL_2>'"
    assert trace.sql_statements[0].text == redacted_sql  # still one valid statement: a string literal stays one
    assert json.loads(trace.output or "")["sql"] == redacted_sql
    assert numbered(str(trace.root.attributes["user.id"]), seen) == "<EMAIL_2>"
    assert numbered(str(call.span.attributes["tag.tags"]), seen) == "('vip', '<EMAIL_1>')"
    assert numbered(str(call.span.attributes["llm.invocation_parameters"]), seen) == '{"api_key": "<API_KEY_1>"}'
    assert call.prompt_tokens == 41
    assert numbered(trace.sql_statements[0].error or "", seen) == 'invalid input for "<EMAIL_1>"'
    assert trace.sql_statements[0].span.exception_messages == (trace.sql_statements[0].error,)
    assert is_documentation_address(str(trace.root.resource_attributes["host.ip"]))
    assert [s.span_id for s in trace] == [s.span_id for s in _trace()]


def test_redaction_is_stable_idempotent_and_counts_kinds_without_values() -> None:
    first, second = Redactor(values=["Zoë"], key=b"k" * 32), Redactor(values=["Zoë"], key=b"k" * 32)
    once = first.trace(_trace())

    assert second.trace(_trace()) == once  # the same trace always redacts to the same text
    assert Redactor(values=["Zoë"]).trace(once) is once  # nothing left to find
    summary = first.summary()
    # 13 emails: the address in the question's 3 copies, both addresses in the SQL's 3 copies, user.id, a tag, and
    # the SQL error's status and exception event
    assert summary == "redacted 24 values in 1 trace: 3 value, 1 api_key, 13 email, 3 card, 1 ipv4, 3 phone"
    for value in [*PII, "10.20.30.40", "Zo"]:
        assert value not in summary


def test_a_trace_without_personal_data_is_returned_as_it_is() -> None:
    trace = read_trace(REPO / "golden_traces" / "customers_by_tier.json")
    redactor = Redactor()

    assert redactor.trace(trace) is trace
    assert redactor.summary() == "redacted nothing: no personal data or secrets found"


def test_no_false_positives_in_the_shipped_traces_and_the_gateway_prompt() -> None:
    """The app's own prompt must come through untouched, or every replay of a redacted case would miss."""
    from gateway.app import SCHEMA, SYSTEM_PROMPT

    redactor = Redactor()
    assert redactor.text(SYSTEM_PROMPT) == SYSTEM_PROMPT
    assert redactor.text(SCHEMA) == SCHEMA
    files = sorted((REPO / "golden_traces").glob("*.json")) + sorted((REPO / "tests" / "data").rglob("*.json"))
    for path in files:
        if path.parent.name == "__snapshots__" or "traces_include_spans" in path.name:
            continue
        for trace in load_traces(path):
            assert redactor.trace(trace) is trace, path


# -- the flags --------------------------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("golden"))
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags(tmp_path: Path) -> None:
    assert from_args(_args("--no-redact")) is None
    key = ("--redaction-key", str(tmp_path / "key"))
    flags = ("--redact-pattern", r"T-\d+", "--redact-value", "Globex", "--keep-value", "a@b.io")
    redactor = from_args(_args(*key, *flags))
    assert redactor is not None
    assert red("T-12 Globex a@b.io c@d.io", redactor) == "<PATTERN_1> <VALUE_1> a@b.io <EMAIL_1>"
    again = from_args(_args(*key))  # the key file made by the first: the same placeholders
    assert again is not None
    assert again.text("c@d.io") == redactor.text("c@d.io")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redact-pattern", "(unclosed"], "--redact-pattern '(unclosed' is not a valid regular expression: "),
        (["--redact-pattern", "x*"], "--redact-pattern 'x*' matches the empty string; fix: make it match something"),
        (["--no-redact", "--redact-value", "x"], "--no-redact and --redact-value contradict each other; fix: drop one"),
    ],
)
def test_flag_mistakes_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(RedactionError) as excinfo:
        from_args(_args(*argv))
    assert str(excinfo.value).startswith(message)
    assert "\n" not in str(excinfo.value)
