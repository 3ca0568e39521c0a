"""The timing proxy in front of a real Ollama (binary, Docker, URL): answers relayed as they come, timed as the
llama.cpp front times its own. The upstream is a real HTTP server with known delays (``timed_ollama``); every
assertion is a bound those delays imply, never a race against the wall clock."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from timed_ollama import FIRST_S, GAP_S, MODEL, SERVER_TTFT_NS, TOKENS, WORDS, TimedOllama

from pytest_llmtrace.modelapi import OllamaAPIServer, TimingProxy, stream_log
from pytest_llmtrace.modelapi.answer_watch import AnswerWatch
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.trace.span import Span
from pytest_llmtrace.trace.stream_timing import FrontTiming, stream_timing, with_front_timing

MS = 1_000_000


def _body(path: str, *, stream: bool) -> dict[str, Any]:
    if path == "/api/generate":
        return {"model": MODEL, "prompt": "hi", "stream": stream}
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def _text(path: str, lines: list[str], *, stream: bool) -> str:
    """The answer's text as the client read it through the proxy."""
    if not stream:
        value = json.loads("".join(lines))
        if path == "/v1/chat/completions":
            return str(value["choices"][0]["message"]["content"])
        return str(value["message"]["content"] if path == "/api/chat" else value["response"])
    text = ""
    for line in lines:
        if path == "/v1/chat/completions":
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                text += choices[0]["delta"].get("content", "") if choices else ""
        elif line:
            value = json.loads(line)
            text += value["message"]["content"] if path == "/api/chat" else value["response"]
    return text


def _one_timing(proxy: TimingProxy, since: int) -> FrontTiming:
    timings = proxy.stream_log.since(since)
    assert len(timings) == 1, timings
    return timings[0]


