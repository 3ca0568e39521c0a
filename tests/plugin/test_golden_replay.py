"""Golden trace files as pytest items, end to end: collection, the replay of each case through the reference gateway
(and through other Ollama clients), every check's failure message, the live and record modes, and usage errors.

Each test builds a small project with pytester from copies of the repository's company_db, gateway and a few golden
cases, and runs pytest on it in process (a subprocess only where a run needs its own process). To keep the file fast,
the runs share one Postgres server: the one this session's ``llmtrace_postgres`` fixture started, passed as
``--llmtrace-postgres=URL``. Its template database already holds company_db (same files, same digest), so each run
only clones it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from support import GOLDEN, bundled_smollm2, golden_project, live_model_missing

from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.otlp import read_trace

REPO = Path(__file__).resolve().parents[2]
CHECK_NAMES = {"sql", "results", "cost", "latency", "tokens", "snapshot"}


@pytest.fixture(scope="module")
def pg_url(pg_admin_url: str) -> str:
    """The server behind this session's database, as its owner: the subprocess runs create their databases there."""
    return pg_admin_url


@pytest.fixture(scope="module")
def owner_url(llmtrace_postgres: PostgresDatabase) -> str:
    """This session's clone of company_db, for computing what the subprocess runs should see."""
    return llmtrace_postgres.url


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def _run(pytester: pytest.Pytester, pg_url: str, *args: str, own_process: bool = False) -> pytest.RunResult:
    """In process (pytester restores sys.modules after each run, so the next project's ``gateway`` is its own), unless
    the run needs a process of its own: an app that installs OpenTelemetry's global provider, which can be set once
    per process, or a live model."""
    options = (f"--llmtrace-postgres={pg_url}", "--llmtrace-replay-speed=virtual", *args)
    if own_process:
        # The timeout only stops a hung run: a live model on two busy cores takes minutes, not the 30 s it takes idle.
        # For the same reason the case deadline is lifted: auto derives it from the golden latency (24 s here), and
        # these runs test what the live model answered, not how fast a shared CI machine ran it.
        return pytester.runpytest_subprocess(*options, "-o", "llmtrace_case_timeout_s=600", timeout=900)
    return pytester.runpytest(*options)


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _spans(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]


def _set_attribute(doc: dict[str, Any], key: str, update: Any) -> None:
    for span in _spans(doc):
        for attribute in span["attributes"]:
            if attribute["key"] == key:
                attribute["value"] = update(attribute["value"])


def _printed(result: pytest.RunResult, tag: str) -> list[str]:
    """What the project's code printed after ``tag`` (with ``-s``, prints may follow the progress on a line)."""
    return [line.split(f"{tag} ", 1)[1] for line in result.stdout.lines if f"{tag} " in line]


def _failed_checks(output: str, case: str) -> set[str]:
    """The ``[check]`` prefixes in ``case``'s failure section."""
    section = output.split(f"golden case {case}: ", 1)[1].split("\n___", 1)[0].split("\n---", 1)[0]
    return set(re.findall(r"^\[(\w+)\]", section, re.MULTILINE))


# -- 1. collection ----------------------------------------------------------------------------------------------------


def _malformed(golden: Path) -> None:
    text = (GOLDEN / "customers_by_tier.json").read_text()
    (golden / "broken_truncated.json").write_text(text[:500])
    doc = json.loads(text)
    _spans(doc)[1]["spanId"] = 12345
    (golden / "broken_span_id.json").write_text(json.dumps(doc, indent=2))


