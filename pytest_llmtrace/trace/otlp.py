"""Spec OTLP JSON (``ExportTraceServiceRequest``) <-> the trace model: the on-disk golden format.

The spec's JSON mapping is what any OpenTelemetry tool can read: lowerCamelCase keys, hex ids, integer enums and
64-bit integers as decimal strings. Writing is canonical (spans grouped by resource and scope, keys in a fixed
order) so a golden file that is read and written again does not change, and diffs stay small.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from pytest_llmtrace.core.errors import LLMTraceError, TraceFormatError
from pytest_llmtrace.trace.jsondoc import Doc, attributes_from_otlp, attributes_to_otlp
from pytest_llmtrace.trace.model import Span, SpanEvent, SpanLink, Status, Trace
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES, decode, parse, read_bytes
from pytest_llmtrace.trace.secrets import redact_secrets, redact_spans


def is_otlp(value: Any) -> bool:
    return isinstance(value, dict) and "resourceSpans" in value


def spans_from_request(doc: Doc) -> tuple[list[Span], dict[str, str]]:
    """Every span of one ExportTraceServiceRequest, plus each span's JSON path for later error messages."""
    spans: list[Span] = []
    paths: dict[str, str] = {}
    root = doc.obj()
    if "resourceSpans" not in root:
        raise doc.error(
            "an OTLP ExportTraceServiceRequest object with a 'resourceSpans' array",
            "keys {" + ", ".join(list(root)[:5]) + "}",
        )
    for rs in doc.key("resourceSpans").items(optional=False):
        resource = rs.key("resource")
        resource_attrs = attributes_from_otlp(resource.key("attributes")) if resource.value is not None else {}
        resource_schema = rs.key("schemaUrl").string(optional=True)
        for ss in rs.key("scopeSpans").items():
            scope = ss.key("scope")
            scope_name = scope.key("name").string(optional=True) if scope.value is not None else ""
            scope_version = scope.key("version").string(optional=True) if scope.value is not None else ""
            scope_attrs = attributes_from_otlp(scope.key("attributes")) if scope.value is not None else {}
            scope_schema = ss.key("schemaUrl").string(optional=True)
            for sp in ss.key("spans").items():
                span = _span(sp, resource_attrs, resource_schema, scope_name, scope_version, scope_attrs, scope_schema)
                paths.setdefault(span.span_id, sp.path)
                spans.append(span)
    return spans, paths


def _span(
    sp: Doc,
    resource_attrs: Mapping[str, Any],
    resource_schema: str,
    scope_name: str,
    scope_version: str,
    scope_attrs: Mapping[str, Any],
    scope_schema: str,
) -> Span:
    sp.obj()
    status = sp.key("status")
    code = 0
    message = ""
    if status.value is not None:
        code = status.key("code").integer(optional=True, lo=0, hi=2)
        message = status.key("message").string(optional=True)
    end = sp.key("endTimeUnixNano")
    end_ns = end.integer(lo=0) if end.value not in (None, "0", 0) else None
    trace_id = sp.key("traceId").hex_id(16)
    span_id = sp.key("spanId").hex_id(8)
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=sp.key("parentSpanId").optional_hex_id(8),
        name=sp.key("name").string(),
        start_time_unix_nano=sp.key("startTimeUnixNano").integer(lo=0),
        end_time_unix_nano=end_ns,
        attributes=attributes_from_otlp(sp.key("attributes")),
        status=Status.from_otlp_code(code),
        status_message=message,
        otel_kind=sp.key("kind").integer(optional=True, default=0, lo=0, hi=5),
        events=tuple(_event(e) for e in sp.key("events").items()),
        links=tuple(_link(lk) for lk in sp.key("links").items()),
        trace_state=sp.key("traceState").string(optional=True),
        flags=sp.key("flags").integer(optional=True, lo=0, hi=2**32 - 1),
        dropped_attributes_count=sp.key("droppedAttributesCount").integer(optional=True, lo=0),
        dropped_events_count=sp.key("droppedEventsCount").integer(optional=True, lo=0),
        dropped_links_count=sp.key("droppedLinksCount").integer(optional=True, lo=0),
        resource_attributes=resource_attrs,
        resource_schema_url=resource_schema,
        scope_name=scope_name,
        scope_version=scope_version,
        scope_attributes=scope_attrs,
        scope_schema_url=scope_schema,
    )


