"""Security review, findings 1 and 2 end to end: what a run prints (header, failures, summary) and writes (junit.xml,
results.json, summary.md) holds no credential of the services it was given and no raw terminal control.

Inner runs are in process; the servers they point at are a closed port (Postgres) and a small real HTTP server that
answers the Ollama API's version and model list, so nothing here waits for a timeout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import psycopg2.errors  # noqa: F401 - imported before any inner run: pytester's in-process runs drop modules
import pytest
from support import http_server

REPO = Path(__file__).resolve().parents[2]
PIECES = ("Alpha1", "Bravo2", "Charlie3", "Delta4", "Echo5", "Fox6")
RAW_PASSWORD = "Alpha1/Bravo2@Charlie3%Delta4:Echo5?Fox6"  # typed raw, as a user might
ENCODED_PASSWORD = "Alpha1%2FBravo2@Charlie3%25Delta4:Echo5%3FFox6"  # what httpx can send: "@" and ":" raw


class _OllamaApi(BaseHTTPRequestHandler):
    """An Ollama server with no models: the url backend's check fails at once with "model ... is not on ..."."""

    def do_GET(self) -> None:
        body = {"/api/version": b'{"version": "0.6.3"}', "/api/tags": b'{"models": []}'}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body or b"{}")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def ollama_port() -> Iterator[int]:
    with http_server(_OllamaApi) as url:
        yield int(url.rsplit(":", 1)[1])


def _project(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    golden.mkdir()
    shutil.copy(REPO / "golden_traces" / "customers_by_tier.json", golden / "customers_by_tier.json")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly -p no:cacheprovider\npythonpath = .\n"
        "llmtrace_target = gateway.app:handle_user_request\n"
    )


def _everything(pytester: pytest.Pytester, result: pytest.RunResult) -> str:
    """All a run showed and wrote: its output, junit.xml and the report folder's files."""
    written = [p.read_text(encoding="utf-8") for p in (pytester.path / "out").glob("*")]
    written.append((pytester.path / "junit.xml").read_text(encoding="utf-8"))
    return "\n".join([result.stdout.str(), result.stderr.str(), *written])


def _no_piece(text: str) -> None:
    leaked = sorted({piece for piece in PIECES if piece in text})
    assert not leaked, f"{leaked} leaked"


