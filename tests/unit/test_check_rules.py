"""The rules two checks share, pinned so they cannot drift apart again.

The tokens check and the snapshot both apply the token tolerance; the results check and the snapshot both compare
rows. Each pair calls one implementation (``checks.budgets``, ``checks.equivalence.row_order_matters``), and these tests
hold them to the same verdict on the same numbers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_llmtrace.checks import check_results, check_tokens, row_order_matters
from pytest_llmtrace.checks.names import RESULT_MATCH, ResultMatch
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import SqlOutcome
from pytest_llmtrace.checks.snapshot import OutcomeSnapshotExtension, compare_outcomes, snapshot_data
from pytest_llmtrace.trace.model import Span, Trace

MS = 1_000_000


def trace(prompt: int, completion: int) -> Trace:
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
    }
    return Trace([Span("t" * 32, "a" * 16, None, "llm", 0, 10 * MS, attributes=attributes)])


def sql_outcome(rows: list[tuple[Any, ...]]) -> SqlOutcome:
    return SqlOutcome(True, ("tier", "n"), tuple(rows), len(rows), False, None, None, 1.0)


# -- 2. a golden token count of 0 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "completion"), [(0, 0), (300, 40), (0, 40)])
def test_golden_zero_tokens_gives_the_same_verdict_in_the_tokens_check_and_the_snapshot(
    prompt: int, completion: int
) -> None:
    golden, now = trace(prompt, completion), trace(900, 40)
    options = CheckOptions()
    tokens = check_tokens(golden, now, tolerance=options.token_tolerance)
    changes, measurements = compare_outcomes(snapshot_data(golden, None, None), snapshot_data(now, None, None), options)

    by_check = {m.metric: (m.status, m.reason) for m in tokens.measurements}
    by_snapshot = {m.metric: (m.status, m.reason) for m in measurements if m.unit == "tokens"}
    assert by_check == by_snapshot
    token_changes = {line.split()[0] for line in changes if "tokens" in line}
    assert token_changes == {kind for kind, (status, _) in by_check.items() if status == "failed"}
    if prompt == 0:
        assert by_check["prompt"] == ("skipped", "the golden trace recorded no token usage")
    if prompt == completion == 0:
        assert tokens.status == "skipped"
        assert tokens.reason == "the golden trace recorded no token usage"


def test_maxima_still_apply_when_the_golden_trace_has_no_usage() -> None:
    result = check_tokens(trace(0, 0), trace(900, 40), maxima={"total": 500})
    assert result.status == "failed"
    assert [(m.metric, m.basis, m.status) for m in result.measurements if m.status != "skipped"] == [
        ("total", "absolute", "failed")
    ]


# -- 3. row order ------------------------------------------------------------------------------------------------------

ORDERED_SQL = "SELECT tier, count(*) AS n FROM customers GROUP BY tier ORDER BY n DESC"
UNORDERED_SQL = "SELECT tier, count(*) AS n FROM customers GROUP BY tier"
GOLDEN_ROWS = [("SMB", 180), ("Mid-Market", 90), ("Enterprise", 30)]


def test_row_order_matters_is_the_published_rule() -> None:
    assert row_order_matters("ordered", UNORDERED_SQL)
    assert row_order_matters("bag", ORDERED_SQL)
    assert not row_order_matters("bag", UNORDERED_SQL)
    assert not row_order_matters("bag", "SELECT * FROM (SELECT 1 AS x ORDER BY 1) t")  # a subquery's order
    assert not row_order_matters("bag", None)
    assert not row_order_matters("set", ORDERED_SQL)
    assert not row_order_matters("none", ORDERED_SQL)


NOW_ROWS = {
    "same": GOLDEN_ROWS,
    "reversed": GOLDEN_ROWS[::-1],
    "duplicate": [*GOLDEN_ROWS, GOLDEN_ROWS[0]],
    "changed": [("SMB", 181), *GOLDEN_ROWS[1:]],
}


@pytest.mark.parametrize("rule", RESULT_MATCH)
@pytest.mark.parametrize("golden_sql", [ORDERED_SQL, UNORDERED_SQL])
@pytest.mark.parametrize("case", NOW_ROWS)
def test_the_results_check_and_the_snapshot_agree_on_rows(rule: ResultMatch, golden_sql: str, case: str) -> None:
    now_rows = NOW_ROWS[case]
    options = CheckOptions(result_match=rule)
    golden = json.loads(json.dumps(snapshot_data(trace(300, 40), golden_sql, sql_outcome(GOLDEN_ROWS))))
    now = json.loads(json.dumps(snapshot_data(trace(300, 40), golden_sql, sql_outcome(now_rows))))

    results = check_results(sql_outcome(now_rows), golden["result"], rule, golden_sql=golden_sql)
    changes, _ = compare_outcomes(golden, now, options)
    snapshot_rows_changed = any(line.startswith("result rows changed") for line in changes)
    assert (results.status == "failed") == snapshot_rows_changed
    expected = {
        "same": False,
        "reversed": row_order_matters(rule, golden_sql),
        "duplicate": rule in ("bag", "ordered", "suite"),  # suite compares rows as bag on each database
        "changed": rule != "none",
    }
    assert snapshot_rows_changed == expected[case]
    if rule == "none":
        assert results.status == "skipped"

    extension = OutcomeSnapshotExtension.configured(options)()
    assert extension.matches(serialized_data=json.dumps(now), snapshot_data=json.dumps(golden)) == (not changes)


def test_one_snapshot_extension_class_per_distinct_options() -> None:
    """syrupy scans the snapshot folder once per extension class: a class per case made big runs quadratic."""
    first = OutcomeSnapshotExtension.configured(CheckOptions(latency_budgets_ms={"LLM": 5000.0}))
    again = OutcomeSnapshotExtension.configured(CheckOptions(latency_budgets_ms={"LLM": 5000.0}))
    other = OutcomeSnapshotExtension.configured(CheckOptions(latency_budgets_ms={"LLM": 6000.0}))

    assert first is again
    assert other is not first
    assert (first.options.latency_budgets_ms, other.options.latency_budgets_ms) == ({"LLM": 5000.0}, {"LLM": 6000.0})


def test_the_snapshot_text_is_syrupys_own_for_every_outcome_and_other_data_goes_through_syrupy() -> None:
    """The extension writes an outcome's JSON itself (syrupy's walk cost a millisecond a case): the text must be
    byte for byte what syrupy writes, or every stored snapshot would change on the next --snapshot-update."""
    from collections import OrderedDict, namedtuple

    from syrupy.extensions.json import JSONSnapshotExtension

    rows = [(1, "Zürich", None, 2.5, True), (2, 'quote " and \\ back', float("nan"), -0.0, False)]
    outcome = snapshot_data(trace(300, 40), "SELECT 1", sql_outcome(rows))
    outcome["nested"] = {"b": [{"z": 1, "a": [()]}], "a": ("x", 1e300)}
    Point = namedtuple("Point", ["y", "x"])
    others: list[Any] = [OrderedDict([("b", 1), ("a", 2)]), {"p": Point(1, 2)}, {1: "int key"}, {"s": {3, 1}}]
    ours, syrupys = OutcomeSnapshotExtension(), JSONSnapshotExtension()

    for data in [outcome, *others]:
        assert ours.serialize(data) == syrupys.serialize(data)