def _event(doc: Doc) -> SpanEvent:
    return SpanEvent(
        name=doc.key("name").string(),
        time_unix_nano=doc.key("timeUnixNano").integer(lo=0),
        attributes=attributes_from_otlp(doc.key("attributes")),
        dropped_attributes_count=doc.key("droppedAttributesCount").integer(optional=True, lo=0),
    )


def _link(doc: Doc) -> SpanLink:
    trace_id = doc.key("traceId").hex_id(16)
    span_id = doc.key("spanId").hex_id(8)
    return SpanLink(
        trace_id=trace_id,
        span_id=span_id,
        trace_state=doc.key("traceState").string(optional=True),
        attributes=attributes_from_otlp(doc.key("attributes")),
        dropped_attributes_count=doc.key("droppedAttributesCount").integer(optional=True, lo=0),
        flags=doc.key("flags").integer(optional=True, lo=0, hi=2**32 - 1),
    )


def traces_from_request(value: Any, source: str | Path | None, base_path: str = "$") -> list[Trace]:
    """Split one request into traces by trace id, in order of first appearance."""
    spans, paths = spans_from_request(Doc(value, source, base_path))
    return group_traces(spans, source, paths)


def group_traces(
    spans: Iterable[Span], source: str | Path | None, paths: Mapping[str, str] | None = None
) -> list[Trace]:
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return [Trace(group, source=source, span_paths=paths) for group in by_trace.values()]


def read_trace(path: str | Path, *, max_bytes: int = DEFAULT_MAX_TRACE_BYTES) -> Trace:
    """Read one golden trace file: spec OTLP JSON holding exactly one trace.

    Any malformed or hostile content raises ``TraceFormatError`` (see ``safejson`` for the limits), so a collector
    can turn one bad file into one failing item; ``max_bytes`` is the ``llmtrace_max_trace_bytes`` setting.
    """
    path = Path(path)
    value = parse(decode(read_bytes(path, max_bytes), path), path)
    traces = traces_from_request(value, path)
    if len(traces) != 1:
        shown = ", ".join(t.trace_ids[0] for t in traces[:3]) + ("..." if len(traces) > 3 else "")
        raise TraceFormatError(
            path,
            "$.resourceSpans",
            "exactly one trace per golden file",
            f"{len(traces)} traces" + (f" ({shown})" if traces else ""),
        )
    return traces[0]


# -- writing ----------------------------------------------------------------------------------------------------------


def trace_to_request(trace: Trace | Iterable[Span]) -> dict[str, Any]:
    """Group spans by resource then scope, keeping first-appearance order, into an ExportTraceServiceRequest."""
    resource_groups: list[tuple[Span, list[Span]]] = []
    for span in trace:
        for key_span, members in resource_groups:
            if (key_span.resource_attributes, key_span.resource_schema_url) == (
                span.resource_attributes,
                span.resource_schema_url,
            ):
                members.append(span)
                break
        else:
            resource_groups.append((span, [span]))
    resource_spans = []
    for key_span, members in resource_groups:
        scope_groups: list[tuple[Span, list[Span]]] = []
        for span in members:
            for scope_span, scoped in scope_groups:
                if _scope_key(scope_span) == _scope_key(span):
                    scoped.append(span)
                    break
            else:
                scope_groups.append((span, [span]))
        entry: dict[str, Any] = {
            "resource": {"attributes": attributes_to_otlp(key_span.resource_attributes)},
            "scopeSpans": [_scope_to_otlp(scope_span, scoped) for scope_span, scoped in scope_groups],
        }
        if key_span.resource_schema_url:
            entry["schemaUrl"] = key_span.resource_schema_url
        resource_spans.append(entry)
    return {"resourceSpans": resource_spans}


def _scope_key(span: Span) -> tuple[Any, ...]:
    return (span.scope_name, span.scope_version, span.scope_attributes, span.scope_schema_url)


def _scope_to_otlp(scope_span: Span, spans: list[Span]) -> dict[str, Any]:
    scope: dict[str, Any] = {"name": scope_span.scope_name}
    if scope_span.scope_version:
        scope["version"] = scope_span.scope_version
    if scope_span.scope_attributes:
        scope["attributes"] = attributes_to_otlp(scope_span.scope_attributes)
    entry: dict[str, Any] = {"scope": scope, "spans": [_span_to_otlp(s) for s in spans]}
    if scope_span.scope_schema_url:
        entry["schemaUrl"] = scope_span.scope_schema_url
    return entry


