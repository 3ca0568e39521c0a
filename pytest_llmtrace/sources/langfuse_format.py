"""Langfuse's public API shapes as spans: a trace with its observations (``GET /api/public/traces/{id}``) and pages
of observations (``GET /api/public/v2/observations``, cursor based, and the older v1 list).

Each observation becomes the span Langfuse's SDK (v3 and newer) would have exported for it, with the attributes the
SDK writes (``langfuse.observation.*``: the type in lower case, input and output as JSON text or the text itself,
usage and cost as JSON, the completion start as a JSON-quoted ISO time); the trace's name, input, output, user,
session, tags and metadata go on its root observations as ``langfuse.trace.*``, ``user.id`` and ``session.id``. One
reader (``trace.sdk_attrs``) then serves spans from both places. Ids that are not OpenTelemetry's (UUIDs of
pre-v3 SDKs) are mapped as ``sdk_values`` says, the originals kept in ``langfuse.observation.id``. An observation of
a type the SDK does not define is read as a plain span, with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pytest_llmtrace.core.errors import warn_format
from pytest_llmtrace.sources.phoenix_values import sorted_attributes
from pytest_llmtrace.sources.sdk_values import flat_metadata, json_text, span_id, time_ns, trace_id
from pytest_llmtrace.trace.jsondoc import Doc, describe
from pytest_llmtrace.trace.sdk_attrs import (
    LANGFUSE_COMPLETION_START,
    LANGFUSE_COST,
    LANGFUSE_INPUT,
    LANGFUSE_LEVEL,
    LANGFUSE_METADATA,
    LANGFUSE_MODEL,
    LANGFUSE_MODEL_PARAMETERS,
    LANGFUSE_OUTPUT,
    LANGFUSE_STATUS_MESSAGE,
    LANGFUSE_TRACE_INPUT,
    LANGFUSE_TRACE_METADATA,
    LANGFUSE_TRACE_NAME,
    LANGFUSE_TRACE_OUTPUT,
    LANGFUSE_TRACE_TAGS,
    LANGFUSE_TYPE,
)
from pytest_llmtrace.trace.span import AttrValue, Span, Status

TRACE = "Langfuse trace (GET /api/public/traces/{id})"
OBSERVATIONS = "Langfuse observations page (GET /api/public/v2/observations)"
LIST = "Langfuse traces or observations (a JSON list)"
OBSERVATION_TYPES = frozenset(
    {"span", "generation", "event", "agent", "tool", "chain", "retriever", "evaluator", "embedding", "guardrail"}
)
LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})


def is_observation(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value and "startTime" in value and "id" in value


def is_trace(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("observations"), list) and "id" in value


def is_observations_page(value: Any) -> bool:
    """``{"data": [observation, ...], "meta": {...}}``; an empty page counts when its meta is Langfuse's."""
    if not (isinstance(value, dict) and isinstance(value.get("data"), list) and isinstance(value.get("meta"), dict)):
        return False
    data = value["data"]
    return all(is_observation(v) for v in data) if data else bool({"cursor", "totalItems"} & set(value["meta"]))


def is_trace_list(value: Any) -> bool:
    """A JSON list of traces (each with its observations) or of observations, as a script saving them writes."""
    return (
        isinstance(value, list)
        and bool(value)
        and (all(is_trace(v) for v in value) or all(is_observation(v) for v in value))
    )


def spans_from_list(doc: Doc) -> tuple[list[Span], dict[str, str]]:
    spans: list[Span] = []
    paths: dict[str, str] = {}
    for item in doc.items(optional=False):
        if is_trace(item.value):
            item_spans, item_paths = spans_from_trace(item)
        else:
            item_spans = [span_from_observation(item)]
            item_paths = {item_spans[0].span_id: item.path}
        spans.extend(item_spans)
        for key, where in item_paths.items():
            paths.setdefault(key, where)
    return spans, paths


def spans_from_trace(doc: Doc) -> tuple[list[Span], dict[str, str]]:
    """A trace with its observations; the trace's own fields go on the root observations."""
    trace = doc.obj()
    the_trace_id = doc.key("id")
    spans: list[Span] = []
    paths: dict[str, str] = {}
    for item in doc.key("observations").items(optional=False):
        span = span_from_observation(item, trace_doc=the_trace_id)
        if span.parent_span_id is None:
            span = _with_trace_fields(span, doc, trace)
        spans.append(span)
        paths.setdefault(span.span_id, item.path)
    if not spans:
        raise doc.key("observations").fail("at least one observation (Langfuse keeps a trace's spans there)")
    return spans, paths


def spans_from_page(doc: Doc) -> tuple[list[Span], dict[str, str], str | None]:
    """One page of observations, and its next cursor (``None`` on the last page)."""
    spans: list[Span] = []
    paths: dict[str, str] = {}
    for item in doc.key("data").items(optional=False):
        span = span_from_observation(item)
        spans.append(span)
        paths.setdefault(span.span_id, item.path)
    cursor = doc.key("meta").obj().get("cursor")
    return spans, paths, str(cursor) if cursor else None


