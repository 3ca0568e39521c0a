"""An app traced only by auto-instrumentations replays with the verdicts of the OpenInference reference app (issue 11).

fixtures/autoinstr/app.py is the reference gateway's logic with no span code of its own: OpenLLMetry's ollama
instrumentation or OTel's openai-v2 instrumentation (against the front's ``/v1/chat/completions``) records the model
call, OTel's psycopg2 instrumentation the SQL, and an OpenLLMetry ``@workflow``-style root holds the question in
``traceloop.entity.input``. The module records both variants once (a subprocess, so the instrumentations never patch
this process's clients), imports the exports with ``llmtrace import``, and replays them in pytester projects, the
way a user would: ``--snapshot-update`` first (a fresh import has no snapshots), then a plain run. Each run's
verdicts per case (passed, and which checks failed) are compared with a run of the reference golden files of the
same cases. The slow case is left out, and so is the latency check: replayed, latency measures the machine's load,
not how a convention is read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmtrace.cli import main as llmtrace
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.otlp import read_trace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "golden_traces"
GOOD = ("customers_by_tier", "smb_revenue_by_region", "fenced_largest_order")
SQLSTATES = {
    "error_unknown_column": "42703",
    "error_syntax": "42601",
    "error_unknown_table": "42P01",
    "destructive_delete_discounted_items": "25006",  # re-executed read-only: the DELETE is refused
}
CASES = (*GOOD, *SQLSTATES)
QUESTIONS = {
    c["question"]: c["name"] for c in json.loads((REPO / "fixtures" / "golden_cases.json").read_text())["cases"]
}
OLD_LINE = "Revenue means the sum of orders.amount over orders with status 'paid'."
NEW_LINE = "Revenue means the sum of orders.amount over paid and pending orders."

# The ollama variant drives the app through this adapter, which reads the recorded user id from the golden trace:
# an llmtrace_app target with a parameter named `trace` gets the golden Trace with the question.
DRIVE = """
import json

from autoinstr.app import answer


