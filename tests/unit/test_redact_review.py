"""The redaction review's findings (issue 17), one test each: what capture, import and the Phoenix export let
through, placeholders that differed from file to file, and a seeded secret in any output."""

from __future__ import annotations

import http.server
import json
import os
import re
import stat
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import http_server

from pytest_llmtrace.checks.outcome import CaseOutcome
from pytest_llmtrace.cli import main
from pytest_llmtrace.sinks.spans import RunAttributes, prepare, verdict
from pytest_llmtrace.sources.capture.filters import dedupe_key
from pytest_llmtrace.sources.redact import Redactor
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace

REPO = Path(__file__).resolve().parents[2]
RUN = RunAttributes("llmtrace-20261201T101502Z-3c418b8")
GITHUB = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"

# One value of each kind the review found in the output, as the app's users would have typed them.
SEEDED = {
    "email": "jane.doe@acme.io",
    "idn email": "josé@exämple.de",
    "url-encoded email": "john.roe%40example.com",
    "national phone": "030 1234567",
    "card with dots": "4111.1111.1111.1111",
    "ssn": "078-05-1121",
    "iban": "DE89 3704 0044 0532 0130 00",
    "stripe": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "hugging face": "hf_AbCdEfGhIjKlMnOpQrStUvWxYzABCDEFGH",
    "gitlab": "glpat-AbCdEf1234567890XyZw",
    "github": GITHUB,
    "aws key id": "AKIAIOSFODNN7EXAMPLE",
    "aws secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "slack": "xoxb-1234567890-abcdefghijKLMN",
    "basic auth": "dXNlcjpwYXNzd29yZA==",
    "url password": "hunter2hunter2",
    "person": "Margaret Whitfield",
}
SEEDED_TEXT = (
    f"Dear {SEEDED['person']}, mail {SEEDED['email']} or {SEEDED['idn email']} or "
    f"mailto:{SEEDED['url-encoded email']}, call {SEEDED['national phone']}, card {SEEDED['card with dots']}, "
    f"SSN {SEEDED['ssn']}, IBAN {SEEDED['iban']}. Keys: {SEEDED['stripe']} {SEEDED['hugging face']} "
    f"{SEEDED['gitlab']} {SEEDED['github']} {SEEDED['aws key id']} "
    f"aws_secret_access_key={SEEDED['aws secret']} {SEEDED['slack']} "
    f"Authorization: Basic {SEEDED['basic auth']} https://bob:{SEEDED['url password']}@db.example.com/shop"
)


def red(text: str) -> str:
    return Redactor().text(text)


def leaks(text: str) -> list[str]:
    """The seeded values ``text`` still holds, as typed or as JSON writes them (``jos\\u00e9``), any case."""
    found = []
    lowered = text.casefold()
    for kind, value in SEEDED.items():
        spellings = {value, json.dumps(value)[1:-1], value.replace(" ", "-").lower()}
        if any(s.casefold() in lowered for s in spellings):
            found.append(kind)
    return found


# -- what redaction missed --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Dear Jane Doe, your order shipped.", "Jane Doe"),
        ("Thanks, Mr. Okonkwo will call back", "Okonkwo"),
        ("Hello Ms. Ana-María López-Ruiz", "Ana-María López-Ruiz"),
        ('{"first_name": "Priya", "last_name": "Raman", "tier": "gold"}', "Raman"),
        ("SELECT * FROM customers WHERE full_name = 'Jane Doe'", "Jane Doe"),
        ("my name is Kowalski and I want my invoices", "Kowalski"),
        ("Best regards,\nHeinrich Böll", "Heinrich Böll"),
        ("show orders of customer Jane Doe", "Jane Doe"),
    ],
)
def test_person_names_are_redacted_where_their_context_says_they_are_names(text: str, name: str) -> None:
    out = red(text)
    assert name not in out, out
    assert "<PERSON:" in out


def test_a_name_given_by_an_attribute_key_or_an_email_is_redacted_everywhere_in_the_trace() -> None:
    trace = read_trace(REPO / "golden_traces" / "customers_by_tier.json")
    root = replace(
        trace.root,
        attributes={
            **trace.root.attributes,
            "input.value": "Which tier are Jane Doe and jane doe in? Ask john.smith@acme.io, John Smith knows.",
            "customer.name": "Jane Doe",
            "service.name": "Gateway",
        },
    )
    redacted = Redactor().trace(Trace([root, *trace.spans[1:]]))
    text = str([s.attributes for s in redacted.spans])
    assert "jane" not in text.lower()
    assert "John Smith" not in text
    assert redacted.root.attributes["service.name"] == "Gateway"  # a name key only under a person's key


