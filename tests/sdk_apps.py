"""A small text-to-SQL app traced only by the Langfuse SDK or only by the LangSmith SDK: their decorators
(``@observe``, ``@traceable``) and their LangChain integrations, asking a model through the Ollama API (the plugin's
front with scripted answers) and handing the SQL to a ``run_sql`` step. The SQL is not run: these traces are for the
import formats; the replays use the reference app.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

SYSTEM = "You translate questions into one PostgreSQL SELECT statement."
MODEL = "qwen-sql-prod"
SQL_ERROR = 'column "revenue" does not exist'


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def langfuse_app(base_url: str, ollama_url: str) -> tuple[Any, Callable[..., Any], Callable[..., Any]]:
    """``(client, answer, answer_with_langchain)``: Langfuse's ``@observe`` with a generation of its own, and
    LangChain's ChatOllama under Langfuse's CallbackHandler. The client exports only to ``base_url``."""
    import ollama
    from langchain_ollama import ChatOllama
    from langfuse import Langfuse, observe
    from langfuse.langchain import CallbackHandler
    from opentelemetry.sdk.trace import TracerProvider

    client = Langfuse(
        public_key="pk-lf-local",
        secret_key="sk-lf-local",
        base_url=base_url,
        tracer_provider=TracerProvider(),  # its own: the test process's global provider stays the recorder's
        flush_at=1,
    )
    model_client = ollama.Client(host=ollama_url)

    @observe(as_type="tool", name="run_sql")
    def run_sql(sql: str) -> dict[str, Any]:
        if "revenue" in sql and "AS revenue" not in sql:
            client.update_current_span(level="ERROR", status_message=SQL_ERROR)
            return {"rows": [], "error": SQL_ERROR}
        return {"rows": []}

    @observe(name="text2sql")
    def answer(question: str, user_id: str | None = None) -> dict[str, Any]:
        with client.start_as_current_observation(
            as_type="generation",
            name="ollama.chat",
            model=MODEL,
            input=_messages(question),
            model_parameters={"temperature": 0},
        ) as generation:
            # The generation's own start, not a clock read before it: TTFT is measured from that start, and on a busy
            # machine the observation began milliseconds after such a read (the test saw 17 ms for these 25).
            started = _span_start()
            reply = model_client.chat(model=MODEL, messages=_messages(question), options={"temperature": 0})
            generation.update(
                output={"role": "assistant", "content": reply.message.content},
                usage_details={"input": reply.prompt_eval_count or 0, "output": reply.eval_count or 0},
                cost_details={"input": 0.0003, "output": 0.0001},
                completion_start_time=started + dt.timedelta(milliseconds=25),
            )
        return run_sql(reply.message.content or "")

    chat = ChatOllama(model=MODEL, base_url=ollama_url, temperature=0)

    @observe(name="text2sql-langchain")
    def answer_with_langchain(question: str) -> dict[str, Any]:
        handler = CallbackHandler()
        reply = chat.invoke(
            [("system", SYSTEM), ("human", question)], config={"callbacks": [handler], "run_name": "ChatOllama"}
        )
        return run_sql(str(reply.content))

    return client, answer, answer_with_langchain


def _span_start() -> dt.datetime:
    """The start of the OpenTelemetry span running now (Langfuse's observations are such spans)."""
    start_ns = getattr(trace.get_current_span(), "start_time", None)
    assert isinstance(start_ns, int), "an SDK span is current"
    return dt.datetime.fromtimestamp(start_ns / 1e9, tz=dt.timezone.utc)


def langsmith_app(
    endpoint: str, ollama_url: str
) -> tuple[Any, Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """``(client, answer, answer_with_langchain, answer_streaming)``: ``@traceable`` with an ``llm`` run of its own,
    and LangChain's ChatOllama (invoked, and streamed: its run gets ``new_token`` events) traced by LangSmith's
    LangChain tracer. Every run goes to ``endpoint``."""
    import ollama
    from langchain_ollama import ChatOllama
    from langsmith import Client, traceable, tracing_context

    os.environ["LANGSMITH_ENDPOINT"] = endpoint  # LangChain's tracer makes its own client from these
    os.environ["LANGSMITH_API_KEY"] = "lsv2-local"
    client = Client(api_url=endpoint, api_key="lsv2-local")
    model_client = ollama.Client(host=ollama_url)

    @traceable(run_type="tool", name="run_sql")
    def run_sql(sql: str) -> dict[str, Any]:
        if "revenue" in sql and "AS revenue" not in sql:
            raise RuntimeError(SQL_ERROR)
        return {"rows": []}

    @traceable(run_type="llm", name="ollama.chat", metadata={"ls_model_name": MODEL, "ls_provider": "ollama"})
    def chat(messages: list[dict[str, str]]) -> dict[str, Any]:
        reply = model_client.chat(model=MODEL, messages=messages, options={"temperature": 0})
        usage = {"input_tokens": reply.prompt_eval_count or 0, "output_tokens": reply.eval_count or 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        return {
            "choices": [{"message": {"role": "assistant", "content": reply.message.content}}],
            "usage_metadata": usage,
        }

    @traceable(name="text2sql")
    def traced_answer(question: str, user_id: str | None = None) -> dict[str, Any]:
        reply = chat(_messages(question))
        try:
            return run_sql(reply["choices"][0]["message"]["content"])
        except RuntimeError as exc:
            return {"rows": [], "error": str(exc)}

    chat_model = ChatOllama(model=MODEL, base_url=ollama_url, temperature=0)

    @traceable(name="text2sql-langchain")
    def traced_langchain(question: str) -> dict[str, Any]:
        reply = chat_model.invoke([("system", SYSTEM), ("human", question)])
        try:
            return run_sql(str(reply.content))
        except RuntimeError as exc:
            return {"rows": [], "error": str(exc)}

    @traceable(name="text2sql-streaming")
    def traced_streaming(question: str) -> dict[str, Any]:
        text = "".join(str(chunk.content) for chunk in chat_model.stream([("system", SYSTEM), ("human", question)]))
        return run_sql(text)

    def answer(question: str) -> Any:
        with tracing_context(enabled=True, client=client, project_name="text2sql"):
            return traced_answer(question, user_id="u-1001")

    def answer_streaming(question: str) -> Any:
        with tracing_context(enabled=True, client=client, project_name="text2sql"):
            return traced_streaming(question)

    def answer_with_langchain(question: str) -> Any:
        with tracing_context(enabled=True, client=client, project_name="text2sql"):
            return traced_langchain(question)

    return client, answer, answer_with_langchain, answer_streaming
