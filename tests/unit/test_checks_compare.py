"""The pure regression checks: SQL text handling, result comparison, latency and token budgets."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from pytest_llmtrace.checks import (
    check_latency,
    check_tokens,
    compare_results,
    execute_readonly,
    format_table,
    has_top_level_order_by,
    latencies_ms,
    normalize_value,
    split_statements,
    strip_code_fences,
)
from pytest_llmtrace.checks.budgets import replayed_latencies_ms
from pytest_llmtrace.checks.names import UnknownName
from pytest_llmtrace.checks.outcome import CheckResult, Measurement
from pytest_llmtrace.checks.reader_connections import ConnectFailed
from pytest_llmtrace.checks.sql_text import _tokens
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import read_trace
from pytest_llmtrace.trace.virtual import ReplayedAnswer, virtualize

GOLDEN = Path(__file__).parents[2] / "golden_traces"

# -- answers and statements -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "sql"),
    [
        ("SELECT 1;", "SELECT 1;"),
        ("  SELECT 1\n", "SELECT 1"),
        ("```sql\nSELECT 1;\n```", "SELECT 1;"),
        ("```SQL\nSELECT 1\n```", "SELECT 1"),
        ("```\nSELECT 1\n```", "SELECT 1"),
        ("```sql SELECT 1```", "SELECT 1"),
        ("```SELECT 1```", "SELECT 1"),
        ("```postgresql\nSELECT 1\n```", "SELECT 1"),
        ("Here you go:\n```sql\nSELECT 1\n```\nThis counts rows.", "SELECT 1"),
        ("```sql\nSELECT 1\n```\n```sql\nSELECT 2\n```", "SELECT 1"),
        ("```sql\nSELECT 1 FROM t", "SELECT 1 FROM t"),  # cut off at the token limit
    ],
)
def test_strip_code_fences(answer: str, sql: str) -> None:
    assert strip_code_fences(answer) == sql


def test_strip_code_fences_on_the_golden_fenced_answer() -> None:
    trace = read_trace(GOLDEN / "fenced_largest_order.json")
    answer = trace.llm_calls[0].output_text
    assert answer.startswith("```")
    assert strip_code_fences(answer) == trace.sql_statements[0].text


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;", ["SELECT 1"]),
        ("SELECT 1; -- done\n", ["SELECT 1"]),
        ("SELECT 1; /* a; b */ ;", ["SELECT 1"]),
        ("SELECT ';' AS a; SELECT 2", ["SELECT ';' AS a", "SELECT 2"]),
        ("SELECT $$a;b$$, $x$;$x$", ["SELECT $$a;b$$, $x$;$x$"]),
        ("SELECT E'\\';' AS a", ["SELECT E'\\';' AS a"]),
        ('SELECT 1 AS ";"', ['SELECT 1 AS ";"']),
        ("SELECT 1; COMMIT; DELETE FROM t", ["SELECT 1", "COMMIT", "DELETE FROM t"]),
        # Postgres's identifier rules: any non-ASCII character is part of a name, and so is a $ after its start
        ("SELECT 1 AS €$$; COMMIT; SELECT 1 AS b€$$", ["SELECT 1 AS €$$", "COMMIT", "SELECT 1 AS b€$$"]),
        ("SELECT 1 AS a\u00a0b;SELECT 2", ["SELECT 1 AS a\u00a0b", "SELECT 2"]),
        ("SELECT $é$;$é$; SELECT 2", ["SELECT $é$;$é$", "SELECT 2"]),
        ("  ; -- nothing", []),
        ("", []),
    ],
)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


def test_a_name_runs_over_exactly_the_characters_postgres_puts_in_names() -> None:
    """ASCII letters, digits, _ and $, and every non-ASCII character continue a name; anything else ends it."""
    for c in [chr(i) for i in range(1, 0x80)] + ["é", "\u00a0", "€", "\U0001f600"]:
        in_name = not c.isascii() or c.isalnum() or c in "_$"
        words = [t.text for t in _tokens(f"a{c}b") if t.kind == "word"]
        assert (words == [f"a{c}b".upper()]) is in_name, repr(c)


def test_only_an_empty_text_is_refused_before_connecting() -> None:
    """Several statements are Postgres's to refuse (the extended protocol), not the lexer's: only an empty text
    and bad limits are refused here."""
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    empty = execute_readonly(unreachable, "  -- nothing to run\n")
    assert (empty.ok, empty.error, empty.sqlstate) == (False, "no SQL statement", None)
    with pytest.raises(ValueError, match="timeout_ms >= 1"):
        execute_readonly(unreachable, "SELECT 1", timeout_ms=0)
    with pytest.raises(ConnectFailed):
        execute_readonly(unreachable, "SELECT 1; DELETE FROM t")


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        ("SELECT a FROM t ORDER BY a", True),
        ("select a from t order\n  by a desc limit 3;", True),
        ("SELECT a FROM t ORDER /* why not */ BY a", True),
        ("SELECT a FROM t UNION SELECT a FROM u ORDER BY 1", True),
        ("WITH x AS (SELECT a FROM t ORDER BY a) SELECT * FROM x ORDER BY a", True),
        ("SELECT a FROM t", False),
        ("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3) sub", False),
        ("WITH x AS (SELECT a FROM t ORDER BY a) SELECT * FROM x", False),
        ("SELECT row_number() OVER (ORDER BY a) FROM t", False),
        ("SELECT string_agg(a, ',' ORDER BY a) FROM t", False),
        ("SELECT 'order by a' FROM t", False),
        ("SELECT a FROM t -- ORDER BY a", False),
        ("SELECT a FROM t /* ORDER BY a */", False),
        ('SELECT a AS "order by" FROM t', False),
        ("SELECT $$ ORDER BY a $$ FROM t", False),
        ("SELECT E'it\\'s ORDER BY a' FROM t", False),
        ("SELECT a AS order_by FROM t", False),
        ("SELECT a FROM t GROUP BY a", False),
    ],
)
def test_has_top_level_order_by(sql: str, ordered: bool) -> None:
    assert has_top_level_order_by(sql) is ordered


def test_order_by_detection_on_golden_sql() -> None:
    found = {
        name: has_top_level_order_by(read_trace(GOLDEN / f"{name}.json").sql_statements[0].text)
        for name in ("customers_by_tier", "pending_orders_value", "slow_higher_priced_items")
    }
    assert found == {"customers_by_tier": True, "pending_orders_value": False, "slow_higher_priced_items": False}


# -- values -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        (None, None),
        (True, True),
        (7, 7),
        ("x", "x"),
        (Decimal("12.50"), 12.5),
        (1.25, 1.25),
        (Decimal("NaN"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (
            dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-03-01T10:00:00+00:00",
        ),
        (dt.datetime(2024, 3, 1, 12, 0, 5), "2024-03-01T12:00:05"),
        (dt.date(2024, 3, 1), "2024-03-01"),
        (dt.time(9, 30), "09:30:00"),
        (dt.timedelta(days=1, seconds=30), 86430.0),
        (b"\x00\xff", "00ff"),
        (memoryview(b"\x01"), "01"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        ([Decimal("1.5"), [dt.date(2024, 1, 1)]], (1.5, ("2024-01-01",))),
        ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
    ],
)
def test_normalize_value(value: object, normalized: object) -> None:
    result = normalize_value(value)
    assert result == normalized
    assert type(result) is type(normalized)
    json.dumps(result, allow_nan=False)


def test_normalize_value_is_idempotent() -> None:
    row = (Decimal("1.5"), dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), [1, 2], {"k": "v"})
    once = tuple(normalize_value(v) for v in row)
    assert tuple(normalize_value(v) for v in once) == once


# -- comparison -------------------------------------------------------------------------------------------------------

ROWS = [("EMEA", 10, 1200.5), ("NA", 20, 300.25), ("APAC", 5, 99.0)]


@pytest.mark.parametrize("rule", ["bag", "set", "ordered"])
def test_identical_results_are_equal_under_every_rule(rule: str) -> None:
    assert compare_results(ROWS, list(ROWS), rule) is None  # type: ignore[arg-type]


def test_bag_ignores_order_unless_it_matters() -> None:
    shuffled = [ROWS[2], ROWS[0], ROWS[1]]
    assert compare_results(ROWS, shuffled, "bag") is None
    diff = compare_results(ROWS, shuffled, "bag", golden_sql="SELECT * FROM t ORDER BY 1")
    assert diff is not None
    assert diff.summary == "golden 3 rows, now 3 rows; rows differ in order or value from row 1"
    assert compare_results(ROWS, shuffled, "ordered") is not None


def test_bag_counts_duplicates_set_does_not() -> None:
    golden = [("a", 1), ("a", 1), ("b", 2)]
    now = [("a", 1), ("b", 2), ("b", 2)]
    diff = compare_results(golden, now, "bag")
    assert diff is not None
    assert diff.summary == "golden 3 rows, now 3 rows; 1 missing, 1 unexpected"
    assert diff.lines() == ["missing:    ('a', 1)", "unexpected: ('b', 2)"]
    assert compare_results(golden, now, "set") is None


def test_numbers_match_within_tolerance_only() -> None:
    golden = [("x", Decimal("1200.50")), ("y", 1 / 3)]
    assert compare_results(golden, [("y", 0.3333333334), ("x", 1200.5000001)], "bag") is None
    assert compare_results(golden, [("y", 0.3333333334), ("x", 1200.5000001)], "set") is None
    diff = compare_results(golden, [("y", 0.3333333334), ("x", 1200.51)], "bag")
    assert diff is not None
    assert diff.lines() == ["missing:    ('x', 1200.5)", "unexpected: ('x', 1200.51)"]
    assert compare_results(golden, [("x", 1200.51), ("y", 1 / 3)], "bag", rel_tol=1e-3) is None


def test_tolerance_works_across_rounding_boundaries() -> None:
    # Rounding both to 9 places would put these in different buckets; tolerant matching pairs them.
    golden = [(0.4999999999995,), (2.0,)]
    now = [(2.0,), (0.5000000000004,)]
    assert compare_results(golden, now, "bag", rel_tol=1e-9, abs_tol=1e-12) is None
    assert compare_results(golden, now, "set", rel_tol=1e-9, abs_tol=1e-12) is None


def test_int_and_float_compare_by_value_but_bool_does_not() -> None:
    assert compare_results([("a", 3)], [("a", 3.0)], "bag") is None
    assert compare_results([(True,)], [(1,)], "bag") is not None
    assert compare_results([(None,)], [(0,)], "bag") is not None


def test_tolerant_matching_scales_to_ten_thousand_drifted_rows() -> None:
    golden = [(i, i * 0.1) for i in range(10_000)]
    now = [(i, i * 0.1 * (1 + 1e-9)) for i in reversed(range(10_000))]
    assert compare_results(golden, now, "bag") is None
    now[1234] = (1234, 0.0)
    diff = compare_results(golden, now, "bag")
    assert diff is not None
    assert (len(diff.missing), len(diff.unexpected)) == (1, 1)


def test_bag_allows_reordered_columns_like_test_suite_accuracy() -> None:
    now = [(c, r, n) for r, n, c in ROWS]
    assert compare_results(ROWS, now, "bag") is None
    assert compare_results(ROWS, now, "bag", golden_sql="SELECT * FROM t ORDER BY 1") is None
    assert compare_results(ROWS, now, "set") is not None
    assert compare_results(ROWS, now, "ordered") is not None


def test_column_count_mismatch_is_a_difference() -> None:
    diff = compare_results([("a", 1)], [("a", 1, "x")], "bag")
    assert diff is not None
    assert diff.summary == "golden 2 columns, now 3 columns (1 and 1 rows)"
    assert compare_results([("a", 1)], [("a", 1, "x")], "set") is not None


def test_empty_results() -> None:
    assert compare_results([], [], "bag") is None
    diff = compare_results([], [(1,)], "set")
    assert diff is not None
    assert diff.summary == "golden 0 rows, now 1 row; 0 missing, 1 unexpected"


def test_rule_none_always_agrees() -> None:
    assert compare_results(ROWS, [], "none") is None


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown comparison rule 'fuzzy'"):
        compare_results(ROWS, ROWS, "fuzzy")  # type: ignore[arg-type]


def test_rows_read_back_from_json_compare_equal_to_driver_rows() -> None:
    driver = [(Decimal("1.10"), dt.date(2024, 1, 1), [1, 2], None)]
    snapshot = json.loads(json.dumps([[normalize_value(v) for v in driver[0]]]))
    assert compare_results(snapshot, driver, "ordered") is None


def test_diff_lines_are_capped() -> None:
    diff = compare_results([(i,) for i in range(8)], [(i,) for i in range(100, 102)], "bag")
    assert diff is not None
    assert diff.summary == "golden 8 rows, now 2 rows; 8 missing, 2 unexpected"
    assert diff.lines() == [
        "missing:    (0)",
        "missing:    (1)",
        "missing:    (2)",
        "missing:    (3)",
        "missing:    (4)",
        "... 3 more missing",
        "unexpected: (100)",
        "unexpected: (101)",
    ]
    assert str(diff).splitlines()[0] == diff.summary


def test_ordered_diff_shows_rows_from_the_first_difference() -> None:
    diff = compare_results([(1,), (2,), (3,)], [(1,), (3,)], "ordered")
    assert diff is not None
    assert diff.first_difference == 1
    assert diff.summary == "golden 3 rows, now 2 rows; rows differ in order or value from row 2"
    assert diff.lines() == ["golden:     (2)", "golden:     (3)", "now:        (3)"]
    nulls = compare_results([("a", None)], [("a", 1.5)], "ordered")
    assert nulls is not None
    assert nulls.lines() == ["golden:     ('a', NULL)", "now:        ('a', 1.5)"]


# -- latency and tokens -----------------------------------------------------------------------------------------------

MS = 1_000_000


def span(span_id: str, parent: str | None, start_ms: float, end_ms: float, kind: str | None, **attrs: object) -> Span:
    attributes: dict[str, object] = dict(attrs)
    if kind is not None:
        attributes["openinference.span.kind"] = kind
    return Span(
        trace_id="t" * 32,
        span_id=span_id,
        parent_span_id=parent,
        name=span_id,
        start_time_unix_nano=int(start_ms * MS),
        end_time_unix_nano=int(end_ms * MS),
        attributes=attributes,  # type: ignore[arg-type]
    )


def app_trace(llm_ms: float, sql_ms: float, prompt: int = 300, completion: int = 40) -> Trace:
    """A gateway-shaped trace: CHAIN root, an LLM call, then a SQL span."""
    return Trace(
        [
            span("root", None, 0, llm_ms + sql_ms + 1, "CHAIN"),
            span(
                "llm",
                "root",
                0.5,
                0.5 + llm_ms,
                "LLM",
                **{"llm.token_count.prompt": prompt, "llm.token_count.completion": completion},
            ),
            span("sql", "root", 0.5 + llm_ms, 0.5 + llm_ms + sql_ms, None, **{"db.query.text": "SELECT 1"}),
        ]
    )


def test_latencies_per_kind_count_nested_spans_once() -> None:
    trace = Trace(
        [
            span("root", None, 0, 100, "CHAIN"),
            span("inner", "root", 10, 60, "CHAIN"),
            span("llm", "inner", 10, 40, "LLM"),
            span("retry", "llm", 20, 40, "LLM"),
            span("tool", "root", 60, 90, "TOOL", **{"db.query.text": "SELECT 1"}),
        ]
    )
    assert latencies_ms(trace) == {"total": 100.0, "LLM": 30.0, "SQL": 30.0, "CHAIN": 100.0, "TOOL": 30.0}


def test_latencies_of_a_golden_trace() -> None:
    slow = latencies_ms(read_trace(GOLDEN / "slow_higher_priced_items.json"))
    assert set(slow) == {"total", "LLM", "SQL", "CHAIN", "ttft"}  # the gateway streams: its first token is timed
    assert 0 < slow["ttft"] < slow["LLM"]
    assert slow["SQL"] > 1500
    # the scripted responder took the 531 ms it reported (5 + 316 * 0.5 + 46 * 8) while recording
    assert 531 <= slow["LLM"] < slow["SQL"]
    assert slow["total"] == slow["CHAIN"]
    assert slow["total"] >= slow["SQL"] + slow["LLM"]


def failed(result: CheckResult) -> list[Measurement]:
    return [m for m in result.measurements if m.status == "failed"]


def test_slow_sql_is_a_relative_latency_violation() -> None:
    golden = read_trace(GOLDEN / "customers_by_tier.json")
    slow = read_trace(GOLDEN / "slow_higher_priced_items.json")
    result = check_latency(golden, slow, budgets_ms={})
    assert result.status == "failed"
    violations = failed(result)
    assert [v.label for v in violations] == ["total ms", "SQL ms", "CHAIN ms"]
    sql = violations[1]
    assert sql.golden == pytest.approx(latencies_ms(golden)["SQL"])
    assert sql.now > 1500
    assert sql.rule.startswith("<= golden + 200 ms (")  # the one latency floor: 200 ms
    assert sql.limit == pytest.approx(latencies_ms(golden)["SQL"] + 200)
    assert check_latency(slow, slow, budgets_ms={}).status == "passed"
    assert check_latency(slow, golden, budgets_ms={}).status == "passed"  # faster is never a regression


def test_tiny_durations_need_the_floor_to_be_exceeded() -> None:
    golden, now = app_trace(llm_ms=1000, sql_ms=2), app_trace(llm_ms=1000, sql_ms=40)
    assert not failed(check_latency(golden, now, budgets_ms={}))  # 20x slower, but only 38 ms more
    violations = failed(check_latency(golden, now, budgets_ms={}, floor_ms=10))
    assert [(v.label, v.rule) for v in violations] == [("SQL ms", "<= golden + 10 ms (12.0 ms)")]


def test_relative_limit_is_the_tolerance_when_that_is_larger() -> None:
    violations = failed(check_latency(app_trace(1000, 2), app_trace(2000, 2), budgets_ms={}))
    assert [(v.label, v.rule) for v in violations] == [
        ("total ms", "<= 1.5x golden (1504.5 ms)"),
        ("LLM ms", "<= 1.5x golden (1500.0 ms)"),
        ("CHAIN ms", "<= 1.5x golden (1504.5 ms)"),
    ]
    assert check_latency(app_trace(1000, 2), app_trace(2000, 2), budgets_ms={}, tolerance=2.5).status == "passed"


def test_absolute_budgets() -> None:
    golden, now = app_trace(4000, 5), app_trace(5200, 5)
    result = check_latency(golden, now, budgets_ms={"llm": 5000, "Total": 8000, "SQL": None}, tolerance=2)
    assert failed(result) == [
        Measurement("LLM", "ms", 5200.0, 4000.0, "absolute", 5000, "<= 5000 ms budget", "failed"),
    ]
    assert [(m.label, m.basis) for m in result.measurements if m.basis == "absolute"] == [
        ("total ms", "absolute"),
        ("LLM ms", "absolute"),
    ]
    with pytest.raises(UnknownName, match="unknown latency metric 'LMM'; did you mean 'LLM'"):
        check_latency(golden, now, budgets_ms={"LMM": 1})


def test_without_a_golden_trace_only_budgets_apply() -> None:
    now = app_trace(4000, 5)
    result = check_latency(None, now, budgets_ms={"LLM": 100})
    assert [(m.label, m.basis, m.golden) for m in result.measurements] == [("LLM ms", "absolute", None)]
    assert result.status == "failed"
    assert check_latency(None, now, budgets_ms={}).status == "skipped"


def test_replayed_values_are_marked_as_replayed() -> None:
    """Virtual time: the LLM call answered in 5 ms counts its recorded 1000 ms; total and CHAIN hold it."""
    golden, instant = app_trace(1000, 5), app_trace(5, 5)
    answer = ReplayedAnswer(int(1 * MS), int(2 * MS), 1000 * MS, 0)
    virtual = virtualize(instant, [answer])
    replayed = replayed_latencies_ms(virtual)
    assert replayed == {"LLM": 1000.0, "CHAIN": 1000.0, "total": 1000.0}

    result = check_latency(golden, virtual.trace, budgets_ms={"LLM": 900}, replayed_ms=replayed)
    by_label = {(m.label, m.basis): (m.now, m.source, m.replayed) for m in result.measurements}
    assert by_label == {
        ("total ms", "relative"): (1006.0, "measured", 1000.0),
        ("LLM ms", "absolute"): (1000.0, "replayed", 1000.0),
        ("LLM ms", "relative"): (1000.0, "replayed", 1000.0),
        ("SQL ms", "relative"): (5.0, "measured", 0.0),
        ("CHAIN ms", "relative"): (1006.0, "measured", 1000.0),
    }
    failed = [m for m in result.measurements if m.status == "failed"]
    assert format_table(failed).splitlines()[1] == "LLM ms | 1000.0 | 1000.0 (replayed) | <= 900 ms budget"
    assert {m.source for m in check_tokens(golden, virtual.trace, replayed=True).measurements} == {"replayed"}
    assert {m.source for m in check_tokens(golden, virtual.trace).measurements} == {"measured"}


def test_a_duration_holding_replayed_time_shows_its_replayed_part() -> None:
    slow = Measurement("total", "ms", 1406.0, 1006.0, "relative", 1509.0, "<= 1.5x golden", "failed", replayed=1000)
    assert format_table([slow]).splitlines()[1] == "total ms | 1006.0 | 1406.0 (1000.0 replayed) | <= 1.5x golden"


def test_token_counts_within_tolerance_and_maxima() -> None:
    golden = app_trace(10, 1, prompt=311, completion=44)
    assert check_tokens(golden, app_trace(10, 1, prompt=330, completion=40)).status == "passed"
    result = check_tokens(golden, app_trace(10, 1, prompt=700, completion=20), maxima={"prompt": 500})
    assert [(v.label, v.golden, v.now, v.rule) for v in failed(result)] == [
        ("prompt tokens", 311, 700, "<= 500 max"),
        ("prompt tokens", 311, 700, "within +-10% of golden (280-342)"),
        ("completion tokens", 44, 20, "within +-10% of golden (40-48)"),
        ("total tokens", 355, 720, "within +-10% of golden (320-390)"),
    ]


def test_tokens_without_golden_counts_only_check_maxima() -> None:
    golden = app_trace(10, 1, prompt=0, completion=0)
    result = check_tokens(golden, app_trace(10, 1, prompt=900, completion=10))
    assert result.status == "skipped"
    assert result.reason == "the golden trace recorded no token usage"
    assert {(m.status, m.reason) for m in result.measurements} == {("skipped", result.reason)}
    with_max = check_tokens(golden, app_trace(10, 1), maxima={"total": 100})
    assert [v.rule for v in failed(with_max)] == ["<= 100 max"]


def test_tokens_of_golden_traces() -> None:
    a = read_trace(GOLDEN / "customers_by_tier.json")
    b = read_trace(GOLDEN / "top_customers_2024.json")
    assert check_tokens(a, a).status == "passed"
    # 22 -> 63, 330 -> 372
    assert [v.label for v in failed(check_tokens(a, b))] == ["completion tokens", "total tokens"]


def test_format_table_is_pinned() -> None:  # measured values: no mark
    table = format_table(
        [
            Measurement("LLM", "ms", 5200.0, 1.66, "absolute", 5000, "<= 5000 ms budget", "failed"),
            Measurement("SQL", "ms", 2084.31, 7.712, "relative", 207.7, "<= golden + 200 ms (207.7 ms)", "failed"),
            Measurement("prompt", "tokens", 700, 311, "relative", 342, "within +-10% of golden (280-342)", "failed"),
            Measurement("total", "tokens", 1200, None, "absolute", 1000, "<= 1000 max", "failed"),
        ]
    )
    assert table == (
        "metric        | golden | now    | limit\n"
        "LLM ms        |    1.7 | 5200.0 | <= 5000 ms budget\n"
        "SQL ms        |    7.7 | 2084.3 | <= golden + 200 ms (207.7 ms)\n"
        "prompt tokens |    311 |    700 | within +-10% of golden (280-342)\n"
        "total tokens  |      - |   1200 | <= 1000 max"
    )
    assert format_table([]) == ""


def test_nan_equals_nan_and_nothing_else() -> None:
    assert compare_results([(math.nan,)], [(math.nan,)], "bag") is None
    assert compare_results([(math.nan,)], [(0.0,)], "bag") is not None
