"""Security review, finding 2: text from a trace, a golden file or a results.json is shown with its terminal
controls and bidi overrides escaped, in every text output (failure messages, ``llmtrace show``, ``gate``,
``compare``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmtrace.cli import main as cli_main
from pytest_llmtrace.core.inert import escape_controls, one_line
from pytest_llmtrace.pytest.failing import fail
from pytest_llmtrace.results.gate import GateResult, Rule, format_result

REPO = Path(__file__).resolve().parents[2]
# an OSC 8 hyperlink, a screen clear, a C1 CSI, DEL, NUL, a right-to-left override and an isolate
HOSTILE = "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\x1b[2J\x9b31m\x7f\x00\u202egnp.exe\u2066"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\x00", "\u202e", "\u2066")


def _raw(text: str) -> list[str]:
    return [c for c in RAW if c in text]


def test_escape_controls_keeps_lines_and_tabs_and_shows_the_rest_as_escapes() -> None:
    shown = escape_controls(f"a\tb\n{HOSTILE}\u202a\u202d\u2069\x85")
    assert not _raw(shown)
    assert shown.startswith("a\tb\n\\x1b]8;;https://evil.example\\x07click")
    assert "\\u202egnp.exe\\u2066" in shown
    assert "\\u202a" in shown
    assert "\\u2069" in shown
    assert "\\x85" in shown
    assert escape_controls("plain SQL; ünïcödé ✓") == "plain SQL; ünïcödé ✓"
    assert one_line("a\nb\u2028c") == "a\\nb\\u2028c"


def test_a_failure_message_is_escaped() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        fail(f"[sql] the model answered:\n  SELECT 1 /* {HOSTILE} */")
    message = str(failed.value.msg)
    assert not _raw(message)
    assert "\n  SELECT 1 /* \\x1b]8;;" in message


def test_llmtrace_show_escapes_span_names_and_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "golden_traces" / "customers_by_tier.json").read_text(encoding="utf-8")
    hostile = json.dumps(HOSTILE)[1:-1]
    assert '"name": "text2sql.request"' in text
    text = text.replace('"name": "text2sql.request"', f'"name": "text2sql{hostile}"').replace(
        "qwen-sql-prod", f"qwen{hostile}"
    )
    path = tmp_path / "hostile.json"
    path.write_text(text, encoding="utf-8")
    assert cli_main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert not _raw(out)
    assert "text2sql\\x1b]8;;https://evil.example" in out
    assert "model=qwen\\x1b" in out


def _results(path: Path, *case_ids: str, passed: bool = False) -> Path:
    cases: list[dict[str, object]] = [
        {"case_id": c, "passed": passed, "verdict": "passed" if passed else "failed", "checks": [], "sql": c}
        for c in case_ids
    ]
    path.write_text(json.dumps({"schema_version": 1, "cases": cases}), encoding="utf-8")
    return path


def test_gate_and_compare_escape_the_case_ids_of_results_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = _results(tmp_path / "new.json", f"case{HOSTILE}")
    assert cli_main(["gate", str(failing), "--gate", "sql_success_rate >= 1"]) == 6
    out = capsys.readouterr().out
    assert not _raw(out)
    assert "case\\x1b]8;;" in out
    passing = _results(tmp_path / "old.json", f"case{HOSTILE}", passed=True)
    assert cli_main(["compare", str(passing), str(failing)]) == 0
    out = capsys.readouterr().out
    assert not _raw(out)
    assert "regressed (1): case\\x1b]8;;" in out
    bad = tmp_path / ("bad" + HOSTILE.replace(chr(0), "").replace("/", "") + ".json")  # a name holds all but NUL and /
    bad.write_text("{", encoding="utf-8")
    assert cli_main(["compare", str(bad), str(failing)]) == 2
    assert not _raw(capsys.readouterr().err)


def test_format_result_escapes_case_ids() -> None:
    result = GateResult(Rule("sql_success_rate", None, ">=", 1.0), 0.0, False, (f"x{HOSTILE}",))
    assert not _raw(format_result(result))