def test_a_login_under_a_persons_name_key_is_redacted_as_written() -> None:
    trace = read_trace(REPO / "golden_traces" / "customers_by_tier.json")
    root = replace(trace.root, attributes={**trace.root.attributes, "user.name": "jdoe", "input.value": "hi jdoe"})
    redacted = Redactor().trace(Trace([root, *trace.spans[1:]]))
    assert "jdoe" not in str(redacted.root.attributes)


def test_a_redacted_name_never_reaches_a_file_name_or_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTRACE_REDACTION_KEY", str(tmp_path / "key"))
    trace = read_trace(REPO / "golden_traces" / "customers_by_tier.json")
    root = replace(
        trace.root,
        attributes={**trace.root.attributes, "input.value": "Orders of Jane Doe?", "customer.full_name": "Jane Doe"},
    )
    source = tmp_path / "export.json"
    write_trace(Trace([root, *trace.spans[1:]]), source, redact=False)

    assert main(["import", str(source), "--out", str(tmp_path / "golden")]) == 0

    names = [p.name for p in (tmp_path / "golden").iterdir()]
    stdout = capsys.readouterr().out
    assert not [n for n in names if "jane" in n], names
    assert "jane" not in stdout.lower(), stdout


@pytest.mark.parametrize(
    "email",
    ["josé@exämple.de", "jane%40example.com", "Jane.Doe%40Example.COM", "info@bücher.example", "张伟@例子.中国"],
)
def test_idn_and_url_encoded_emails(email: str) -> None:
    out = red(f"write to {email} today")
    assert email not in out, out
    assert "<EMAIL:" in out


def test_an_url_encoded_email_is_the_same_placeholder_as_the_plain_one() -> None:
    out = Redactor().text("jane@example.com and jane%40example.com")
    first, second = out.split(" and ")
    assert first == second


@pytest.mark.parametrize(
    "phone", ["030 1234567", "(555) 123-4567", "+44 20 7946 0958", "06 12 34 56 78", "020 7946 0958", "089/12345678"]
)
def test_national_phone_formats(phone: str) -> None:
    out = red(f"call {phone} after lunch")
    assert phone not in out, out
    assert "<PHONE:" in out


@pytest.mark.parametrize(
    "text", ["between 01-02-2024 and 01-03-2024", "at 01/02/2024 10:00", "ids 0001 0002 0003", "0.25 of 100"]
)
def test_dates_and_counts_are_not_national_phone_numbers(text: str) -> None:
    assert red(text) == text


def test_card_numbers_written_with_dots_and_luhn_against_false_positives() -> None:
    assert "4111" not in red("card 4111.1111.1111.1111 expired")
    assert "5555" not in red("card 5555.5555.5555.4444")
    assert red("version 4111.1111.1111.1112") == "version 4111.1111.1111.1112"  # fails the Luhn check


def test_us_ssns_and_ibans_with_valid_checksums() -> None:
    assert "078-05-1121" not in red("SSN 078-05-1121 on file")
    assert "<SSN:" in red("SSN 078-05-1121 on file")
    for iban in ("DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606"):
        out = red(f"pay to {iban} please")
        assert iban not in out, out
        assert "<IBAN:" in out
    assert red("SSN 000-12-3456 and 666-12-3456") == "SSN 000-12-3456 and 666-12-3456"  # never issued
    assert red("ref GB82 WEST 1234 5698 7654 33") == "ref GB82 WEST 1234 5698 7654 33"  # checksum fails
    assert "<IBAN:" not in red("ref DE89 3704 0044 0532 0130 01")  # (its digits happen to pass the Luhn check)


@pytest.mark.parametrize(
    "secret",
    [
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_51HxyzABCDEFGHIJKLMNOPQRSTu",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYzABCDEFGH",
        "glpat-AbCdEf1234567890XyZw",
    ],
)
def test_stripe_hugging_face_and_gitlab_keys(secret: str) -> None:
    out = red(f"token {secret} leaked")
    assert secret[4:] not in out, out


