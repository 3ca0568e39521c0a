"""What is sent for one test: its spans redacted as capture redacts golden files, the run's resource, and the verdict.

Pure functions over OpenTelemetry SDK spans and case outcomes, no I/O: ``session`` hands the results to the exporter.

Phoenix keeps only one resource attribute (``openinference.project.name``, which picks the project) and drops the
rest, so the test's node id, the git revision and the xdist worker are set twice: as resource attributes, where
OTLP puts facts about the process, for any other collector; and on each root span, where Phoenix shows and filters
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, Status, StatusCode

from pytest_llmtrace.checks.outcome import CaseOutcome
from pytest_llmtrace.sources.redact import Redactor
from pytest_llmtrace.trace.sdk import span_from_readable
from pytest_llmtrace.trace.secrets import redact_spans, redact_text
from pytest_llmtrace.trace.span import Span

PROJECT = "openinference.project.name"  # the resource attribute Phoenix files spans under
TEST_NODEID = "test.case.name"  # OpenTelemetry's semantic convention for a test case's name
GIT_REVISION = "vcs.ref.head.revision"  # OpenTelemetry's VCS convention: the commit the code was at
XDIST_WORKER = "llmtrace.xdist.worker"  # gw0, gw1, ...; absent without xdist
ANNOTATION_NAME = "llmtrace.verdict"
MAX_EXPLANATION = 2000  # characters: Phoenix shows it in a table cell


@dataclass(frozen=True)
class RunAttributes:
    """The run's facts every exported span carries, resolved once per process."""

    project: str
    revision: str | None = None
    worker: str | None = None

    def for_test(self, nodeid: str) -> dict[str, str]:
        attrs = {TEST_NODEID: nodeid}
        if self.revision:
            attrs[GIT_REVISION] = self.revision
        if self.worker:
            attrs[XDIST_WORKER] = self.worker
        return attrs


def roots(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """The test's top spans, earliest first: no parent, or a parent the test did not record (a session fixture's)."""
    ids = {s.context.span_id for s in spans if s.context is not None}
    top = [s for s in spans if s.parent is None or s.parent.span_id not in ids]
    return sorted(top, key=lambda s: s.start_time or 0)


def prepare(
    spans: Sequence[ReadableSpan],
    run: RunAttributes,
    nodeid: str,
    redactor: Redactor | None = None,
    *,
    personal_data: bool = True,
) -> list[ReadableSpan]:
    """The spans as they leave the process: personal data and credentials redacted as ``llmtrace capture`` redacts
    golden files (the session's ``redactor``, keyed like the project's golden files, or a one-off one), or, with
    ``personal_data`` off, credentials only; filed under the run's project, the test's facts on the resource and
    on each root span."""
    test_attrs = run.for_test(nodeid)
    top = {id(s) for s in roots(spans)}
    resources: dict[tuple[tuple[str, Any], ...], Resource] = {}
    out = []
    models = [span_from_readable(span) for span in spans]
    # All of the test's spans at once: a name one span gives by its key is redacted in all of them.
    cleaned = (redactor or Redactor()).spans(models) if personal_data else redact_spans(models)
    for span, model, clean in zip(spans, models, cleaned, strict=True):
        resource_attrs = {**clean.resource_attributes, **test_attrs, PROJECT: run.project}
        key = tuple(sorted(resource_attrs.items(), key=lambda kv: kv[0]))
        resource = resources.get(key)
        if resource is None:
            resource = resources[key] = Resource(resource_attrs, span.resource.schema_url or None)
        attributes = dict(clean.attributes)
        if id(span) in top:
            attributes.update(test_attrs)
        status = span.status
        if clean.status_message != (status.description or ""):
            status = Status(StatusCode.ERROR, clean.status_message)  # only an error status carries a message
        out.append(
            ReadableSpan(
                name=clean.name,
                context=span.context,
                parent=span.parent,
                resource=resource,
                attributes=attributes,
                events=span.events if clean is model else _events(clean),
                links=span.links if clean is model else _links(span, clean),
                kind=span.kind,
                status=status,
                start_time=span.start_time,
                end_time=span.end_time,
                instrumentation_scope=span.instrumentation_scope,
            )
        )
    return out


def _events(clean: Span) -> tuple[Event, ...]:
    return tuple(Event(e.name, dict(e.attributes), e.time_unix_nano) for e in clean.events)


def _links(span: ReadableSpan, clean: Span) -> tuple[Link, ...]:
    """Redaction changes a link's attributes only; its context stays the original's."""
    return tuple(Link(old.context, dict(new.attributes)) for old, new in zip(span.links, clean.links, strict=True))


@dataclass(frozen=True)
class Verdict:
    label: str  # passed | failed
    explanation: str


def verdict(
    outcomes: Sequence[CaseOutcome], redactor: Redactor | None = None, *, personal_data: bool = True
) -> Verdict:
    """The test's verdict over its case outcomes, explained by each failing finding's first line (redacted like the
    spans, by ``redactor`` or a one-off one, since it quotes the app's SQL errors and answers)."""
    lines: list[str] = []
    for outcome in outcomes:
        if outcome.passed:
            continue
        prefix = f"{outcome.case_id}: " if len(outcomes) > 1 else ""
        if outcome.app_error:
            lines.append(f"{prefix}app error: {_first(outcome.app_error)}")
        lines += [f"{prefix}replay {miss.kind}: {_first(miss.text)}" for miss in outcome.replay_misses]
        lines += [f"{prefix}[{c.name}] {_first(c.reason)}" for c in outcome.checks if c.failed]
    if not lines:
        ran = sorted({c.name for o in outcomes for c in o.checks if c.status == "passed"})
        return Verdict("passed", "passed: " + (", ".join(ran) if ran else "no check failed"))
    explanation = "\n".join(lines)
    if personal_data:
        explanation = (redactor or Redactor()).text(explanation)
    return Verdict("failed", redact_text(explanation)[:MAX_EXPLANATION])


def _first(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def verdict_annotations(root_span_ids: Sequence[str], judged: Verdict, nodeid: str) -> list[dict[str, Any]]:
    """Phoenix's ``POST /v1/span_annotations`` items (``SpanAnnotationData``): one per root span.

    ``identifier`` names the test, so a run sent twice to one project updates its annotations instead of stacking
    copies (Phoenix upserts on span, name and identifier).
    """
    score = 1.0 if judged.label == "passed" else 0.0
    return [
        {
            "span_id": span_id,
            "name": ANNOTATION_NAME,
            "annotator_kind": "CODE",
            "result": {"label": judged.label, "score": score, "explanation": judged.explanation},
            "metadata": {"nodeid": nodeid},
            "identifier": nodeid,
        }
        for span_id in root_span_ids
    ]


def hex_span_id(span: ReadableSpan) -> str:
    assert span.context is not None, "SDK spans always carry a context"
    return f"{span.context.span_id:016x}"


def hex_trace_id(span: ReadableSpan) -> str:
    assert span.context is not None, "SDK spans always carry a context"
    return f"{span.context.trace_id:032x}"
