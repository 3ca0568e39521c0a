"""The replay matchers: which recorded call a request may take, by name, so users add their own (vcrpy's
``register_matcher``). The built-ins compare the model, the whole conversation, the last user message or the system
prompt, all after collapsing whitespace runs; ``match=`` and ``llmtrace_replay_match`` name them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence

from pytest_llmtrace.core.registry import Registry, caller_place
from pytest_llmtrace.modelapi.backend import BackendError, ChatRequest, normalize_model_name
from pytest_llmtrace.trace.views import Message

Matcher = Callable[[ChatRequest, ChatRequest], bool]

_MATCHERS: Registry[Matcher] = Registry("replay matcher")
MATCHERS: Mapping[str, Matcher] = _MATCHERS  # read-only and live: registrations show up here
_MATCHER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def register_matcher(name: str, matcher: Matcher, *, replace: bool = False) -> None:
    """Make ``name`` usable in ``match=`` and in the ``llmtrace_replay_match`` ini value.

    ``matcher(request, recorded) -> bool`` says whether a recorded call may answer a request. Both arguments are
    ``ChatRequest`` objects: ``request`` is what the app sent (model name as sent, messages, options, the route and
    the raw JSON ``body``); ``recorded`` is the request the recorded call answered, rebuilt from its span (``model``
    is the name it is served under, ``messages`` its input messages, ``options`` its invocation parameters; ``route``
    is ``""`` and ``body`` empty, as a recording does not hold them). It is called from server threads, so it must
    not change shared state; an exception it raises fails the request with a 500 that names the matcher.

    A call answers when every configured matcher returns true; on a miss, the report lists for each near recording
    the matchers that returned false. Register from a ``conftest.py`` (every xdist worker imports it)::

        def same_question_any_date(request: ChatRequest, recorded: ChatRequest) -> bool:
            return strip_dates(request.last_user_message) == strip_dates(recorded.last_user_message)

        register_matcher("question_any_date", same_question_any_date)

    A name that is taken raises ``ValueError`` naming where it was registered first and again, unless
    ``replace=True``: two plugins choosing one name should not silently change each other's matching.
    """
    if not _MATCHER_NAME.fullmatch(name):
        raise ValueError(f"replay matcher name {name!r} must be a word (letters, digits, '_', '.', '-'), no spaces")
    if not callable(matcher):
        raise TypeError(f"replay matcher {name!r} must be a function (request, recorded) -> bool")
    _MATCHERS.register(name, matcher, place=caller_place(1), replace=replace)


@functools.lru_cache(maxsize=4096)
def _text(value: str) -> str:
    """Whitespace runs collapsed and stripped (cached: a recorded prompt is compared with every request)."""
    return re.sub(r"\s+", " ", value).strip()


def _role(message: Message) -> str:
    return message.role.strip().lower()


def _same_model(request: ChatRequest, recorded: ChatRequest) -> bool:
    return normalize_model_name(request.model) == normalize_model_name(recorded.model)


def _same_messages(request: ChatRequest, recorded: ChatRequest) -> bool:
    def key(messages: Sequence[Message]) -> list[tuple[str, str]]:
        return [(_role(m), _text(m.content)) for m in messages]

    return key(request.messages) == key(recorded.messages)


def _same_last_user_message(request: ChatRequest, recorded: ChatRequest) -> bool:
    def key(messages: Sequence[Message]) -> str:
        return next((_text(m.content) for m in reversed(messages) if _role(m) == "user"), "")

    return key(request.messages) == key(recorded.messages)


def _same_system(request: ChatRequest, recorded: ChatRequest) -> bool:
    def key(messages: Sequence[Message]) -> list[str]:
        return [_text(m.content) for m in messages if _role(m) == "system"]

    return key(request.messages) == key(recorded.messages)


register_matcher("model", _same_model)
register_matcher("messages", _same_messages)
register_matcher("last_user_message", _same_last_user_message)
register_matcher("system", _same_system)


def agrees(name: str, request: ChatRequest, recorded: ChatRequest) -> bool:
    try:
        return bool(MATCHERS[name](request, recorded))
    except Exception as exc:  # a user's matcher: the app sees a 500 naming it, the run goes on
        raise BackendError(500, f"replay matcher {name!r} raised {type(exc).__name__}: {exc}") from exc