def test_each_golden_file_is_one_item_named_after_it_and_snapshots_are_not_collected(
    pytester: pytest.Pytester,
) -> None:
    golden = golden_project(pytester, "customers_by_tier", "inactive_products")
    _malformed(golden)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "golden_traces/broken_span_id.json::broken_span_id",
            "golden_traces/broken_truncated.json::broken_truncated",
            "golden_traces/customers_by_tier.json::customers_by_tier",
            "golden_traces/inactive_products.json::inactive_products",
            "4 tests collected in *",
        ]
    )
    assert "__snapshots__" not in "\n".join(line for line in result.stdout.lines if "::" in line)

    selected = pytester.runpytest("--collect-only", "-q", "-k", "inactive")
    selected.stdout.fnmatch_lines(["golden_traces/inactive_products.json::inactive_products", "1/4 tests collected *"])
    assert "customers_by_tier" not in selected.stdout.str()


def test_a_malformed_golden_file_is_one_failing_item_and_lf_and_xdist_treat_cases_like_tests(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    golden = golden_project(pytester, "customers_by_tier", "inactive_products")
    _malformed(golden)
    result = _run(pytester, pg_url, "-n", "2")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            f"cannot replay this golden trace: {golden}/broken_span_id.json: "
            "at $.resourceSpans[0].scopeSpans[0].spans[1].spanId: expected 16 hex characters, got the number 12345",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"cannot replay this golden trace: {golden}/broken_truncated.json: "
            "at $: expected valid JSON, got end of file (the file is truncated) at line * column *",
        ]
    )
    assert "Traceback" not in result.stdout.str()

    rerun = _run(pytester, pg_url, "--lf", "-v")
    rerun.assert_outcomes(failed=2)
    rerun.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures*"])
    assert "customers_by_tier" not in rerun.stdout.str()
    assert "inactive_products" not in rerun.stdout.str()


# -- 2. replay mode: the checks ----------------------------------------------------------------------------------------


