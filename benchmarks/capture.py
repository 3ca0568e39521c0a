"""Capture speed: ``llmtrace capture`` from a local Phoenix, printed as spans/s and the ratio to its target.

Run alone: python benchmarks/capture.py [--traces 2000] [--runs 3] [--phoenix-url URL [--project NAME]]
(``benchmarks/run.py`` measures it as its ``capture`` row, with 1,000 traces, through ``measure``).

Phoenix is filled with copies of the golden traces (3 spans each, new times, new random ids on every fill), a third
of them with an email address and a phone number in the question, so redaction has work to do. Filling is not timed:
Phoenix ingests a few hundred spans a second here, so the script waits until the last trace is readable before
measuring.

Printed figures (not asserted: the machine is shared and noisy):

- the raw read: every page of ``GET /v1/projects/{project}/spans?limit=1000`` fetched and JSON-decoded, nothing else;
  Phoenix's own serving speed, which capture cannot beat;
- ``llmtrace capture`` into a fresh directory (redaction on, dedupe off so every trace is written): spans/s, the ratio
  to the 5,000 spans/s target, and the share of the raw read's speed it keeps.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from pytest_llmtrace.cli import main as llmtrace
from pytest_llmtrace.trace.otlp import read_trace, trace_to_request

TARGET_SPANS_PER_S = 5000.0
GOLDEN = Path(__file__).resolve().parents[1] / "golden_traces"
BATCH_TRACES = 300


def otlp_protobuf(traces: list[dict[str, Any]]) -> bytes:
    """Spec OTLP JSON requests (hex ids) -> one protobuf body, which is all Phoenix's /v1/traces accepts."""
    from google.protobuf.json_format import ParseDict  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    resource_spans = []
    for request in traces:
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
            resource_spans.append(rs)
    return bytes(ParseDict({"resourceSpans": resource_spans}, ExportTraceServiceRequest()).SerializeToString())


def synthetic_traces(count: int, project: str, seed: int | None = None) -> list[dict[str, Any]]:
    """``count`` copies of the golden traces as OTLP JSON requests, one hour ago, a millisecond apart.

    Trace and span ids are fresh on every call unless ``seed`` is given: Phoenix drops a span whose id it holds
    already (``ON CONFLICT (span_id) DO NOTHING``), so a second fill of one Phoenix with the first fill's ids would
    never show up, and ``fill`` would wait for it for 30 minutes.
    """
    rnd = random.Random(seed)  # None: seeded from the OS
    golden = [read_trace(p) for p in sorted(GOLDEN.glob("*.json"))]
    base = time.time_ns() - 3600 * 10**9
    requests = []
    for i in range(count):
        source = golden[i % len(golden)]
        text = json.dumps(trace_to_request(source))
        question = source.input or ""
        if i % 3 == 0 and question:  # PII in the question, and so in the prompt and every copy of it
            text = text.replace(question, f"{question} Reply to jane.doe{i}@example.com or +1 415 555 {i % 10000:04d}")
        request = json.loads(text)
        trace_id = f"{rnd.getrandbits(128):032x}"
        shift = base + i * 1_000_000 - source.start_time_unix_nano
        ids: dict[str, str] = {}
        for rs in request["resourceSpans"]:
            rs["resource"]["attributes"] = [{"key": "openinference.project.name", "value": {"stringValue": project}}]
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    ids[span["spanId"]] = f"{rnd.getrandbits(64):016x}"
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    span["traceId"] = trace_id
                    span["spanId"] = ids[span["spanId"]]
                    if "parentSpanId" in span:
                        span["parentSpanId"] = ids[span["parentSpanId"]]
                    for key in ("startTimeUnixNano", "endTimeUnixNano"):
                        span[key] = str(int(span[key]) + shift)
                    for event in span.get("events", []):
                        event["timeUnixNano"] = str(int(event["timeUnixNano"]) + shift)
        requests.append(request)
    return requests


