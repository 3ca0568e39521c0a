"""Starting Ollama each way, and the errors users read when it cannot start or lacks the model.

The servers here are real HTTP servers: the scripted Ollama front, llama.cpp behind it, and a stand-in ``ollama``
executable (a script that serves the front on ``OLLAMA_HOST``) so ``BinaryOllama``'s process handling, environment
and cleanup run on machines without Ollama. The real binary is used when present and skipped otherwise; the Docker
backend runs against a real engine in tests/docker/.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import psutil
import pytest
from support import bundled_smollm2, live_model_missing

from pytest_llmtrace.modelapi import ModelInfo, OllamaAPIServer
from pytest_llmtrace.modelapi.modelfile import parse_modelfile
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.services.base import Endpoint, ServiceStartError, free_port
from pytest_llmtrace.services.docker import docker_available
from pytest_llmtrace.services.ollama import (
    OLLAMA_IMAGE,
    BinaryOllama,
    DockerOllama,
    EmbeddedOllama,
    UrlOllama,
)
from pytest_llmtrace.services.ollama_models import create_command, ensure_model, models_dir
from pytest_llmtrace.services.run_records import RunRecord

MODEL = "qwen-sql-prod"
TEST_MODEL = "llmtrace-test-smollm2"  # a name no real Ollama has yet, so the backend must create it


GGUF = bundled_smollm2()
needs_model = pytest.mark.skipif(
    live_model_missing() is not None, reason=f"needs the live model: {live_model_missing()}"
)


def write_modelfile(directory: Path, source: Path | str) -> Path:
    path = directory / "Modelfile"
    path.write_text(f'FROM {source}\nPARAMETER temperature 0\nPARAMETER stop "<|im_end|>"\nSYSTEM "Answer in SQL."\n')
    return path


@pytest.fixture(autouse=True)
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep test runs out of the user's real model cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the backends' default ollama_models folder
    return tmp_path / "cache" / "pytest-llmtrace" / "ollama" / "models"


@pytest.fixture
def scripted_server() -> Iterator[str]:
    """A real Ollama-API server that has qwen-sql-prod and nothing else (and, like any stand-in, no /api/create)."""
    with OllamaAPIServer(ScriptedBackend({"hi": "hello"}, [ModelInfo(MODEL)])) as server:
        yield server.url


# -- embedded ------------------------------------------------------------------------------------------------------


def test_embedded_with_a_missing_gguf_names_the_modelfile_and_the_path(tmp_path: Path) -> None:
    modelfile = write_modelfile(tmp_path, "./models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")

    with pytest.raises(ServiceStartError) as caught:
        EmbeddedOllama(modelfile, MODEL).start()

    error = caught.value
    assert error.backend == "embedded"
    assert str(error).startswith("ollama (embedded) did not start: ")
    assert f"{modelfile}: FROM ./models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" in error.reason
    assert f"the GGUF file {tmp_path}/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf does not exist" in error.reason
    assert error.fix.startswith(f"download the GGUF to {tmp_path}/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")


def test_embedded_cannot_serve_a_registry_model(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError, match=r"names an Ollama model, not a GGUF file") as caught:
        EmbeddedOllama(write_modelfile(tmp_path, "qwen2.5-coder:1.5b")).start()
    assert "--llmtrace-ollama=docker" in caught.value.fix


@pytest.mark.slow  # llama.cpp
@needs_model
def test_embedded_rejects_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")

    with pytest.raises(ServiceStartError, match=r"llama.cpp could not load .*broken.gguf") as caught:
        EmbeddedOllama(write_modelfile(tmp_path, "./broken.gguf")).start()
    assert "complete GGUF" in caught.value.fix


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    assert GGUF is not None
    service = EmbeddedOllama(write_modelfile(tmp_path_factory.mktemp("embedded"), GGUF), MODEL, n_ctx=512)
    running = service.start()
    try:
        yield running
    finally:
        service.stop()


# -- url -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # llama.cpp
@needs_model
def test_url_backend_accepts_a_server_that_has_the_model(embedded: Endpoint) -> None:
    service = UrlOllama(f"127.0.0.1:{embedded.port}", MODEL)  # OLLAMA_HOST style, no scheme

    endpoint = service.start()
    service.stop()

    assert (endpoint.backend, endpoint.url, endpoint.port) == ("url", embedded.url, embedded.port)
    assert ollama.Client(host=endpoint.url).chat(model=MODEL, messages=[{"role": "user", "content": "hi"}]).done


@pytest.mark.slow  # llama.cpp
@needs_model
def test_url_backend_with_a_model_the_server_lacks_says_how_to_create_it(embedded: Endpoint) -> None:
    with pytest.raises(ServiceStartError) as caught:
        UrlOllama(embedded.url, "qwen-sql-canary", modelfile_path=Path("fixtures/Modelfile")).start()

    error = caught.value
    assert error.reason == (
        f"model 'qwen-sql-canary' is not on the Ollama server at {embedded.url} (it has qwen-sql-prod:latest)"
    )
    assert error.fix == "create it with `ollama create qwen-sql-canary -f fixtures/Modelfile`"
    assert [m.model for m in ollama.Client(host=embedded.url).list().models] == ["qwen-sql-prod:latest"]


def test_url_backend_that_does_not_answer_fails_fast_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(ServiceStartError) as caught:
        UrlOllama(url, timeout=0.5).start()

    assert caught.value.reason == f"GET {url}/api/version did not answer within 0 s"
    assert "ollama serve" in caught.value.fix


def test_url_backend_never_creates_models_even_with_a_modelfile(scripted_server: str, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    modelfile = write_modelfile(tmp_path, "./tiny.gguf")

    with pytest.raises(ServiceStartError, match="is not on the Ollama server") as caught:
        UrlOllama(scripted_server, "qwen-sql-canary", modelfile_path=modelfile).start()
    assert caught.value.fix == f"create it with `ollama create qwen-sql-canary -f {modelfile}`"


# -- ensure_model --------------------------------------------------------------------------------------------------


def test_ensure_model_accepts_the_name_with_or_without_the_latest_tag(scripted_server: str) -> None:
    assert ensure_model(scripted_server, MODEL, None, backend="binary") is False
    assert ensure_model(scripted_server, MODEL + ":latest", None, backend="binary") is False


def test_ensure_model_reports_a_failed_import_with_the_create_command(scripted_server: str, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF" + bytes(60))
    modelfile = parse_modelfile(write_modelfile(tmp_path, "./tiny.gguf"))

    with pytest.raises(ServiceStartError) as caught:
        ensure_model(scripted_server, "qwen-sql-canary", modelfile, backend="binary")

    error = caught.value
    assert f"creating it from {modelfile.path} (importing {tmp_path / 'tiny.gguf'}) failed" in error.reason
    assert "404 page not found" in error.reason  # the stand-in front has no /api/blobs: the real error is shown
    assert error.fix == f"create it with `ollama create qwen-sql-canary -f {modelfile.path}`"


def test_ensure_model_with_a_missing_gguf_says_where_to_put_it(scripted_server: str, tmp_path: Path) -> None:
    modelfile = parse_modelfile(write_modelfile(tmp_path, "./models/absent.gguf"))

    with pytest.raises(ServiceStartError) as caught:
        ensure_model(scripted_server, "qwen-sql-canary", modelfile, backend="docker")

    assert f"the GGUF file {tmp_path / 'models' / 'absent.gguf'} does not exist" in caught.value.reason
    assert caught.value.fix.startswith(f"download the GGUF to {tmp_path / 'models' / 'absent.gguf'}")


def test_create_command_shows_paths_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fixtures").mkdir()
    monkeypatch.chdir(tmp_path)
    assert create_command(MODEL, tmp_path / "fixtures" / "Modelfile") == f"ollama create {MODEL} -f fixtures/Modelfile"
    assert create_command(MODEL, Path("/elsewhere/Modelfile")) == f"ollama create {MODEL} -f /elsewhere/Modelfile"


def test_models_dir_is_the_setting_else_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert models_dir(str(tmp_path / "m")) == tmp_path / "m"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert models_dir() == tmp_path / "cache" / "pytest-llmtrace" / "ollama" / "models"


# -- binary --------------------------------------------------------------------------------------------------------

# A stand-in `ollama serve` (the scripted front on OLLAMA_HOST), run by this interpreter.
FAKE_OLLAMA = f"#!{sys.executable}\n" + (Path(__file__).parents[1] / "data" / "fake_ollama.py").read_text()


def install_executable(directory: Path, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / "ollama"
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only a directory the test fills, so a real Ollama on the machine is never picked up."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def test_binary_without_ollama_on_path_says_how_to_get_it(fake_path: Path) -> None:
    with pytest.raises(ServiceStartError) as caught:
        BinaryOllama(MODEL).start()

    assert str(caught.value) == (
        "ollama (binary) did not start: no `ollama` executable on PATH\n"
        "fix: install Ollama (https://ollama.com/download) or use "
        "--llmtrace-ollama=embedded, binary, docker or http://host:11434"
    )


def test_binary_that_exits_at_once_shows_its_log_and_leaves_nothing_behind(fake_path: Path, tmp_path: Path) -> None:
    install_executable(fake_path, "#!/bin/sh\necho 'Error: listen tcp 127.0.0.1:11434: bind: address in use'\nexit 1\n")
    record = RunRecord(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    service = BinaryOllama(MODEL, record=record, timeout=20)

    with pytest.raises(ServiceStartError) as caught:
        service.start()

    error = caught.value
    assert error.reason == f"`{fake_path / 'ollama'} serve` exited with code 1"
    assert error.log_tail == ["Error: listen tcp 127.0.0.1:11434: bind: address in use"]
    assert "last 1 lines of its log:" in str(error)
    assert not record.path.exists()  # no process or temp dir left to reap
    assert not service._server.running


def test_binary_serves_on_a_free_port_with_the_model_cache_and_stops_its_process_group(
    fake_path: Path, tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_executable(fake_path, FAKE_OLLAMA)
    monkeypatch.setenv("FAKE_OLLAMA_HAS", MODEL)
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11434")  # a developer's setting must not leak into the child
    service = BinaryOllama(MODEL, record=RunRecord(tmp_path), timeout=30)

    endpoint = service.start()
    try:
        pid, workdir = service._server.pid, service._server.workdir
        assert (endpoint.backend, endpoint.host) == ("binary", "127.0.0.1")
        assert (model_cache / "seen-by-fake-ollama").read_text() == f"127.0.0.1:{endpoint.port}"
        assert endpoint.extra == {"model": MODEL, "models_dir": str(model_cache)}
        assert ollama.Client(host=endpoint.url).chat(model=MODEL, messages=[{"role": "user", "content": "hi"}]).done
    finally:
        service.stop()

    assert pid is not None
    assert not psutil.pid_exists(pid)
    assert not workdir.exists()


def test_binary_without_the_model_shows_the_create_command_and_the_log(
    fake_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_executable(fake_path, FAKE_OLLAMA)
    monkeypatch.delenv("FAKE_OLLAMA_HAS", raising=False)
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    modelfile = write_modelfile(tmp_path, "./tiny.gguf")

    with pytest.raises(ServiceStartError) as caught:
        BinaryOllama(MODEL, modelfile, RunRecord(tmp_path), timeout=30).start()

    error = caught.value
    assert "model 'qwen-sql-prod' is not on the Ollama server" in error.reason
    assert "failed: 404 page not found" in error.reason
    assert error.log_tail
    assert error.log_tail[-1].startswith("Listening on 127.0.0.1:")
    assert error.fix == f"create it with `ollama create {MODEL} -f {modelfile}`"


@pytest.mark.slow
@needs_model
@pytest.mark.skipif(shutil.which("ollama") is None, reason="no `ollama` executable on PATH")
def test_real_ollama_binary_creates_the_model_from_the_modelfile(tmp_path: Path) -> None:
    assert GGUF is not None
    created = _created_model_answers(BinaryOllama(TEST_MODEL, write_modelfile(tmp_path, GGUF), RunRecord(tmp_path)))
    assert created.backend == "binary"


def _created_model_answers(service: BinaryOllama) -> Endpoint:
    """Start a real Ollama that lacks the test model: the backend must create it from the Modelfile, then serve it."""
    endpoint = service.start()
    try:
        reply = ollama.Client(host=endpoint.url).chat(
            model=TEST_MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}
        )
        assert reply.eval_count
        assert reply.eval_count > 0
    finally:
        service.stop()
    return endpoint


# -- docker --------------------------------------------------------------------------------------------------------

DOCKER_OK = docker_available()[0]


def test_the_docker_image_is_pinned() -> None:
    name, _, tag = OLLAMA_IMAGE.partition(":")
    assert name == "ollama/ollama"
    assert tag
    assert tag != "latest"


@pytest.mark.skipif(DOCKER_OK, reason="Docker is available: this checks the error without it")
def test_docker_without_a_daemon_says_so_and_names_the_fallback(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError) as caught:
        DockerOllama(MODEL, write_modelfile(tmp_path, "./absent.gguf")).start()

    assert caught.value.backend == "docker"
    assert caught.value.fix == "Docker is not reachable: start it or use --llmtrace-ollama=binary"


def test_no_fake_ollama_outlives_the_tests() -> None:
    """Runs last in this file: every stand-in `ollama serve` started above must be gone.

    Only the stand-in counts (an executable named ``ollama`` run with ``serve``): other servers of this session, such
    as an embedded Phoenix (``phoenix ... serve``), are the session's own and are stopped at its end.
    """
    mine = psutil.Process(os.getpid())
    leftovers = [c for c in mine.children(recursive=True) if _is_stand_in_ollama(c)]
    assert leftovers == []


def _is_stand_in_ollama(process: psutil.Process) -> bool:
    try:
        args = process.cmdline()
    except psutil.Error:  # gone between listing and reading: not a leftover
        return False
    return "serve" in args and any(Path(arg).name == "ollama" for arg in args)
