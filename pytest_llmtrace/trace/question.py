"""Where a trace keeps the user's question: an ordered list of sources, and the first that yields text wins.

OpenInference apps put the question in the root span's ``input.value``; OpenLLMetry's ``@workflow`` decorator writes
the function's arguments as JSON into ``traceloop.entity.input`` (``{"args": [...], "kwargs": {...}}``); other apps
keep it in an attribute of their own, often as JSON; and an app traced only by an LLM instrumentation has it only as
the user message it sent to the model. A source names one of these places:

- ``input.value``: the root span's attribute;
- ``traceloop.entity.input``: ``args[0]``, else the only string keyword argument; ``traceloop.entity.input:PATH``
  picks another one (``kwargs.question``, ``args[1]``);
- ``NAME`` or ``NAME:PATH``: any attribute of the root span, with an optional JSON path into its value
  (``app.request:$.body.question``; keys separated by ``.``, list indexes as ``[0]`` or ``.0``);
- ``langfuse.trace.input`` / ``langfuse.observation.input`` (Langfuse's ``@observe``: the function's arguments as
  ``{"args": [...], "kwargs": {...}}``, or the text itself) and ``gen_ai.prompt`` (LangSmith's export of a
  ``@traceable`` root: its inputs by parameter name): the text, else ``args[0]``, else the only text argument;
- ``llm.last_user_message``: the last user message of the first LLM call, in any convention ``views`` reads.

The same lookup names golden files on import, replays golden cases, and prints the root's input in the waterfall.
It depends on ``span`` and ``views`` only, so every layer above can use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError, did_you_mean
from pytest_llmtrace.trace.attr_values import loads_json
from pytest_llmtrace.trace.sdk_attrs import LANGFUSE_INPUT, LANGFUSE_TRACE_INPUT
from pytest_llmtrace.trace.span import GEN_AI_PROMPT, INPUT_VALUE, TRACELOOP_ENTITY_INPUT, AttrValue, Span
from pytest_llmtrace.trace.views import llm_call

LAST_USER_MESSAGE = "llm.last_user_message"
SDK_INPUTS = (LANGFUSE_TRACE_INPUT, LANGFUSE_INPUT, GEN_AI_PROMPT)  # a function's arguments, as JSON or as text
BUILTIN_SOURCES = (INPUT_VALUE, TRACELOOP_ENTITY_INPUT, *SDK_INPUTS, LAST_USER_MESSAGE)
DEFAULT_SOURCES = " ".join(BUILTIN_SOURCES)

_SEGMENT = re.compile(r'\[(\d+)\]|\["([^"]*)"\]|([^.\[\]"]+)')
_SEPARATORS = re.compile(r"[\s,]+")
_MAX_SHOWN_ATTRIBUTES = 30


class QuestionSourceError(LLMTraceError, ValueError):
    """A source that cannot be parsed; the message names it and the fix."""


@dataclass(frozen=True)
class QuestionSource:
    """One place a question may be: an attribute of the root span (with a JSON path), or the first LLM call."""

    attribute: str
    path: tuple[str, ...] | None = None  # None: the whole value (or traceloop's args[0] rule)

    def __str__(self) -> str:
        if self.path is None:
            return self.attribute
        return self.attribute + ":" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in self.path).lstrip(".")

    def read(self, root: Span, spans: Sequence[Span]) -> tuple[str | None, str]:
        """``(question, "")`` when this source yields text, else ``(None, why not)``."""
        if self.attribute == LAST_USER_MESSAGE:
            return _last_user_message(spans)
        if self.attribute not in root.attributes:
            return None, "absent"
        value: Any = root.attributes[self.attribute]
        path = self.path
        if path is None and self.attribute == TRACELOOP_ENTITY_INPUT:
            return _traceloop_default(value)
        if path is None and self.attribute in SDK_INPUTS:
            return _arguments_default(value)
        if path is not None:
            value, why = _walk(loads_json(value, _NOT_JSON), path)
            if why:
                return None, why
        return _text(value)


@dataclass(frozen=True)
class Question:
    """The question a trace asked, or ``text=None`` with what each source said instead."""

    text: str | None
    source: QuestionSource | None
    tried: tuple[tuple[QuestionSource, str], ...]  # (source, why it yielded nothing), in the order tried
    root_name: str = ""
    root_attributes: tuple[str, ...] = ()

    def explain(self) -> str:
        """Why there is no question: each source tried and why it gave nothing, and what the root span does have."""
        tried = "; ".join(f"{source} ({why})" for source, why in self.tried)
        names = self.root_attributes
        shown = ", ".join(names[:_MAX_SHOWN_ATTRIBUTES]) + (" ..." if len(names) > _MAX_SHOWN_ATTRIBUTES else "")
        hints = [
            f"{source}: {hint}"
            for source, why in self.tried
            if why == "absent" and (hint := did_you_mean(source.attribute, names))
        ]
        return (
            f"no question to replay: tried {tried}. The root span {self.root_name!r} has the attributes: "
            f"{shown or '(none)'}. "
            + (" ".join(hints) + " " if hints else "")
            + "Set llmtrace_question to the source that holds the question, e.g. 'my.attribute' or "
            "'traceloop.entity.input:kwargs.question' (see docs/conventions.md)."
        )


def parse_sources(text: str) -> tuple[QuestionSource, ...]:
    """Sources separated by spaces, commas or new lines; ``QuestionSourceError`` names a malformed one."""
    words = [w for w in _SEPARATORS.split(text.strip()) if w]
    if not words:
        raise QuestionSourceError(f"no question source given; use, in order of preference, e.g. {DEFAULT_SOURCES!r}")
    return tuple(_parse_one(word) for word in words)


def _parse_one(word: str) -> QuestionSource:
    attribute, sep, path_text = word.partition(":")
    if not attribute:
        raise QuestionSourceError(f"question source {word!r} has no attribute name before ':'")
    if not sep:
        return QuestionSource(attribute)
    if attribute == LAST_USER_MESSAGE:
        raise QuestionSourceError(f"question source {word!r}: {LAST_USER_MESSAGE} takes no JSON path")
    path_text = path_text.removeprefix("$").removeprefix(".")
    segments: list[str] = []
    position = 0
    while position < len(path_text):
        if path_text[position] == "." and segments:
            position += 1
        match = _SEGMENT.match(path_text, position)
        if match is None:
            raise QuestionSourceError(
                f"question source {word!r}: cannot read the JSON path at {path_text[position:]!r}; write keys "
                "separated by '.' and list indexes as [0], e.g. 'traceloop.entity.input:kwargs.question'"
            )
        segments.append(next(g for g in match.groups() if g is not None))
        position = match.end()
    if not segments:
        raise QuestionSourceError(f"question source {word!r} has an empty JSON path after ':'")
    return QuestionSource(attribute, tuple(segments))


def find_question(
    root: Span, spans: Iterable[Span] = (), sources: Sequence[QuestionSource] | str = DEFAULT_SOURCES
) -> Question:
    """The first source that yields text. ``spans`` (in start order) are where ``llm.last_user_message`` looks."""
    parsed = parse_sources(sources) if isinstance(sources, str) else tuple(sources)
    ordered = tuple(spans)
    tried: list[tuple[QuestionSource, str]] = []
    for source in parsed:
        text, why = source.read(root, ordered)
        if text is not None:
            return Question(text, source, tuple(tried), root.name, tuple(root.attributes))
        tried.append((source, why))
    return Question(None, None, tuple(tried), root.name, tuple(root.attributes))


# -- reading ---------------------------------------------------------------------------------------------------------


def _text(value: Any) -> tuple[str | None, str]:
    if not isinstance(value, str):
        return None, f"not text ({_type_name(value)})"
    if not value.strip():
        return None, "empty"
    return value, ""


_NOT_JSON = object()
_QUESTION_KEYS = ("question", "query", "input", "prompt")  # a function's inputs by name: the one that asks


def _walk(value: Any, path: Sequence[str]) -> tuple[Any, str]:
    if value is _NOT_JSON:
        return None, "not JSON"
    walked = ""
    for segment in path:
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, (list, tuple)) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            have = ", ".join(map(str, list(value)[:10])) if isinstance(value, Mapping) else ""
            where = walked or "the value"
            detail = f" (keys: {have})" if have else f" ({_type_name(value)})"
            return None, f"{where} has no {segment!r}{detail}"
        walked += f"[{segment}]" if segment.isdigit() else f".{segment}"
    return value, ""


def _traceloop_default(value: AttrValue) -> tuple[str | None, str]:
    """``args[0]`` when it is text, else the only text keyword argument: how ``@workflow`` records ``f(question)``."""
    decoded = loads_json(value, _NOT_JSON)
    if decoded is _NOT_JSON or not isinstance(decoded, Mapping):
        return None, "not the JSON object @workflow writes ({'args': [...], 'kwargs': {...}})"
    args = decoded.get("args")
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], str) and args[0].strip():
        return args[0], ""
    kwargs = decoded.get("kwargs")
    texts = [v for v in kwargs.values() if isinstance(v, str)] if isinstance(kwargs, Mapping) else []
    if len(texts) == 1 and texts[0].strip():
        return texts[0], ""
    names = ", ".join(kwargs) if isinstance(kwargs, Mapping) else ""
    return None, f"args[0] is not text and no single text kwarg{f' among {names}' if names else ''}; name one"


def _arguments_default(value: AttrValue) -> tuple[str | None, str]:
    """Text as it is; JSON text: ``@observe``'s ``args[0]`` or only text kwarg; inputs by name (``@traceable``):
    ``question`` (or ``query``, ``input``, ``prompt``), else the only text input."""
    decoded = loads_json(value, _NOT_JSON)
    if decoded is _NOT_JSON:
        return _text(value)
    if isinstance(decoded, str):
        return _text(decoded)
    if isinstance(decoded, Mapping) and ("args" in decoded or "kwargs" in decoded):
        return _traceloop_default(value)
    if isinstance(decoded, Mapping):
        named = next((decoded[k] for k in _QUESTION_KEYS if isinstance(decoded.get(k), str)), None)
        if named is not None and named.strip():
            return named, ""
        texts = [v for v in decoded.values() if isinstance(v, str)]
        if len(texts) == 1 and texts[0].strip():
            return texts[0], ""
        names = ", ".join(map(str, decoded))
        return None, f"no single text input among {names or 'no keys'}; name one, e.g. {GEN_AI_PROMPT}:question"
    return None, f"not text ({_type_name(decoded)})"


def _last_user_message(spans: Sequence[Span]) -> tuple[str | None, str]:
    call = next((c for c in map(llm_call, spans) if c is not None), None)
    if call is None:
        return None, "the trace has no LLM call"
    message = next((m for m in reversed(call.input_messages) if m.role.strip().lower() == "user"), None)
    if message is None:
        return None, f"the first LLM call {call.span.name!r} has no user message"
    return _text(message.content)


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "JSON object"
    if isinstance(value, (list, tuple)):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__