def ask(question, trace):
    recorded = json.loads(trace.root.attributes["traceloop.entity.input"])
    user_id = recorded["kwargs"]["user_id"]
    print("DRIVEN", trace.root.name, user_id)
    return answer(question, user_id=user_id)
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, llmtrace_postgres: PostgresDatabase, pg_admin_url: str) -> Path:
    """``ollama.jsonl`` and ``openai.jsonl``: the OTLP exports of both variants, recorded on this session's server."""
    out = tmp_path_factory.mktemp("exports")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "fixtures"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "autoinstr.record", "--out", str(out), "--only", *CASES]
    command += ["--postgres", pg_admin_url, "--template", llmtrace_postgres.template]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _project(pytester: pytest.Pytester, ini: str) -> None:
    """company_db, the gateway (its prompt and parsing) and the auto-instrumented app, as packages of the project."""
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    for package in ("gateway", "autoinstr"):
        shutil.copytree(
            REPO / "fixtures" / package, pytester.path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    # Latency is left out of these runs, and the snapshot's durations get a floor no run reaches: replayed, they
    # measure this machine's load, not how a convention is read (tests/unit/test_conventions.py checks that an
    # auto-instrumented LLM span counts as LLM time).
    checks = "llmtrace_checks = sql results tokens snapshot\nllmtrace_latency_floor_ms = 600000\n"
    pytester.makeini(f"[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n{checks}{ini}")


def _imported(pytester: pytest.Pytester, export: Path) -> dict[str, str]:
    """``llmtrace import`` the export into the project's golden dir; returns file stem -> case name."""
    golden = pytester.path / "golden_traces"
    assert llmtrace(["import", str(export), "--out", str(golden)]) == 0
    names = {}
    for path in golden.glob("*.json"):
        question = read_trace(path).question().text
        assert question in QUESTIONS, f"{path.name}: question {question!r}"
        names[path.stem] = QUESTIONS[question]
    assert sorted(names.values()) == sorted(CASES)
    return names


def _run(pytester: pytest.Pytester, pg_url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--llmtrace-postgres={pg_url}", "--llmtrace-replay-speed=virtual", "-rA", *args, timeout=300
    )


def _verdicts(result: pytest.RunResult, names: dict[str, str] | None = None) -> dict[str, tuple[str, frozenset[str]]]:
    """case name -> (PASSED | FAILED, the ``[check]`` prefixes in its failure section)."""
    output = result.stdout.str()
    verdicts = {}
    for outcome, stem in re.findall(r"^(PASSED|FAILED) golden_traces/\S+\.json::(\S+)", output, re.MULTILINE):
        checks: frozenset[str] = frozenset()
        if outcome == "FAILED":
            checks = frozenset(re.findall(r"^\[(\w+)\]", _section(output, stem), re.MULTILINE))
        verdicts[(names or {}).get(stem, stem)] = (outcome, checks)
    return verdicts


def _section(output: str, stem: str) -> str:
    return output.split(f"golden case {stem}: ", 1)[1].split("\n___", 1)[0].split("\n---", 1)[0]


EXPECTED = {
    **{case: ("PASSED", frozenset[str]()) for case in GOOD},
    **{case: ("FAILED", frozenset({"sql"})) for case in SQLSTATES},
}


def test_the_openinference_reference_app_gives_these_verdicts(pytester: pytest.Pytester, pg_admin_url: str) -> None:
    """The verdicts the auto-instrumented variants must match, from the shipped golden traces of the same cases."""
    _project(pytester, "llmtrace_target = gateway.app:handle_user_request\n")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for case in CASES:
        shutil.copy(GOLDEN / f"{case}.json", golden / f"{case}.json")
        shutil.copy(GOLDEN / "__snapshots__" / f"{case}.json", golden / "__snapshots__" / f"{case}.json")

    result = _run(pytester, pg_admin_url, "golden_traces")

    assert _verdicts(result) == EXPECTED
    for case, sqlstate in SQLSTATES.items():
        assert f"(SQLSTATE {sqlstate})" in _section(result.stdout.str(), case)


@pytest.mark.parametrize(
    ("client", "ini"),
    [
        pytest.param("ollama", "llmtrace_target = drive:ask\n", id="openllmetry-ollama"),
        pytest.param(
            "openai",
            "llmtrace_target = autoinstr.app:answer\nllmtrace_question = llm.last_user_message\n",
            id="otel-genai-openai",
        ),
    ],
)
def test_auto_instrumented_traces_replay_with_the_verdicts_of_the_openinference_app(
    pytester: pytest.Pytester,
    pg_admin_url: str,
    exports: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    client: str,
    ini: str,
) -> None:
    pg_url = pg_admin_url
    monkeypatch.setenv("LLM_CLIENT", client)
    _project(pytester, ini)
    pytester.makepyfile(drive=DRIVE)
    names = _imported(pytester, exports / f"{client}.jsonl")
    capsys.readouterr()
    assert llmtrace(["show", str(next((pytester.path / "golden_traces").glob("how-many-customers-*.json")))]) == 0
    root, llm, sql = capsys.readouterr().out.splitlines()[1:4]
    assert root.startswith("text2sql.workflow ")
    assert root.endswith("input='How many customers do we have in each tier?'")
    convention = "openllmetry" if client == "ollama" else "otel-genai"
    assert re.search(rf"  LLM .* convention={convention}  model=qwen-sql-prod  tokens=\d+\+\d+$", llm), llm
    assert sql.lstrip().startswith("SELECT ")
    assert "sql='SELECT tier" in sql

    first = _run(pytester, pg_url, "golden_traces", "--snapshot-update", "-s")
    # The app's spans only: none of the sandbox guard's own queries, which the app's psycopg2 instrumentation sees
    for stored in (pytester.path / "golden_traces" / "__snapshots__").glob("*.json"):
        roots = [line for line in json.loads(stored.read_text())["spans"] if not line.startswith(" ")]
        assert roots == ["text2sql.workflow UNKNOWN UNSET"], (stored.name, roots)
    again = _run(pytester, pg_url, "golden_traces")

    assert _verdicts(first, names) == EXPECTED
    assert _verdicts(again, names) == EXPECTED
    output = again.stdout.str()
    for stem, case in names.items():
        if case in SQLSTATES:
            assert f"(SQLSTATE {SQLSTATES[case]})" in _section(output, stem), case
    if client == "openai":
        assert "llmtrace question: the first text from llm.last_user_message (ini)" in output
        assert output.count("question (from llm.last_user_message): ") == len(SQLSTATES)
    else:
        assert (
            "llmtrace question: the first text from input.value, traceloop.entity.input, langfuse.trace.input, "
            "langfuse.observation.input, gen_ai.prompt, llm.last_user_message" in output
        )
        assert output.count("question (from traceloop.entity.input): ") == len(SQLSTATES)
        assert sorted(_printed(first, "DRIVEN")) == sorted(f"text2sql.workflow {u}" for u in _user_ids(exports, client))

    app = pytester.path / "gateway" / "app.py"
    app.write_text(app.read_text().replace(OLD_LINE, NEW_LINE))
    changed = _run(pytester, pg_url, "golden_traces")
    changed.assert_outcomes(failed=len(CASES))
    text = changed.stdout.str()
    for stem in names:
        section = _section(text, stem)
        assert "[replay] prompt changed: no recorded LLM call matches the request to 'qwen-sql-prod'" in section
        assert f"    -{OLD_LINE}" in section
        assert f"    +{NEW_LINE}" in section


def _printed(result: pytest.RunResult, tag: str) -> list[str]:
    return [line.split(f"{tag} ", 1)[1] for line in result.stdout.lines if f"{tag} " in line]


def _user_ids(exports: Path, client: str) -> list[str]:
    ids = []
    for line in (exports / f"{client}.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    for attribute in span["attributes"]:
                        if attribute["key"] == "traceloop.entity.input":
                            ids.append(str(json.loads(attribute["value"]["stringValue"])["kwargs"]["user_id"]))
    return ids
