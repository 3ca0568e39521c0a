"""Replaying golden traces over the Ollama API: real recordings, the real HTTP front, the clients apps really use.

Every test reads a trace recorded from fixtures/gateway/app.py and serves it with ``ReplayBackend`` behind
``OllamaAPIServer``; nothing is mocked, so a recording the clients cannot consume, a counter lost on the way or a
miss that does not reach the app as an error fails here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from pytest_llmtrace.modelapi import BackendError, ChatRequest, OllamaAPIServer, replay, replay_matchers
from pytest_llmtrace.modelapi.replay import (
    EVAL_TOKEN_WEIGHT,
    MATCHERS,
    ReplayBackend,
    ReplayServer,
    register_matcher,
    replay_server,
)
from pytest_llmtrace.modelapi.replay_misses import format_prompt_diff
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace
from pytest_llmtrace.trace.views import LLMCall, Message

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "golden_traces"
FIXTURES = ROOT / "fixtures"
MODEL = "qwen-sql-prod"
PAID_SENTENCE = "Revenue means the sum of orders.amount over orders with status 'paid'."
SLOW_NS = 2_000_000_000
PAID_OR_PENDING = "Revenue means the sum of orders.amount over orders with status 'paid' or 'pending'."


def golden(name: str) -> Trace:
    return read_trace(GOLDEN / f"{name}.json")


def only_call(trace: Trace) -> LLMCall:
    (call,) = trace.llm_calls
    return call


def wire(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def with_duration(call: LLMCall, duration_ns: int) -> LLMCall:
    span = dataclasses.replace(call.span, end_time_unix_nano=call.span.start_time_unix_nano + duration_ns)
    return dataclasses.replace(call, span=span)


def changed_system_prompt(call: LLMCall) -> list[dict[str, str]]:
    messages = wire(call.input_messages)
    assert PAID_SENTENCE in messages[0]["content"]
    messages[0]["content"] = messages[0]["content"].replace(PAID_SENTENCE, PAID_OR_PENDING)
    return messages


@pytest.fixture
def trace() -> Trace:
    """A multi-line fenced answer: exact text survives streaming only if whitespace and newlines do."""
    return golden("fenced_largest_order")


@pytest.fixture
def call(trace: Trace) -> LLMCall:
    return only_call(trace)


@pytest.fixture
def server(trace: Trace) -> Iterator[ReplayServer]:
    with replay_server(trace) as running:
        yield running


@pytest.fixture
def client(server: ReplayServer) -> ollama.Client:
    return ollama.Client(host=server.url)


# -- the ollama client ------------------------------------------------------------------------------------------------


def test_chat_gets_the_recorded_answer_counts_and_duration(
    server: ReplayServer, client: ollama.Client, call: LLMCall
) -> None:
    response = client.chat(model=MODEL, messages=wire(call.input_messages), options={"temperature": 0}, stream=False)

    assert response.message.content == call.output_text
    assert response.message.content.startswith("```sql\nSELECT o.id")  # the fixture is what the docstring says
    assert (
        (response.prompt_eval_count, response.eval_count) == (call.prompt_tokens, call.completion_tokens) == (307, 36)
    )
    recorded_ns = call.span.duration_ns
    assert response.total_duration == recorded_ns > 0
    assert response.load_duration == 0
    prompt_ns = recorded_ns * 307 // (307 + EVAL_TOKEN_WEIGHT * 36)
    assert (response.prompt_eval_duration, response.eval_duration) == (prompt_ns, recorded_ns - prompt_ns)
    assert server.backend.unused() == []
    assert server.backend.misses == []


def test_streamed_chat_joins_to_the_recorded_answer(client: ollama.Client, call: LLMCall) -> None:
    parts = list(client.chat(model=MODEL, messages=wire(call.input_messages), stream=True))

    assert len(parts) > 3
    assert "".join(p.message.content or "" for p in parts) == call.output_text
    final = parts[-1]
    assert final.done is True
    assert (final.prompt_eval_count, final.eval_count) == (call.prompt_tokens, call.completion_tokens)
    assert final.total_duration == call.span.duration_ns


def test_generate_with_system_and_prompt_matches_the_recorded_chat(client: ollama.Client, call: LLMCall) -> None:
    system, user = call.input_messages
    response = client.generate(model=MODEL, system=system.content, prompt=user.content, stream=False)

    assert response.response == call.output_text
    assert (response.prompt_eval_count, response.eval_count) == (call.prompt_tokens, call.completion_tokens)
    assert response.total_duration == call.span.duration_ns


def test_tags_and_show_list_the_recorded_model(client: ollama.Client) -> None:
    assert [m.model for m in client.list().models] == [MODEL + ":latest"]
    assert client.show(MODEL).capabilities == ["completion"]


def test_model_name_with_latest_tag_is_the_recorded_model(client: ollama.Client, call: LLMCall) -> None:
    response = client.chat(model=MODEL + ":latest", messages=wire(call.input_messages))
    assert response.message.content == call.output_text


# -- other clients ----------------------------------------------------------------------------------------------------


def test_langchain_chat_ollama_gets_the_recording(server: ReplayServer, call: LLMCall) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=server.url, temperature=0)
    message = llm.invoke([(m.role, m.content) for m in call.input_messages])

    assert message.content == call.output_text
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == call.prompt_tokens
    assert message.usage_metadata["output_tokens"] == call.completion_tokens
    assert server.backend.unused() == []


def test_openai_chat_completions_get_answer_and_usage() -> None:
    first, second = (only_call(golden(n)) for n in ("customers_by_tier", "top_customers_2024"))
    with replay_server([first, second]) as running, httpx.Client(base_url=running.url) as http:
        body = http.post("/v1/chat/completions", json={"model": MODEL, "messages": wire(first.input_messages)})
        assert body.status_code == 200
        completion: dict[str, Any] = body.json()
        openai = pytest.importorskip("openai", reason="needs openai, from the README's set-up: pip install -e '.[dev]'")
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="ollama")
        try:
            via_sdk = sdk.chat.completions.create(model=MODEL, messages=wire(second.input_messages))
        finally:
            sdk.close()

    assert completion["choices"][0]["message"]["content"] == first.output_text
    assert completion["usage"] == {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": first.completion_tokens,
        "total_tokens": first.total_tokens,
    }
    assert via_sdk.choices[0].message.content == second.output_text
    assert via_sdk.usage is not None
    assert (via_sdk.usage.prompt_tokens, via_sdk.usage.completion_tokens) == (
        second.prompt_tokens,
        second.completion_tokens,
    )


def reference_app(server: ReplayServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The reference gateway's entry point, its model served by ``server`` and its database unreachable."""
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    monkeypatch.setenv("DB_URI", "postgresql://replay@127.0.0.1:1/company_db?connect_timeout=1")  # nothing listens
    monkeypatch.delenv("LLM_MODEL", raising=False)
    monkeypatch.syspath_prepend(str(FIXTURES))
    # Imported afresh and forgotten after the test: a later in-process pytester run must import its own project's
    # gateway, not find this one in sys.modules (test_golden_replay's changed-prompt test passed wrongly after it).
    for name in ("gateway", "gateway.app"):
        monkeypatch.setitem(sys.modules, name, None)  # undone after the test: the entry is as it was before
        del sys.modules[name]
    from gateway.app import handle_user_request

    return handle_user_request


