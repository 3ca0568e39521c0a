"""LangSmith's run ingestion, served on loopback: where an app traced by LangSmith in its default (non-OpenTelemetry)
mode sends its runs during a test run, so they are recorded instead of leaving the machine.

What the installed SDK (``langsmith`` 0.15) sends, read from its client: ``GET /info`` first (its
``batch_ingest_config`` decides the rest); then ``POST /runs/multipart`` (``multipart/form-data``: a part
``post.<id>`` or ``patch.<id>`` with the run, and ``post.<id>.inputs``, ``.outputs``, ``.events``, ``.extra``,
``.error``, ``.serialized`` beside it), or with multipart off ``POST /runs/batch`` (``{"post": [...], "patch":
[...]}``);
and, outside the background queue, ``POST /runs`` and ``PATCH /runs/<id>``. A run arrives in two halves (the post when
it starts, the patch when it ends), often in different requests: the halves are merged by run id, and a run is handed
on once it has ended. ``/info`` leaves zstd compression off (the SDK then sends plain multipart).

Pytest-free: the receiver hands the merged runs (plain dicts) to a callback; the layer that owns the run reader
(``sources.langsmith_format``) turns them into spans.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError

RUNS_PATHS = ("/runs/multipart", "/runs/batch", "/runs")
INFO_PATH = "/info"
# Runs kept while they wait for their other half; a run that never ends is dropped oldest first past this.
MAX_PENDING_RUNS = 10_000
_PART_FIELDS = frozenset({"inputs", "outputs", "events", "extra", "error", "serialized"})
_INGEST = {
    "use_multipart_endpoint": True,
    "size_limit": 100,
    "size_limit_bytes": 20_971_520,
    "scale_up_nthreads_limit": 1,
    "scale_up_qsize_trigger": 1000,
    "scale_down_nempty_trigger": 4,
}
INFO = {"version": "0.0.0-pytest-llmtrace", "batch_ingest_config": _INGEST, "instance_flags": {}}


class RunPostError(LLMTraceError, ValueError):
    """A run post the endpoint cannot read (answered 400 and counted)."""


class LangSmithRuns:
    """Run halves merged by id; ``on_runs`` gets each run once, when it has ended (its ``end_time`` arrived)."""

    def __init__(self, on_runs: Callable[[list[dict[str, Any]]], None]) -> None:
        self._on_runs = on_runs
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.runs = 0  # runs handed on

    def handle(self, method: str, path: str, content_type: str, body: bytes) -> None:
        """One request to a runs path; raises ``RunPostError`` for what cannot be read."""
        if method == "PATCH":
            if not path.startswith("/runs/") or path.count("/") != 2:
                raise RunPostError(f"PATCH {path}: expected PATCH /runs/<id>")
            run = _json_object(body, "the run update")
            run.setdefault("id", path.rsplit("/", 1)[-1])
            self.add([run])
        elif path == "/runs/multipart":
            self.add(_multipart_runs(content_type, body))
        elif path == "/runs/batch":
            batch = _json_object(body, "the batch")
            runs = [*(batch.get("post") or []), *(batch.get("patch") or [])]
            if not all(isinstance(run, dict) for run in runs):
                raise RunPostError("the batch's post and patch lists hold runs (objects)")
            self.add(runs)
        else:  # POST /runs
            self.add([_json_object(body, "the run")])

    def add(self, halves: list[dict[str, Any]]) -> None:
        done: list[dict[str, Any]] = []
        with self._lock:
            for half in halves:
                run_id = str(half.get("id") or "")
                if not run_id:
                    raise RunPostError("a run without an id")
                run = self._pending.setdefault(run_id, {})
                run.update({key: value for key, value in half.items() if value is not None})
                if run.get("end_time") is not None and "run_type" in run:
                    done.append(self._pending.pop(run_id))
            while len(self._pending) > MAX_PENDING_RUNS:
                self._pending.popitem(last=False)
            self.runs += len(done)
        if done:
            self._on_runs(done)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise RunPostError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RunPostError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _multipart_runs(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """The runs of one multipart request, each run's fields put back from their parts; attachments skipped."""
    if "multipart/form-data" not in content_type.lower() or "boundary=" not in content_type:
        raise RunPostError(f"Content-Type {content_type!r}: expected multipart/form-data with a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise RunPostError("the multipart body has no parts")
    runs: dict[str, dict[str, Any]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise RunPostError("a part without a name")
        kind, _, rest = name.partition(".")
        if kind not in ("post", "patch"):
            continue  # attachment.<id>.<name>, feedback.<id>: not part of a run's span
        run_id, _, field = rest.partition(".")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        run = runs.setdefault(run_id, {"id": run_id})
        if not field:
            run.update({k: v for k, v in _json_object(data, f"part {name!r}").items() if v is not None})
        elif field in _PART_FIELDS:
            try:
                run[field] = json.loads(data)
            except ValueError as exc:
                raise RunPostError(f"part {name!r} is not JSON: {exc}") from None
    return list(runs.values())
