"""LLM calls read from each attribute convention: OpenInference, OpenLLMetry, and the OTel GenAI generations.

The attribute sets below are what the installed instrumentations wrote in a real run against the Ollama-API front
(opentelemetry-instrumentation-ollama 0.62.4; opentelemetry-instrumentation-openai-v2 2.4b0 with
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``); the event shapes are the ones documented in
docs/conventions.md. tests/services/test_autoinstr.py records the same spans live.
"""

from __future__ import annotations

import json

import pytest
from support import span

from pytest_llmtrace.checks.budgets import latencies_ms
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.span import AttrValue, SpanEvent
from pytest_llmtrace.trace.views import LLM_READERS, Message, llm_call, span_kind

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SYSTEM = "You write SQL."
QUESTION = "How many customers?"
ANSWER = "SELECT count(*) FROM customers;"


def event(name: str, **attributes: AttrValue) -> SpanEvent:
    return SpanEvent(name=name, time_unix_nano=1, attributes=attributes)


OPENLLMETRY: dict[str, AttrValue] = {  # opentelemetry-instrumentation-ollama 0.62.4, ollama.chat
    "llm.request.type": "chat",
    "gen_ai.request.model": "qwen-sql-prod",
    "llm.is_streaming": False,
    "gen_ai.prompt.0.role": "system",
    "gen_ai.prompt.0.content": SYSTEM,
    "gen_ai.prompt.1.role": "user",
    "gen_ai.prompt.1.content": QUESTION,
    "gen_ai.completion.0.content": ANSWER,
    "gen_ai.completion.0.role": "assistant",
    "gen_ai.response.model": "qwen-sql-prod",
    "llm.usage.total_tokens": 18,
    "gen_ai.usage.output_tokens": 3,
    "gen_ai.usage.input_tokens": 15,
    "gen_ai.system": "Ollama",
}

GENAI_LATEST: dict[str, AttrValue] = {  # opentelemetry-instrumentation-openai-v2 2.4b0, span_only content
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "qwen-sql-prod",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.temperature": 0,
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.response.model": "qwen-sql-prod",
    "gen_ai.usage.input_tokens": 15,
    "gen_ai.usage.output_tokens": 3,
    "gen_ai.input.messages": json.dumps(
        [
            {"role": "system", "parts": [{"content": SYSTEM, "type": "text"}]},
            {"role": "user", "parts": [{"content": QUESTION, "type": "text"}]},
        ]
    ),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"content": ANSWER, "type": "text"}], "finish_reason": "stop"}]
    ),
}
EXPECTED_INPUT = (Message("system", SYSTEM), Message("user", QUESTION))
EXPECTED_OUTPUT = (Message("assistant", ANSWER),)


def test_openllmetry_span_is_an_llm_call_with_model_provider_messages_and_tokens() -> None:
    call = llm_call(span("1", name="ollama.chat", attrs=OPENLLMETRY))

    assert call is not None
    assert call.convention == "openllmetry"
    assert (call.model, call.provider) == ("qwen-sql-prod", "Ollama")
    assert call.input_messages == EXPECTED_INPUT
    assert call.output_messages == EXPECTED_OUTPUT
    assert call.output_text == ANSWER
    assert (call.prompt_tokens, call.completion_tokens, call.total_tokens) == (15, 3, 18)


def test_openllmetry_older_usage_names_and_a_missing_total_is_prompt_plus_completion() -> None:
    attrs = {k: v for k, v in OPENLLMETRY.items() if not k.startswith(("gen_ai.usage", "llm.usage"))}
    attrs.update({"gen_ai.usage.prompt_tokens": "40", "gen_ai.usage.completion_tokens": 6})
    call = llm_call(span("1", attrs=attrs))

    assert call is not None
    assert (call.prompt_tokens, call.completion_tokens, call.total_tokens) == (40, 6, 46)