def test_the_reference_app_gets_the_recorded_sql(
    server: ReplayServer, trace: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle_user_request = reference_app(server, monkeypatch)
    assert trace.input is not None
    result = handle_user_request(trace.input)

    (statement,) = trace.sql_statements
    assert result["sql"] == statement.text  # the recorded fenced answer, unwrapped by the app as when recorded
    assert result["error"]  # only the LLM leg is replayed; the database is deliberately unreachable here
    assert server.backend.unused() == []
    assert server.backend.misses == []


# -- misses -----------------------------------------------------------------------------------------------------------


def test_changed_system_prompt_is_a_miss_with_a_diff(
    server: ReplayServer, client: ollama.Client, call: LLMCall
) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL, messages=changed_system_prompt(call))

    assert caught.value.status_code == 400
    assert caught.value.error == (
        "no recorded LLM call matches this request (prompt changed?); "
        "nearest: recorded call #0 'ollama.chat' (similarity 0.99, differs in messages)"
    )
    (miss,) = server.backend.misses
    assert miss.nearest == call
    assert miss.model == MODEL
    assert miss.route == "/api/chat"
    assert miss.messages[1] == Message("user", "What was the largest single order ever?")
    assert miss.diff.splitlines()[:8] == [
        "--- recorded prompt",
        "+++ new prompt",
        "@@ -1,7 +1,7 @@",
        " [system]",
        " You translate questions about a B2B SaaS company's database into SQL.",
        " Answer with exactly one PostgreSQL SELECT statement and nothing else: no explanation, no comments.",
        "-" + PAID_SENTENCE,
        "+" + PAID_OR_PENDING,
    ]
    assert server.backend.unused() == [call]  # a miss uses nothing up
    explained = miss.explain()
    assert explained.startswith("no recorded LLM call matches the request to 'qwen-sql-prod' on /api/chat\n")
    assert miss.diff in explained