def test_aws_secret_keys_and_http_basic_auth() -> None:
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert aws not in red(f"aws_secret_access_key={aws}")
    assert aws not in red(f'AWS_SECRET_ACCESS_KEY: "{aws}"')
    assert "dXNlcjpwYXNzd29yZA" not in red("Authorization: Basic dXNlcjpwYXNzd29yZA==")
    assert "hunter2" not in red("https://bob:hunter2@db.example.com/x")
    assert red("we use Basic authentication") == "we use Basic authentication"


# -- one value, one placeholder, across files and runs ----------------------------------------------------------------


def _trace_with_question(question: str, trace_id: str) -> Trace:
    trace = read_trace(REPO / "golden_traces" / "customers_by_tier.json")
    spans = [
        replace(s, trace_id=trace_id, attributes={**s.attributes, "input.value": question})
        if s is trace.root
        else replace(s, trace_id=trace_id)
        for s in trace.spans
    ]
    return Trace(spans)


def test_one_value_is_one_keyed_placeholder_across_files_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    monkeypatch.delenv("LLMTRACE_REDACTION_KEY", raising=False)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_trace(_trace_with_question("Tier of jane@acme.io and john@acme.io?", "a" * 32), first, redact=False)
    write_trace(_trace_with_question("Tier of john@acme.io?", "b" * 32), second, redact=False)

    assert main(["import", str(first), "--out", str(project / "golden")]) == 0
    assert main(["import", str(second), "--out", str(project / "golden")]) == 0  # a later run

    by_id = {read_trace(p).trace_ids[0][0]: read_trace(p).input for p in (project / "golden").iterdir()}
    assert re.fullmatch(r"Tier of <EMAIL:[0-9a-f]{8}> and <EMAIL:[0-9a-f]{8}>\?", by_id["a"] or ""), by_id
    john = (by_id["b"] or "").removeprefix("Tier of ").removesuffix("?")
    assert (by_id["a"] or "").endswith(f"and {john}?"), by_id
    key = project / ".llmtrace" / "redaction.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "/redaction.key" in (key.parent / ".gitignore").read_text().splitlines()
    for path in (project / "golden").iterdir():
        assert key.read_text().strip() not in path.read_text()


def test_another_key_gives_other_placeholders_and_the_same_key_the_same() -> None:
    text = "mail jane@acme.io"
    assert Redactor(key=b"1" * 32).text(text) == Redactor(key=b"1" * 32).text(text)
    assert Redactor(key=b"1" * 32).text(text) != Redactor(key=b"2" * 32).text(text)


def test_questions_that_differ_only_in_the_customer_are_still_one_case_to_dedupe() -> None:
    redactor = Redactor()
    seven, nine = (
        redactor.trace(_trace_with_question(f"Which tier is billing+{n}@customer{n}.example.com in?", n * 32))
        for n in "79"
    )
    assert seven.input != nine.input  # two customers, two placeholders
    assert dedupe_key(seven, ("question", "sql")) == dedupe_key(nine, ("question", "sql"))
    other = redactor.trace(_trace_with_question("Which region is billing+7@customer7.example.com in?", "d" * 32))
    assert dedupe_key(other, ("question",)) != dedupe_key(seven, ("question",))


# -- the Phoenix export -----------------------------------------------------------------------------------------------


def _recorded(text: str) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with (
        tracer.start_as_current_span("handle", attributes={"input.value": text, "user.id": SEEDED["email"]}),
        tracer.start_as_current_span("sql", attributes={"db.query.text": f"SELECT 1 -- {text}"}) as sql,
    ):
        sql.add_event("log", {"message": text})
    return list(exporter.get_finished_spans())


def test_the_phoenix_export_redacts_personal_data_and_keys_like_capture() -> None:
    text = f"mail {SEEDED['email']}, card 4111 1111 1111 1111, {GITHUB} AKIAIOSFODNN7EXAMPLE xoxb-1234567890-abcdefghij"
    text += f" {SEEDED['stripe']}"
    wire = encode_spans(prepare(_recorded(text), RUN, "t.py::t")).SerializeToString().decode("utf-8", "replace")
    assert leaks(wire) == []
    for value in ("4111 1111 1111 1111", "xoxb-1234567890", "AKIAIOSFODNN7EXAMPLE"):
        assert value not in wire


def test_the_verdict_sent_to_phoenix_is_redacted_too() -> None:
    judged = verdict([CaseOutcome("t.py::t", "test", app_error=f"no customer {SEEDED['email']} ({SEEDED['stripe']})")])
    assert leaks(judged.explanation) == []