def test_openllmetry_multimodal_content_is_its_text_parts_and_the_requested_model_wins() -> None:
    attrs = dict(OPENLLMETRY)
    attrs["gen_ai.prompt.1.content"] = json.dumps([{"type": "text", "text": QUESTION}, {"type": "image_url"}])
    attrs["gen_ai.response.model"] = "qwen-sql-prod:latest"
    call = llm_call(span("1", attrs=attrs))

    assert call is not None
    assert call.input_messages[1] == Message("user", QUESTION)
    assert call.model == "qwen-sql-prod"  # what the app asked for is what replay must answer to


@pytest.mark.parametrize("request_type", ["embedding", "rerank"])
def test_openllmetry_embedding_and_rerank_requests_are_not_llm_calls(request_type: str) -> None:
    assert llm_call(span("1", attrs={**OPENLLMETRY, "llm.request.type": request_type})) is None


def test_otel_genai_latest_json_attributes() -> None:
    call = llm_call(span("1", name="chat qwen-sql-prod", attrs=GENAI_LATEST))

    assert call is not None
    assert call.convention == "otel-genai"
    assert (call.model, call.provider) == ("qwen-sql-prod", "openai")
    assert call.input_messages == EXPECTED_INPUT
    assert call.output_messages == EXPECTED_OUTPUT
    assert (call.prompt_tokens, call.completion_tokens, call.total_tokens) == (15, 3, 18)
    assert call.invocation_parameters == {"temperature": 0}


def test_otel_genai_system_instructions_become_the_leading_system_message_once() -> None:
    attrs = dict(GENAI_LATEST)
    attrs["gen_ai.input.messages"] = json.dumps([{"role": "user", "parts": [{"type": "text", "content": QUESTION}]}])
    attrs["gen_ai.system_instructions"] = json.dumps([{"type": "text", "content": SYSTEM}])
    call = llm_call(span("1", attrs=attrs))
    assert call is not None
    assert call.input_messages == EXPECTED_INPUT

    already = llm_call(span("1", attrs={**GENAI_LATEST, "gen_ai.system_instructions": SYSTEM}))
    assert already is not None
    assert already.input_messages == EXPECTED_INPUT  # the system message is in the input already: not twice


def test_otel_genai_messages_on_the_inference_details_event() -> None:
    content = {k: GENAI_LATEST[k] for k in ("gen_ai.input.messages", "gen_ai.output.messages")}
    attrs = {k: v for k, v in GENAI_LATEST.items() if k not in content}
    call = llm_call(span("1", attrs=attrs, events=(event("gen_ai.client.inference.operation.details", **content),)))

    assert call is not None
    assert (call.input_messages, call.output_messages) == (EXPECTED_INPUT, EXPECTED_OUTPUT)


BASE_EVENTS: dict[str, AttrValue] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "qwen-sql-prod",
    "gen_ai.usage.input_tokens": 15,
    "gen_ai.usage.output_tokens": 3,
}


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(  # the body in attributes of its own name, as a log-to-span-event bridge writes it
            (
                event("gen_ai.system.message", content=SYSTEM),
                event("gen_ai.user.message", content=QUESTION),
                event("gen_ai.choice", index=0, finish_reason="stop", **{"message.content": ANSWER}),
            ),
            id="flat body",
        ),
        pytest.param(  # Azure's SDKs: the body as JSON in gen_ai.event.content
            (
                event("gen_ai.system.message", **{"gen_ai.event.content": json.dumps({"content": SYSTEM})}),
                event("gen_ai.user.message", **{"gen_ai.event.content": json.dumps({"content": QUESTION})}),
                event(
                    "gen_ai.choice",
                    **{"gen_ai.event.content": json.dumps({"index": 0, "message": {"content": ANSWER}})},
                ),
            ),
            id="gen_ai.event.content",
        ),
        pytest.param(  # Strands: content blocks as JSON
            (
                event("gen_ai.system.message", content=json.dumps([{"text": SYSTEM}])),
                event("gen_ai.user.message", content=json.dumps([{"text": QUESTION}])),
                event("gen_ai.choice", message=json.dumps([{"text": ANSWER}]), finish_reason="end_turn"),
            ),
            id="content blocks",
        ),
        pytest.param(  # the oldest GenAI events: one JSON attribute for the prompt and one for the completion
            (
                event(
                    "gen_ai.content.prompt",
                    **{
                        "gen_ai.prompt": json.dumps(
                            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
                        )
                    },
                ),
                event("gen_ai.content.completion", **{"gen_ai.completion": json.dumps([{"content": ANSWER}])}),
            ),
            id="gen_ai.content.prompt",
        ),
    ],
)
def test_otel_genai_messages_as_span_events(events: tuple[SpanEvent, ...]) -> None:
    call = llm_call(span("1", attrs=BASE_EVENTS, events=events))

    assert call is not None
    assert call.convention == "otel-genai"
    assert (call.input_messages, call.output_messages) == (EXPECTED_INPUT, EXPECTED_OUTPUT)
    assert (call.provider, call.total_tokens) == ("openai", 18)