def test_a_miss_fails_streaming_and_openai_requests_too(server: ReplayServer, call: LLMCall) -> None:
    messages = changed_system_prompt(call)
    with pytest.raises(ollama.ResponseError, match=re.escape("(prompt changed?)")):
        list(ollama.Client(host=server.url).chat(model=MODEL, messages=messages, stream=True))
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": messages})

    assert response.status_code == 400
    assert "no recorded LLM call matches this request (prompt changed?)" in response.json()["error"]["message"]
    assert [m.route for m in server.backend.misses] == ["/api/chat", "/v1/chat/completions"]


def test_nearest_candidates_are_ranked_by_similarity(call: LLMCall) -> None:
    names = ("fenced_largest_order", "customers_by_tier", "top_customers_2024", "pending_orders_value")
    backend = ReplayBackend([only_call(golden(n)) for n in names], speed="virtual")
    messages = tuple(Message(m["role"], m["content"]) for m in changed_system_prompt(call))

    with pytest.raises(Exception, match="nearest: recorded call #0"):
        backend.chat(ChatRequest(MODEL, messages))

    (miss,) = backend.misses
    assert len(miss.candidates) == 3
    assert miss.candidates[0].index == 0
    similarities = [c.similarity for c in miss.candidates]
    assert similarities == sorted(similarities, reverse=True)
    assert similarities[0] > similarities[1]


def test_unused_until_requested_and_a_recording_answers_once(
    server: ReplayServer, client: ollama.Client, call: LLMCall
) -> None:
    assert server.backend.unused() == [call]

    client.chat(model=MODEL, messages=wire(call.input_messages))
    assert server.backend.unused() == []
    with pytest.raises(ollama.ResponseError, match="already used"):
        client.chat(model=MODEL, messages=wire(call.input_messages))

    (miss,) = server.backend.misses
    (nearest, *_) = miss.candidates
    assert (nearest.used, nearest.differs_in, nearest.similarity) == (True, (), 1.0)
    assert miss.diff == ""
    assert "the prompt is the same as the nearest recording's" in miss.explain()


def test_calls_are_matched_by_content_not_order() -> None:
    first, second = (only_call(golden(n)) for n in ("customers_by_tier", "inactive_products"))
    with replay_server([first, second], speed="virtual") as running:
        client = ollama.Client(host=running.url)
        answers = [client.chat(model=MODEL, messages=wire(c.input_messages)).message.content for c in (second, first)]

    assert answers == [second.output_text, first.output_text]


def test_parallel_http_requests_use_each_recording_once(call: LLMCall) -> None:
    """Apps fire model calls in parallel (batch evaluation); each gets its own connection and server thread."""
    backend = ReplayBackend([call] * 10, speed="virtual")
    outcomes: list[str] = []
    barrier = threading.Barrier(30)
    with OllamaAPIServer(backend) as running:
        clients = [ollama.Client(host=running.url) for _ in range(30)]

        def ask(client: ollama.Client) -> None:
            barrier.wait()
            try:
                client.chat(model=MODEL, messages=wire(call.input_messages))
                outcomes.append("answered")
            except ollama.ResponseError:
                outcomes.append("missed")

        threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

    assert sorted(outcomes) == ["answered"] * 10 + ["missed"] * 20
    assert backend.unused() == []
    assert len(backend.misses) == 20


