"""Send the three text-to-SQL traces in this directory's exports to a running Phoenix (see README.md).

Usage: python send_spans.py PORT. Not run by the tests; kept so the captured exports can be regenerated.
"""

from __future__ import annotations

import json
import sys
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AnyValue

SYSTEM = "You translate questions into PostgreSQL. Answer with SQL only."
MODEL = "qwen2.5-coder:1.5b"
# question, SQL the model wrote, database error, returned rows, (prompt tokens, completion tokens)
CASES: list[tuple[str, str, str | None, int, tuple[int, int]]] = [
    ("How many customers are in Berlin?", "SELECT count(*) FROM customers WHERE city = 'Berlin';", None, 1, (412, 23)),
    (
        "List the three most expensive products",
        "SELECT name, price FROM products ORDER BY price DESC LIMIT 3;",
        None,
        3,
        (398, 31),
    ),
    (
        "Total revenue per month in 2024",
        "SELECT date_trunc('month', ordered_at) AS month, sum(total) FROM orderz GROUP BY 1;",
        'relation "orderz" does not exist',
        0,
        (405, 40),
    ),
]


def main(port: str) -> None:
    resource = Resource.create({"openinference.project.name": "text2sql", "service.name": "text2sql-app"})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("text2sql.app", "0.3.1")
    for question, sql, error, rows, (prompt, completion) in CASES:
        root_attributes: dict[str, AnyValue] = {
            "openinference.span.kind": "CHAIN",
            "input.value": question,
            "input.mime_type": "text/plain",
            "session.id": "session-42",
            "tag.tags": ["regression", "sql"],
            "metadata": json.dumps({"app_version": "0.3.1", "ls_temperature": 0.0}),
        }
        with tracer.start_as_current_span("text_to_sql", attributes=root_attributes) as root:
            llm_attributes: dict[str, AnyValue] = {
                "openinference.span.kind": "LLM",
                "llm.model_name": MODEL,
                "llm.provider": "ollama",
                "llm.system": "openai",
                "llm.invocation_parameters": json.dumps({"model": MODEL, "temperature": 0.0}),
                "llm.input_messages.0.message.role": "system",
                "llm.input_messages.0.message.content": SYSTEM,
                "llm.input_messages.1.message.role": "user",
                "llm.input_messages.1.message.content": question,
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": sql,
                "llm.token_count.prompt": prompt,
                "llm.token_count.completion": completion,
                "llm.token_count.total": prompt + completion,
                "metadata": json.dumps({"ls_provider": "ollama", "ls_model_name": MODEL, "ls_temperature": 0.0}),
                "output.value": sql,
            }
            with tracer.start_as_current_span("ChatOllama", attributes=llm_attributes) as llm:
                time.sleep(0.02)
                llm.set_status(Status(StatusCode.OK))
            db_attributes: dict[str, AnyValue] = {
                "db.system.name": "postgresql",
                "db.query.text": sql,
                "db.namespace": "shop",
                "server.address": "127.0.0.1",
                "server.port": 5432,
            }
            with tracer.start_as_current_span("SELECT shop", kind=SpanKind.CLIENT, attributes=db_attributes) as db:
                time.sleep(0.005)
                if error:
                    db.record_exception(
                        RuntimeError(error), attributes={"exception.type": "psycopg2.errors.UndefinedTable"}
                    )
                    db.set_status(Status(StatusCode.ERROR, error))
                else:
                    db.set_attribute("db.response.returned_rows", rows)
            root.set_attribute("output.value", "error" if error else f"{rows} rows")
            root.set_status(Status(StatusCode.OK))
        time.sleep(0.01)
    provider.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