@pytest.fixture
def upstream() -> Any:
    with TimedOllama() as server:
        yield server


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/chat/completions"])
def test_a_streamed_answer_is_relayed_whole_and_timed_from_its_first_token(upstream: TimedOllama, path: str) -> None:
    with TimingProxy(upstream.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        upstream.lockstep = threading.Semaphore(0)  # each gap at least GAP_S, wherever it is measured
        since = time.time_ns()
        lines = _read_in_lockstep(client, upstream, path)
        assert _text(path, lines, stream=True) == "".join(WORDS)
        assert not upstream.held_too_long
        timing = _one_timing(proxy, since)
    assert timing.streamed
    assert timing.model == MODEL
    assert timing.completion_tokens == TOKENS  # eval_count on /api, usage.completion_tokens on /v1
    assert len(timing.chunk_ns) == TOKENS  # the role-only opening chunk and the done chunk carry no token
    # the role-only chunk left at once; the first token FIRST_S later: TTFT counts from the request to the token
    assert timing.first_ns - timing.received_ns >= FIRST_S * 1e9
    assert timing.first_ns == timing.chunk_ns[0]
    # read back as the checks and reports read a call's timing: from the app's span around the request
    span = Span("t" * 32, "s" * 16, None, "chat", timing.received_ns - MS, timing.done_ns + MS)
    read = stream_timing(with_front_timing(span, timing), timing.completion_tokens)
    assert read is not None
    assert read.ttft_ms >= FIRST_S * 1000
    assert read.gap_p95_ms is not None
    assert read.gap_p95_ms >= GAP_S * 1000
    # TOKENS - 1 tokens after the first, each at least GAP_S after the one before
    assert read.tokens_per_s is not None
    assert 0 < read.tokens_per_s <= 1 / GAP_S


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_a_whole_ollama_answer_takes_its_ttft_from_ollamas_own_durations(upstream: TimedOllama, path: str) -> None:
    with TimingProxy(upstream.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        since = time.time_ns()
        response = client.post(path, json=_body(path, stream=False))
        assert response.status_code == 200
        assert response.headers["x-timed-ollama"] == "whole"
        assert _text(path, [response.text], stream=False) == "".join(WORDS)
        timing = _one_timing(proxy, since)
    assert not timing.streamed
    assert timing.chunk_ns == ()  # nothing arrived in pieces: no gaps to report
    assert timing.completion_tokens == TOKENS
    assert timing.first_ns - timing.received_ns == SERVER_TTFT_NS  # load_duration + prompt_eval_duration
    assert timing.done_ns - timing.received_ns >= (FIRST_S + (TOKENS - 1) * GAP_S) * 1e9
    span = Span("t" * 32, "s" * 16, None, "chat", timing.received_ns, timing.done_ns)
    read = stream_timing(with_front_timing(span, timing), timing.completion_tokens)
    assert read is not None
    assert read.ttft_ms == SERVER_TTFT_NS / MS
    assert read.gap_p95_ms is None  # one piece: no gaps
    # the rest of the answer came after the server's TTFT: at least the delays less it, for TOKENS - 1 tokens
    rest_s = FIRST_S + (TOKENS - 1) * GAP_S - SERVER_TTFT_NS / 1e9
    assert read.tokens_per_s is not None
    assert 0 < read.tokens_per_s <= (TOKENS - 1) / rest_s


def test_a_whole_openai_answer_has_the_time_to_the_full_answer_as_its_ttft(upstream: TimedOllama) -> None:
    path = "/v1/chat/completions"
    with TimingProxy(upstream.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        since = time.time_ns()
        response = client.post(path, json=_body(path, stream=False))
        assert _text(path, [response.text], stream=False) == "".join(WORDS)
        timing = _one_timing(proxy, since)
    assert timing.completion_tokens == TOKENS
    assert timing.first_ns == timing.done_ns  # no durations in the OpenAI shape: the whole answer is the first token
    assert timing.first_ns - timing.received_ns >= (FIRST_S + (TOKENS - 1) * GAP_S) * 1e9


def test_a_stream_reaches_the_client_chunk_by_chunk_not_buffered(upstream: TimedOllama) -> None:
    """The upstream holds each next token until the client has read the last one through the proxy: a proxy that
    buffered would leave both waiting until the upstream gives up."""
    upstream.lockstep = threading.Semaphore(0)
    with TimingProxy(upstream.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        lines = _read_in_lockstep(client, upstream, "/api/chat")
    assert not upstream.held_too_long
    assert _text("/api/chat", lines, stream=True) == "".join(WORDS)


def _read_in_lockstep(client: httpx.Client, upstream: TimedOllama, path: str) -> list[str]:
    """The streamed answer's lines, each token acknowledged to the upstream as it is read."""
    lines = []
    with client.stream("POST", path, json=_body(path, stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["x-timed-ollama"] == "streamed"  # the upstream's headers pass through
        for line in response.iter_lines():
            lines.append(line)
            if _text(path, [line], stream=True).strip():
                upstream.ack()
    return lines


def test_errors_and_other_routes_pass_through_untimed(upstream: TimedOllama) -> None:
    with TimingProxy(upstream.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        since = time.time_ns()
        missing = client.post("/api/chat", json={"model": "nope", "messages": []})
        tags = client.get("/api/tags")
        assert proxy.stream_log.since(since) == []
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'nope' not found"}
    assert tags.json()["models"][0]["name"] == MODEL


def test_an_ollama_that_is_down_is_a_502_naming_it_not_a_hang() -> None:
    with TimedOllama() as gone:
        url = gone.url
    with TimingProxy(url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        response = client.post("/api/chat", json=_body("/api/chat", stream=True))
        assert proxy.stream_log.since(0) == []
    assert response.status_code == 502
    assert f"the Ollama at {url} could not be reached" in response.json()["error"]


def test_an_ollama_that_breaks_off_mid_stream_cuts_the_clients_stream_and_the_proxy_serves_on(
    upstream: TimedOllama,
) -> None:
    upstream.break_after_first = True
    with TimingProxy(upstream.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        since = time.time_ns()
        with (
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("POST", "/api/chat", json=_body("/api/chat", stream=True)) as response,
        ):
            list(response.iter_lines())
        assert proxy.stream_log.since(since) == []  # a cut-off answer is no timing
        upstream.break_after_first = False
        response = client.post("/api/chat", json=_body("/api/chat", stream=False))
        assert response.status_code == 200
        assert len(proxy.stream_log.since(since)) == 1


def test_a_urls_credentials_go_as_basic_auth_never_in_the_host_or_an_error(upstream: TimedOllama) -> None:
    host = upstream.url.removeprefix("http://")
    with TimingProxy(f"http://user:s3cret@{host}") as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        assert client.get("/api/tags", headers={"X-Client": "app"}).status_code == 200
        assert upstream.headers["Host"] == host
        assert upstream.headers["Authorization"] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret
        assert upstream.headers["X-Client"] == "app"  # the client's own headers pass through
        upstream.stop()
        down = client.get("/api/tags")
    assert down.status_code == 502
    assert "s3cret" not in down.text


def test_a_line_split_across_reads_is_read_once() -> None:
    watch = AnswerWatch(0, streamed=True, sse=False)
    line = json.dumps({"message": {"content": "SELECT"}, "done": False}).encode() + b"\n"
    watch.feed(line[:7], 10)
    watch.feed(line[7:], 20)
    watch.feed(json.dumps({"message": {"content": ""}, "done": True, "eval_count": 1}).encode(), 30)
    timing = watch.timing(40)
    assert timing.chunk_ns == (20,)
    assert timing.completion_tokens == 1


def test_the_url_backend_points_the_session_at_the_proxy_and_a_case_reads_its_timings(
    pytester: pytest.Pytester, upstream: TimedOllama
) -> None:
    pytester.makepyfile(
        f"""
        import os, time, httpx, ollama, pytest
        from pytest_llmtrace.modelapi import stream_log

        def test_streamed(llmtrace_ollama):
            assert llmtrace_ollama.url != {upstream.url!r}
            assert llmtrace_ollama.extra["upstream"] == {upstream.url!r}
            since = time.time_ns()
            pieces = [p.message.content for p in ollama.Client(host=llmtrace_ollama.url).chat(
                model={MODEL!r}, messages=[{{"role": "user", "content": "hi"}}], stream=True)]
            assert "".join(pieces) == {"".join(WORDS)!r}
            (timing,) = stream_log.recent(since)
            assert timing.first_ns - timing.received_ns >= {FIRST_S * 1e9}
            assert timing.completion_tokens == {TOKENS}

        @pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/chat/completions"])
        @pytest.mark.parametrize("stream", [True, False])
        def test_each_route(path, stream, llmtrace_ollama):
            body = {{"model": {MODEL!r}, "stream": stream}}
            body.update(prompt="hi") if path == "/api/generate" else body.update(messages=[])
            since = time.time_ns()
            response = httpx.post(os.environ["OLLAMA_HOST"] + path, json=body, timeout=30)
            assert response.status_code == 200
            (timing,) = stream_log.recent(since)
            assert timing.streamed is stream
            assert timing.completion_tokens == {TOKENS}
            ttft_ns = timing.first_ns - timing.received_ns
            if stream:
                assert ttft_ns >= {FIRST_S * 1e9}
            elif path.startswith("/api"):
                assert ttft_ns == {SERVER_TTFT_NS}
            else:
                assert ttft_ns >= {(FIRST_S + (TOKENS - 1) * GAP_S) * 1e9}
        """
    )
    result = pytester.runpytest_inprocess(
        "-o", f"llmtrace_ollama={upstream.url}", "-o", f"llmtrace_ollama_model={MODEL}"
    )
    result.assert_outcomes(passed=7)


def test_a_backend_down_mid_session_fails_the_case_with_the_reason(pytester: pytest.Pytester) -> None:
    with TimedOllama() as upstream:
        pytester.makepyfile(
            f"""
            import ollama, timed_ollama

            def test_after_ollama_went_away(llmtrace_ollama):
                timed_ollama.RUNNING[{upstream.url!r}].stop()
                ollama.Client(host=llmtrace_ollama.url, timeout=30).chat(
                    model={MODEL!r}, messages=[{{"role": "user", "content": "hi"}}])
            """
        )
        result = pytester.runpytest_inprocess(
            "-o", f"llmtrace_ollama={upstream.url}", "-o", f"llmtrace_ollama_model={MODEL}"
        )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*the Ollama at {upstream.url} could not be reached*"])


def test_an_upstream_that_is_the_plugins_own_front_in_this_process_is_timed_once() -> None:
    """A URL backend pointed at the plugin's own front in this process (a test's stand-in): the front times the
    answer, the proxy only relays it, so the case's span gets one timing, not two."""
    with (
        OllamaAPIServer(ScriptedBackend({"hi": "SELECT 1"}, MODEL)) as front,
        TimingProxy(front.url) as proxy,
        httpx.Client(base_url=proxy.url, timeout=30) as client,
    ):
        since = time.time_ns()
        response = client.post("/api/chat", json=_body("/api/chat", stream=False))
        assert response.json()["message"]["content"] == "SELECT 1"
        assert proxy.stream_log.since(since) == []
        assert len(front.stream_log.since(since)) == 1
        assert len(stream_log.recent(since)) == 1


def test_the_binary_backend_is_timed_through_the_proxy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `ollama serve` (the plugin's front, but in a process of its own, whose timings this process cannot
    read) is timed by the proxy, as a real `ollama serve` would be."""
    pytester.mkdir("fixtures").joinpath("Modelfile").write_text("FROM ./model.gguf\n")  # the model is there already
    bin_dir = pytester.path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ollama"
    fake.write_text(f"#!{sys.executable}\n" + (Path(__file__).parents[1] / "data" / "fake_ollama.py").read_text())
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OLLAMA_HAS", "qwen-sql-prod")
    monkeypatch.setenv("LLMTRACE_OLLAMA_MODELS", str(pytester.path / "models"))
    pytester.makepyfile(
        """
        import time, ollama
        from urllib.parse import urlsplit
        from pytest_llmtrace.modelapi import stream_log

        def test_streamed(llmtrace_ollama):
            assert urlsplit(llmtrace_ollama.extra["upstream"]).port != llmtrace_ollama.port
            since = time.time_ns()
            pieces = [p.message.content for p in ollama.Client(host=llmtrace_ollama.url).chat(
                model="qwen-sql-prod", messages=[{"role": "user", "content": "hi"}], stream=True)]
            assert "".join(pieces) == "hello"
            (timing,) = stream_log.recent(since)
            assert timing.streamed and len(timing.chunk_ns) >= 1 and timing.completion_tokens >= 1
            assert timing.received_ns <= timing.first_ns <= timing.done_ns
        """
    )
    result = pytester.runpytest_inprocess("--llmtrace-ollama=binary")
    result.assert_outcomes(passed=1)