@pytest.mark.parametrize("attempt", range(5))
def test_threads_racing_in_the_backend_use_each_recording_once(call: LLMCall, attempt: int) -> None:
    """A tiny switch interval makes threads interleave between "find an unused call" and "mark it used".

    A race is probabilistic, so the test runs several times (0.1 s each); without the lock most attempts fail.
    """
    short = dataclasses.replace(call, input_messages=(Message("user", "How many?"),))  # keeps the misses cheap
    backend = ReplayBackend([short] * 200, speed="virtual")
    request = ChatRequest(MODEL, (Message("user", "How many?"),))
    answered: list[int] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        for _ in range(50):
            with contextlib.suppress(BackendError):
                answered.append(backend.chat(request).eval_count)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(interval)

    assert len(answered) == 200
    assert len(backend.misses) == 8 * 50 - 200
    assert backend.unused() == []


# -- matchers ---------------------------------------------------------------------------------------------------------


def test_last_user_message_matcher_ignores_a_changed_system_prompt(call: LLMCall) -> None:
    with replay_server([call], match=("model", "last_user_message")) as running:
        response = ollama.Client(host=running.url).chat(model=MODEL, messages=changed_system_prompt(call))
    assert response.message.content == call.output_text


def test_system_matcher_ignores_the_question_but_not_the_system_prompt(call: LLMCall) -> None:
    backend = ReplayBackend([call, call], match=("system",), speed="virtual")
    system = Message("system", call.input_messages[0].content)

    answer = backend.chat(ChatRequest(MODEL, (system, Message("user", "Something else entirely?"))))
    assert answer.text == call.output_text
    changed = Message("system", system.content.replace(PAID_SENTENCE, PAID_OR_PENDING))
    with pytest.raises(Exception, match="differs in system"):
        backend.chat(ChatRequest(MODEL, (changed, Message("user", "Something else entirely?"))))


def test_messages_match_after_normalizing_role_case_and_whitespace(call: LLMCall) -> None:
    backend = ReplayBackend([call], speed="virtual")
    system, user = call.input_messages
    reflowed = (
        Message("System", "  " + re.sub(r"\s+", "  \n ", system.content)),
        Message("USER", user.content + "\n\n"),
    )

    assert backend.chat(ChatRequest(MODEL + ":latest", reflowed)).text == call.output_text


def test_model_matcher_tells_recorded_models_apart(call: LLMCall) -> None:
    canary_answer = (Message("assistant", "SELECT 1;"),)
    canary = dataclasses.replace(call, model="qwen-sql-canary:latest", output_messages=canary_answer)
    backend = ReplayBackend([call, canary], speed="virtual")
    messages = tuple(Message(m.role, m.content) for m in call.input_messages)

    assert [m.name for m in backend.models()] == ["qwen-sql-prod:latest", "qwen-sql-canary:latest"]
    assert backend.chat(ChatRequest("qwen-sql-canary", messages)).text == "SELECT 1;"
    with pytest.raises(Exception, match=re.escape("similarity 1.00, differs in model")):
        backend.chat(ChatRequest("qwen-sql-canary", messages))


def test_model_option_serves_the_recording_under_another_name(call: LLMCall) -> None:
    backend = ReplayBackend([dataclasses.replace(call, model=None)], model="qwen-sql-next", speed="virtual")
    messages = tuple(Message(m.role, m.content) for m in call.input_messages)

    assert [m.name for m in backend.models()] == ["qwen-sql-next:latest"]
    assert backend.chat(ChatRequest("qwen-sql-next", messages)).text == call.output_text


def test_a_recording_without_model_name_needs_the_model_option(call: LLMCall) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("recorded LLM call #0 'ollama.chat' has no model name (llm.model_name, gen_ai.request.model)"),
    ):
        ReplayBackend([dataclasses.replace(call, model=None)])


