"""``llmtrace capture`` against a real embedded Phoenix, filled by the reference gateway running as in production
(its own process, OTLP export to Phoenix) with questions that carry personal data and secrets.

The model's answers are scripted (the Ollama-API front with a scripted backend, as the golden traces were recorded);
everything else is real: the gateway, Postgres, Phoenix's ingestion and REST API, and the replay of the captured
cases through the app by pytest in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.cli import main
from pytest_llmtrace.modelapi import OllamaAPIServer
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.services.base import free_port, http_ok, wait_until
from pytest_llmtrace.sources.capture.filters import sampled
from pytest_llmtrace.sources.placeholders import unkeyed
from pytest_llmtrace.trace.otlp import read_trace

if TYPE_CHECKING:
    from pytest_llmtrace.services.base import Endpoint
    from pytest_llmtrace.services.postgres import PostgresDatabase

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("production_gateway.py")
API_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"
CASES = [
    {
        "name": "email",
        "question": "Which tier is the customer billing+7@customer7.example.com in?",
        "answer": "SELECT name, tier FROM customers WHERE email = 'billing+7@customer7.example.com';",
        "user_id": "ops.lead@acme-support.io",
    },
    {  # the same case as "email" once both addresses are redacted: a duplicate
        "name": "email_again",
        "question": "Which tier is the customer billing+9@customer9.example.com in?",
        "answer": "SELECT name, tier FROM customers WHERE email = 'billing+9@customer9.example.com';",
    },
    {
        "name": "phone",
        "question": "The customer on +1 415 555 0134 asks: how many orders are pending?",
        "answer": "SELECT count(*) AS pending FROM orders WHERE status = 'pending';",
    },
    {
        "name": "card",
        "question": "Card 4111 1111 1111 1111 was charged twice; how many paid orders are there in 2024?",
        "answer": "SELECT count(*) AS paid FROM orders WHERE status = 'paid' AND ordered_at >= '2024-01-01' "
        "AND ordered_at < '2025-01-01';",
    },
    {
        "name": "api_key",
        "question": f"My key {API_KEY} stopped working; which products are active?",
        "answer": "SELECT name FROM products WHERE active ORDER BY name;",
    },
    {
        "name": "ip",
        "question": "Requests from 10.20.30.40 and 2a00:1450:4001:81c::200e ask: how many customers are in EMEA?",
        "answer": "SELECT count(*) AS emea FROM customers WHERE region = 'EMEA';",
    },
    {  # Postgres quotes the value in its error: the status message and exception event carry the address too
        "name": "error",
        "question": "Show the orders of jane.doe@example.org",
        "answer": "SELECT * FROM orders WHERE customer_id = 'jane.doe@example.org';",
    },
]
PII = [
    "billing+7@customer7.example.com",
    "billing+9@customer9.example.com",
    "ops.lead@acme-support.io",
    "jane.doe@example.org",
    "+1 415 555 0134",
    "4111 1111 1111 1111",
    API_KEY,
    "10.20.30.40",
    "2a00:1450:4001:81c::200e",
]


@dataclass(frozen=True)
class Production:
    url: str
    project: str
    trace_ids: dict[str, str]  # case name -> trace id


@pytest.fixture(scope="module")
def production(llmtrace_phoenix: Endpoint, llmtrace_postgres: PostgresDatabase, tmp_path_factory: Any) -> Production:
    """Phoenix holding one trace per case in a project of its own, written by the gateway in its own process."""
    project = f"capture-{uuid.uuid4().hex[:8]}"
    config = tmp_path_factory.mktemp("production") / "config.json"
    backend = ScriptedBackend({c["question"]: c["answer"] for c in CASES}, "qwen-sql-prod")
    with OllamaAPIServer(backend) as ollama_api:
        config.write_text(
            json.dumps(
                {
                    "project": project,
                    "traces_endpoint": llmtrace_phoenix.extra["traces_endpoint"],
                    "ollama_host": ollama_api.url,
                    "db_uri": llmtrace_postgres.reader_url,
                    "cases": CASES,
                }
            )
        )
        done = subprocess.run(
            [sys.executable, str(APP), str(config)], capture_output=True, text=True, timeout=300, check=False
        )
    assert done.returncode == 0, done.stderr
    trace_ids = {line["name"]: line["trace_id"] for line in map(json.loads, done.stdout.splitlines())}
    assert set(trace_ids) == {c["name"] for c in CASES}
    # Phoenix inserts in the background: wait until every span of every trace can be read.
    query = "&".join(f"trace_id={t}" for t in trace_ids.values())
    spans_url = f"{llmtrace_phoenix.url}/v1/projects/{project}/spans?limit=1000&{query}"
    assert wait_until(lambda: _spans_in(spans_url) == 3 * len(CASES), timeout=120, interval=0.5), "Phoenix ingest"
    return Production(llmtrace_phoenix.url, project, trace_ids)


def _spans_in(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return len(json.loads(response.read())["data"])
    except OSError:
        return 0


def capture(
    production: Production, out: Path, capsys: pytest.CaptureFixture[str], *args: str, project: str | None = None
) -> tuple[int, str, str]:
    where = ["--phoenix-url", production.url, "--project", project or production.project, "--out", str(out)]
    status = main(["capture", *where, *args])
    stdout, stderr = capsys.readouterr()
    return status, stdout, stderr


def captured(out: Path) -> dict[str, str]:
    """Original trace id (from the provenance) -> file name."""
    key = "llmtrace.capture.trace_id"
    return {str(read_trace(p).root.resource_attributes[key]): p.name for p in out.glob("*.json")}


def names(production: Production, out: Path) -> set[str]:
    by_trace = {t: n for n, t in production.trace_ids.items()}
    return {by_trace[t] for t in captured(out)}


# -- what is written --------------------------------------------------------------------------------------------------


def test_one_redacted_file_per_trace_with_provenance_and_no_personal_data_anywhere(
    production: Production, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"

    status, stdout, stderr = capture(production, out, capsys, "--dedupe", "none")

    assert status == 0, stderr
    files = sorted(out.glob("*.json"))
    assert len(files) == len(CASES)
    assert names(production, out) == {c["name"] for c in CASES}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for value in PII:
            assert value not in text, (path.name, value)
            assert value.lower() not in path.name.lower()
    assert "customer7" not in " ".join(p.name for p in files)  # nor any piece of an address
    for value in PII:
        assert value not in stdout + stderr
    # each value counts once per copy: the question is in 3 attributes, the SQL in 4, and the SQL error's address is
    # also in the status, the exception event's message and stack trace, and the app's JSON output
    assert stdout.splitlines()[-2] == (
        "redacted 41 values in 7 traces: 3 api_key, 26 email, 3 card, 3 ipv6, 3 ipv4, 3 phone"
    )
    assert stdout.splitlines()[-1] == f"wrote 7 traces (21 spans) to {out}"
    assert "capture: 7 roots listed, 21 spans read, 7 traces done in " in stderr

    email = read_trace(out / captured(out)[production.trace_ids["email"]])
    placeholder = re.fullmatch(r"Which tier is the customer (<EMAIL:[0-9a-f]{8}>) in\?", email.input or "")
    assert placeholder is not None, email.input
    customer = placeholder.group(1)  # a keyed hash: the same in every capture made with the project's key
    assert email.llm_calls[0].input_messages[1].content == email.input
    assert email.sql_statements[0].text == f"SELECT name, tier FROM customers WHERE email = '{customer}';"
    assert re.fullmatch(r"<EMAIL:[0-9a-f]{8}>", str(email.root.attributes["user.id"]))
    assert email.root.attributes["user.id"] != customer
    assert dict(email.root.resource_attributes) == {
        "llmtrace.capture.source": "phoenix",
        "llmtrace.capture.phoenix_url": production.url,
        "llmtrace.capture.project": production.project,
        "llmtrace.capture.trace_id": production.trace_ids["email"],
        "llmtrace.capture.root_span_id": email.root.span_id,
        "llmtrace.capture.time": email.root.resource_attributes["llmtrace.capture.time"],
    }
    error = read_trace(out / captured(out)[production.trace_ids["error"]])
    message = error.sql_statements[0].error or ""
    assert re.fullmatch(r'invalid input syntax for type integer: "<EMAIL:[0-9a-f]{8}>"', message)
    ip = read_trace(out / captured(out)[production.trace_ids["ip"]])
    assert unkeyed(ip.input or "") == "Requests from <IP> and <IP> ask: how many customers are in EMEA?"

    again, stdout, _ = capture(production, out, capsys, "--dedupe", "none")
    assert again == 0
    assert stdout.splitlines()[-1] == f"wrote 0 traces (0 spans) to {out}; 7 unchanged"  # only the capture time moved


def test_dedupe_keeps_one_case_per_redacted_question_and_sql(
    production: Production, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"

    status, stdout, _ = capture(production, out, capsys)

    assert status == 0
    assert stdout.splitlines()[-1] == (
        f"wrote 6 traces (18 spans) to {out}; 1 duplicates skipped (--dedupe question,sql)"
    )
    assert len(names(production, out) & {"email", "email_again"}) == 1
    # the next capture finds the duplicate already in the directory
    status, stdout, _ = capture(production, out, capsys, "--dedupe", "question")
    assert stdout.splitlines()[-1] == (
        f"wrote 0 traces (0 spans) to {out}; 6 unchanged; 1 duplicates skipped (--dedupe question)"
    )


def test_the_redacted_cases_replay_green_through_the_app(
    production: Production,
    pg_admin_url: str,
    pytester: pytest.Pytester,
    capsys: pytest.CaptureFixture[str],
) -> None:
    golden = pytester.path / "golden_traces"
    status, _, stderr = capture(production, golden, capsys)
    assert status == 0, stderr
    (golden / captured(golden)[production.trace_ids["error"]]).unlink()  # its SQL fails: a red case by design
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n"
        "llmtrace_target = gateway.app:handle_user_request\n"
        "llmtrace_checks = sql results tokens snapshot\n"  # latency is wall time: not asserted on a shared machine
        # nor through the snapshot, which keeps durations with the latency rules: under a minute is noise here
        "llmtrace_latency_floor_ms = 600000\n"
    )
    run = [f"--llmtrace-postgres={pg_admin_url}", "--llmtrace-replay-speed=virtual"]
    # generous timeouts: each run starts the Ollama-API front and clones a database; a busy machine is slow at that

    first = pytester.runpytest_subprocess(*run, "--snapshot-update", timeout=900)
    first.assert_outcomes(passed=5)
    again = pytester.runpytest_subprocess(*run, "-v", timeout=900)

    again.assert_outcomes(passed=5)
    snapshots = list((golden / "__snapshots__").glob("*.json"))
    assert len(snapshots) == 5
    email = json.loads(next(s for s in snapshots if s.name.startswith("which-tier")).read_text())
    assert email["result"]["rows"] == []  # what the redacted SQL returns: nobody has the address <EMAIL_1>


# -- filters ----------------------------------------------------------------------------------------------------------


def test_filters_choose_traces(production: Production, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def chosen(*args: str) -> set[str]:
        out = tmp_path / uuid.uuid4().hex
        status, _, stderr = capture(production, out, capsys, "--dedupe", "none", *args)
        assert status == 0, stderr
        return names(production, out) if out.exists() else set()

    everything = {c["name"] for c in CASES}
    assert chosen("--errors-only") == {"error"}  # the root span stayed OK; only the SQL span is ERROR
    assert chosen("--trace-id", production.trace_ids["phone"], "--trace-id", production.trace_ids["card"]) == {
        "phone",
        "card",
    }
    assert chosen("--limit", "2") == {"ip", "error"}  # the newest two
    assert chosen("--root-name", "text2sql.request") == everything
    assert chosen("--since", "1h") == everything
    assert chosen("--since", "2000-01-01", "--until", "2000-01-02") == set()
    assert chosen("--until", "2000-01-01T00:00:00Z") == set()
    expected = {n for n, t in production.trace_ids.items() if sampled(t, 0.5, 7)}
    assert chosen("--sample", "0.5", "--seed", "7") == expected
    assert chosen("--sample", "0.5", "--seed", "7") == expected  # deterministic per trace id


def test_a_filter_that_names_nothing_there_says_so(
    production: Production, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, stderr = capture(production, tmp_path, capsys, "--root-name", "text2sql.requests")
    assert status == 1
    assert stderr.splitlines()[-1] == (
        "error: no root span named 'text2sql.requests' in project "
        f"'{production.project}'; did you mean 'text2sql.request'?; root names there: 'text2sql.request'"
    )
    missing = "0" * 32
    status, _, stderr = capture(production, tmp_path, capsys, "--trace-id", missing)
    assert status == 1
    assert f"error: no trace {missing} in project '{production.project}'" in stderr


# -- one line with its fix --------------------------------------------------------------------------------------------


def test_an_unknown_project_lists_the_projects_there(
    production: Production, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = production.project[:-1] + "x"

    status, _, stderr = capture(production, tmp_path / "out", capsys, project=wrong)

    assert status == 1
    line = stderr.splitlines()[-1]
    assert line.startswith(
        f"error: Phoenix at {production.url} has no project '{wrong}'; did you mean '{production.project}'? "
        f"projects there: {production.project}"
    )
    assert line.endswith("; fix: pass one of them to --project")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_phoenix_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    status = main(["capture", "--phoenix-url", url, "--project", "p", "--out", str(tmp_path)])

    assert status == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"error: cannot reach Phoenix at {url} (")
    assert error.endswith("); fix: start Phoenix there or correct --phoenix-url")


@pytest.fixture(scope="module")
def phoenix_with_auth(tmp_path_factory: Any) -> Iterator[tuple[str, str]]:
    """A second embedded Phoenix with authentication on; yields its URL and the admin secret (a valid bearer token)."""
    workdir = tmp_path_factory.mktemp("phoenix-auth")
    port = free_port()
    admin_secret = "admin-" + uuid.uuid4().hex + "9a"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    env.update(
        PHOENIX_WORKING_DIR=str(workdir),
        TMPDIR=str(workdir),  # Phoenix's pid file ($TMPDIR/.arize-phoenix) goes with the test's folder
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(free_port()),
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ENABLE_AUTH="true",
        PHOENIX_SECRET="secret-" + uuid.uuid4().hex + "1a",
        PHOENIX_ADMIN_SECRET=admin_secret,
    )
    log = (workdir / "phoenix.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "phoenix.server.main", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = wait_until(lambda: http_ok(url + "/healthz"), timeout=180, alive=lambda: process.poll() is None)
        assert started, (workdir / "phoenix.log").read_text()[-3000:]
        _send_one_trace(url, admin_secret)
        yield url, admin_secret
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _send_one_trace(url: str, token: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource({"openinference.project.name": "default"}))
    exporter = OTLPSpanExporter(endpoint=url + "/v1/traces", headers={"authorization": f"Bearer {token}"})
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("text2sql.request") as span:
        span.set_attribute("input.value", "How many customers do we have?")
    provider.shutdown()
    spans_url = f"{url}/v1/projects/default/spans?limit=10"
    request = urllib.request.Request(spans_url, headers={"Authorization": f"Bearer {token}"})

    def there() -> bool:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(json.loads(response.read())["data"])

    assert wait_until(there, timeout=60, interval=0.5)


def test_401_names_the_api_key_and_a_valid_key_is_never_printed_or_written(
    phoenix_with_auth: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    url, secret = phoenix_with_auth
    argv = ["capture", "--phoenix-url", url, "--project", "default", "--out", str(tmp_path / "out")]
    monkeypatch.delenv("PHOENIX_API_KEY", raising=False)

    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: Phoenix at {url} answered 401 Unauthorized; fix: this Phoenix requires authentication; set "
        "PHOENIX_API_KEY to an API key (Settings > API Keys)"
    )
    monkeypatch.setenv("PHOENIX_API_KEY", "not-a-key")
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: Phoenix at {url} answered 401 Unauthorized; fix: PHOENIX_API_KEY is set but this Phoenix refused "
        "it; set it to a valid key (Settings > API Keys)"
    )
    monkeypatch.setenv("PHOENIX_API_KEY", secret)
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.splitlines()[-1] == f"wrote 1 traces (1 spans) to {tmp_path / 'out'}"
    assert secret not in stdout + stderr
    assert all(secret not in p.read_text() for p in (tmp_path / "out").iterdir())