def fill(url: str, project: str, count: int) -> int:
    """Send ``count`` traces and wait until Phoenix serves the last one; returns the number of spans sent."""
    requests = synthetic_traces(count, project)
    spans = sum(len(ss["spans"]) for r in requests for rs in r["resourceSpans"] for ss in rs["scopeSpans"])
    last = requests[-1]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
    for start in range(0, count, BATCH_TRACES):
        body = otlp_protobuf(requests[start : start + BATCH_TRACES])
        post = urllib.request.Request(url + "/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(post, timeout=60) as response:
            response.read()
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:  # Phoenix inserts in arrival order: the last trace there means all are
        try:
            with urllib.request.urlopen(f"{url}/v1/projects/{project}/spans?trace_id={last}&limit=10", timeout=60) as r:
                if len(json.loads(r.read())["data"]) >= 3:
                    return spans
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: Phoenix has not stored the project's first span yet
                raise
        time.sleep(2)
    raise SystemExit(f"Phoenix did not ingest {count} traces within 30 minutes")


def raw_read(url: str, project: str) -> tuple[int, float]:
    started = time.perf_counter()
    cursor: str | None = None
    spans = 0
    while True:
        page_url = f"{url}/v1/projects/{project}/spans?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        with urllib.request.urlopen(page_url, timeout=120) as response:
            page = json.loads(response.read())
        spans += len(page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return spans, time.perf_counter() - started


def capture(url: str, project: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="llmtrace-bench-capture-") as work:
        # the redaction key inside the temporary folder too: outside a project, capture makes it beside --out
        out, key = Path(work, "golden"), Path(work, "redaction.key")
        argv = ["capture", "--phoenix-url", url, "--project", project, "--out", str(out), "--dedupe", "none"]
        stdout, stderr = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        with redirect_stdout(stdout), redirect_stderr(stderr):
            status = llmtrace([*argv, "--redaction-key", str(key)])
        elapsed = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"llmtrace capture failed ({status}):\n{stderr.getvalue()}")
        files = list(out.glob("*.json"))
        return sum(len(read_trace(f)) for f in files), elapsed


def measure(traces: int, runs: int) -> tuple[int, float, float]:
    """Fill an embedded Phoenix with ``traces`` traces; (spans, median capture s, median raw read s) over ``runs``."""
    from pytest_llmtrace.services.phoenix import EmbeddedPhoenix

    server = EmbeddedPhoenix()
    url = server.start().url
    try:
        project = f"bench-capture-{random.randrange(10**6)}"
        fill(url, project, traces)
        raw = [raw_read(url, project) for _ in range(runs)]
        captured = [capture(url, project) for _ in range(runs)]
    finally:
        server.stop()
    return captured[0][0], statistics.median(s for _, s in captured), statistics.median(s for _, s in raw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=2000, help="traces to fill Phoenix with (3 spans each)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--phoenix-url", help="a running Phoenix to fill instead of an embedded one")
    parser.add_argument("--project", help="measure this project of --phoenix-url as it is, without filling it")
    args = parser.parse_args()

    server = None
    if args.phoenix_url:
        url = args.phoenix_url.rstrip("/")
    else:
        from pytest_llmtrace.services.phoenix import EmbeddedPhoenix

        server = EmbeddedPhoenix()
        url = server.start().url
    try:
        project = args.project or f"bench-capture-{random.randrange(10**6)}"
        if not args.project:
            filled_at = time.perf_counter()
            sent = fill(url, project, args.traces)
            elapsed = time.perf_counter() - filled_at
            print(f"filled {url} project {project}: {sent} spans in {elapsed:.0f} s", file=sys.stderr)
        raw = [raw_read(url, project) for _ in range(args.runs)]
        runs = [capture(url, project) for _ in range(args.runs)]
    finally:
        if server is not None:
            server.stop()
    raw_rate = statistics.median(n / s for n, s in raw)
    rates = [n / s for n, s in runs]
    rate = statistics.median(rates)
    print(f"Phoenix raw read: {raw_rate:,.0f} spans/s (median of {args.runs}; pages of 1000, JSON-decoded only)")
    print(
        f"capture: {rate:,.0f} spans/s, median of {args.runs} runs of {runs[0][0]} spans (min {min(rates):,.0f}, "
        f"max {max(rates):,.0f}); ratio to the {TARGET_SPANS_PER_S:,.0f} spans/s target: "
        f"{rate / TARGET_SPANS_PER_S:.2f}; {rate / raw_rate:.0%} of the raw read"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