@pytest.mark.parametrize("operation", ["embeddings", "execute_tool", "invoke_agent", "create_agent", "retrieval"])
def test_otel_genai_operations_that_are_not_inference_are_not_llm_calls(operation: str) -> None:
    assert llm_call(span("1", attrs={**GENAI_LATEST, "gen_ai.operation.name": operation})) is None


def test_a_gen_ai_span_without_operation_name_is_an_llm_call_when_it_names_a_model() -> None:
    older = {k: v for k, v in BASE_EVENTS.items() if k != "gen_ai.operation.name"}
    assert llm_call(span("1", attrs=older)) is not None
    assert llm_call(span("1", attrs={"gen_ai.system": "openai"})) is None


def test_readers_are_tried_in_order_and_openinference_wins_on_a_span_with_both() -> None:
    assert list(LLM_READERS) == ["openinference", "openllmetry", "langfuse", "langsmith", "otel-genai"]
    both = {**OPENLLMETRY, "openinference.span.kind": "LLM", "llm.model_name": "oi-model"}
    call = llm_call(span("1", attrs=both))
    assert call is not None
    assert (call.convention, call.model) == ("openinference", "oi-model")


@pytest.mark.parametrize(
    "hostile",
    ["[" * 100_000 + "]" * 100_000, "{not json", '[{"role": {"x": 1}, "parts": 7}]', '[1, "two", null]', "7"],
)
def test_unreadable_genai_json_is_no_messages_not_an_error(hostile: str) -> None:
    attrs = {**GENAI_LATEST, "gen_ai.input.messages": hostile, "gen_ai.system_instructions": hostile}
    call = llm_call(span("1", attrs=attrs))
    assert call is not None
    assert all(isinstance(m.content, str) for m in call.input_messages)


def test_an_auto_instrumented_llm_span_is_llm_for_find_latency_and_the_waterfall() -> None:
    root = span("1", name="text2sql.workflow", end_ms=100)
    chat = span("2", "1", name="ollama.chat", attrs=OPENLLMETRY, start_ms=10, end_ms=60)
    sql = span(
        "3", "1", name="SELECT", attrs={"db.statement": ANSWER, "db.system": "postgresql"}, start_ms=70, end_ms=80
    )
    trace = Trace([root, chat, sql])

    assert span_kind(chat) == "LLM"
    assert span_kind(sql) == span_kind(root) == "UNKNOWN"
    assert trace.find(kind="llm") == (chat,)
    assert latencies_ms(trace)["LLM"] == pytest.approx(50.0)
    assert trace.total_tokens == 18
    line = next(line for line in str(trace).splitlines() if "ollama.chat" in line)
    assert line.split()[1] == "LLM"
    assert line.endswith("convention=openllmetry  model=qwen-sql-prod  tokens=15+3")
