"""The facts every check shares, defined once: names, metrics, choices, defaults, and how ini and marker read them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest
from openinference.semconv.trace import OpenInferenceSpanKindValues

from pytest_llmtrace.checks import budgets
from pytest_llmtrace.checks.check_settings import CHECK_SETTINGS, MARKER_HELP
from pytest_llmtrace.checks.names import CHECKS, LATENCY_METRICS, RESULT_MATCH, UnknownName, canonical_metric
from pytest_llmtrace.checks.options import MARKER_ARGUMENTS, CheckOptions
from pytest_llmtrace.checks.snapshot import OutcomeSnapshotExtension
from pytest_llmtrace.core.settings import Resolved, Settings
from pytest_llmtrace.pytest.replay_config import REPLAY_SETTINGS, parse_case_marks, pass_rate_floor, repeat_of


def mark(**kwargs: object) -> pytest.Mark:
    return pytest.mark.llmtrace(**kwargs).mark


def from_ini(**values: str) -> CheckOptions:
    resolved = {name: Resolved(value, "ini", f"ini llmtrace_{name}") for name, value in values.items()}
    return CheckOptions.from_settings(Settings(values=resolved))


def test_case_marks_are_parsed_not_evaluated() -> None:
    ((pattern, case_mark),) = parse_case_marks("error_*: xfail(reason='fails in prod', strict=True)")
    assert pattern == "error_*"
    assert case_mark.name == "xfail"
    assert case_mark.kwargs == {"reason": "fails in prod", "strict": True}
    with pytest.raises(pytest.UsageError, match="mark arguments must be literals"):
        list(parse_case_marks("x*: skip(reason=__import__('os').getcwd())"))


def test_a_zero_sql_timeout_is_refused_because_postgres_reads_it_as_no_timeout() -> None:
    with pytest.raises(pytest.UsageError, match=r"sql_timeout_ms=...\): expected a number >= 1, got 0"):
        CheckOptions().with_marker(mark(sql_timeout_ms=0), "case")
    assert CheckOptions().with_marker(mark(sql_timeout_ms=1), "case").sql_timeout_ms == 1
    with pytest.raises(pytest.UsageError, match=r"^ini llmtrace_sql_timeout_ms: expected a number >= 1, got '0'$"):
        from_ini(sql_timeout_ms="0")


# -- 1. latency metrics: one list, one spelling function for ini, marker and helper ---------------------------------


def test_every_openinference_span_kind_is_a_latency_metric() -> None:
    kinds = {kind.value for kind in OpenInferenceSpanKindValues} - {"UNKNOWN"}
    assert kinds <= set(LATENCY_METRICS)
    assert LATENCY_METRICS[:4] == ("total", "LLM", "SQL", "CHAIN")


@pytest.mark.parametrize("spelling", ["TOOL", "tool", "Tool", " tool "])
def test_a_kind_is_canonical_in_any_letter_case(spelling: str) -> None:
    assert canonical_metric(spelling) == "TOOL"


def test_the_marker_and_the_ini_accept_every_kind() -> None:
    marked = CheckOptions().with_marker(mark(latency_budgets_ms={"TOOL": 500, "llm": 4000}), "case")
    assert marked.latency_budgets_ms == {"LLM": 4000.0, "total": 8000.0, "SQL": 1000.0, "TOOL": 500.0}
    assert from_ini(latency_budgets_ms="tool=500 Retriever=20").latency_budgets_ms == {"TOOL": 500.0, "RETRIEVER": 20.0}


def test_a_marker_budget_of_none_switches_the_session_budget_off() -> None:
    assert CheckOptions().with_marker(mark(latency_budgets_ms={"SQL": None}), "case").latency_budgets_ms == {
        "LLM": 5000.0,
        "total": 8000.0,
    }


def test_an_unknown_kind_is_a_usage_error_naming_the_near_miss() -> None:
    with pytest.raises(pytest.UsageError) as marker_error:
        CheckOptions().with_marker(mark(latency_budgets_ms={"TOOLS": 500}), "test_x.py::test_x")
    assert str(marker_error.value).startswith(
        "test_x.py::test_x: llmtrace(latency_budgets_ms=...): unknown latency metric 'TOOLS'; did you mean 'TOOL'? "
        "(valid: total, LLM, SQL, CHAIN, "
    )
    with pytest.raises(pytest.UsageError, match=r"^ini llmtrace_latency_budgets_ms: unknown latency metric 'lmm'; "):
        from_ini(latency_budgets_ms="lmm=5")
    with pytest.raises(UnknownName, match="did you mean 'LLM'"):
        canonical_metric("lmm")


# -- 4. defaults: defined once, the ini's are derived ---------------------------------------------------------------


def test_ini_defaults_are_derived_from_the_dataclass_and_read_back_to_it() -> None:
    defaults = {spec.name: spec.default for spec in CHECK_SETTINGS}
    assert defaults == {
        "checks": "sql results cost latency tokens snapshot",
        "result_match": "bag",
        "latency_budgets_ms": "LLM=5000 total=8000 SQL=1000",
        "latency_tolerance": "1.5",
        "latency_floor_ms": "200",
        "token_tolerance": "0.1",
        "token_max": "",
        "sql_timeout_ms": "5000",
        "cost_tolerance": "2",
        "latency_retries": "3",
        "max_rows": "10000",
        "max_result_bytes": "16777216",
        "max_case_memory_mb": "1024",
        "case_timeout_s": "auto",
        "min_tokens_per_s": "0",
        "prices": "",
    }
    assert from_ini(**{name: text for name, text in defaults.items() if text}) == CheckOptions()
    assert [spec.name for spec in REPLAY_SETTINGS if spec.name in defaults] == list(defaults)


def test_the_case_deadline_is_the_total_budget_times_3_at_most_60_s_unless_set() -> None:
    assert CheckOptions().case_deadline_s == 24.0  # total=8000 ms
    assert CheckOptions(latency_budgets_ms={"total": 30_000.0}).case_deadline_s == 60.0
    assert CheckOptions(latency_budgets_ms={"LLM": 1.0}).case_deadline_s == 60.0  # no total budget
    assert from_ini(case_timeout_s="2.5").case_deadline_s == 2.5
    assert from_ini(case_timeout_s="auto") == CheckOptions()
    with pytest.raises(pytest.UsageError, match=r"^ini llmtrace_case_timeout_s: expected 'auto' or a number of s"):
        from_ini(case_timeout_s="0")


_FLOOR_MOVED = """
import dataclasses, importlib.util, sys, types
root = importlib.util.find_spec("pytest_llmtrace").submodule_search_locations[0]
for name, folder in (("pytest_llmtrace", root), ("pytest_llmtrace.checks", root + "/checks")):
    package = types.ModuleType(name)  # empty packages: their __init__ would import every module at once
    package.__path__ = [folder]
    sys.modules[name] = package
