"""A hostile golden file is one failing item: it never ends the collection, and the other cases still run.

Before the loaders refused them with a ``TraceFormatError``, a file nested 100,000 levels deep (``RecursionError``)
or holding a 5,000-digit timestamp (``ValueError``: Python's integer digit limit) ended the whole run with
"Interrupted: 2 errors during collection". The project is built as in ``test_golden_replay.py``: two real cases
replayed through the reference gateway on this session's Postgres, plus the hostile files.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from support import GOLDEN, golden_project

CASES = ("customers_by_tier", "inactive_products")
FIRST_START = "$.resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano"


@pytest.fixture(scope="module")
def pg_url(pg_admin_url: str) -> str:
    return pg_admin_url


def hostile(golden: Path, name: str, start_time: str) -> Path:
    """A copy of a real case whose first span's start time is written as ``start_time`` verbatim."""
    text = (GOLDEN / "customers_by_tier.json").read_text(encoding="utf-8")
    key = '"startTimeUnixNano": '
    head, tail = text.split(key, 1)
    tail = tail.split(",", 1)[1]  # drop the recorded value
    path = golden / f"{name}.json"
    path.write_text(head + key + start_time + "," + tail, encoding="utf-8")
    return path


def lines_with(output: str, needle: str) -> list[str]:
    return [line for line in output.splitlines() if needle in line]


def test_deep_and_long_digit_files_fail_alone_and_the_good_cases_still_run(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    golden = golden_project(pytester, *CASES)
    deep = hostile(golden, "deep_nesting", "[" * 100_000 + "]" * 100_000)
    digits = hostile(golden, "long_digits", "1" * 5_000)
    before = {p.name: p.read_bytes() for p in golden.glob("*.json")}

    collected = pytester.runpytest("--collect-only", "-q")

    assert "Interrupted" not in collected.stdout.str()
    assert "error" not in collected.stdout.str().lower()
    collected.stdout.fnmatch_lines(["4 tests collected in *"])

    result = pytester.runpytest(f"--llmtrace-postgres={pg_url}", "--llmtrace-replay-speed=virtual", "-rA")

    result.assert_outcomes(passed=2, failed=2)
    output = result.stdout.str()
    assert "Interrupted" not in output
    assert "Traceback" not in output
    assert "RecursionError" not in output
    assert lines_with(output, f"cannot replay this golden trace: {deep}: ")[0].endswith(
        f"at {FIRST_START}[0]...(x93): expected at most 100 levels of nested arrays and objects, got level 101 here"
    )
    assert lines_with(output, f"cannot replay this golden trace: {digits}: ")[0].endswith(
        f"at {FIRST_START}: expected a number of at most 100 characters, got a number of 5,000 characters "
        "(11111111111111111111...)"
    )
    passed = {m.group(1) for m in re.finditer(r"^PASSED golden_traces/(\w+)\.json", output, re.MULTILINE)}
    assert passed == set(CASES)
    # nothing was rewritten, and no snapshot was made up for the files that could not be read
    assert {p.name: p.read_bytes() for p in golden.glob("*.json")} == before
    assert not (golden / "__snapshots__" / "deep_nesting.json").exists()
    assert not (golden / "__snapshots__" / "long_digits.json").exists()


def test_a_file_over_the_size_limit_is_one_failing_item_naming_the_setting(pytester: pytest.Pytester) -> None:
    golden = pytester.path / "golden_traces"
    golden.mkdir()
    shutil.copy(GOLDEN / "customers_by_tier.json", golden / "customers_by_tier.json")
    size = (golden / "customers_by_tier.json").stat().st_size
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")

    result = pytester.runpytest(f"--llmtrace-max-trace-bytes={size - 1}", "-rA")

    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "Traceback" not in output
    assert f"{golden / 'customers_by_tier.json'}" in output
    assert "LLMTRACE_MAX_TRACE_BYTES" in output or "max-trace-bytes" in output


def test_a_size_limit_that_is_not_a_number_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--llmtrace-max-trace-bytes=lots")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmtrace-max-trace-bytes: expected a positive whole number of bytes, got 'lots'*"])
