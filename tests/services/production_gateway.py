"""The reference gateway as it runs in production: its own process, its own TracerProvider, spans exported to Phoenix
over OTLP (protobuf, as ``phoenix.otel.register`` sets it up) into one project.

Run by tests/services/test_capture.py: ``python production_gateway.py CONFIG.json``, where the config holds the
project, Phoenix's traces endpoint, the Ollama host and database DSN the app reads, and the questions to ask. Prints
one JSON line per question: its name and the trace id Phoenix will show.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    provider = TracerProvider(resource=Resource({"openinference.project.name": config["project"]}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=config["traces_endpoint"])))
    seen = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(seen))
    trace.set_tracer_provider(provider)
    os.environ.update(OLLAMA_HOST=config["ollama_host"], DB_URI=config["db_uri"], LLM_MODEL="qwen-sql-prod")
    sys.path.insert(0, str(FIXTURES))
    from gateway.app import handle_user_request  # after the provider: the app uses the global one

    for case in config["cases"]:
        seen.clear()
        handle_user_request(case["question"], user_id=case.get("user_id"))
        root = next(s for s in seen.get_finished_spans() if s.parent is None)
        assert root.context is not None
        print(json.dumps({"name": case["name"], "trace_id": f"{root.context.trace_id:032x}"}), flush=True)
    provider.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
