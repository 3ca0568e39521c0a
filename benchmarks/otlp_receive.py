"""The OTLP receiver's throughput, and what a golden case costs through a service against in process.

    python benchmarks/otlp_receive.py                 # receiver only: spans/s, protobuf and JSON, ~10 s
    python benchmarks/otlp_receive.py --cases         # also the shipped golden cases, in process and by service

Receiver: batches of 512 spans (the SDK batch processor's default export size), each span with the attributes a
text-to-SQL LLM span carries (prompt messages, SQL, token counts), posted over one keep-alive connection, as an
exporter does; spans/s counts the HTTP round trip, the parse with opentelemetry-proto, the conversion to the trace
model and the routing to a case. Cases: each golden case's call-phase time from a JUnit XML report, median over the
shipped cases, in-process replay against the same cases through ``fixtures/service`` started by command.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pytest_llmtrace.services.otlp_receiver import OtlpReceiver
from pytest_llmtrace.services.span_router import SpanRouter

ROOT = Path(__file__).resolve().parents[1]
BATCH = 512
SERVICE = "python -m uvicorn --app-dir fixtures service.server:app --host 127.0.0.1 --port {port}"


def _batch() -> tuple[bytes, bytes]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for i in range(BATCH):
        with tracer.start_as_current_span("ollama.chat") as span:
            span.set_attribute("openinference.span.kind", "LLM")
            span.set_attribute("llm.input_messages.0.message.content", "You translate questions into SQL. " * 20)
            span.set_attribute("llm.input_messages.1.message.content", f"question {i}")
            span.set_attribute("db.query.text", "SELECT tier, count(*) FROM customers GROUP BY tier")
            span.set_attribute("llm.token_count.prompt", 412)
    message = encode_spans(memory.get_finished_spans())
    document = MessageToDict(message)
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return message.SerializeToString(), json.dumps(document).encode()


def receiver_throughput(seconds: float = 4.0) -> dict[str, float]:
    protobuf, json_body = _batch()
    figures: dict[str, float] = {}
    for name, body, content_type in (
        ("protobuf", protobuf, "application/x-protobuf"),
        ("json", json_body, "application/json"),
    ):
        router = SpanRouter()
        router.begin()  # a case open: the spans are routed (to "others"), as during a real case
        with OtlpReceiver(on_spans=router.deliver) as receiver:
            connection = http.client.HTTPConnection(receiver.host, receiver.port)
            started = time.perf_counter()
            posts = 0
            while time.perf_counter() - started < seconds:
                connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                assert response.status == 200
                posts += 1
            elapsed = time.perf_counter() - started
            connection.close()
            figures[name] = round(posts * BATCH / elapsed)
            figures[f"{name}_payload_kb"] = round(len(body) / 1024)
    return figures


def _case_times(extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [sys.executable, "-m", "pytest", "golden_traces", "-q", "-p", "no:randomly", f"--junitxml={junit}"]
        subprocess.run([*argv, *extra], cwd=ROOT, capture_output=True, check=False, timeout=900)
        cases = ET.parse(junit).getroot().iter("testcase")
        return {case.get("name", ""): float(case.get("time", "0")) for case in cases}


def case_overhead() -> dict[str, float]:
    in_process = _case_times([])
    service = _case_times(["-o", f"llmtrace_app_command={SERVICE}", "-o", "llmtrace_app_ready=GET /healthz"])
    names = sorted(set(in_process) & set(service))
    deltas = [service[n] - in_process[n] for n in names]
    return {
        "cases": len(names),
        "in_process_median_ms": round(statistics.median(in_process[n] for n in names) * 1000),
        "service_median_ms": round(statistics.median(service[n] for n in names) * 1000),
        "overhead_median_ms": round(statistics.median(deltas) * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", action="store_true", help="also time the golden cases in process and by service")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    figures: dict[str, object] = {"receiver_spans_per_s": receiver_throughput()}
    if args.cases:
        figures["per_case"] = case_overhead()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
