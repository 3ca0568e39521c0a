"""Load traces from any export llmtrace knows, recognising the format from the content.

Exports get renamed, and the same extension means different things (``.json`` is spec OTLP, a Phoenix page or a
dataframe dump), so the file name is never trusted: parquet is recognised by its magic bytes, JSON by its keys.

JSONL error locations are written ``line 3: $.resourceSpans[0]...`` (1-based line, then the JSON path inside that
line), so ``file: at line 3: $...`` points straight at the place to look.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmtrace.errors import TraceFormatError
from pytest_llmtrace.trace import phoenix
from pytest_llmtrace.trace.jsondoc import Doc, decode, describe, loads, read_bytes
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import group_traces, is_otlp, spans_from_request

__all__ = ["KNOWN_FORMATS", "Imported", "import_file", "load_traces"]

OTLP_JSON = "OTLP JSON"
OTLP_JSONL = "OTLP JSONL (OTel Collector file exporter)"
PHOENIX_DATAFRAME_PARQUET = "Phoenix spans dataframe (parquet)"

KNOWN_FORMATS = (
    "spec OTLP JSON (one ExportTraceServiceRequest, as golden files are written)",
    "OTel Collector file exporter output (one ExportTraceServiceRequest JSON per line)",
    'Phoenix REST spans ({"data": [...]} from GET /v1/projects/{project}/spans)',
    "Phoenix GET /v1/projects/{project}/spans/otlpv1",
    'Phoenix spans dataframe saved as JSON lines (df.to_json(orient="records", lines=True)) or as a JSON array',
    "Phoenix spans dataframe saved as parquet (df.to_parquet())",
)

_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Imported:
    """The traces of one file and the format they were read as (shown by ``llmtrace import``)."""

    path: Path
    format: str
    traces: list[Trace]

    @property
    def span_count(self) -> int:
        return sum(len(t) for t in self.traces)


def load_traces(path: str | Path) -> list[Trace]:
    """Every trace in an export file, oldest first; ``TraceFormatError`` if the content is not a known format."""
    return import_file(path).traces


def import_file(path: str | Path) -> Imported:
    path = Path(path)
    data = read_bytes(path)
    if data.startswith(_PARQUET_MAGIC):
        spans, paths = phoenix.spans_from_parquet(path)
        return _result(path, PHOENIX_DATAFRAME_PARQUET, spans, paths)
    text = decode(data, path)
    if not text.strip():
        raise TraceFormatError(path, "$", "a trace export", "an empty file")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        lines = _json_lines(text)
        if lines is None:
            loads(text, path)  # raises the whole-document error (truncated file, bad syntax) with line and column
            raise AssertionError("unreachable: the document did not parse above") from None
        return _from_lines(path, lines)
    return _from_document(path, value)


def _from_document(path: Path, value: Any) -> Imported:
    doc = Doc(value, path)
    if is_otlp(value):
        spans, paths = spans_from_request(doc)
        return _result(path, OTLP_JSON, spans, paths)
    if phoenix.is_phoenix_page(value):
        spans, paths, kinds = phoenix.spans_from_page(doc)
        return _result(path, _label(kinds, "Phoenix spans page"), spans, paths)
    if phoenix.is_dataframe_record(value):  # a JSON-lines file with a single line
        return _from_lines(path, [(1, value)])
    if isinstance(value, list) and value and all(phoenix.item_kind(v) is not None for v in value):
        spans, paths, kinds = phoenix.spans_from_items(doc.items())
        return _result(path, _label(kinds, "Phoenix spans"), spans, paths)
    raise _unknown(doc)


def _json_lines(text: str) -> list[tuple[int, Any]] | None:
    """``(line number, raw line)`` pairs if the text looks like JSONL: the first non-blank line is JSON by itself.

    A pretty-printed document that is truncated fails that test (its first line is ``{``), so it gets the
    whole-document error instead of a confusing per-line one.
    """
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    try:
        first = json.loads(numbered[0][1])
    except json.JSONDecodeError:
        return None
    if not isinstance(first, dict):
        return None
    return list(numbered)


def _from_lines(path: Path, lines: list[tuple[int, Any]]) -> Imported:
    """JSONL: each line an OTLP request, a Phoenix spans page or a dataframe record; spans are grouped afterwards,
    because the Collector's file exporter writes one batch per line and a trace can span several batches.
    """
    spans: list[Span] = []
    paths: dict[str, str] = {}
    kinds: list[str] = []
    for number, raw in lines:
        where = f"line {number}: $"
        value = _parse_line(path, where, raw) if isinstance(raw, str) else raw
        doc = Doc(value, path, where)
        if is_otlp(value):
            line_spans, line_paths = spans_from_request(doc)
            kind = OTLP_JSONL
        elif phoenix.is_phoenix_page(value):
            line_spans, line_paths, page_kinds = phoenix.spans_from_page(doc)
            kind = _label(page_kinds, "Phoenix spans pages") + " (JSONL)"
        elif phoenix.is_dataframe_record(value):
            span = phoenix.span_from_dataframe_record(doc)
            line_spans, line_paths = [span], {span.span_id: where}
            kind = "Phoenix spans dataframe (JSONL)"
        else:
            raise doc.fail(
                "on each line an OTLP ExportTraceServiceRequest, a Phoenix spans page or a Phoenix spans "
                "dataframe record"
            )
        spans.extend(line_spans)
        for span_id, span_path in line_paths.items():
            paths.setdefault(span_id, span_path)
        if kind not in kinds:
            kinds.append(kind)
    return _result(path, " + ".join(kinds), spans, paths)


def _parse_line(path: Path, where: str, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        # A string cannot hold a raw newline, so on one line "unterminated string" means the line stops inside it.
        end = len(line.rstrip())
        if exc.pos >= end or exc.msg.startswith("Unterminated string"):
            got = f"end of line (the line is truncated) at column {end + 1}"
        else:
            got = f"{exc.msg.lower()} at column {exc.colno}"
        raise TraceFormatError(path, where, "valid JSON", got) from None


def _label(kinds: list[str], fallback: str) -> str:
    return " + ".join(kinds) if kinds else fallback


def _result(path: Path, fmt: str, spans: list[Span], paths: dict[str, str]) -> Imported:
    traces = group_traces(spans, path, paths)
    traces.sort(key=lambda t: (t.start_time_unix_nano, t.trace_ids))
    return Imported(path=path, format=fmt, traces=traces)


def _unknown(doc: Doc) -> TraceFormatError:
    known = "; ".join(KNOWN_FORMATS)
    return doc.error(f"one of the formats llmtrace can import: {known}", describe(doc.value))
