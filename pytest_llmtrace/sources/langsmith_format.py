"""LangSmith run exports as spans: a list of runs (``client.list_runs``, ``POST /runs/query``'s ``runs``) or one run
tree (``client.read_run(id, load_child_runs=True)``, with ``child_runs``).

Each run becomes the span LangSmith's own OpenTelemetry exporter would make of it (``langsmith.span.kind``,
``langsmith.trace.name``, ``langsmith.metadata.*``, the inputs and outputs as JSON in ``gen_ai.prompt`` /
``gen_ai.completion``, ``gen_ai.request.model`` from ``ls_model_name``), so one reader serves both; what the
exporter leaves out is kept under ``langsmith.run.*`` (the run's own id, token counts and costs) and the first token's
time under ``langsmith.first_token_time`` (``first_token_time``, else the first ``new_token`` event). Trace ids are
the UUIDs without dashes; span ids the UUIDs' random last 16 hex digits. A run type LangSmith does not document is
read as a plain span, with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pytest_llmtrace.core.errors import warn_format
from pytest_llmtrace.sources.phoenix_values import sorted_attributes
from pytest_llmtrace.sources.sdk_values import flat_metadata, json_text, span_id, time_ns, trace_id
from pytest_llmtrace.trace.jsondoc import Doc
from pytest_llmtrace.trace.sdk_attrs import LANGSMITH_FIRST_TOKEN_TIME, LANGSMITH_KIND, LANGSMITH_METADATA
from pytest_llmtrace.trace.span import GEN_AI_COMPLETION, GEN_AI_PROMPT, AttrValue, Span, SpanEvent, Status

RUN_EXPORT = "LangSmith run export"
RUN_TYPES = frozenset({"llm", "chain", "tool", "retriever", "embedding", "prompt", "parser"})
_OPERATIONS = {"llm": "chat", "tool": "execute_tool", "retriever": "embeddings", "embedding": "embeddings"}
_OPERATIONS["prompt"] = "chat"
_RUN_NUMBERS = ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_cost", "completion_cost", "total_cost")


def is_run(value: Any) -> bool:
    return isinstance(value, dict) and "run_type" in value and "id" in value


def is_run_export(value: Any) -> bool:
    """One run tree, a list of runs, or ``{"runs": [...]}`` as ``POST /runs/query`` answers."""
    if is_run(value):
        return True
    if isinstance(value, dict) and isinstance(value.get("runs"), list) and set(value) <= {"runs", "cursors"}:
        return all(is_run(v) for v in value["runs"])
    return isinstance(value, list) and bool(value) and all(is_run(v) for v in value)


def spans_from_export(doc: Doc) -> tuple[list[Span], dict[str, str]]:
    """Every run of the export, child runs included, with each span's JSON path."""
    items = doc.key("runs").items(optional=False) if isinstance(doc.value, dict) and "runs" in doc.value else None
    if items is None:
        items = doc.items(optional=False) if isinstance(doc.value, list) else [doc]
    spans: list[Span] = []
    paths: dict[str, str] = {}
    for item, parent, trace in _walk(items):
        span = span_from_run(item, parent=parent, trace=trace)
        spans.append(span)
        paths.setdefault(span.span_id, item.path)
    return spans, paths


def _walk(items: list[Doc]) -> Iterator[tuple[Doc, str | None, str | None]]:
    """Runs with the parent and trace a run tree implies for children that do not name them."""
    stack: list[tuple[Doc, str | None, str | None]] = [(i, None, None) for i in reversed(items)]
    while stack:
        item, parent, trace = stack.pop()
        yield item, parent, trace
        children = item.key("child_runs").items() if item.has("child_runs") else []
        if children:
            own_trace = item.key("trace_id").string() if item.has("trace_id") else trace
            here = item.key("id").string()
            stack.extend((c, here, own_trace or here) for c in reversed(children))


def span_from_run(doc: Doc, *, parent: str | None = None, trace: str | None = None) -> Span:
    """One run as a span; ``parent`` / ``trace`` (run ids) are the run tree's, for a child that does not name them."""
    run = doc.obj()
    run_id = doc.key("id")
    run_type = doc.key("run_type").string()
    if run_type not in RUN_TYPES:
        warn_format(
            doc.source,
            doc.path + ".run_type",
            f"run type {run_type!r} is not one LangSmith documents "
            f"({', '.join(sorted(RUN_TYPES))}); read as a plain span",
        )
    if doc.has("trace_id"):
        trace_doc = doc.key("trace_id")
    elif trace is not None:
        trace_doc = Doc(trace, doc.source, doc.path + ".trace_id")
    else:
        trace_doc = run_id  # a root run exported without its trace id: LangSmith's root run id is the trace id
    parent_doc = doc.key("parent_run_id") if run.get("parent_run_id") is not None else None
    if parent_doc is None and parent is not None:
        parent_doc = Doc(parent, doc.source, doc.path + ".parent_run_id")
    start = time_ns(doc.key("start_time"))
    end = time_ns(doc.key("end_time")) if run.get("end_time") is not None else None
    error = doc.key("error").string(optional=True) if run.get("error") is not None else ""
    return Span(
        trace_id=trace_id(trace_doc),
        span_id=span_id(run_id),
        parent_span_id=span_id(parent_doc) if parent_doc is not None else None,
        name=doc.key("name").string(),
        start_time_unix_nano=start,
        end_time_unix_nano=max(end, start) if end is not None else None,
        attributes=_attributes(doc, run_type),
        status=Status.ERROR if error else Status.UNSET,
        status_message=error,
        events=tuple(_events(doc)),
    )