def test_replay_checks_pass_a_good_case_and_name_what_broke_in_the_others(
    pytester: pytest.Pytester, pg_url: str, owner_url: str
) -> None:
    golden = golden_project(
        pytester,
        "inactive_products",
        "error_unknown_column",
        "destructive_delete_discounted_items",
        "customers_by_tier",
        "paid_orders_by_country",
        "pending_orders_value",
    )
    # results: the snapshot says SMB has 181 customers; the database has 180
    _edit_json(
        golden / "__snapshots__" / "customers_by_tier.json",
        lambda snap: snap["result"]["rows"][0].__setitem__(1, 181),
    )
    # tokens: the prompt count in the golden trace 50% higher. Replay serves the recorded counts, so the app now
    # reports the edited prompt count too; the golden total (not edited) is what no longer adds up
    _edit_json(
        golden / "paid_orders_by_country.json",
        lambda doc: _set_attribute(
            doc, "llm.token_count.prompt", lambda v: {"intValue": str(int(v["intValue"]) * 3 // 2)}
        ),
    )
    # snapshot: none yet
    (golden / "__snapshots__" / "pending_orders_value.json").unlink()
    (discounted,) = _query(owner_url, "SELECT count(*) FROM order_items WHERE discount > 0")[0]
    assert discounted > 0
    pytester.makepyfile(
        test_rows_survive=f"""
        import psycopg2

        def test_the_destructive_case_deleted_nothing(llmtrace_postgres):
            conn = psycopg2.connect(llmtrace_postgres.url)  # the owner: sees every row there is
            with conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM order_items WHERE discount > 0")
                assert cur.fetchone()[0] == {discounted}
        """
    )
    result = _run(pytester, pg_url, "golden_traces", "test_rows_survive.py", "-v")
    result.assert_outcomes(passed=2, failed=5)
    result.stdout.fnmatch_lines(
        [
            "golden_traces/inactive_products.json::inactive_products PASSED*",
            "test_rows_survive.py::test_the_destructive_case_deleted_nothing PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "golden case error_unknown_column: 1 check failed",
            "",
            "[[]sql] the SQL does not execute: column c.segment does not exist (SQLSTATE 42703)",
            "    SELECT c.segment, sum(o.amount) AS revenue FROM orders o JOIN customers c *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "golden case destructive_delete_discounted_items: 1 check failed",
            "",
            "[[]sql] the SQL does not execute: cannot execute DELETE in a read-only transaction (SQLSTATE 25006)",
            "    DELETE FROM order_items WHERE discount > 0;",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "golden case customers_by_tier: 2 checks failed",
            "",
            "[[]results] the rows differ from the snapshot (bag): *",
            "    golden: * ('SMB', 181)",
            "    golden: * ('Mid-Market', 90)",
            "    golden: * ('Enterprise', 30)",
            "    now: * ('SMB', 180)",
            "",
            f"[[]snapshot] the outcome differs from {golden}/__snapshots__/customers_by_tier.json "
            "(--snapshot-update accepts it):",
            "    result rows changed: *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "golden case paid_orders_by_country: * failed",
            "",
            "[[]tokens]",
            "    metric * | golden | now*| limit",
            "    total tokens | * | * | within +-10% of golden (*)",
        ]
    )
    snapshot = golden / "__snapshots__" / "pending_orders_value.json"
    result.stdout.fnmatch_lines(
        [
            "golden case pending_orders_value: 1 check failed",
            "",
            f"[[]snapshot] no snapshot at {snapshot}: run with --snapshot-update to create it",
        ]
    )

    update = _run(pytester, pg_url, "--snapshot-update", "golden_traces/pending_orders_value.json")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines(["1 snapshot generated."])
    saved = json.loads(snapshot.read_text())
    expected = _query(owner_url, "SELECT count(*), sum(amount) FROM orders WHERE status = 'pending'")
    assert saved["result"]["rows"] == [[int(expected[0][0]), float(expected[0][1])]]
    assert saved["sql"].startswith("SELECT count(*) AS pending_orders")
    assert (golden / "__snapshots__" / "customers_by_tier.json").is_file(), "updating one case deleted another's"

    again = _run(pytester, pg_url, "golden_traces/pending_orders_value.json")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["1 snapshot passed."])


def test_latency_budgets_and_case_marks_from_the_ini(pytester: pytest.Pytester, pg_url: str) -> None:
    golden = golden_project(
        pytester,
        "customers_by_tier",
        "error_unknown_column",
        "error_syntax",
        ini=(
            "llmtrace_latency_budgets_ms = SQL=0.001\n"
            "llmtrace_case_marks =\n"
            # the snapshot keeps durations too (with the latency tolerance), so it is off for the slow case as well
            '    slow_*: llmtrace(skip_checks=("latency", "snapshot"))\n'
            '    error_*: xfail(reason="fails in production", strict=True)\n'
        ),
    )
    # The mark matches the case's name (its file's stem), not how long its SQL takes: a cheap case named slow_*
    # tests it without slow_higher_priced_items, whose self-join costs seconds of Postgres CPU at every run.
    for folder in (GOLDEN, GOLDEN / "__snapshots__"):
        to = golden / folder.relative_to(GOLDEN) / "slow_inactive_products.json"
        to.write_bytes((folder / "inactive_products.json").read_bytes())
    result = _run(pytester, pg_url, "-rxX")
    # the slow case passes only because its latency is not checked: its SQL takes milliseconds against a 1 us budget,
    # as customers_by_tier's does, which fails
    result.assert_outcomes(failed=1, passed=1, xfailed=2)
    result.stdout.fnmatch_lines(
        [
            "golden case customers_by_tier: 1 check failed",
            "",
            "[[]latency]",
            "    metric | golden | now*| limit",
            "    SQL ms | * | * | <= 0.001 ms budget",
        ]
    )
    # milliseconds against a 1 us budget: far past 2x (runner.RETRY_NOISE), so judged at once, not timed again
    assert "fastest of" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "XFAIL golden_traces/error_syntax.json::error_syntax - fails in production",
            "XFAIL golden_traces/error_unknown_column.json::error_unknown_column - fails in production",
        ]
    )


