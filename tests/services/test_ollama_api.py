"""The Ollama API front as the clients apps really use meet it: the ollama package, httpx, LangChain, OpenAI's SDK.

No client is mocked: each test talks HTTP to the front over loopback, so a response shape a client cannot parse, a
missing ``done`` or a broken chunked stream fails here first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import pytest

from pytest_llmtrace.modelapi import BackendError, ChatRequest, ChatResult, ModelInfo, OllamaAPIServer
from pytest_llmtrace.modelapi.ollama_routes import split_stream_chunks
from pytest_llmtrace.modelapi.scripted import ScriptedBackend, estimate_tokens, normalize_question, prompt_tokens
from pytest_llmtrace.trace.views import Message

MODEL = "qwen-sql-prod"
QUESTION = "How many customers do we have in each tier?"
ANSWER = "SELECT tier, count(*) AS customers FROM customers GROUP BY tier ORDER BY customers DESC;"
SYSTEM = "Answer with one PostgreSQL SELECT statement."
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
EXPECTED_PROMPT_TOKENS = prompt_tokens([Message("system", SYSTEM), Message("user", QUESTION)])
EXPECTED_EVAL_TOKENS = estimate_tokens(ANSWER)


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    info = ModelInfo(MODEL, family="qwen2", parameter_size="1.5B", quantization_level="Q4_K_M", modelfile="FROM x")
    return ScriptedBackend({QUESTION: ANSWER, "What is the total value of pending orders?": "SELECT 1;"}, [info])


@pytest.fixture(scope="module")
def server(backend: ScriptedBackend) -> Iterator[OllamaAPIServer]:
    with OllamaAPIServer(backend) as running:
        yield running


@pytest.fixture
def client(server: OllamaAPIServer) -> ollama.Client:
    return ollama.Client(host=server.url)


# -- the ollama client ------------------------------------------------------------------------------------------------


def test_chat_without_streaming(client: ollama.Client) -> None:
    response = client.chat(model=MODEL, messages=MESSAGES, stream=False, options={"temperature": 0})

    assert response.message.role == "assistant"
    assert response.message.content == ANSWER
    assert response.done is True
    assert response.done_reason == "stop"
    assert response.prompt_eval_count == EXPECTED_PROMPT_TOKENS
    assert response.eval_count == EXPECTED_EVAL_TOKENS
    assert response.total_duration == (
        (response.load_duration or 0) + (response.prompt_eval_duration or 0) + (response.eval_duration or 0)
    )


def test_chat_streams_several_chunks_then_a_final_one_with_counts(client: ollama.Client) -> None:
    parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))

    assert len(parts) > 3
    assert all(not p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == ANSWER
    final = parts[-1]
    assert final.done is True
    assert final.done_reason == "stop"
    assert (final.prompt_eval_count, final.eval_count) == (EXPECTED_PROMPT_TOKENS, EXPECTED_EVAL_TOKENS)
    assert parts[0].prompt_eval_count is None  # counts only arrive at the end, as from real Ollama


def test_model_name_with_and_without_tag_is_the_same_model(client: ollama.Client) -> None:
    response = client.chat(model=MODEL + ":latest", messages=MESSAGES)
    assert response.message.content == ANSWER
    assert response.model == MODEL + ":latest"  # echoed as requested


def test_generate_with_and_without_streaming(client: ollama.Client) -> None:
    whole = client.generate(model=MODEL, prompt=QUESTION, system=SYSTEM)
    parts = list(client.generate(model=MODEL, prompt=QUESTION, system=SYSTEM, stream=True))

    assert whole.response == ANSWER
    assert (whole.prompt_eval_count, whole.eval_count) == (EXPECTED_PROMPT_TOKENS, EXPECTED_EVAL_TOKENS)
    assert "".join(p.response or "" for p in parts) == ANSWER
    assert parts[-1].done
    assert parts[-1].eval_count == EXPECTED_EVAL_TOKENS


def test_generate_without_prompt_only_loads_the_model(client: ollama.Client) -> None:
    response = client.generate(model=MODEL)
    assert (response.done, response.done_reason, response.response) == (True, "load", "")


def test_list_and_show(client: ollama.Client) -> None:
    listed = client.list()
    shown = client.show(MODEL)

    assert [m.model for m in listed.models] == [MODEL + ":latest"]
    details = listed.models[0].details
    assert details is not None
    assert (details.family, details.parameter_size, details.quantization_level) == ("qwen2", "1.5B", "Q4_K_M")
    assert shown.modelfile == "FROM x"
    assert shown.capabilities == ["completion"]


def test_unknown_question_surfaces_as_response_error_naming_the_nearest_question(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "How many customer per tier"}])

    assert caught.value.status_code == 404
    assert "no scripted answer for question 'How many customer per tier'" in caught.value.error
    assert repr(QUESTION) in caught.value.error


def test_backend_error_surfaces_in_streaming_calls_too(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="no scripted answer") as caught:
        list(client.chat(model=MODEL, messages=[{"role": "user", "content": "unknown"}], stream=True))
    assert caught.value.status_code == 404


def test_unknown_model_is_a_404_like_ollama_says_it(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "llama3" not found, try pulling it first'


def test_any_backend_error_status_and_message_reach_the_client() -> None:
    class Overloaded(ScriptedBackend):
        def chat(self, request: ChatRequest) -> ChatResult:
            raise BackendError(503, "server busy, please try again. maximum pending requests exceeded")

    with OllamaAPIServer(Overloaded({}, MODEL)) as running, pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=running.url).chat(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.error.startswith("server busy")


# -- plain HTTP -------------------------------------------------------------------------------------------------------


def test_plain_httpx_sees_ndjson_chunked_stream(server: OllamaAPIServer) -> None:
    with (
        httpx.Client(base_url=server.url) as http,
        http.stream("POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES}) as response,
    ):
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [json.loads(line) for line in response.iter_lines() if line]

    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert list(lines[-1]) == [
        "model",
        "created_at",
        "message",
        "done_reason",
        "done",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]


def test_keep_alive_connection_serves_several_requests(server: OllamaAPIServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        replies = [http.post("/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False}) for _ in "abc"]
        streamed = http.post("/api/generate", json={"model": MODEL, "prompt": QUESTION})
        tags = http.get("/api/tags")

    assert [r.json()["message"]["content"] for r in replies] == [ANSWER] * 3
    assert "".join(json.loads(line)["response"] for line in streamed.text.splitlines()) == ANSWER
    assert tags.json()["models"][0]["name"] == MODEL + ":latest"


def test_root_version_and_unknown_routes(server: OllamaAPIServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/").text == "Ollama is running"
        assert http.head("/").status_code == 200
        assert http.get("/api/version").json()["version"]
        missing = http.get("/api/nope")
        bad = http.post("/api/chat", content=b"{not json", headers={"Content-Type": "application/json"})
        no_model = http.post("/api/chat", json={"messages": MESSAGES})

    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert bad.status_code == 400
    assert "invalid JSON" in bad.json()["error"]
    assert no_model.json() == {"error": "model is required"}


# -- OpenAI-compatible ------------------------------------------------------------------------------------------------


def test_openai_chat_completions_with_and_without_streaming(server: OllamaAPIServer) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "temperature": 0}
    with httpx.Client(base_url=server.url) as http:
        whole = http.post("/v1/chat/completions", json=body).json()
        with http.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line]

    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": ANSWER}
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["usage"] == {
        "prompt_tokens": EXPECTED_PROMPT_TOKENS,
        "completion_tokens": EXPECTED_EVAL_TOKENS,
        "total_tokens": EXPECTED_PROMPT_TOKENS + EXPECTED_EVAL_TOKENS,
    }
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == ANSWER
    assert chunks[-1]["usage"]["completion_tokens"] == EXPECTED_EVAL_TOKENS


def test_openai_sdk_works_against_v1(server: OllamaAPIServer) -> None:
    openai = pytest.importorskip("openai", reason="needs openai, from the README's set-up: pip install -e '.[dev]'")
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="ollama")
    try:
        completion = sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
        streamed = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        sdk.close()
    assert completion.choices[0].message.content == ANSWER
    assert text == ANSWER


# -- LangChain --------------------------------------------------------------------------------------------------------


def test_langchain_chat_ollama_invoke_and_stream(server: OllamaAPIServer) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=server.url, temperature=0)
    message = llm.invoke([("system", SYSTEM), ("user", QUESTION)])
    chunks = list(llm.stream([("system", SYSTEM), ("user", QUESTION)]))

    assert message.content == ANSWER
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == EXPECTED_PROMPT_TOKENS
    assert message.usage_metadata["output_tokens"] == EXPECTED_EVAL_TOKENS
    assert len(chunks) > 3
    assert "".join(str(c.content) for c in chunks) == ANSWER


# -- pure helpers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "one", "  leading and trailing  ", "SELECT *\nFROM t\n\nWHERE x = 1;", "\n"])
def test_stream_chunks_join_back_exactly(text: str) -> None:
    assert "".join(split_stream_chunks(text)) == text


def test_question_normalization_ignores_case_spacing_and_final_punctuation() -> None:
    assert normalize_question("  How many   CUSTOMERS?  ") == normalize_question("how many customers")


def test_scripted_counts_follow_the_documented_rule(backend: ScriptedBackend) -> None:
    result = backend.chat(ChatRequest(MODEL, (Message("user", QUESTION),)))
    assert result.prompt_eval_count == 4 + -(-len(QUESTION) // 4)
    assert result.eval_count == -(-len(ANSWER) // 4)
    assert result.total_duration == result.load_duration + result.prompt_eval_duration + result.eval_duration