def _attributes(doc: Doc, run_type: str) -> dict[str, AttrValue]:
    run = doc.obj()
    extra = doc.key("extra").obj() if run.get("extra") is not None else {}
    given = extra.get("metadata")
    metadata: dict[str, Any] = given if isinstance(given, dict) else {}
    attrs: dict[str, AttrValue] = {
        LANGSMITH_KIND: run_type,
        "langsmith.trace.name": doc.key("name").string(),
        "langsmith.run.id": doc.key("id").string(),
        "gen_ai.operation.name": _OPERATIONS.get(run_type, run_type),
    }
    for key in ("session_name", "session_id"):
        if run.get(key) is not None:
            attrs[f"langsmith.trace.{key}"] = str(run[key])
    if run.get("dotted_order"):
        attrs["langsmith.run.dotted_order"] = doc.key("dotted_order").string()
    tags = run.get("tags")
    if isinstance(tags, list) and tags:
        attrs["langsmith.span.tags"] = ", ".join(map(str, tags))
    attrs.update(flat_metadata(LANGSMITH_METADATA, {k: v for k, v in metadata.items() if not _secret_key(k)}))
    model = metadata.get("ls_model_name") or _invocation_model(extra)
    if model:
        attrs["gen_ai.request.model"] = str(model)
    if metadata.get("ls_provider"):
        attrs["gen_ai.system"] = str(metadata["ls_provider"])
    if run.get("inputs") is not None:
        attrs[GEN_AI_PROMPT] = json_text(doc.key("inputs").value)
    if run.get("outputs") is not None:
        attrs[GEN_AI_COMPLETION] = json_text(doc.key("outputs").value)
    for key in _RUN_NUMBERS:
        value = run.get(key)
        if value is not None:
            attrs[f"langsmith.run.{key}"] = _number(doc.key(key))
    usage = _usage(run)
    for name, value in usage.items():
        attrs[name] = value
    first = _first_token_time(doc)
    if first is not None:
        attrs[LANGSMITH_FIRST_TOKEN_TIME] = first
    return sorted_attributes(attrs)


def _secret_key(key: str) -> bool:
    """Metadata that names a credential (``openai_api_key``) is not copied: redaction would blank it anyway."""
    lowered = key.lower()
    return "api_key" in lowered or "secret" in lowered or lowered.endswith(("_token", "password"))


def _invocation_model(extra: Any) -> str | None:
    params = extra.get("invocation_params") if isinstance(extra, dict) else None
    if isinstance(params, dict):
        for key in ("model", "model_name"):
            if isinstance(params.get(key), str):
                return str(params[key])
    return None


def _number(doc: Doc) -> AttrValue:
    value = doc.value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise doc.fail("a number")
    if isinstance(value, str):  # LangSmith writes costs as decimal strings
        try:
            return float(value)
        except ValueError:
            raise doc.fail("a number") from None
    return value


def _usage(run: Mapping[str, Any]) -> dict[str, AttrValue]:
    """Token counts and cost under the GenAI names: the run's own counts, else ``usage_metadata`` in its outputs."""
    out: dict[str, AttrValue] = {}
    counts = {"prompt_tokens": run.get("prompt_tokens"), "completion_tokens": run.get("completion_tokens")}
    if counts["prompt_tokens"] is None:
        usage = _find_usage(run.get("outputs"))
        if usage:
            counts = {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}
    for source, name in (
        ("prompt_tokens", "gen_ai.usage.input_tokens"),
        ("completion_tokens", "gen_ai.usage.output_tokens"),
    ):
        value = counts[source]
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    cost = run.get("total_cost")
    try:
        if cost is not None:
            out["gen_ai.usage.cost"] = float(cost)
    except (TypeError, ValueError):
        pass
    return out


def _find_usage(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """The first ``usage_metadata`` object in a run's outputs (top level, or a LangChain generation's message)."""
    if depth > 6:
        return None
    if isinstance(value, dict):
        usage = value.get("usage_metadata")
        if isinstance(usage, dict) and "input_tokens" in usage:
            return usage
        children: list[Any] = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        found = _find_usage(child, depth + 1)
        if found is not None:
            return found
    return None


def _first_token_time(doc: Doc) -> str | None:
    run = doc.obj()
    if isinstance(run.get("first_token_time"), str):
        return str(run["first_token_time"])
    for event in run.get("events") or ():
        if isinstance(event, dict) and event.get("name") == "new_token" and isinstance(event.get("time"), str):
            return str(event["time"])
    return None


def _events(doc: Doc) -> Iterator[SpanEvent]:
    """Events other than ``new_token`` (one per token: their count and the first one's time are what matter)."""
    for event in doc.key("events").items() if doc.obj().get("events") is not None else []:
        name = event.key("name").string(optional=True)
        if name == "new_token" or not event.has("time"):
            continue
        kwargs = event.obj().get("kwargs")
        yield SpanEvent(
            name=name or "event",
            time_unix_nano=time_ns(event.key("time")),
            attributes=flat_metadata("langsmith.event", kwargs) if isinstance(kwargs, dict) else {},
        )
