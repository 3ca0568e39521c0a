"""Load traces from any export llmtrace knows, recognising the format from the content.

Exports get renamed, and the same extension means different things (``.json`` is spec OTLP, a Phoenix page or a
dataframe dump), so the file name is never trusted: parquet is recognised by its magic bytes, JSON by its keys.

JSONL error locations are written ``line 3: $.resourceSpans[0]...`` (1-based line, then the JSON path inside that
line), so ``file: at line 3: $...`` points straight at the place to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import TraceFormatError, warn_format
from pytest_llmtrace.sources import langfuse_format as langfuse
from pytest_llmtrace.sources import langsmith_format as langsmith
from pytest_llmtrace.sources import phoenix_format as phoenix
from pytest_llmtrace.trace.genai_mirror import all_with_genai
from pytest_llmtrace.trace.jsondoc import Doc, describe
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import group_traces, is_otlp, spans_from_request
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES, decode, is_syntax_error, parse, read_bytes

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
    "Langfuse GET /api/public/traces/{id} (a trace with its observations; several as a JSON list or JSONL)",
    'Langfuse GET /api/public/v2/observations pages ({"data": [...], "meta": {"cursor": ...}}), one per line',
    "LangSmith run export (a list of runs or one run tree, as client.list_runs / read_run give them; or JSONL)",
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


def import_file(path: str | Path, *, max_bytes: int = DEFAULT_MAX_TRACE_BYTES) -> Imported:
    """The traces of one export and the format it was read as.

    Whatever the bytes, the result is an ``Imported`` or a ``TraceFormatError`` (an ``ImportError`` with the
    install hint for a parquet file without pyarrow): malformed input never escapes as another exception.
    """
    path = Path(path)
    data = read_bytes(path, max_bytes)
    if data.startswith(_PARQUET_MAGIC):
        spans, paths = phoenix.spans_from_parquet(path, data)
        return _result(path, PHOENIX_DATAFRAME_PARQUET, spans, paths)
    text = decode(data, path)
    if not text.strip():
        raise TraceFormatError(path, "$", "a trace export", "an empty file")
    try:
        value = parse(text, path)
    except TraceFormatError:
        lines = _json_lines(path, text)  # JSONL is not one document; its errors are named by line
        if lines is None:
            raise  # the whole-document error (truncated file, bad syntax, a limit) with its line and column or path
        return _from_lines(path, lines)
    return _from_document(path, value)


def _from_document(path: Path, value: Any) -> Imported:
    doc = Doc(value, path)
    if is_otlp(value):
        spans, paths = spans_from_request(doc)
        return _result(path, OTLP_JSON, spans, paths)
    if langfuse.is_trace(value):
        spans, paths = langfuse.spans_from_trace(doc)
        return _result(path, langfuse.TRACE, spans, paths)
    if langfuse.is_observations_page(value):
        spans, paths, cursor = langfuse.spans_from_page(doc)
        _warn_next_page(doc, cursor)
        return _result(path, langfuse.OBSERVATIONS, spans, paths)
    if langsmith.is_run_export(value):
        spans, paths = langsmith.spans_from_export(doc)
        return _result(path, langsmith.RUN_EXPORT, spans, paths)
    if langfuse.is_trace_list(value):
        spans, paths = langfuse.spans_from_list(doc)
        return _result(path, langfuse.LIST, spans, paths)
    if phoenix.is_phoenix_page(value):
        spans, paths, kinds = phoenix.spans_from_page(doc)
        return _result(path, _label(kinds, "Phoenix spans page"), spans, paths)
    if phoenix.is_dataframe_record(value):  # a JSON-lines file with a single line
        return _from_lines(path, [(1, value)])
    if isinstance(value, list) and value and all(phoenix.item_kind(v) is not None for v in value):
        spans, paths, kinds = phoenix.spans_from_items(doc.items())
        return _result(path, _label(kinds, "Phoenix spans"), spans, paths)
    raise _unknown(doc)


def _json_lines(path: Path, text: str) -> list[tuple[int, Any]] | None:
    """``(line number, value)`` pairs if the text is JSONL: the first non-blank line is a JSON object by itself.

    A pretty-printed document that is truncated fails that test (its first line is ``{``), so it gets the
    whole-document error instead of a confusing per-line one. Lines end at ``\n`` only: ``str.splitlines`` would
    also cut at U+2028 and other characters that JSON strings may hold raw.
    """
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if len(numbered) < 2:
        return None
    values: list[tuple[int, Any]] = []
    for number, line in numbered:
        try:
            value = parse(line, path, f"line {number}: $", line=True)
        except TraceFormatError as exc:
            if not values and is_syntax_error(exc):
                return None  # not JSONL: the caller reports the whole-document error
            raise
        if not values and not isinstance(value, dict):
            return None
        values.append((number, value))
    return values


def _from_lines(path: Path, lines: list[tuple[int, Any]]) -> Imported:
    """JSONL: each line an OTLP request, a Phoenix spans page or a dataframe record; spans are grouped afterwards,
    because the Collector's file exporter writes one batch per line and a trace can span several batches.
    """
    spans: list[Span] = []
    paths: dict[str, str] = {}
    kinds: list[str] = []
    for number, value in lines:
        where = f"line {number}: $"
        doc = Doc(value, path, where)
        if is_otlp(value):
            line_spans, line_paths = spans_from_request(doc)
            kind = OTLP_JSONL
        elif langfuse.is_observations_page(value):
            line_spans, line_paths, _ = langfuse.spans_from_page(doc)
            kind = langfuse.OBSERVATIONS + " (JSONL)"
        elif langfuse.is_trace(value):
            line_spans, line_paths = langfuse.spans_from_trace(doc)
            kind = langfuse.TRACE + " (JSONL)"
        elif langsmith.is_run_export(value):
            line_spans, line_paths = langsmith.spans_from_export(doc)
            kind = langsmith.RUN_EXPORT + " (JSONL)"
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
                "dataframe record, a Langfuse trace or observations page, or LangSmith runs"
            )
        spans.extend(line_spans)
        for span_id, span_path in line_paths.items():
            paths.setdefault(span_id, span_path)
        if kind not in kinds:
            kinds.append(kind)
    return _result(path, " + ".join(kinds), spans, paths)


def _label(kinds: list[str], fallback: str) -> str:
    return " + ".join(kinds) if kinds else fallback


def _warn_next_page(doc: Doc, cursor: str | None) -> None:
    if cursor is not None:
        warn_format(
            doc.source,
            doc.path + ".meta.cursor",
            "this is one page of a longer listing; observations on later pages are missing: fetch every page with "
            "?cursor=... and save one response per line (JSONL), or use llmtrace capture --langfuse-url",
        )


def _result(path: Path, fmt: str, spans: list[Span], paths: dict[str, str]) -> Imported:
    """Langfuse and LangSmith spans, whatever the format, get their facts under GenAI names too (``genai_mirror``)."""
    traces = group_traces(all_with_genai(spans), path, paths)
    traces.sort(key=lambda t: (t.start_time_unix_nano, t.trace_ids))
    return Imported(path=path, format=fmt, traces=traces)


def _unknown(doc: Doc) -> TraceFormatError:
    known = "; ".join(KNOWN_FORMATS)
    return doc.error(f"one of the formats llmtrace can import: {known}", describe(doc.value))
