"""Langfuse's and LangSmith's facts written again under the OpenTelemetry GenAI names, beside the source's own.

A golden file outlives the SDK that made it: a reader that knows only the GenAI conventions (a budget on the time
to the first token, a cost report, another tool) finds the model, the messages, the token counts, the cost and the
time to the first token under ``gen_ai.*``, while ``langfuse.*`` / ``langsmith.*`` stay as they came. Names already
on the span are never overwritten. ``gen_ai.usage.cost`` (USD) and ``gen_ai.server.time_to_first_token`` (seconds)
are the names the budgets read (``sdk_attrs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from pytest_llmtrace.trace.sdk_attrs import (
    GEN_AI_TIME_TO_FIRST_TOKEN,
    GEN_AI_USAGE_COST,
    LANGFUSE_STATUS_MESSAGE,
    cost_usd,
    langfuse_level,
    langsmith_kind,
    observation_type,
    time_to_first_token_s,
)
from pytest_llmtrace.trace.span import (
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OPERATION_NAME,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    AttrValue,
    Span,
    Status,
    attr_str,
)
from pytest_llmtrace.trace.views import Message, llm_call


def with_genai(span: Span) -> Span:
    """The span with the GenAI attributes its Langfuse or LangSmith attributes imply (itself when there are none).

    A Langfuse observation of level ERROR gets the ERROR status too, when it has none: apps that catch a SQL error
    often mark only the level, and the checks and ``--errors-only`` read the status.
    """
    if observation_type(span) is None and langsmith_kind(span) is None:
        return span
    extra: dict[str, AttrValue] = {}
    call = llm_call(span)
    if call is not None and call.convention in ("langfuse", "langsmith"):
        extra[GEN_AI_OPERATION_NAME] = "chat"
        if call.model:
            extra[GEN_AI_REQUEST_MODEL] = call.model
            extra[GEN_AI_RESPONSE_MODEL] = call.model
        if call.provider:
            extra[GEN_AI_PROVIDER_NAME] = call.provider
        if call.input_messages:
            extra[GEN_AI_INPUT_MESSAGES] = _messages_json(call.input_messages)
        if call.output_messages:
            extra[GEN_AI_OUTPUT_MESSAGES] = _messages_json(call.output_messages)
        if call.prompt_tokens is not None:
            extra[GEN_AI_USAGE_INPUT_TOKENS] = call.prompt_tokens
        if call.completion_tokens is not None:
            extra[GEN_AI_USAGE_OUTPUT_TOKENS] = call.completion_tokens
    cost = cost_usd(span)
    if cost is not None:
        extra[GEN_AI_USAGE_COST] = cost
    ttft = time_to_first_token_s(span)
    if ttft is not None:
        extra[GEN_AI_TIME_TO_FIRST_TOKEN] = ttft
    missing = {k: v for k, v in extra.items() if k not in span.attributes}
    status, message = span.status, span.status_message
    if status is Status.UNSET and langfuse_level(span) == "ERROR":
        status = Status.ERROR
        message = message or attr_str(span.attributes.get(LANGFUSE_STATUS_MESSAGE)) or ""
    if not missing and status is span.status:
        return span
    attributes = dict(sorted({**span.attributes, **missing}.items()))
    return replace(span, attributes=attributes, status=status, status_message=message)


def all_with_genai(spans: Iterable[Span]) -> list[Span]:
    return [with_genai(s) for s in spans]


def _messages_json(messages: Iterable[Message]) -> str:
    """The semconv 1.37 shape: ``[{"role", "parts": [{"type": "text", "content"}]}]``."""
    return json.dumps(
        [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in messages], ensure_ascii=False
    )