def test_unknown_matcher_names_the_valid_ones(trace: Trace) -> None:
    expected = (
        "unknown replay matcher 'prompt'; valid matchers: last_user_message, messages, model, system "
        "(add one with pytest_llmtrace.modelapi.replay.register_matcher)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        ReplayBackend(trace, match=("model", "prompt"))
    with pytest.raises(ValueError, match=re.escape("unknown replay matcher 'mesages'; did you mean 'messages'?;")):
        ReplayBackend(trace, match=("mesages",))


@pytest.fixture
def own_matchers() -> Iterator[None]:
    """The registry is process-wide: a matcher a test registers must not outlive the test."""
    before = replay_matchers._MATCHERS.copy()
    yield
    replay_matchers._MATCHERS.restore(before)


def test_built_in_matchers_are_registered_in_order() -> None:
    assert tuple(MATCHERS) == ("model", "messages", "last_user_message", "system")


def test_a_registered_matcher_replays_over_http_and_is_named_in_misses(call: LLMCall, own_matchers: None) -> None:
    seen: list[tuple[ChatRequest, ChatRequest]] = []

    def same_question_any_case(request: ChatRequest, recorded: ChatRequest) -> bool:
        seen.append((request, recorded))
        return request.last_user_message.casefold() == recorded.last_user_message.casefold()

    register_matcher("question_any_case", same_question_any_case)
    messages = changed_system_prompt(call)
    messages[-1]["content"] = messages[-1]["content"].upper()
    with replay_server([call], match=("model", "question_any_case"), speed="virtual") as running:
        client = ollama.Client(host=running.url)
        answer = client.chat(model=MODEL, messages=messages)
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model=MODEL, messages=[{"role": "user", "content": "Something else?"}])

    assert "question_any_case" in tuple(MATCHERS)
    assert answer.message.content == call.output_text
    assert "differs in question_any_case, already used" in caught.value.error
    request, recorded = seen[0]
    assert (request.model, request.route, request.body["messages"]) == (MODEL, "/api/chat", messages)
    assert (recorded.model, recorded.messages, recorded.route) == (MODEL + ":latest", call.input_messages, "")


def test_a_matcher_name_is_taken_once_unless_replaced(own_matchers: None) -> None:
    def anything(request: ChatRequest, recorded: ChatRequest) -> bool:
        return True

    with pytest.raises(
        ValueError, match=r"replay matcher 'messages' is registered twice: first at .*replay_matchers\.py:\d+, again at"
    ):
        register_matcher("messages", anything)
    with pytest.raises(ValueError, match="must be a word"):
        register_matcher("two words", anything)
    register_matcher("messages", anything, replace=True)
    assert MATCHERS["messages"] is anything


def test_a_matcher_that_raises_fails_the_request_naming_it(call: LLMCall, own_matchers: None) -> None:
    def broken(request: ChatRequest, recorded: ChatRequest) -> bool:
        raise KeyError("tools")

    register_matcher("broken", broken)
    with replay_server([call], match=("broken",), speed="virtual") as running:
        response = httpx.post(f"{running.url}/api/chat", json={"model": MODEL, "messages": wire(call.input_messages)})

    assert response.status_code == 500
    assert response.json() == {"error": "replay matcher 'broken' raised KeyError: 'tools'"}


def test_empty_match_replays_in_recorded_order() -> None:
    first, second = (only_call(golden(n)) for n in ("customers_by_tier", "inactive_products"))
    backend = ReplayBackend([first, second], match=(), speed="virtual")
    anything = (Message("user", "anything"),)

    assert [backend.chat(ChatRequest(MODEL, anything)).text for _ in range(2)] == [
        first.output_text,
        second.output_text,
    ]


# -- speed ------------------------------------------------------------------------------------------------------------


def test_virtual_speed_answers_at_once_and_notes_what_the_answer_stands_for(call: LLMCall) -> None:
    recorded_ns = 50 * 10**9  # a wait no test run could hide: answering before it passed means nothing waited
    with replay_server([with_duration(call, recorded_ns)]) as running:
        response = ollama.Client(host=running.url).chat(model=MODEL, messages=wire(call.input_messages))
        (answer,) = running.backend.answers

    assert running.backend.speed == "virtual"
    assert response.total_duration == recorded_ns  # the app sees the recorded counters
    assert answer.recorded_ns == recorded_ns
    assert answer.recorded_index == 0
    assert answer.messages == call.input_messages
    assert 0 <= answer.answered_ns - answer.received_ns < recorded_ns