import pytest_llmtrace.checks.options as options

@dataclasses.dataclass(frozen=True)
class Moved(options.CheckOptions):
    latency_floor_ms: float = 333.0

options.CheckOptions = Moved  # before the modules that use the default are imported
from pytest_llmtrace.checks import budgets
from pytest_llmtrace.checks.snapshot import OutcomeSnapshotExtension
print(budgets.check_latency.__kwdefaults__["floor_ms"], OutcomeSnapshotExtension.options.latency_floor_ms)
"""


def test_the_latency_floor_is_200_ms_everywhere() -> None:
    assert CheckOptions().latency_floor_ms == 200.0
    assert OutcomeSnapshotExtension.options.latency_floor_ms == 200.0
    assert (budgets.check_latency.__kwdefaults__ or {})["floor_ms"] == 200.0


def test_the_latency_floor_is_read_from_check_options_not_copied() -> None:
    """A copy of 200 would agree with the test above until the default moves: move it (in a fresh interpreter, so
    the modules read it at import) and every place must follow."""
    moved = subprocess.run(
        [sys.executable, "-c", _FLOOR_MOVED], capture_output=True, text=True, timeout=120, check=False
    )
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.split() == ["333.0", "333.0"]


# -- 5. check names and result_match choices: defined once; the marker's help is generated ----------------------------


def test_the_marker_help_lists_every_option_field() -> None:
    names = [f.name for f in fields(CheckOptions)]
    assert tuple(MARKER_ARGUMENTS) == ("checks", "skip_checks", *(n for n in names if n != "checks"))
    assert MARKER_HELP.startswith("llmtrace(checks=None, skip_checks=(), result_match=None, ")
    for name in names:
        assert f"{name}=" in MARKER_HELP


def test_check_names_and_result_match_choices_come_from_one_place() -> None:
    specs = {spec.name: spec for spec in CHECK_SETTINGS}
    assert specs["result_match"].choices == RESULT_MATCH == ("bag", "set", "ordered", "none", "suite")
    assert " ".join(CHECKS) in specs["checks"].help
    skipped = CheckOptions().with_marker(mark(skip_checks=["latency", "Tokens"]), "case")
    assert skipped.checks == frozenset({"sql", "results", "cost", "snapshot"})
    with pytest.raises(pytest.UsageError, match=r"unknown check 'snapshots'; did you mean 'snapshot'\?"):
        CheckOptions().with_marker(mark(checks=["snapshots"]), "case")
    with pytest.raises(pytest.UsageError, match=r"unknown result_match 'sets'; did you mean 'set'\?"):
        CheckOptions().with_marker(mark(result_match="sets"), "case")


def test_marker_arguments_must_be_keywords_and_known() -> None:
    with pytest.raises(pytest.UsageError, match="keyword arguments only"):
        CheckOptions().with_marker(pytest.mark.llmtrace("sql").mark, "case")
    with pytest.raises(pytest.UsageError, match="unknown argument 'token_maximum'; did you mean 'token_max'"):
        CheckOptions().with_marker(mark(token_maximum={"total": 1}), "case")
    with pytest.raises(pytest.UsageError, match=r"latency_tolerance=...\): expected a float number, got True"):
        CheckOptions().with_marker(mark(latency_tolerance=True), "case")


@pytest.mark.parametrize(
    ("repeat", "mode", "words"),
    [
        ("0", "replay", "--llmtrace-repeat: expected how many times to run each golden case (1 or more), got '0'"),
        ("two", "live", "expected how many times to run each golden case (1 or more), got 'two'"),
        ("2", "record", "--llmtrace-repeat=2 with mode record: each run would write the golden file again"),
    ],
)
def test_a_bad_repeat_count_is_a_usage_error_naming_the_knob(repeat: str, mode: str, words: str) -> None:
    settings = Settings(
        {"repeat": Resolved(repeat, "command line", "--llmtrace-repeat"), "mode": Resolved(mode, "default")}
    )
    with pytest.raises(pytest.UsageError) as info:
        repeat_of(settings)
    assert words in str(info.value)


def test_repeat_counts_and_pass_rate_floors_that_are_accepted() -> None:
    settings = Settings({"repeat": Resolved("5", "ini", "ini llmtrace_repeat"), "mode": Resolved("live", "default")})
    assert repeat_of(settings) == 5
    assert pass_rate_floor("0.8", "ini llmtrace_min_pass_rate") == 0.8
    assert pass_rate_floor("1", "default") == 1.0
    for bad in ("0", "1.5", "80%", "nan", "-1"):
        with pytest.raises(pytest.UsageError, match="ini llmtrace_min_pass_rate: expected a share of runs above 0"):
            pass_rate_floor(bad, "ini llmtrace_min_pass_rate")
