"""The directory captured traces go to: provenance in each file, atomic writes, no silent overwrite, and dedupe
against the cases already there, so capturing the same project every week adds only new cases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from pytest_llmtrace.core.errors import LLMTraceError, TraceFormatError
from pytest_llmtrace.sources.capture.filters import dedupe_key
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import dumps, read_trace, write_golden

PROVENANCE = "llmtrace.capture."
CAPTURE_TIME = PROVENANCE + "time"


def with_provenance(trace: Trace, *, phoenix_url: str, project: str, captured_at: str) -> Trace:
    """Where the trace came from, in every span's resource (Phoenix's REST API drops the original resource).

    Span and trace ids are kept as Phoenix has them, so ``trace_id`` and ``root_span_id`` find the trace there.
    """
    root = trace.root
    provenance = {
        PROVENANCE + "source": "phoenix",
        PROVENANCE + "phoenix_url": phoenix_url,
        PROVENANCE + "project": project,
        PROVENANCE + "trace_id": root.trace_id,
        PROVENANCE + "root_span_id": root.span_id,
        CAPTURE_TIME: captured_at,
    }
    return Trace(_with_resource(trace.spans, provenance), source=trace.source, warn_missing_parents=False)


def _with_resource(spans: Sequence[Span], attributes: dict[str, str]) -> list[Span]:
    return [replace(s, resource_attributes={**s.resource_attributes, **attributes}) for s in spans]


@dataclass
class Outcome:
    written: int = 0
    spans: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: int = 0
    paths: list[Path] = field(default_factory=list)

    @property
    def kept(self) -> int:
        """Traces that are in the directory now because of this capture: what ``--limit`` counts."""
        return self.written + self.unchanged + self.failed

    def summary(self, out: Path, dedupe: str) -> str:
        """The capture's last line, the same whichever server the traces came from."""
        line = f"wrote {self.written} traces ({self.spans} spans) to {out}"
        if self.unchanged:
            line += f"; {self.unchanged} unchanged"
        if self.duplicates:
            line += f"; {self.duplicates} duplicates skipped (--dedupe {dedupe})"
        return line


def captured_now() -> str:
    """The capture time a golden file's provenance records: UTC, to the second, as ISO 8601 with ``Z``."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class GoldenDir:
    """Writes each trace as ``name_for(trace)``; the first trace with a dedupe key wins, including files already
    in the directory, and a file that exists with other content is kept unless ``force``."""

    def __init__(self, out: Path, *, force: bool, dedupe: Sequence[str], name_for: Callable[[Trace], str]) -> None:
        self.out = out
        self.force = force
        self.dedupe = tuple(dedupe)
        self.name_for = name_for
        self.keys: dict[tuple[str, ...], str] = {}  # dedupe key -> the file name that holds it
        self.outcome = Outcome()
        if self.dedupe and out.is_dir():
            for path in sorted(out.glob("*.json")):
                try:
                    key = dedupe_key(read_trace(path), self.dedupe)
                except (TraceFormatError, LookupError):
                    continue  # not a golden trace; it matters only if a capture would overwrite it, and that is refused
                if key is not None:
                    self.keys.setdefault(key, path.name)

    def add(self, trace: Trace, stdout: TextIO, stderr: TextIO) -> None:
        name = self.name_for(trace)
        target = self.out / name
        key = dedupe_key(trace, self.dedupe) if self.dedupe else None
        if key is not None and self.keys.get(key, name) != name:
            self.outcome.duplicates += 1
            return
        previous = target.read_text(encoding="utf-8") if target.is_file() else None
        if previous is not None and _same_but_capture_time(previous, trace, target):
            self.outcome.unchanged += 1
            print(f"  {target} unchanged", file=stdout)
        elif previous is not None and not self.force:
            print(f"error: {target} exists with different content; use --force to overwrite it", file=stderr)
            self.outcome.failed += 1
        else:
            try:  # atomic, never through a planted symbolic link: the same writer as `llmtrace import`
                write_golden(target, dumps(trace), force=True)
            except LLMTraceError as exc:
                print(f"error: {exc}", file=stderr)
                self.outcome.failed += 1
                return
            self.outcome.written += 1
            self.outcome.spans += len(trace)
            self.outcome.paths.append(target)
            print(f"  {target} ({len(trace)} spans)", file=stdout)
        if key is not None:
            self.keys[key] = name


def _same_but_capture_time(previous: str, trace: Trace, path: Path) -> bool:
    """Capturing the same trace again changes only its capture time: that is "unchanged", not a conflict."""
    if previous == dumps(trace):
        return True
    try:
        stamp = read_trace(path).root.resource_attributes.get(CAPTURE_TIME)
    except (TraceFormatError, LookupError):
        return False
    return isinstance(stamp, str) and previous == dumps(_with_resource(trace.spans, {CAPTURE_TIME: stamp}))
