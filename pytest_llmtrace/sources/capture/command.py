"""``llmtrace capture``: the options, and the run from Phoenix's REST API to redacted golden files.

Traces are handled in batches as they are listed (fetch, redact, dedupe, write), so ``--limit 20`` reads about
twenty traces rather than the whole project, and memory stays flat on a large one. Redaction happens on the trace
model before a file name is made or a byte is written; provenance is added after it, since it holds no user data.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from pytest_llmtrace.core.errors import TraceFormatWarning, did_you_mean
from pytest_llmtrace.sources import redaction_flags
from pytest_llmtrace.sources.capture.filters import CaptureError, Filters, option_integer, parse_dedupe
from pytest_llmtrace.sources.capture.golden_dir import GoldenDir, captured_now, with_provenance
from pytest_llmtrace.sources.capture.phoenix_api import MAX_RESPONSE_BYTES, TRACES_PER_REQUEST, PhoenixClient, Source
from pytest_llmtrace.sources.phoenix_client import API_KEY_ENV
from pytest_llmtrace.trace.model import Trace

PREFETCH = 3  # span requests in flight while a batch is converted and written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The capture options (the redaction flags come from ``redaction_flags.add_arguments``, shared with import)."""
    parser.add_argument("--phoenix-url", metavar="URL", help="Phoenix's base URL, e.g. http://host:6006")
    parser.add_argument("--project", metavar="NAME", help="the Phoenix project to read (with --phoenix-url)")
    parser.add_argument(
        "--langfuse-url",
        metavar="URL",
        help="Langfuse's base URL, e.g. https://cloud.langfuse.com; keys: LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY",
    )
    parser.add_argument(
        "--langsmith-project",
        metavar="NAME",
        help="a LangSmith project; LANGSMITH_API_KEY, and LANGSMITH_ENDPOINT for a self-hosted LangSmith",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the golden files")
    parser.add_argument("--force", action="store_true", help="overwrite existing files whose content differs")
    parser.add_argument(
        "--dedupe",
        default="question,sql",
        metavar="KEY",
        help="skip traces whose normalized KEY was already captured (here or in DIR): question,sql (default), "
        "question, sql or none",
    )
    parser.add_argument(
        "--timeout", default=60.0, type=float, metavar="S", help="seconds each request may take, its answer included"
    )
    parser.add_argument(
        "--max-response-bytes",
        default=str(MAX_RESPONSE_BYTES),
        metavar="N",
        help=f"stop reading an answer longer than N bytes (default {MAX_RESPONSE_BYTES:,}): memory stays bounded",
    )
    f = parser.add_argument_group("filters", "Time filters apply to the start of each trace's root span.")
    f.add_argument("--since", metavar="WHEN", help="only traces that started after WHEN: 30m, 24h, 7d or ISO 8601")
    f.add_argument("--until", metavar="WHEN", help="only traces that started before WHEN (same forms)")
    f.add_argument("--errors-only", action="store_true", help="only traces with a span whose status is ERROR")
    f.add_argument(
        "--root-name", action="append", default=[], dest="root_names", metavar="NAME", help="root span name; repeatable"
    )
    f.add_argument("--sample", metavar="FRACTION", help="keep this fraction of traces, chosen by trace id")
    f.add_argument("--seed", default="0", metavar="N", help="seed of --sample: another seed, another sample")
    f.add_argument("--limit", metavar="N", help="at most N traces, newest first (duplicates do not count)")
    f.add_argument(
        "--trace-id", action="append", default=[], dest="trace_ids", metavar="ID", help="only this trace; repeatable"
    )


def run(
    args: argparse.Namespace,
    name_for: Callable[[Trace], str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """0 when every selected trace is in DIR, 1 when a trace or the server failed, 2 for a bad option."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    chosen = [
        o
        for o, v in (
            ("--phoenix-url", args.phoenix_url),
            ("--langfuse-url", args.langfuse_url),
            ("--langsmith-project", args.langsmith_project),
        )
        if v
    ]
    if len(chosen) != 1:
        print(
            "error: capture from one server: --phoenix-url URL --project NAME, --langfuse-url URL or "
            f"--langsmith-project NAME{' (got ' + ', '.join(chosen) + ')' if chosen else ''}",
            file=err,
        )
        return 2
    if args.phoenix_url and not args.project:
        print("error: --phoenix-url needs --project NAME (the Phoenix project to read)", file=err)
        return 2
    if not args.phoenix_url:
        from pytest_llmtrace.sources.capture.sdk_run import run_sdk

        return run_sdk(args, name_for, out, err)
    try:
        filters = Filters.from_args(args)
        dedupe = parse_dedupe(args.dedupe)
        redactor = redaction_flags.from_args(args)
        client = PhoenixClient(
            args.phoenix_url,
            api_key=os.environ.get(API_KEY_ENV) or None,
            timeout=args.timeout,
            max_bytes=option_integer(args.max_response_bytes, "--max-response-bytes", minimum=1),
        )
    except (CaptureError, redaction_flags.RedactionError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    if redactor is None:
        print("warning: --no-redact: the files hold the traces as Phoenix has them, personal data included", file=err)
    progress = Progress(err)
    golden = GoldenDir(args.out, force=args.force, dedupe=dedupe, name_for=name_for)
    source = Source(client, args.project, filters, progress.update)
    captured_at = captured_now()
    clean = redactor.text if redactor is not None else str  # messages can quote span content

    status = 0
    found: set[str] = set()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TraceFormatWarning)
            source.check_project()
            for batch, pages in _fetched(source, filters, golden):
                traces, errors = source.traces(batch, pages)
                for message in errors:
                    print(f"error: {clean(message)}", file=err)
                    status = 1
                for trace in traces:
                    found.add(trace.trace_ids[0])
                    if filters.limit is not None and golden.outcome.kept >= filters.limit:
                        break
                    if redactor is not None:
                        trace = redactor.trace(trace)
                    trace = with_provenance(
                        trace, phoenix_url=client.url, project=args.project, captured_at=captured_at
                    )
                    golden.add(trace, out, err)
                    progress.update(traces=1)
            for warning in caught:
                print(f"warning: {clean(str(warning.message))}", file=err)
    except CaptureError as exc:
        progress.done()
        print(f"error: {exc}", file=err)
        return 1
    progress.done()
    status = max(status, _nothing_found(source, filters, found, err))
    outcome = golden.outcome
    status = max(status, 1 if outcome.failed else 0)
    if redactor is not None:
        print(redactor.summary(), file=out)
    print(outcome.summary(args.out, args.dedupe), file=out)
    return status


def _fetched(source: Source, filters: Filters, golden: GoldenDir) -> Iterator[tuple[list[str], list[list[Any]]]]:
    """Batches of trace ids with their spans' pages, in listing order, with up to ``PREFETCH`` requests in flight.

    Under ``--limit`` no more ids are asked for than are still missing, counting those in flight; duplicates found
    on the way make room for another batch.
    """
    ids = source.chosen()
    with ThreadPoolExecutor(PREFETCH, thread_name_prefix="llmtrace-capture") as pool:
        pending: deque[tuple[list[str], Future[list[list[Any]]]]] = deque()
        while True:
            while len(pending) < PREFETCH:
                size = TRACES_PER_REQUEST
                if filters.limit is not None:
                    size = min(size, filters.limit - golden.outcome.kept - sum(len(b) for b, _ in pending))
                batch = list(itertools.islice(ids, size)) if size > 0 else []
                if not batch:
                    break
                pending.append((batch, pool.submit(source.fetch, batch)))
            if not pending:
                return
            batch, future = pending.popleft()
            yield batch, future.result()


def _nothing_found(source: Source, filters: Filters, found: set[str], err: TextIO) -> int:
    """Say why nothing came back when a filter names something: a trace id or a root name that is not there."""
    missing = [t for t in filters.trace_ids if t not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        print(
            f"error: no trace {shown} in project {source.project!r} (a root span in the time window); fix: check the "
            "id in Phoenix's UI, the project, and --since/--until",
            file=err,
        )
        return 1
    if filters.root_names and source.roots_listed == 0:
        names = source.root_names_in_window()
        hints = [h for h in (did_you_mean(n, names) for n in filters.root_names) if h]
        shown = ", ".join(repr(n) for n in names[:10]) or "none"
        print(
            f"error: no root span named {', '.join(repr(n) for n in filters.root_names)} in project "
            f"{source.project!r}" + (f"; {hints[0]}" if hints else "") + f"; root names there: {shown}",
            file=err,
        )
        return 1
    if source.roots_listed == 0:
        print(f"note: no traces in project {source.project!r} match the filters", file=err)
    return 0


class Progress:
    """Counts on stderr: rewritten in place on a terminal, one line every few seconds otherwise (CI logs)."""

    def __init__(self, stream: TextIO, *, interval: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.25 if self.tty else interval
        self.started = self._last = time.perf_counter()
        self.roots = self.spans = self.traces = 0

    def update(self, *, roots: int = 0, spans: int = 0, traces: int = 0) -> None:
        self.roots += roots
        self.spans += spans
        self.traces += traces
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._show(final=False)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.spans / elapsed if elapsed > 0 else 0.0
        return (
            f"capture: {self.roots} roots listed, {self.spans} spans read, {self.traces} traces done "
            f"in {elapsed:.1f} s ({rate:,.0f} spans/s)"
        )

    def _show(self, *, final: bool) -> None:
        if self.tty:
            print("\r" + self.line(), end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(self.line(), file=self.stream, flush=True)

    def done(self) -> None:
        self._show(final=True)
