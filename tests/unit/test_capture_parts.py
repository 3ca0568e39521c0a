"""``llmtrace capture`` without a Phoenix: its filters, sample, dedupe key, output directory and option mistakes, and
the redaction ``llmtrace import`` shares with it. The runs against a real Phoenix are in tests/services."""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import io
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support import http_server

from pytest_llmtrace.cli import golden_file_name, main
from pytest_llmtrace.sources.capture.command import add_arguments
from pytest_llmtrace.sources.capture.filters import (
    CaptureError,
    Filters,
    dedupe_key,
    parse_dedupe,
    parse_filters,
    parse_time,
    sampled,
)
from pytest_llmtrace.sources.capture.golden_dir import CAPTURE_TIME, GoldenDir, with_provenance
from pytest_llmtrace.sources.phoenix_client import public_url
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def golden(name: str = "customers_by_tier") -> Trace:
    return read_trace(REPO / "golden_traces" / f"{name}.json")


# -- filters ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - dt.timedelta(hours=24)),
        ("30m", NOW - dt.timedelta(minutes=30)),
        ("7d", NOW - dt.timedelta(days=7)),
        ("1.5h", NOW - dt.timedelta(minutes=90)),
        ("2026-04-30T08:00:00Z", dt.datetime(2026, 4, 30, 8, tzinfo=dt.timezone.utc)),
        ("2026-04-30T10:00:00+02:00", dt.datetime(2026, 4, 30, 8, tzinfo=dt.timezone.utc)),
        ("2026-04-30", dt.datetime(2026, 4, 30, tzinfo=dt.timezone.utc)),  # no offset: UTC
    ],
)
def test_times(text: str, expected: dt.datetime) -> None:
    assert parse_time(text, "--since", NOW) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"since": "24x"},
            "--since '24x': expected a duration back from now like 30m, 24h or 7d, or an ISO 8601 time like "
            "2024-05-01T12:00:00Z",
        ),
        (
            {"since": "1h", "until": "2h"},
            "--since '1h' (2026-05-01 11:00:00 UTC) is not before --until '2h' (2026-05-01 10:00:00 UTC); fix: swap "
            "them or widen the window",
        ),
        ({"sample": "0"}, "--sample '0': expected a fraction above 0 and at most 1, like 0.1"),
        ({"sample": "half"}, "--sample 'half': expected a fraction above 0 and at most 1, like 0.1"),
        ({"limit": 0}, "--limit 0: expected a whole number of at least 1"),
        ({"seed": "x"}, "--seed 'x': expected a whole number"),
        ({"trace_ids": ["abc"]}, "--trace-id 'abc': expected 32 hex digits, as Phoenix shows trace ids"),
    ],
)
def test_filter_mistakes(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CaptureError) as excinfo:
        parse_filters(now=NOW, **kwargs)  # type: ignore[arg-type]
    assert str(excinfo.value) == message
    assert excinfo.value.usage


def test_filters_are_normalized() -> None:
    filters = parse_filters(trace_ids=["AB" * 16, "ab" * 16], sample="0.25", limit=3, now=NOW)
    assert filters.trace_ids == ("ab" * 16,)
    assert filters.sample == 0.25
    assert filters.limit == 3


def test_every_filter_option_of_the_command_line_reaches_the_filters() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = "--since 1h --until 10m --errors-only --root-name a --root-name b --sample 0.5 --seed 7 --limit 9"
    args = parser.parse_args(
        ["--phoenix-url", "http://x", "--project", "p", "--out", "o", *options.split(), "--trace-id", "AB" * 16]
    )
    assert Filters.from_args(args, now=NOW) == Filters(
        since=NOW - dt.timedelta(hours=1),
        until=NOW - dt.timedelta(minutes=10),
        errors_only=True,
        root_names=("a", "b"),
        sample=0.5,
        seed=7,
        limit=9,
        trace_ids=("ab" * 16,),
    )


