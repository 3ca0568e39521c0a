"""``llmtrace capture --langfuse-url`` / ``--langsmith-project``: the same filters, redaction, dedupe and provenance
as Phoenix capture, over the readers in ``sdk_api``."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from pytest_llmtrace.core.errors import TraceFormatWarning
from pytest_llmtrace.sources import redaction_flags
from pytest_llmtrace.sources.capture.filters import CaptureError, Filters, option_integer, parse_dedupe
from pytest_llmtrace.sources.capture.golden_dir import CAPTURE_TIME, PROVENANCE, GoldenDir, captured_now
from pytest_llmtrace.sources.capture.sdk_api import (
    LAG_NOTE,
    LANGSMITH_DEFAULT_ENDPOINT,
    ApiClient,
    LangfuseSource,
    LangSmithSource,
    traces,
)
from pytest_llmtrace.trace.model import Trace

LANGFUSE_KEYS = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY")
LANGSMITH_KEY = "LANGSMITH_API_KEY"
LANGSMITH_ENDPOINT = "LANGSMITH_ENDPOINT"


def run_sdk(args: argparse.Namespace, name_for: Callable[[Trace], str], out: TextIO, err: TextIO) -> int:
    """As ``command.run``: 0 when every selected trace is in DIR, 1 for a server or trace failure, 2 for options."""
    try:
        args.trace_ids = [t.replace("-", "") for t in args.trace_ids]  # LangSmith shows its trace ids as UUIDs
        filters = Filters.from_args(args)
        max_bytes = option_integer(args.max_response_bytes, "--max-response-bytes", minimum=1)
        dedupe = parse_dedupe(args.dedupe)
        redactor = redaction_flags.from_args(args)
        source = _source(args, filters, max_bytes)
    except (CaptureError, redaction_flags.RedactionError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    if isinstance(source, LangfuseSource):
        print(LAG_NOTE, file=err)
    if redactor is None:
        print(
            "warning: --no-redact: the files hold the traces as the server has them, personal data included", file=err
        )
    golden = GoldenDir(args.out, force=args.force, dedupe=dedupe, name_for=name_for)
    captured_at = captured_now()
    clean = redactor.text if redactor is not None else str
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TraceFormatWarning)
            chosen = traces(source)
            for trace in chosen:
                if filters.limit is not None and golden.outcome.kept >= filters.limit:
                    break
                if redactor is not None:
                    trace = redactor.trace(trace)
                golden.add(_with_provenance(trace, source, captured_at), out, err)
            for warning in caught:
                print(f"warning: {clean(str(warning.message))}", file=err)
    except CaptureError as exc:
        print(f"error: {exc}", file=err)
        return 1
    status = 0
    missing = [t for t in filters.trace_ids if t not in {c.trace_ids[0] for c in chosen}]
    if missing:
        print(
            f"error: no trace {', '.join(missing[:5])} in the window; fix: check the id and --since/--until", file=err
        )
        status = 1
    elif not chosen:
        lag = " (or not yet readable: see the note above)" if isinstance(source, LangfuseSource) else ""
        print(f"note: no traces match the filters{lag}", file=err)
    outcome = golden.outcome
    if redactor is not None:
        print(redactor.summary(), file=out)
    print(outcome.summary(args.out, args.dedupe), file=out)
    return max(status, 1 if outcome.failed else 0)


def _source(args: argparse.Namespace, filters: Filters, max_bytes: int) -> LangfuseSource | LangSmithSource:
    if args.langfuse_url:
        public, secret = (os.environ.get(k) or "" for k in LANGFUSE_KEYS)
        if not public or not secret:
            raise CaptureError(
                "--langfuse-url needs the project's API keys: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY "
                "(Langfuse: Settings > API Keys)",
                usage=True,
            )
        client = ApiClient(
            args.langfuse_url,
            LangfuseSource.headers(public, secret),
            name="Langfuse",
            key_fix="check LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY: a key pair of this project on this server",
            timeout=args.timeout,
            max_bytes=max_bytes,
        )
        return LangfuseSource(client, filters)
    key = os.environ.get(LANGSMITH_KEY) or ""
    if not key:
        raise CaptureError(f"--langsmith-project needs {LANGSMITH_KEY} (LangSmith: Settings > API Keys)", usage=True)
    client = ApiClient(
        os.environ.get(LANGSMITH_ENDPOINT) or LANGSMITH_DEFAULT_ENDPOINT,
        {"x-api-key": key},
        name="LangSmith",
        key_fix=f"check {LANGSMITH_KEY}, and {LANGSMITH_ENDPOINT} for a self-hosted LangSmith",
        timeout=args.timeout,
        max_bytes=max_bytes,
    )
    return LangSmithSource(client, args.langsmith_project, filters)


def _with_provenance(trace: Trace, source: LangfuseSource | LangSmithSource, captured_at: str) -> Trace:
    """Where the trace came from, in every span's resource: source, server, project, trace id and a link."""
    project = source.project or (source.project_id if isinstance(source, LangSmithSource) else "")
    provenance = {
        PROVENANCE + "source": source.kind,
        PROVENANCE + f"{source.kind}_url": source.client.url,
        PROVENANCE + "project": project,
        PROVENANCE + "trace_id": trace.root.trace_id,
        PROVENANCE + "root_span_id": trace.root.span_id,
        PROVENANCE + "link": source.link(trace),
        CAPTURE_TIME: captured_at,
    }
    spans = [replace(s, resource_attributes={**s.resource_attributes, **provenance}) for s in trace.spans]
    return Trace(spans, source=trace.source, warn_missing_parents=False)