def test_an_unknown_speed_is_refused_with_the_nearest_name(call: LLMCall) -> None:
    with pytest.raises(ValueError, match=r"unknown replay speed 'instant'; valid speeds: virtual, recorded"):
        ReplayBackend([call], speed="instant")  # type: ignore[arg-type]  # the unreleased name of virtual
    with pytest.raises(ValueError, match=r"unknown replay speed 'virtul'; did you mean 'virtual'\?"):
        ReplayBackend([call], speed="virtul")  # type: ignore[arg-type]


def test_recorded_speed_takes_at_least_the_recorded_duration(call: LLMCall) -> None:
    slow = with_duration(call, SLOW_NS)
    with replay_server([slow], speed="recorded") as running:
        started = time.monotonic()
        response = ollama.Client(host=running.url).chat(model=MODEL, messages=wire(call.input_messages))
        elapsed = time.monotonic() - started
        (answer,) = running.backend.answers

    assert response.message.content == call.output_text
    assert elapsed >= SLOW_NS / 1e9
    assert answer.answered_ns - answer.received_ns >= SLOW_NS


def test_a_recorded_duration_past_the_deadline_counts_as_the_deadline_with_a_warning(call: LLMCall) -> None:
    forever = with_duration(call, 10**18)  # 10^9 s: a broken or hostile recording
    with pytest.warns(replay.ReplayDurationWarning, match=r"recorded LLM call #0 'ollama.chat' lasted 1e\+09 s; "):
        backend = ReplayBackend([forever])
    assert backend.max_recorded_ns == replay.DEFAULT_MAX_RECORDED_S * 1e9 == 60e9

    with pytest.warns(replay.ReplayDurationWarning, match=r"replay counts it as 0.2 s \(the case deadline\)"):
        server = replay_server([forever], speed="recorded", max_recorded_s=0.2)
    with server as running:
        response = ollama.Client(host=running.url).chat(model=MODEL, messages=wire(call.input_messages))
        (answer,) = running.backend.answers

    assert response.total_duration == answer.recorded_ns == 200_000_000  # and the recorded speed waited only that
    assert answer.answered_ns - answer.received_ns >= 200_000_000


def test_the_reference_app_replayed_in_virtual_time_counts_the_recorded_llm_duration(
    server: ReplayServer, trace: Trace, call: LLMCall, llm_trace: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmtrace.trace.virtual import virtualize

    handle_user_request = reference_app(server, monkeypatch)
    assert trace.input is not None
    handle_user_request(trace.input)
    now = llm_trace.trace
    virtual = virtualize(now, server.backend.answers)

    (llm,) = virtual.trace.find("ollama.chat")
    (sql,) = virtual.trace.find("sql.execute")
    (llm_now,) = now.find("ollama.chat")
    (sql_now,) = now.find("sql.execute")
    assert llm.duration_ns == call.span.duration_ns  # exactly the recorded duration
    assert virtual.is_replayed(llm)
    assert sql.duration_ns == sql_now.duration_ns > 0  # measured in this run, untouched
    assert virtual.replayed_ns.get(sql.span_id) is None
    root_now, root = now.root, virtual.trace.root
    assert root.duration_ns == root_now.duration_ns + call.span.duration_ns - llm_now.duration_ns
    assert virtual.replayed_ns[root.span_id] == call.span.duration_ns


# -- the diff ---------------------------------------------------------------------------------------------------------


def test_prompt_diff_renders_one_block_per_message_and_keeps_long_lines() -> None:
    long_line = "x" * 500
    recorded = [Message("system", f"Be brief.\n{long_line}"), Message("user", "How many?")]
    new = [Message("system", f"Be brief.\n{long_line}"), Message("user", "How many orders?")]

    assert format_prompt_diff(recorded, new).splitlines() == [
        "--- recorded prompt",
        "+++ new prompt",
        "@@ -3,4 +3,4 @@",
        " " + long_line,
        " ",
        " [user]",
        "-How many?",
        "+How many orders?",
    ]
    assert format_prompt_diff(recorded, recorded) == ""