def test_the_sample_is_deterministic_per_trace_id_and_close_to_its_fraction() -> None:
    ids = [f"{i:032x}" for i in range(4000)]
    kept = [t for t in ids if sampled(t, 0.25, seed=1)]
    assert 0.22 < len(kept) / len(ids) < 0.28
    assert kept == [t for t in reversed(ids) if sampled(t, 0.25, seed=1)][::-1]  # order and company do not matter
    assert {t for t in ids if sampled(t.upper(), 0.25, seed=1)} == set(kept)
    assert kept != [t for t in ids if sampled(t, 0.25, seed=2)]  # another seed, another sample
    assert all(sampled(t, 1.0, seed=1) for t in ids)
    assert set(kept) <= {t for t in ids if sampled(t, 0.5, seed=1)}  # a bigger fraction keeps the smaller sample


# -- dedupe -----------------------------------------------------------------------------------------------------------


def test_dedupe_fields() -> None:
    assert parse_dedupe("question,sql") == ("question", "sql")
    assert parse_dedupe(" SQL ") == ("sql",)
    assert parse_dedupe("none") == ()
    with pytest.raises(CaptureError, match=r"^--dedupe 'questoin': 'questoin' is not one of question, sql, none; "):
        parse_dedupe("questoin")
    with pytest.raises(CaptureError, match=r"did you mean 'question'\?$"):
        parse_dedupe("questoin")


def test_the_dedupe_key_ignores_spacing_case_and_trailing_punctuation_of_the_question_but_not_sql_case() -> None:
    trace = golden()
    question = trace.root.attributes["input.value"]
    sql = trace.sql_statements[0].text
    assert dedupe_key(trace, ("question", "sql")) == (
        "how many customers do we have in each tier",
        sql.rstrip(";"),
    )
    respaced = _with_attributes(trace, {"input.value": f"  {str(question).upper()}  "})
    assert dedupe_key(respaced, ("question",)) == dedupe_key(trace, ("question",))
    other_case = _with_attributes(trace, {"db.query.text": sql.replace("tier", "TIER")})
    assert dedupe_key(other_case, ("sql",)) != dedupe_key(trace, ("sql",))


def _with_attributes(trace: Trace, changes: dict[str, str]) -> Trace:
    spans = []
    for span in trace:
        attributes = {k: changes.get(k, v) for k, v in span.attributes.items()}
        spans.append(replace(span, attributes=attributes))
    return Trace(spans)


# -- the output directory -----------------------------------------------------------------------------------------


def test_public_url_drops_credentials_query_and_fragment() -> None:
    assert public_url("https://user:s3cret@phoenix.example.com:6006/base/?token=abc#x") == (
        "https://phoenix.example.com:6006/base"
    )
    assert public_url("http://[::1]:6006") == "http://[::1]:6006"


def _captured(trace: Trace, at: str) -> Trace:
    return with_provenance(trace, phoenix_url="http://127.0.0.1:6006", project="prod", captured_at=at)


def test_the_directory_writes_atomically_keeps_differing_files_and_sees_a_recapture_as_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _captured(golden(), "2026-05-01T12:00:00Z")
    target = tmp_path / golden_file_name(trace)
    first = GoldenDir(tmp_path, force=False, dedupe=(), name_for=golden_file_name)
    first.add(trace, *_streams())
    assert first.outcome.written == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left beside it
    assert read_trace(target).root.resource_attributes[CAPTURE_TIME] == "2026-05-01T12:00:00Z"

    later = GoldenDir(tmp_path, force=False, dedupe=(), name_for=golden_file_name)
    later.add(_captured(golden(), "2026-05-02T08:00:00Z"), *_streams())
    assert (later.outcome.unchanged, later.outcome.written) == (1, 0)
    assert read_trace(target).root.resource_attributes[CAPTURE_TIME] == "2026-05-01T12:00:00Z"

    target.write_text(target.read_text().replace("How many", "How MANY"))
    edited = target.read_text()
    stdout, stderr = _streams()
    refused = GoldenDir(tmp_path, force=False, dedupe=(), name_for=golden_file_name)
    refused.add(trace, stdout, stderr)
    assert refused.outcome.failed == 1
    assert stderr.getvalue() == f"error: {target} exists with different content; use --force to overwrite it\n"
    assert target.read_text() == edited
    forced = GoldenDir(tmp_path, force=True, dedupe=(), name_for=golden_file_name)
    forced.add(trace, *_streams())
    assert forced.outcome.written == 1
    assert "How MANY" not in target.read_text()