def _span_to_otlp(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": span.trace_id, "spanId": span.span_id}
    if span.trace_state:
        out["traceState"] = span.trace_state
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    if span.flags:
        out["flags"] = span.flags
    out["name"] = span.name
    out["kind"] = span.otel_kind
    out["startTimeUnixNano"] = str(span.start_time_unix_nano)
    out["endTimeUnixNano"] = str(span.end_time_unix_nano) if span.end_time_unix_nano is not None else "0"
    out["attributes"] = attributes_to_otlp(span.attributes)
    if span.dropped_attributes_count:
        out["droppedAttributesCount"] = span.dropped_attributes_count
    if span.events:
        out["events"] = [
            {
                "timeUnixNano": str(e.time_unix_nano),
                "name": e.name,
                "attributes": attributes_to_otlp(e.attributes),
                **({"droppedAttributesCount": e.dropped_attributes_count} if e.dropped_attributes_count else {}),
            }
            for e in span.events
        ]
    if span.dropped_events_count:
        out["droppedEventsCount"] = span.dropped_events_count
    if span.links:
        out["links"] = [
            {
                "traceId": lk.trace_id,
                "spanId": lk.span_id,
                **({"traceState": lk.trace_state} if lk.trace_state else {}),
                "attributes": attributes_to_otlp(lk.attributes),
                **({"droppedAttributesCount": lk.dropped_attributes_count} if lk.dropped_attributes_count else {}),
                **({"flags": lk.flags} if lk.flags else {}),
            }
            for lk in span.links
        ]
    if span.dropped_links_count:
        out["droppedLinksCount"] = span.dropped_links_count
    status: dict[str, Any] = {}
    if span.status_message:
        status["message"] = span.status_message
    if span.status is not Status.UNSET:
        status["code"] = span.status.otlp_code
    out["status"] = status
    return out


def dumps(trace: Trace | Iterable[Span]) -> str:
    """The canonical text of a golden file: two-space indent, UTF-8 kept readable, trailing newline."""
    return _indented(trace_to_request(trace)) + "\n"


def _indented(document: Any) -> str:
    """``json.dumps(document, indent=2, ensure_ascii=False)``'s layout, written by orjson's C encoder.

    ``llmtrace capture`` writes thousands of files and the standard library's indenting encoder is pure Python. The
    text differs only in small floats' exponents (orjson's ``1e-7`` for ``1e-07``); what orjson refuses (integers
    over 64 bits, lone surrogates, nesting over 255) goes to the standard library.
    """
    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError:
        return json.dumps(document, indent=2, ensure_ascii=False)


def write_trace(trace: Trace | Iterable[Span], path: str | Path, *, redact: bool = True) -> Path:
    """Write a golden file atomically, never through a symbolic link, with credentials redacted.

    Golden files are committed and printed, so ``redact`` (on by default) applies ``secrets.redact_secrets``. A
    reader never sees a half-written file: the text goes to a temporary file next to ``path``, then replaces it.
    """
    path = Path(path)
    if redact:
        trace = redact_secrets(trace) if isinstance(trace, Trace) else redact_spans(trace)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_golden(path, dumps(trace), force=True)
    return path


def write_golden(path: Path, text: str, *, force: bool = False) -> str:
    """``"unchanged"`` if ``path`` already holds ``text``, else ``"written"``; ``LLMTraceError`` if refused.

    Refused: a symbolic link at ``path`` (a planted link would redirect the write anywhere the user can write), an
    existing path that is not a regular file, and, without ``force``, a file with other content.
    """
    encoded = text.encode("utf-8")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise LLMTraceError(f"{path}: cannot check the target: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise LLMTraceError(
                f"{path} is a symbolic link; golden files are never written through a link: remove it or write "
                "to another directory"
            )
        if not stat.S_ISREG(info.st_mode):
            raise LLMTraceError(f"{path} exists and is not a regular file; remove it or write to another directory")
        if _read_no_follow(path) == encoded:
            return "unchanged"
        if not force:
            raise LLMTraceError(f"{path} exists with different content; use --force to overwrite it")
    _replace_atomically(path, encoded)
    return "written"


def _read_no_follow(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None  # replaced in between: treat as different content
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


def _replace_atomically(path: Path, data: bytes) -> None:
    """A temporary file in the same directory (so ``os.replace`` is a rename), created exclusively, then renamed.

    ``os.replace`` renames over a link without following it, so a link planted after the check above is replaced,
    not written through.
    """
    temp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, flags, 0o666)  # the umask applies, as for any file the user creates
    except OSError as exc:
        raise LLMTraceError(f"{path}: cannot create a file in {path.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise LLMTraceError(f"{path}: cannot write: {exc.strerror or exc}") from None