# -- no seeded secret in any output -----------------------------------------------------------------------------------


def test_no_seeded_secret_reaches_any_file_or_stdout_of_import_and_export(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTRACE_REDACTION_KEY", str(tmp_path / "key"))
    source = tmp_path / "export.json"
    write_trace(_trace_with_question(SEEDED_TEXT, "c" * 32), source, redact=False)
    assert leaks(source.read_text()) == list(SEEDED)  # the seeds are there to be found

    assert main(["import", str(source), "--out", str(tmp_path / "golden")]) == 0
    wire = encode_spans(prepare(_recorded(SEEDED_TEXT), RUN, "t.py::t")).SerializeToString()

    out, err = capfd.readouterr()
    outputs = {"stdout": out, "stderr": err, "export": wire.decode("utf-8", "replace")}
    for path in (tmp_path / "golden").rglob("*"):
        outputs[path.name] = path.name + (path.read_text() if path.is_file() else "")
    assert {where: leaks(text) for where, text in outputs.items() if leaks(text)} == {}
    assert os.listdir(tmp_path / "golden")


class _Phoenix(http.server.BaseHTTPRequestHandler):
    """Phoenix's span listing over real HTTP, serving tests/data/phoenix/rest_spans.json with the seeds in every
    root's question: what ``llmtrace capture`` reads."""

    spans: list[dict[str, Any]] = []  # noqa: RUF012

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        data = self.spans
        if query.get("parent_id") == ["null"]:
            data = [s for s in data if s["parent_id"] is None]
        if "trace_id" in query:
            data = [s for s in data if s["context"]["trace_id"] in query["trace_id"]]
        body = json.dumps({"data": data[: int(query.get("limit", ["1000"])[0])], "next_cursor": None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_no_seeded_secret_reaches_any_file_or_stdout_of_capture(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTRACE_REDACTION_KEY", str(tmp_path / "key"))
    spans = json.loads((REPO / "tests" / "data" / "phoenix" / "rest_spans.json").read_text())["data"]
    for span in spans:
        if span["parent_id"] is None:
            span["attributes"] = {**span["attributes"], "input.value": SEEDED_TEXT, "customer.name": SEEDED["person"]}
    _Phoenix.spans = spans
    with http_server(_Phoenix) as url:
        status = main(["capture", "--phoenix-url", url, "--project", "shop", "--out", str(tmp_path / "golden")])

    out, err = capfd.readouterr()
    assert status == 0, err
    outputs = {"stdout": out, "stderr": err}
    for path in (tmp_path / "golden").rglob("*"):
        outputs[path.name] = path.name + (path.read_text() if path.is_file() else "")
    assert len(outputs) > 2
    assert {where: leaks(text) for where, text in outputs.items() if leaks(text)} == {}


# -- the export's setting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("default", "redact yes (default)"),
        ("ini", "redact no (ini)"),
        ("env", "redact no (environment)"),
        ("cli", "redact yes (command line)"),  # over the env's and the ini's no
    ],
)
def test_the_exports_redaction_is_a_setting_cli_over_env_over_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str, expected: str
) -> None:
    ini = "[pytest]\naddopts = -p no:phoenix -p no:randomly\n"
    if how in ("ini", "cli"):
        ini += "llmtrace_phoenix_export_redact = no\n"
    pytester.makeini(ini)
    if how in ("env", "cli"):
        monkeypatch.setenv("LLMTRACE_PHOENIX_EXPORT_REDACT", "no")
    args = ["--llmtrace-phoenix-export-redact=yes"] if how == "cli" else []
    result = pytester.runpytest("--co", "-p", "no:cacheprovider", "--llmtrace-phoenix-export", *args)
    result.stdout.fnmatch_lines([f"llmtrace phoenix export: yes (command line), project *, {expected}"])
    key = pytester.path / ".llmtrace" / "redaction.key"
    assert key.exists() == expected.startswith("redact yes")  # the key is made only for an export that redacts
    if key.exists():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_export_with_redaction_off_still_redacts_credentials() -> None:
    wire = encode_spans(prepare(_recorded(SEEDED_TEXT), RUN, "t.py::t", personal_data=False)).SerializeToString()
    assert SEEDED["email"].encode() in wire  # asked for: the data as the app recorded it
    assert SEEDED["url password"].encode() not in wire  # but never a credential
