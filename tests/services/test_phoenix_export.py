"""``--llmtrace-phoenix-export`` into the session's real Phoenix, read back over Phoenix's REST API.

A small project (two golden cases of the reference app, one passing and one failing, a hand-written test with an
``llmtrace_check`` verdict, and a plain test without one) runs in a git checkout of its own. It is pointed at this
session's Phoenix by URL, so no second Phoenix starts. Its conftest writes down how many spans each test recorded,
which is what Phoenix must hold afterwards. Serial on purpose: under xdist the same run takes three times as long
here, and what xdist adds (the workers' shared project, the merged summary) is tested in tests/plugin.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.services.base import wait_until

if TYPE_CHECKING:
    from pytest_llmtrace.services.base import Endpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "golden_traces"
PASSING, FAILING = "customers_by_tier", "error_unknown_column"
CONFTEST = """
import json
import pytest


@pytest.fixture(autouse=True)
def _count_spans(request, llm_trace):
    yield
    with open("span_counts.jsonl", "a") as out:
        out.write(json.dumps({"nodeid": request.node.nodeid, "spans": len(llm_trace.spans)}) + "\\n")
"""
TESTS = """
from opentelemetry import trace


def test_in_budget(llmtrace_check):
    tracer = trace.get_tracer("app")
    secret = {"api_key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"}
    with tracer.start_as_current_span("handle", attributes=secret):
        with tracer.start_as_current_span("ChatOllama", attributes={"llm.token_count.total": 50}):
            pass
    llmtrace_check.within_budget(tokens={"total": 100})


def test_plain():
    with trace.get_tracer("app").start_as_current_span("plain"):
        pass
"""


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _spans(base: str, project: str) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = _get(f"{base}/v1/projects/{project}/spans?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        spans += page["data"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return spans


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


@pytest.fixture
def project(pytester: pytest.Pytester) -> tuple[pytest.Pytester, str]:
    """The small project as a git checkout; its revision."""
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for case in (PASSING, FAILING):
        shutil.copy(GOLDEN / f"{case}.json", golden / f"{case}.json")
        shutil.copy(GOLDEN / "__snapshots__" / f"{case}.json", golden / "__snapshots__" / f"{case}.json")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n"
        "llmtrace_target = gateway.app:handle_user_request\n"
        "llmtrace_latency_tolerance = 100\nllmtrace_latency_floor_ms = 60000\n"
    )
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=TESTS)
    _git(pytester.path, "init", "-q")
    _git(pytester.path, "add", "-A")
    _git(pytester.path, "commit", "-q", "-m", "project")
    return pytester, _git(pytester.path, "rev-parse", "HEAD")


def test_an_exported_run_reads_back_from_phoenix_with_its_verdicts_and_links(
    project: tuple[pytest.Pytester, str], llmtrace_phoenix: Endpoint, pg_admin_url: str
) -> None:
    pytester, revision = project
    base = llmtrace_phoenix.url
    result = pytester.runpytest_subprocess(
        f"--llmtrace-postgres={pg_admin_url}",
        f"--llmtrace-phoenix={base}",
        "--llmtrace-phoenix-export",
        "--llmtrace-report=reports",
        "--llmtrace-replay-speed=virtual",
        timeout=300,
    )
    result.assert_outcomes(passed=3, failed=1)  # FAILING's SQL names a column that does not exist
    header = re.search(
        r"llmtrace phoenix export: yes \(command line\), project (\S+) \(generated\)", result.stdout.str()
    )
    assert header is not None, result.stdout.str()
    name = header.group(1)
    assert re.fullmatch(rf"llmtrace-\d{{8}}T\d{{6}}Z-{revision[:7]}", name)

    recorded = [json.loads(line) for line in (pytester.path / "span_counts.jsonl").read_text().splitlines()]
    counts = {r["nodeid"]: r["spans"] for r in recorded}
    assert len(counts) == 4
    assert all(counts.values())
    total = sum(counts.values())
    result.stdout.fnmatch_lines([f"llmtrace phoenix export: {total} spans of 4 tests and 3 verdict annotations *"])

    # Phoenix stores spans in the background: wait until all of them are readable.
    assert wait_until(lambda: len(_spans(base, name)) >= total, timeout=60, interval=0.5), "Phoenix ingest"
    spans = _spans(base, name)
    assert len(spans) == total
    roots = [s for s in spans if s["parent_id"] is None]
    assert sorted(r["attributes"]["test.case.name"] for r in roots) == sorted(counts)
    assert {r["attributes"]["vcs.ref.head.revision"] for r in roots} == {revision}
    assert not any("llmtrace.xdist.worker" in r["attributes"] for r in roots)  # no xdist, no worker id
    trace_of = {r["attributes"]["test.case.name"]: r["context"]["trace_id"] for r in roots}
    per_test = Counter(next(n for n, t in trace_of.items() if t == s["context"]["trace_id"]) for s in spans)
    assert per_test == counts  # each test's spans, and only they, in the trace named for it
    assert "sk-proj-" not in json.dumps(spans)  # the credential was redacted before it left

    # The verdicts, as annotations on the root spans of the tests that have one.
    report = json.loads((pytester.path / "reports" / "results.json").read_text())
    verdicts = {c["nodeid"]: c["verdict"] for c in report["cases"]}
    assert sorted(verdicts.values()) == ["failed", "passed", "passed"]
    query = "&".join(f"span_ids={r['context']['span_id']}" for r in roots)
    annotations_url = f"{base}/v1/projects/{name}/span_annotations?limit=100&{query}"
    assert wait_until(lambda: len(_get(annotations_url)["data"]) == 3, timeout=90, interval=1), "annotations"
    annotations = _get(annotations_url)["data"]
    root_of = {r["context"]["span_id"]: r["attributes"]["test.case.name"] for r in roots}
    labels = {root_of[a["span_id"]]: a["result"]["label"] for a in annotations}
    assert labels == verdicts
    assert all(a["name"] == "llmtrace.verdict" and a["annotator_kind"] == "CODE" for a in annotations)
    failed = next(a for a in annotations if a["result"]["label"] == "failed")
    assert failed["result"]["explanation"].startswith("[sql] the SQL does not execute: column")

    # Each case links its trace in Phoenix's UI, in the project Phoenix knows under the run's name.
    project_id = _get(f"{base}/v1/projects/{urllib.parse.quote(name)}")["data"]["id"]
    for case in report["cases"]:
        assert case["phoenix_url"] == f"{base}/projects/{project_id}/traces/{trace_of[case['nodeid']]}"
        with urllib.request.urlopen(case["phoenix_url"], timeout=10) as page:
            assert page.status == 200
    failing = next(c for c in report["cases"] if c["verdict"] == "failed")
    assert f"[trace]({failing['phoenix_url']})" in (pytester.path / "reports" / "summary.md").read_text()
    result.stdout.fnmatch_lines([f"{FAILING}: {failing['phoenix_url']}"])