def span_from_observation(doc: Doc, *, trace_doc: Doc | None = None) -> Span:
    obs = doc.obj()
    kind = doc.key("type").string().lower()
    if kind not in OBSERVATION_TYPES:
        warn_format(
            doc.source,
            doc.path + ".type",
            f"observation type {kind.upper()!r} is not one the Langfuse SDK writes "
            f"({', '.join(sorted(t.upper() for t in OBSERVATION_TYPES))}); read as a plain span",
        )
    if obs.get("traceId") is not None:
        trace_doc = doc.key("traceId")
    elif trace_doc is None:
        raise doc.key("traceId").fail("the trace id of the observation (a string)")
    level = doc.key("level").string(optional=True).upper() if obs.get("level") is not None else ""
    if level and level not in LEVELS:
        raise doc.key("level").error("one of " + ", ".join(sorted(LEVELS)), describe(obs.get("level")))
    start = time_ns(doc.key("startTime"))
    end = time_ns(doc.key("endTime")) if obs.get("endTime") is not None else None
    if kind == "event" and end is None:
        end = start  # an event is a point in time; Langfuse writes no end for it
    message = doc.key("statusMessage").string(optional=True) if obs.get("statusMessage") is not None else ""
    parent = doc.key("parentObservationId") if obs.get("parentObservationId") is not None else None
    return Span(
        trace_id=trace_id(trace_doc),
        span_id=span_id(doc.key("id")),
        parent_span_id=span_id(parent) if parent is not None else None,
        name=doc.key("name").string(optional=True) or kind,
        start_time_unix_nano=start,
        end_time_unix_nano=max(end, start) if end is not None else None,
        attributes=_attributes(doc, kind, level),
        status=Status.ERROR if level == "ERROR" else Status.UNSET,
        status_message=message if level == "ERROR" else "",
    )


def _attributes(doc: Doc, kind: str, level: str) -> dict[str, AttrValue]:
    obs = doc.obj()
    attrs: dict[str, AttrValue] = {LANGFUSE_TYPE: kind, "langfuse.observation.id": doc.key("id").string()}
    if level:
        attrs[LANGFUSE_LEVEL] = level
    if obs.get("statusMessage") is not None:
        attrs[LANGFUSE_STATUS_MESSAGE] = doc.key("statusMessage").string()
    for key, name in (("input", LANGFUSE_INPUT), ("output", LANGFUSE_OUTPUT)):
        if obs.get(key) is not None:
            attrs[name] = json_text(obs[key])
    if obs.get("model") is not None:
        attrs[LANGFUSE_MODEL] = doc.key("model").string()
    if obs.get("modelParameters"):
        attrs[LANGFUSE_MODEL_PARAMETERS] = json_text(doc.key("modelParameters").obj())
    usage = _numbers(doc, "usageDetails") or _legacy_usage(doc)
    if usage:
        attrs["langfuse.observation.usage_details"] = json_text(usage)
    cost = _numbers(doc, "costDetails")
    if not cost and isinstance(obs.get("calculatedTotalCost"), (int, float)):
        cost = {"total": obs["calculatedTotalCost"]}
    if cost:
        attrs[LANGFUSE_COST] = json_text(cost)
    if obs.get("completionStartTime") is not None:
        time_ns(doc.key("completionStartTime"))  # checked here, so a bad time names its place in the file
        attrs[LANGFUSE_COMPLETION_START] = json.dumps(doc.key("completionStartTime").string())  # as the SDK writes it
    if obs.get("metadata") is not None:
        attrs.update(flat_metadata(LANGFUSE_METADATA, doc.key("metadata").value))
    for key, name in (("userId", "user.id"), ("sessionId", "session.id"), ("environment", "langfuse.environment")):
        if isinstance(obs.get(key), str):
            attrs[name] = obs[key]
    return sorted_attributes(attrs)


def _numbers(doc: Doc, key: str) -> dict[str, float | int]:
    if doc.obj().get(key) is None:
        return {}
    details = doc.key(key).obj()
    out: dict[str, float | int] = {}
    for name, value in details.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise doc.key(key).key(name).fail("a number")
        out[name] = value
    return out


def _legacy_usage(doc: Doc) -> dict[str, float | int]:
    """The v1 ``usage`` object (``input`` / ``output`` / ``total`` and a ``unit``) of older observations."""
    usage = doc.obj().get("usage")
    if not isinstance(usage, dict):
        return {}
    out: dict[str, float | int] = {}
    for name in ("input", "output", "total"):
        value = usage.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise doc.key("usage").key(name).fail("a number")
        out[name] = value
    return out if any(out.values()) else {}


def _with_trace_fields(span: Span, doc: Doc, trace: Mapping[str, Any]) -> Span:
    attrs = dict(span.attributes)
    if trace.get("name") is not None:
        attrs[LANGFUSE_TRACE_NAME] = doc.key("name").string()
    for key, name in (("input", LANGFUSE_TRACE_INPUT), ("output", LANGFUSE_TRACE_OUTPUT)):
        if trace.get(key) is not None:
            attrs[name] = json_text(trace[key])
    for key, name in (("userId", "user.id"), ("sessionId", "session.id")):
        if trace.get(key) is not None:
            attrs[name] = doc.key(key).string()
    tags = trace.get("tags")
    if tags:
        attrs[LANGFUSE_TRACE_TAGS] = tuple(item.string() for item in doc.key("tags").items())
    attrs.update(flat_metadata(LANGFUSE_TRACE_METADATA, trace.get("metadata")))
    if isinstance(trace.get("htmlPath"), str):
        attrs["langfuse.trace.html_path"] = trace["htmlPath"]
    return replace(span, attributes=sorted_attributes(attrs))