def test_dedupe_counts_files_already_in_the_directory(tmp_path: Path) -> None:
    original = golden()
    write_trace(_captured(original, "2026-05-01T12:00:00Z"), tmp_path / "kept.json")
    ids = {s.span_id: f"{int(s.span_id, 16) ^ 1:016x}" for s in original}
    rerun = Trace(
        replace(s, trace_id="f" * 32, span_id=ids[s.span_id], parent_span_id=ids.get(s.parent_span_id or ""))
        for s in original
    )
    directory = GoldenDir(tmp_path, force=False, dedupe=("question", "sql"), name_for=golden_file_name)
    directory.add(_captured(rerun, "2026-05-02T08:00:00Z"), *_streams())
    directory.add(_captured(golden("inactive_products"), "2026-05-02T08:00:00Z"), *_streams())
    assert (directory.outcome.duplicates, directory.outcome.written) == (1, 1)
    assert len(list(tmp_path.glob("*.json"))) == 2


def _streams() -> tuple[io.StringIO, io.StringIO]:
    return io.StringIO(), io.StringIO()


# -- option mistakes and servers that are not Phoenix ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "error: --since 'yesterday': expected a duration back from now like 30m, 24h or "),
        (["--limit", "ten"], "error: --limit 'ten': expected a whole number"),
        (["--limit", "0"], "error: --limit '0': expected a whole number of at least 1"),
        (["--dedupe", "sq"], "error: --dedupe 'sq': 'sq' is not one of question, sql, none; did you mean 'sql'?"),
        (["--redact-pattern", "[a-"], "error: --redact-pattern '[a-' is not a valid regular expression: "),
    ],
)
def test_option_mistakes_are_one_line_before_any_request(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["capture", "--phoenix-url", "http://127.0.0.1:9", "--project", "p", "--out", str(tmp_path), *args]
    assert main(argv) == 2
    stdout, stderr = capsys.readouterr()
    assert stderr.startswith(message)
    assert stderr.count("\n") == 1
    assert stdout == ""


def test_a_phoenix_url_that_is_not_http_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["capture", "--phoenix-url", "ftp://user:pw@host/", "--project", "p", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --phoenix-url 'ftp://host': expected an http(s) URL like http://127.0.0.1:6006\n"
    )


@pytest.fixture
def web_page() -> Iterator[str]:
    """A real web server that is not Phoenix: every path answers an HTML page."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Grafana</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler) as url:
        yield url


def test_a_server_that_is_not_phoenix_is_one_line(
    web_page: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["capture", "--phoenix-url", web_page, "--project", "p", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: GET {web_page}/v1/projects/p/spans answered text/html that is not JSON; fix: --phoenix-url must be "
        "Phoenix's base URL (the address of its UI, like http://127.0.0.1:6006)"
    )
    assert not (tmp_path / "o").exists()


# -- llmtrace import redacts too --------------------------------------------------------------------------------------


def test_import_redacts_before_naming_and_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    question = "Which tier is jane.doe@acme.io in? My key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"
    source = tmp_path / "export.json"
    write_trace(_with_attributes(golden(), {"input.value": question}), source, redact=False)
    out = tmp_path / "golden"

    assert main(["import", str(source), "--out", str(out)]) == 0

    stdout = capsys.readouterr().out
    [written] = out.iterdir()
    assert re.match(r"which-tier-is-email-[0-9a-f]{8}-in-my-key-is-api-ke-", written.name), written.name
    text = written.read_text()
    assert "jane.doe" not in text
    assert "sk-proj" not in text
    question = read_trace(written).input or ""
    assert re.fullmatch(r"Which tier is <EMAIL:[0-9a-f]{8}> in\? My key is <API_KEY:[0-9a-f]{8}>", question)
    assert stdout.splitlines()[-2] == "redacted 4 values in 1 trace: 2 api_key, 2 email"  # root and LLM input.value
    assert "jane" not in stdout

    raw = tmp_path / "raw"
    assert main(["import", str(source), "--out", str(raw), "--no-redact"]) == 0
    assert "jane.doe@acme.io" in next(raw.iterdir()).read_text()
