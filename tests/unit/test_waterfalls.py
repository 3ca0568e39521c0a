"""Golden vs now waterfalls: the bars kept in results.json (``checks.timeline``) and the SVG report.html draws from
them (``results.waterfall``).

Traces are built span by span with round timestamps, so every bar's numbers are exact.
"""

from __future__ import annotations

import json
import re
from typing import cast

import pytest
from htmlpage import parse

from pytest_llmtrace.checks.outcome import CaseOutcome, Waterfall
from pytest_llmtrace.checks.timeline import NAME_LIMIT, waterfall_of
from pytest_llmtrace.results.case_record import WaterfallRecord
from pytest_llmtrace.results.waterfall import pair
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.span import Status
from pytest_llmtrace.trace.virtual import ReplayedAnswer, virtualize

MS = 1_000_000
HOSTILE = "<script>alert(1)</script>\"'><svg onload=alert(2)>"


def span(
    name: str,
    start_ms: float,
    end_ms: float | None,
    *,
    parent: str | None = None,
    kind: str = "CHAIN",
    status: Status = Status.UNSET,
    span_id: str | None = None,
) -> Span:
    attributes = {"db.query.text": "SELECT 1"} if kind == "SQL" else {"openinference.span.kind": kind}
    return Span(
        trace_id="1" * 32,
        span_id=(span_id or name).encode().hex()[:16].ljust(16, "0"),
        parent_span_id=parent.encode().hex()[:16].ljust(16, "0") if parent else None,
        name=name,
        start_time_unix_nano=int((1_000 + start_ms) * MS),  # the trace's clock does not start at 0
        end_time_unix_nano=None if end_ms is None else int((1_000 + end_ms) * MS),
        attributes=attributes,
        status=status,
    )


def gateway(sql_status: Status = Status.UNSET) -> Trace:
    """The reference gateway's shape: a CHAIN root, an LLM span, then a SQL span."""
    root = span("root", 0, 100)
    llm = span("llm", 10, 20, parent="root", kind="LLM")
    return Trace([root, llm, span("sql", 30, 80, parent="root", kind="SQL", status=sql_status)])


def test_the_bars_are_the_spans_depth_first_on_a_clock_from_the_first_start() -> None:
    bars = waterfall_of(gateway(Status.ERROR))
    assert [(b.name, b.kind, b.depth, b.start_ms, b.duration_ms, b.error) for b in bars.bars] == [
        ("root", "CHAIN", 0, 0.0, 100.0, False),
        ("llm", "LLM", 1, 10.0, 10.0, False),
        ("sql", "SQL", 1, 30.0, 50.0, True),  # a span that ran a statement is SQL, whatever its kind says
    ]
    assert bars.total_ms == 100.0
    assert bars.omitted == 0


def test_replayed_time_is_marked_per_span_on_the_virtual_clock() -> None:
    answer = ReplayedAnswer(int(1_012 * MS), int(1_018 * MS), 2313 * MS, 0)
    virtual = virtualize(gateway(), [answer])
    bars = {b.name: b for b in waterfall_of(virtual.trace, virtual.replayed_ns).bars}
    assert (bars["llm"].duration_ms, bars["llm"].replayed_ms) == (2313.0, 2313.0)
    assert (bars["root"].duration_ms, bars["root"].replayed_ms) == (100 + 2313 - 10, 2313.0)
    assert (bars["sql"].start_ms, bars["sql"].replayed_ms) == (30 + 2313 - 10, 0.0)


def test_an_open_span_reaches_the_end_and_a_huge_trace_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace([span("root", 0, 50), span("hung", 5, None, parent="root"), span("late", 40, 50, parent="root")])
    hung = waterfall_of(trace).bars[1]
    assert (hung.open, hung.start_ms, hung.duration_ms) == (True, 5.0, 45.0)

    long_name = "x" * 10_000
    monkeypatch.setattr(Waterfall, "MAX_BARS", 3)
    many = Trace([span(long_name, 0, 10, span_id="root")] + [span(f"c{i}", i, i + 1, parent="root") for i in range(9)])
    cut = waterfall_of(many)
    assert (len(cut.bars), cut.omitted) == (3, 7)
    assert len(cut.bars[0].name) == NAME_LIMIT
    assert cut.bars[0].name.endswith("…")


def test_the_waterfalls_round_trip_through_results_json() -> None:
    outcome = CaseOutcome("c", "replay", waterfall=waterfall_of(gateway()), golden_waterfall=waterfall_of(gateway()))
    data = json.loads(json.dumps(outcome.to_dict(), allow_nan=False))
    assert data["waterfall"]["bars"][2] == {
        "name": "sql", "kind": "SQL", "depth": 1, "start_ms": 30.0, "duration_ms": 50.0, "replayed_ms": 0.0,
        "error": False, "open": False,
    }  # fmt: skip
    assert CaseOutcome.from_dict(data) == outcome
    assert CaseOutcome.from_dict({**data, "waterfall": None}).waterfall is None  # a stand-in case has none


def _read(data: object) -> WaterfallRecord:
    """A waterfall as report.html gets it from results.json: whatever the file holds, typed as what it should."""
    return cast(WaterfallRecord, data)


def test_golden_and_now_share_one_time_scale_and_replayed_bars_are_drawn_as_such() -> None:
    golden = waterfall_of(gateway()).to_dict()  # 100 ms
    answer = ReplayedAnswer(int(1_012 * MS), int(1_018 * MS), 110 * MS, 0)
    virtual = virtualize(gateway(), [answer])  # 200 ms: the recorded call took 110 ms instead of 10
    page = parse(pair(_read(golden), _read(waterfall_of(virtual.trace, virtual.replayed_ns).to_dict())))
    assert [c["data-trace"] for c in page.find("svg")] == ["golden", "now"]
    widths = [float(str(r["width"])) for r in page.find("rect")]
    golden_root, now_root = widths[0], widths[3]
    assert now_root == pytest.approx(2 * golden_root, abs=0.2), "one scale: twice the time, twice the length"
    classes = [str(r["class"]) for r in page.find("rect")]
    assert classes == ["k-CHAIN", "k-LLM", "k-SQL", "k-CHAIN", "k-LLM replayed", "k-SQL"]
    text = "".join(page.text)
    assert "110 ms replayed" in text
    assert "200 ms, 110 replayed" in text  # the root: measured time around a replayed call


def test_hostile_names_and_kinds_stay_text_and_broken_figures_do_not_break_the_page() -> None:
    trace = Trace([span(HOSTILE, 0, 10, kind="LLM' onload='alert(3)", span_id="root")])
    now = waterfall_of(trace, {}).to_dict()
    broken = {"bars": [{"name": 7, "kind": None, "start_ms": "soon", "duration_ms": float("nan")}], "total_ms": -1}
    page = parse(pair(_read(broken), _read(now)))
    assert {t for t, _ in page.tags} <= {"p", "span", "svg", "g", "title", "text", "line", "rect"}
    assert not [k for _, a in page.tags for k in a if k.startswith("on") or k in ("href", "src", "style")]
    assert [r["class"] for r in page.find("rect")] == ["k-other", "k-other"]  # unknown kinds get no class of their own
    assert HOSTILE[:20] in "".join(page.text)
    assert "no spans" in pair(_read({"bars": 5, "total_ms": 1}), None)
    assert pair(None, None) == ""
    assert "golden: no trace" in pair(None, _read(now))


def test_spans_not_drawn_are_counted_on_the_chart() -> None:
    data = {**waterfall_of(gateway()).to_dict(), "omitted": 41}
    assert re.search(r"\.\.\. 41 more spans not drawn", pair(_read(data), _read(data)))