def test_replayed_calls_count_their_recorded_duration_and_the_rest_is_measured(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """Virtual time (the default; `recorded` also waits): the replayed LLM call lasts
    exactly its recorded duration, marked replayed; SQL and the app's own code are measured in this run."""
    golden_project(pytester, "customers_by_tier")
    recorded = read_trace(GOLDEN / "customers_by_tier.json")
    (call,) = recorded.llm_calls
    for speed in ("virtual", "recorded"):
        result = pytester.runpytest(
            f"--llmtrace-postgres={pg_url}", f"--llmtrace-replay-speed={speed}", f"--llmtrace-report={speed}"
        )
        result.assert_outcomes(passed=1)
        (case,) = json.loads((pytester.path / speed / "results.json").read_text())["cases"]
        assert case["durations_ms"]["LLM"] == case["golden_durations_ms"]["LLM"] == call.span.duration_ms
        assert case["replayed_durations_ms"]["LLM"] == call.span.duration_ms
        assert case["replayed_durations_ms"]["total"] == call.span.duration_ms
        assert "SQL" not in case["replayed_durations_ms"]
        assert case["durations_ms"]["SQL"] > 0
        assert case["durations_ms"]["total"] > call.span.duration_ms + case["durations_ms"]["SQL"]
        latency = next(c for c in case["checks"] if c["name"] == "latency")
        sources = {(m["metric"], m["source"]) for m in latency["measurements"]}
        assert sources - {("ttft", "measured"), ("ttft", "replayed")} == {
            ("total", "measured"),
            ("LLM", "replayed"),
            ("SQL", "measured"),
            ("CHAIN", "measured"),
        }
        # the recording's TTFT counts once, at either speed: waiting for it (recorded) does not add it again
        golden_ttft = case["golden_llm_usage"]["ttft_ms"]
        assert case["replayed_durations_ms"]["ttft"] == pytest.approx(golden_ttft, abs=0.01)
        assert golden_ttft <= case["durations_ms"]["ttft"] < golden_ttft + call.span.duration_ms / 2


def test_role_changes_made_before_a_case_fail_it_the_same_way_for_golden_cases_and_llmtrace_check(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """SQL run outside any guard changed the session's reader role; the next case, of either kind, finds it restored
    and says so. (Before one runner served both, a golden case restored it silently.)"""
    golden_project(pytester, "customers_by_tier")
    change = """
        import psycopg2

        def change_role(llmtrace_postgres):
            conn = psycopg2.connect(llmtrace_postgres.reader_url)
            with conn, conn.cursor() as cur:  # commits
                cur.execute("SET TRANSACTION READ WRITE; ALTER ROLE CURRENT_USER SET statement_timeout = 0")
            conn.close()
    """
    pytester.makepyfile(
        test_1_check=change
        + """
        def test_the_app_changes_the_role_then_checks(llmtrace_postgres, llm_trace, llmtrace_check):
            change_role(llmtrace_postgres)
            llmtrace_check.sql_executes(sql="SELECT 1")
        """,
        test_2_fixture=change
        + """
        def test_a_fixture_changes_the_role(llmtrace_postgres):
            change_role(llmtrace_postgres)
        """,
    )
    result = _run(
        pytester, pg_url, "test_1_check.py", "test_2_fixture.py", "golden_traces", "-o", "llmtrace_checks=sql"
    )
    result.assert_outcomes(passed=1, failed=2)
    sandbox = [
        "[[]sandbox] the database roles were changed before this case (by SQL run outside the checks: the app of a "
        "hand-written test, a fixture or an earlier test; restored now)",
        "    role llmtrace_r_*: statement_timeout: * -> 0",
    ]
    for failed in ("test_the_app_changes_the_role_then_checks", "golden case customers_by_tier: 1 check failed"):
        result.stdout.fnmatch_lines([f"*{failed}*", *sandbox])


# -- 3. prompt changed, call never made --------------------------------------------------------------------------------

OLD_LINE = "Revenue means the sum of orders.amount over orders with status 'paid'."
NEW_LINE = "Revenue means the sum of orders.amount over paid and pending orders."


def test_a_changed_prompt_and_a_call_no_longer_made_fail_with_the_replay_diagnosis(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    golden_project(pytester, "customers_by_tier")
    app = pytester.path / "gateway" / "app.py"
    source = app.read_text()
    assert OLD_LINE in source
    app.write_text(source.replace(OLD_LINE, NEW_LINE))
    result = _run(pytester, pg_url)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "[[]replay] prompt changed: no recorded LLM call matches the request to 'qwen-sql-prod' on /api/chat",
            "    nearest recordings:",
            "      recorded call #0 'ollama.chat' (similarity 0.*, differs in messages)",
            "    prompt diff (recorded -> new):",
            "    --- recorded prompt",
            "    +++ new prompt",
            "    @@ *",
            "*",
            f"    -{OLD_LINE}",
            f"    +{NEW_LINE}",
        ]
    )
    result.stdout.fnmatch_lines(["[[]replay] recorded call never made: *"])

    pytester.makepyfile(silent_app="def answer(question):\n    return {'rows': []}\n")
    silent = _run(pytester, pg_url, "-o", "llmtrace_target=silent_app:answer")
    silent.assert_outcomes(failed=1)
    silent.stdout.fnmatch_lines(
        [
            "golden case customers_by_tier: * failed",
            "",
            "[[]replay] recorded call never made: the app did not call qwen-sql-prod with the recorded prompt "
            "(2 messages)",
            "",
            "[[]sql] the app ran no SQL now (the golden trace did)",
        ]
    )
    assert "prompt changed" not in silent.stdout.str()


# -- 4. other Ollama clients -------------------------------------------------------------------------------------------

CLIENTS = '''
from __future__ import annotations

import json
import os

import ollama
from openinference.semconv.trace import OpenInferenceSpanKindValues, SpanAttributes
from opentelemetry.trace import SpanKind

from gateway import app
from gateway.app import SYSTEM_PROMPT

MODEL = "qwen-sql-prod"


def _ollama_chat(messages):
    response = ollama.Client(host=os.environ["OLLAMA_HOST"]).chat(
        model=MODEL, messages=messages, options={"temperature": 0}
    )
    return response.message.content, response.prompt_eval_count, response.eval_count


def _ollama_stream(messages):
    text, last = "", None
    for chunk in ollama.Client(host=os.environ["OLLAMA_HOST"]).chat(
        model=MODEL, messages=messages, options={"temperature": 0}, stream=True
    ):
        text += chunk.message.content or ""
        last = chunk
    assert last is not None and last.done
    return text, last.prompt_eval_count, last.eval_count


def _langchain(messages):
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=os.environ["OLLAMA_HOST"], temperature=0)
    reply = llm.invoke([(m["role"], m["content"]) for m in messages])
    usage = reply.usage_metadata or {}
    return reply.content, usage.get("input_tokens"), usage.get("output_tokens")


def _answer(question, ask):
    """The gateway's request, with its model call made by another client; same spans, same SQL execution."""
    with app.tracer.start_as_current_span("text2sql.request") as root:
        root.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, OpenInferenceSpanKindValues.CHAIN.value)
        root.set_attribute(SpanAttributes.INPUT_VALUE, question)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        with app.tracer.start_as_current_span("ollama.chat", kind=SpanKind.CLIENT) as span:
            span.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, OpenInferenceSpanKindValues.LLM.value)
            span.set_attribute(SpanAttributes.LLM_MODEL_NAME, MODEL)
            for i, message in enumerate(messages):
                span.set_attribute(f"llm.input_messages.{i}.message.role", message["role"])
                span.set_attribute(f"llm.input_messages.{i}.message.content", message["content"])
            text, prompt, completion = ask(messages)
            span.set_attribute("llm.output_messages.0.message.role", "assistant")
            span.set_attribute("llm.output_messages.0.message.content", text)
            span.set_attribute(SpanAttributes.LLM_TOKEN_COUNT_PROMPT, prompt)
            span.set_attribute(SpanAttributes.LLM_TOKEN_COUNT_COMPLETION, completion)
            span.set_attribute(SpanAttributes.LLM_TOKEN_COUNT_TOTAL, prompt + completion)
        print("ANSWER", json.dumps(text))
        result = app.run_sql(app.strip_code_fences(text))
        root.set_attribute(SpanAttributes.OUTPUT_VALUE, json.dumps(result, default=str))
        return result


def via_ollama_chat(question):
    return _answer(question, _ollama_chat)


def via_ollama_stream(question):
    return _answer(question, _ollama_stream)


def via_langchain(question):
    return _answer(question, _langchain)
'''


@pytest.mark.parametrize("client", ["ollama_chat", "ollama_stream", "langchain"])
def test_replay_answers_other_ollama_clients_with_the_recorded_text(
    pytester: pytest.Pytester, pg_url: str, client: str
) -> None:
    golden_project(pytester, "fenced_largest_order", target=f"clients:via_{client}")
    pytester.makepyfile(clients=CLIENTS)
    recorded = read_trace(GOLDEN / "fenced_largest_order.json").llm_calls[0].output_text
    assert recorded.startswith("```")
    # what is under test is the clients' wire format, not their speed: a client's first call includes its own
    # start-up (LangChain's takes ~200 ms on a loaded CI machine), which the latency check would flag
    # (the snapshot keeps durations with the latency rules too: a floor of ten minutes makes them noise here)
    result = _run(
        pytester,
        pg_url,
        "-s",
        "-o",
        "llmtrace_checks=sql results tokens snapshot",
        "-o",
        "llmtrace_latency_floor_ms=600000",
    )
    result.assert_outcomes(passed=1)
    assert _printed(result, "ANSWER") == [json.dumps(recorded)]


# -- 5. live and record modes with a real (tiny) model -----------------------------------------------------------------


SHOW_CALLS = """
import json
import pytest


@pytest.fixture
def llmtrace_app(llmtrace_app, llm_trace):
    def app(question):
        try:
            return llmtrace_app(question)
        finally:
            for call in llm_trace.llm_calls:
                print("LLM-CALL", call.prompt_tokens, call.completion_tokens, json.dumps(call.output_text))

    return app
"""


@pytest.mark.slow  # llama.cpp
@pytest.mark.skipif(live_model_missing() is not None, reason=f"needs the live model: {live_model_missing()}")
def test_live_runs_the_real_model_and_record_rewrites_the_golden_file_for_replay(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    golden = golden_project(pytester, "customers_by_tier")
    modelfile = (REPO / "fixtures" / "Modelfile").read_text()
    modelfile = "\n".join(
        f"FROM {bundled_smollm2()}" if line.startswith("FROM ") else line for line in modelfile.splitlines()
    )
    pytester.path.joinpath("fixtures", "Modelfile").write_text(modelfile)
    pytester.makeconftest(SHOW_CALLS)
    case = golden / "customers_by_tier.json"
    original = case.read_text()
    recorded_answer = read_trace(case).llm_calls[0].output_text

    live = _run(pytester, pg_url, "--llmtrace-mode=live", "-s", "--llmtrace-report=live-report", own_process=True)
    live.stdout.fnmatch_lines(["llmtrace ollama: embedded *SmolLM2-135M-Instruct.Q4_1.gguf*"])
    # the model's digest in results.json: the weights the embedded backend loaded (its /api/tags hashes the name)
    (model,) = json.loads((pytester.path / "live-report" / "results.json").read_text())["run"]["models"]
    gguf = bundled_smollm2()
    assert gguf is not None
    assert model == {
        "name": "qwen-sql-prod",
        "digest": "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest(),
        "source": f"sha256 of {gguf.name}, the GGUF the embedded backend loaded",
        "reason": None,
    }
    calls = [line.split(" ", 2) for line in _printed(live, "LLM-CALL")]
    assert len(calls) == 1, live.stdout.str()
    prompt_tokens, completion_tokens, _ = calls[0]
    assert int(prompt_tokens) > 0, calls
    assert int(completion_tokens) > 0, calls
    outcomes = live.parseoutcomes()
    assert not outcomes.get("errors"), live.stdout.str()
    if outcomes.get("failed"):  # a 135M model writes poor SQL: a check may fail, the case must not error
        live.stdout.fnmatch_lines(["golden case customers_by_tier: * failed"])
        found = _failed_checks(live.stdout.str(), "customers_by_tier")
        assert found, live.stdout.str()
        assert found <= CHECK_NAMES, found
        assert found & {"sql", "results", "snapshot"}, found
    assert case.read_text() == original, "live mode must not write the golden file"

    record = _run(pytester, pg_url, "--llmtrace-mode=record", "-s", own_process=True)
    record.stdout.fnmatch_lines(["llmtrace ollama: embedded *"])
    (recorded_call,) = [line.split(" ", 2) for line in _printed(record, "LLM-CALL")]
    answer = json.loads(recorded_call[2])
    assert case.read_text() != original
    (call,) = read_trace(case).llm_calls
    assert call.output_text == answer
    assert answer != recorded_answer  # SmolLM2 does not answer with the scripted production SQL
    assert call.prompt_tokens == int(recorded_call[0]) > 0

    replay = _run(pytester, pg_url, "-s")
    replay.stdout.fnmatch_lines(["llmtrace ollama: replay *"])
    assert [line.split(" ", 2)[2] for line in _printed(replay, "LLM-CALL")] == [json.dumps(answer)]
    assert "[replay]" not in replay.stdout.str()
    assert "[app]" not in replay.stdout.str()
    assert not replay.parseoutcomes().get("errors"), replay.stdout.str()


# -- 6. usage errors ---------------------------------------------------------------------------------------------------


def test_a_misspelled_mode_is_a_usage_error_with_the_near_miss(pytester: pytest.Pytester) -> None:
    golden_project(pytester, "customers_by_tier")
    result = pytester.runpytest("--llmtrace-mode=replya")
    result.stderr.fnmatch_lines(
        [
            "ERROR: --llmtrace-mode: 'replya' is not a valid mode setting; use replay, live, record. "
            "Did you mean 'replay'?"
        ]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_a_case_marks_line_without_a_glob_is_a_usage_error(pytester: pytest.Pytester) -> None:
    golden_project(pytester, "customers_by_tier", ini="llmtrace_case_marks =\n    bad line\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(
        ["ERROR: llmtrace_case_marks line 'bad line': expected '<case glob>: <mark>', e.g. 'error_*: xfail'"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_without_a_target_the_case_fails_saying_how_to_name_the_app(pytester: pytest.Pytester, pg_url: str) -> None:
    golden_project(pytester, "customers_by_tier", target=None)
    result = _run(pytester, pg_url)
    result.assert_outcomes(failed=1)  # a configuration problem fails the case with the fix, no traceback
    result.stdout.fnmatch_lines(
        [
            'no app to replay the golden traces against: set llmtrace_target = "package.module:function" in the '
            "pytest ini (the function is called with the user question, and trace= the golden Trace if it has a "
            "parameter named trace), or override the llmtrace_app fixture",
        ]
    )

    misspelled = _run(pytester, pg_url, "-o", "llmtrace_target=gateway.app:handle_user_requst")
    misspelled.assert_outcomes(failed=1)
    misspelled.stdout.fnmatch_lines(
        [
            "llmtrace_target 'gateway.app:handle_user_requst' (from ini): module 'gateway.app' has no function "
            "'handle_user_requst'; did you mean 'handle_user_request'?",
        ]
    )


def test_snapshot_update_keeps_the_snapshot_of_a_case_that_could_not_run(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    golden = golden_project(pytester, "customers_by_tier", target=None)
    result = _run(pytester, pg_url, "--snapshot-update")
    result.assert_outcomes(failed=1)
    assert (golden / "__snapshots__" / "customers_by_tier.json").is_file()
    content = (golden / "__snapshots__" / "customers_by_tier.json").read_text()

    # with the target set but the snapshot check switched off, --snapshot-update keeps the snapshot untouched too
    off = _run(
        pytester,
        pg_url,
        "--snapshot-update",
        "-o",
        "llmtrace_target=gateway.app:handle_user_request",
        "-o",
        "llmtrace_checks=sql results",
    )
    off.assert_outcomes(passed=1)
    assert (golden / "__snapshots__" / "customers_by_tier.json").read_text() == content


# An app that does what many production apps do at import: build its own SDK TracerProvider with its own exporter
# and make it the global one. The golden case must record its spans, and the app's exporter must still get them.
OWN_PROVIDER_APP = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

APP_EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(APP_EXPORTER))
trace.set_tracer_provider(_provider)

from gateway.app import handle_user_request  # noqa: E402


def answer(question):
    result = handle_user_request(question)
    exported = len(APP_EXPORTER.get_finished_spans())
    print("APP-EXPORTED", exported, "GLOBAL-IS-APP", trace.get_tracer_provider() is _provider)
    return result
"""


def test_an_app_that_installs_its_own_provider_at_import_is_recorded(pytester: pytest.Pytester, pg_url: str) -> None:
    golden_project(pytester, "customers_by_tier", target="ownapp:answer")
    pytester.makepyfile(ownapp=OWN_PROVIDER_APP)
    result = _run(pytester, pg_url, "-s", own_process=True)  # the global provider: once per process
    result.assert_outcomes(passed=1)  # the snapshot's span tree matched: the recorder saw the app's three spans
    assert _printed(result, "APP-EXPORTED") == ["3 GLOBAL-IS-APP True"]


def test_the_app_fixture_can_be_overridden_and_the_app_may_get_a_writable_db(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    golden_project(pytester, "customers_by_tier", target=None, ini="llmtrace_app_db = owner\n")
    pytester.makeconftest(
        """
        import os
        import pytest

        @pytest.fixture
        def llmtrace_app(llmtrace_postgres, llmtrace_ollama):
            from gateway.app import handle_user_request

            def ask(question):
                print("DB-IS-OWNER", os.environ["DB_URI"] == llmtrace_postgres.url)
                return handle_user_request(question, user_id="from-conftest")

            return ask
        """
    )
    result = _run(pytester, pg_url, "-s", "-o", "llmtrace_checks=sql results tokens")
    result.assert_outcomes(passed=1)
    # the conftest fixture replaced the plugin's, so llmtrace_app_db (applied by the plugin's fixture) did not apply
    assert _printed(result, "DB-IS-OWNER") == ["False"]

    pytester.makeconftest("")
    owner = _run(pytester, pg_url, "-o", "llmtrace_target=gateway.app:handle_user_request", "-o", "llmtrace_checks=sql")
    owner.assert_outcomes(passed=1)


def test_a_recording_without_model_names_replays_under_the_configured_model(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """Some instrumentations leave out llm.model_name; the replay server then answers to llmtrace_ollama_model."""
    golden = golden_project(pytester, "customers_by_tier")

    def drop_model_name(doc: dict[str, Any]) -> None:
        for span in _spans(doc):
            span["attributes"] = [a for a in span["attributes"] if a["key"] != "llm.model_name"]

    _edit_json(golden / "customers_by_tier.json", drop_model_name)
    result = _run(pytester, pg_url, "-o", "llmtrace_checks=sql results tokens")
    result.assert_outcomes(passed=1)
