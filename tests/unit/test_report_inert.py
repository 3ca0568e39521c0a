"""Security review, findings 3 and 4: summary.md shows no link, image or HTML from a trace, a golden file or a
baseline; report.html links only to the Phoenix the user configured and its CSP forbids <base> and forms."""

from __future__ import annotations

import re
from typing import Any

from htmlpage import parse

from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, read_case
from pytest_llmtrace.results.html import render
from pytest_llmtrace.results.summary import summary_markdown
from pytest_llmtrace.results.trace_links import phoenix_link

LINK = "[click](https://evil.example/x)"
IMAGE = "![pixel](https://evil.example/p.png)"
HTML = "<img src=https://evil.example/h.png>"
HOSTILE = f"{LINK} {IMAGE} {HTML} **bold** | x \x1b[2J\u202e"


def _case(case_id: str, verdict: str, **more: Any) -> CaseRecord:
    return read_case(
        {
            "case_id": case_id,
            "passed": verdict == "passed",
            "verdict": verdict,
            "checks": [{"name": "sql", "status": "failed", "reason": HOSTILE}] if verdict != "passed" else [],
            "durations_ms": {"total": 10.0},
            "tokens": {"total": 5},
            **more,
        }
    )


def _outside_code(markdown: str) -> str:
    """The Markdown with its code spans removed: what GitHub would render as links, images, HTML or emphasis."""
    return re.sub(r"`[^`]*`", "", markdown)


def test_summary_shows_no_link_image_or_html_from_the_cases_or_the_baseline() -> None:
    cases = [_case(f"case {HOSTILE}", "failed"), _case("good", "passed")]
    baseline = [_case(f"case {HOSTILE}", HOSTILE), _case("good", f"passed {IMAGE}"), _case(LINK, "passed")]
    rules = [gate.parse("sql_success_rate >= 1")]
    markdown = summary_markdown(cases, gate.evaluate(rules, cases, baseline), baseline)
    rendered = _outside_code(markdown)
    for made in ("](", "<img", "<", "**bold**"):
        assert made not in rendered, f"{made!r} would render in {markdown}"
    assert "\x1b" not in markdown
    assert "\u202e" not in markdown
    # every table row keeps its column count: no value added a cell with a raw pipe
    for line in markdown.splitlines():
        if line.startswith("| `case"):
            assert len(re.findall(r"(?<!\\)\|", _outside_code(line))) in (4, 8)  # failing cases, was / now


ORIGIN = "http://127.0.0.1:6006"


def _doc(url: str) -> dict[str, Any]:
    case = _case("c", "failed", phoenix={"url": url, "trace_id": "ab" * 16})
    return {"schema_version": 1, "run": {}, "totals": {}, "cases": [case]}


def test_report_links_only_to_the_configured_phoenix_and_shows_others_as_text() -> None:
    for url in (
        "https://evil.example",
        "http://127.0.0.1:6006@evil.example",
        "http://127.0.0.1:6007",
        "https://127.0.0.1:6006",
    ):
        page = parse(render(_doc(url), phoenix=[ORIGIN]))
        assert page.find("a") == [], url
        assert "redirects/traces" not in "".join(page.text)
    page = parse(render(_doc("https://evil.example/x"), phoenix=[ORIGIN]))
    assert "https://evil.example/x trace " + "ab" * 16 in "".join(page.text)  # where it is, as text
    assert parse(render(_doc(ORIGIN))).find("a") == []  # no Phoenix configured: no link at all
    page = parse(render(_doc(ORIGIN + "/"), phoenix=["http://user:pw@127.0.0.1:6006/"]))
    assert [a["href"] for a in page.find("a")] == [f"{ORIGIN}/redirects/traces/{'ab' * 16}"]
    assert phoenix_link(read_case({"phoenix": {"url": "HTTP://127.0.0.1:6006", "trace_id": "t"}}), [ORIGIN]) is not None


def test_the_csp_forbids_base_and_form_targets() -> None:
    (csp,) = parse(render(_doc(ORIGIN))).find("meta", **{"http-equiv": "Content-Security-Policy"})
    policy = [p.strip() for p in str(csp["content"]).split(";")]
    assert "default-src 'none'" in policy
    assert "base-uri 'none'" in policy
    assert "form-action 'none'" in policy