def test_a_postgres_password_with_url_delimiters_is_nowhere_in_the_output(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makepyfile("def test_uses_postgres(llmtrace_postgres):\n    pass\n")
    dsn = f"postgresql://llt:{RAW_PASSWORD}@127.0.0.1:1/shop"
    result = pytester.runpytest(f"--llmtrace-postgres={dsn}", "--junitxml=junit.xml", "--llmtrace-report=out")
    result.assert_outcomes(errors=1, failed=1)  # the test's fixture, and the golden case: both need the database
    out = _everything(pytester, result)
    _no_piece(out)
    assert "llmtrace postgres: url postgresql://llt:***@127.0.0.1:1/shop" in out
    cases = json.loads((pytester.path / "out" / "results.json").read_text())["cases"]
    assert [c["verdict"] for c in cases] == ["error"]  # the golden case, kept with its (redacted) error


def test_a_keyword_dsn_given_as_the_postgres_setting_is_not_echoed(pytester: pytest.Pytester) -> None:
    _project(pytester)
    result = pytester.runpytest("--llmtrace-postgres=host=127.0.0.1 port=1 password=Alpha1/Bravo2@Charlie3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    _no_piece(result.stdout.str() + result.stderr.str())
    result.stderr.fnmatch_lines(["*--llmtrace-postgres: 'host=127.0.0.1 port=1 password=***' is not a valid*"])


def test_ollama_and_phoenix_credentials_are_nowhere_in_the_output(pytester: pytest.Pytester, ollama_port: int) -> None:
    _project(pytester)
    pytester.makepyfile("def test_uses_ollama(llmtrace_ollama):\n    pass\n")
    result = pytester.runpytest(
        f"--llmtrace-ollama=http://user:{ENCODED_PASSWORD}@127.0.0.1:{ollama_port}",
        f"--llmtrace-phoenix=http://user:{RAW_PASSWORD}@127.0.0.1:1",
        "--junitxml=junit.xml",
        "--llmtrace-report=out",
        "-k",
        "uses_ollama",
    )
    result.assert_outcomes(errors=1)
    out = _everything(pytester, result)
    _no_piece(out)
    assert f"is not on the Ollama server at http://user:***@127.0.0.1:{ollama_port}" in out
    assert "llmtrace phoenix: url http://user:***@127.0.0.1:1" in out


# -- finding 2: terminal control characters ---------------------------------------------------------------------------

HOSTILE = "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\x1b[2J\x9b31m\u202egnp.exe\u2066"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")


@pytest.fixture(scope="module")
def pg_url(pg_admin_url: str) -> str:
    return pg_admin_url


def test_control_characters_from_a_golden_file_and_the_settings_are_escaped_in_the_terminal(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """The model's SQL of a failing case (from its golden file) is in the failure message; a setting is in the
    header. Both reach the terminal with their escape sequences shown, not obeyed."""
    _project(pytester)
    golden = pytester.path / "golden_traces"
    (golden / "customers_by_tier.json").unlink()
    text = (REPO / "golden_traces" / "error_unknown_column.json").read_text(encoding="utf-8")
    sql = "SELECT c.segment, sum(o.amount)"
    assert sql in text  # the model's answer, the SQL span, the outputs
    hostile = json.dumps(f"/* {HOSTILE} */ ")[1:-1]
    (golden / "error_unknown_column.json").write_text(text.replace(sql, hostile + sql), encoding="utf-8")
    result = pytester.runpytest(
        f"--llmtrace-postgres={pg_url}",
        "--llmtrace-replay-speed=virtual",
        f"--llmtrace-phoenix=http://127.0.0.1:1/{HOSTILE}",
        "--junitxml=junit.xml",
        "--llmtrace-report=out",
    )
    result.assert_outcomes(failed=1)
    shown = result.stdout.str() + result.stderr.str()
    assert not [c for c in RAW_CONTROLS if c in shown]
    assert "/* \\x1b]8;;https://evil.example\\x07click" in shown  # still there to read, as escapes
    assert "\\u202egnp.exe\\u2066" in shown
    assert "llmtrace phoenix: url http://127.0.0.1:1/\\x1b]8;;" in shown  # the header


# -- finding 5: reports are never written through a planted link ------------------------------------------------------


def test_a_run_refuses_a_planted_results_link_and_does_not_pass(pytester: pytest.Pytester, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly -p no:cacheprovider\n")
    pytester.makepyfile("def test_ok():\n    pass\n")
    (pytester.path / "out").mkdir()
    (pytester.path / "out" / "results.json").symlink_to(victim)
    result = pytester.runpytest("--llmtrace-report=out")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR  # the reports CI reads are missing: never a green run
    result.stdout.fnmatch_lines(["llmtrace report: not written: *results.json is a symbolic link*"])
    assert victim.read_text() == "precious\n"


# -- finding 6: results.json says which run and which shard it is ----------------------------------------------------


def test_results_json_records_its_run_id_and_shard(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly -p no:cacheprovider\n")
    pytester.makepyfile("def test_ok():\n    pass\n")
    runs = []
    for shard in ("1/2", "2/2"):
        pytester.runpytest(f"--llmtrace-shard={shard}", f"--llmtrace-report=out{shard[0]}")
        runs.append(json.loads((pytester.path / f"out{shard[0]}" / "results.json").read_text())["run"])
    assert [r["shard"] for r in runs] == [{"index": 1, "count": 2}, {"index": 2, "count": 2}]
    assert len({r["run_id"] for r in runs}) == 2
    assert all(len(r["run_id"]) == 32 for r in runs)
    pytester.runpytest("--llmtrace-report=whole")
    assert json.loads((pytester.path / "whole" / "results.json").read_text())["run"]["shard"] is None


def test_an_app_error_quoting_a_dsn_is_redacted_in_the_output_and_results(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """The app's own exception (a driver quoting the DSN it was given) is a case's ``app_error``."""
    _project(pytester)
    pytester.makepyfile(
        leaky=f"""
        def handle(question):
            raise RuntimeError("cannot reach postgresql://app:{RAW_PASSWORD}@db.internal:5432/shop")
        """
    )
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly -p no:cacheprovider\npythonpath = .\n"
        "llmtrace_target = leaky:handle\n"
    )
    result = pytester.runpytest(
        f"--llmtrace-postgres={pg_url}",
        "--junitxml=junit.xml",
        "--llmtrace-report=out",
        "--llmtrace-replay-speed=virtual",
    )
    result.assert_outcomes(failed=1)
    _no_piece(_everything(pytester, result))
    (case,) = json.loads((pytester.path / "out" / "results.json").read_text())["cases"]
    assert "postgresql://app:***@db.internal:5432/shop" in case["app_error"]
