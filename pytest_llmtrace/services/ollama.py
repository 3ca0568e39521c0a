"""Ollama for the session: llama.cpp in-process, ``ollama serve`` from PATH, the official image, a user's server, or
(in replay mode) our own Ollama-API front answering from the golden traces.

Every backend ends with the same check: the configured model (``qwen-sql-prod``) is on the server. The app under
test asks for it by name, so a server without it would fail every test with a 404 from inside the app; failing once
at start-up, with the ``ollama create`` command that makes the model, is the useful version of that error.

Backends we run (binary, docker) create a missing model from the Modelfile, with models kept in a persistent cache
(``~/.cache/pytest-llmtrace/ollama/models``, or the ``ollama_models`` setting) so the GGUF is imported once per machine,
not once per run. A user's server (url) is never changed: it only gets the error.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.core.lifecycle import Lifecycle
from pytest_llmtrace.modelapi import BackendError, OllamaAPIServer
from pytest_llmtrace.modelapi.llamacpp import LlamaCppBackend, LlamaCppError
from pytest_llmtrace.services.base import Endpoint, ServiceStartError, free_port, http_ok, wait_until
from pytest_llmtrace.services.docker import (
    OLLAMA_IMAGE,
    DockerService,
    container_host,
    gpu_request,
    http_container,
    wait_http,
)
from pytest_llmtrace.services.ollama_models import OTHER_BACKENDS, SERVICE, ensure_model, models_dir, read_modelfile
from pytest_llmtrace.services.process import ServerProcess

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pytest_llmtrace.modelapi import ChatRequest, ChatResult, ModelBackend, ModelInfo
    from pytest_llmtrace.services.run_records import RunRecord

__all__ = [
    "DEFAULT_MODEL",
    "OLLAMA_IMAGE",
    "BinaryOllama",
    "DockerOllama",
    "EmbeddedOllama",
    "ReplayOllama",
    "ReplaySwitch",
    "UrlOllama",
    "answers",
]

DEFAULT_MODEL = "qwen-sql-prod"
START_TIMEOUT_S = 60.0


def _endpoint(backend: str, url: str, started: float, model_name: str, **extra: str) -> Endpoint:
    """An Ollama endpoint names the model it was checked to serve."""
    return Endpoint.from_url(SERVICE, backend, url, started=started, model=model_name, **extra)


def answers(endpoint: Endpoint) -> bool:
    """Whether the Ollama at ``endpoint`` is up: how an xdist worker tells a live shared server from a stale note."""
    return http_ok(endpoint.url + "/api/version")


class EmbeddedOllama(Lifecycle[Endpoint]):
    """The Ollama API front (``OllamaAPIServer``) in front of llama.cpp in this process, on a free loopback port."""

    backend = "embedded"

    def __init__(
        self,
        modelfile_path: Path,
        model_name: str = DEFAULT_MODEL,
        n_ctx: int | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.modelfile_path = modelfile_path
        self.model_name = model_name
        self.n_ctx = n_ctx
        self.threads = threads

    def start(self) -> Endpoint:
        started = time.monotonic()
        modelfile = read_modelfile(self.modelfile_path, self.backend)
        assert modelfile is not None
        backend = LlamaCppBackend(modelfile, self.model_name, n_ctx=self.n_ctx, threads=self.threads)
        try:
            backend.load()
        except LlamaCppError as exc:
            raise ServiceStartError(SERVICE, self.backend, str(exc), fix=exc.fix) from exc
        self.on_stop(backend.close)
        server = OllamaAPIServer(backend).start()
        self.on_stop(server.stop)
        try:
            ensure_model(server.url, self.model_name, modelfile, backend=self.backend, create=False)
        except ServiceStartError:
            self.stop()
            raise
        return _endpoint(self.backend, server.url, started, self.model_name, gguf=str(backend.gguf_path()))


class BinaryOllama:
    """``ollama serve`` from PATH on a free loopback port, models in the persistent cache, log in a temp dir."""

    backend = "binary"

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        modelfile_path: Path | None = None,
        record: RunRecord | None = None,
        *,
        executable: str = "ollama",
        timeout: float = START_TIMEOUT_S,
        models: str = "",
    ) -> None:
        self.models = models  # the ollama_models setting (empty: the default cache)
        self.model_name = model_name
        self.modelfile_path = modelfile_path
        self.record = record
        self.executable = executable
        self.timeout = timeout
        self._server = ServerProcess(SERVICE, self.backend, prefix="llmtrace-ollama-", record=record)

    def start(self) -> Endpoint:
        started = time.monotonic()
        found = shutil.which(self.executable)
        if found is None:
            raise ServiceStartError(
                SERVICE,
                self.backend,
                f"no `{self.executable}` executable on PATH",
                fix=f"install Ollama (https://ollama.com/download) or use {OTHER_BACKENDS}",
            )
        modelfile = read_modelfile(self.modelfile_path, self.backend)
        models = models_dir(self.models)
        models.mkdir(parents=True, exist_ok=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(models)}
        self._server.start(
            [found, "serve"],
            env=env,
            health_url=url + "/api/version",
            timeout=self.timeout,
            fix=f"check the log above, or use {OTHER_BACKENDS}",
        )
        try:
            ensure_model(
                url, self.model_name, modelfile, backend=self.backend, modelfile_path=self.modelfile_path, models=models
            )
        except ServiceStartError as exc:
            log = self._server.log_tail()
            self.stop()
            raise ServiceStartError(SERVICE, self.backend, exc.reason, log=log, fix=exc.fix) from exc
        return _endpoint(self.backend, url, started, self.model_name, models_dir=str(models))

    def stop(self) -> None:
        self._server.stop()


class DockerOllama(DockerService):
    """The official image (pinned; or --llmtrace-ollama-image), labelled and published on loopback, with the
    persistent model cache mounted so models survive the container and the GGUF reaches it without an upload."""

    service = SERVICE

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        modelfile_path: Path | None = None,
        image: str = OLLAMA_IMAGE,
        record: RunRecord | None = None,
        *,
        gpu: str = "auto",
        models: str = "",
    ) -> None:
        super().__init__(image, record)
        self.model_name = model_name
        self.modelfile_path = modelfile_path
        self.gpu = gpu
        self.models = models  # the ollama_models setting (empty: the default cache)

    def configure(self) -> Any:
        volumes = {str(models_dir(self.models)): "/root/.ollama/models"}
        gpu, _ = gpu_request(self.gpu)
        return http_container(self.image, service=SERVICE, port=11434, owner=self.owner, volumes=volumes, gpu=gpu)

    def wait(self, container: Any) -> str:
        url = f"http://{container_host(container)}:{container.get_exposed_port(11434)}"
        wait_http(container, url + "/api/version", timeout=START_TIMEOUT_S)
        return url

    def start(self) -> Endpoint:
        started = time.monotonic()
        modelfile = read_modelfile(self.modelfile_path, self.backend)
        models = models_dir(self.models)
        models.mkdir(parents=True, exist_ok=True)
        url = self.start_container()
        try:
            ensure_model(
                url, self.model_name, modelfile, backend=self.backend, modelfile_path=self.modelfile_path, models=models
            )
        except ServiceStartError as exc:
            raise self.failed(exc.reason, exc.fix) from exc
        return _endpoint(self.backend, url, started, self.model_name, image=self.image, models_dir=str(models))


class UrlOllama:
    """An Ollama the user already runs: checked (it answers, it has the model), never started, stopped or changed."""

    backend = "url"

    def __init__(
        self, url: str, model_name: str = DEFAULT_MODEL, modelfile_path: Path | None = None, timeout: float = 10.0
    ) -> None:
        # OLLAMA_HOST is often written host:port, without a scheme
        self.url = (url if "://" in url else "http://" + url).rstrip("/")
        self.model_name = model_name
        self.modelfile_path = modelfile_path
        self.timeout = timeout

    def start(self) -> Endpoint:
        started = time.monotonic()
        if not wait_until(lambda: http_ok(self.url + "/api/version"), timeout=self.timeout):
            raise ServiceStartError(
                SERVICE,
                self.backend,
                f"GET {self.url}/api/version did not answer within {self.timeout:.0f} s",
                fix="start Ollama there (`ollama serve`), fix the URL, or use --llmtrace-ollama=embedded",
                urls=(self.url,),
            )
        ensure_model(
            self.url, self.model_name, None, backend=self.backend, create=False, modelfile_path=self.modelfile_path
        )
        return _endpoint(self.backend, self.url, started, self.model_name)

    def stop(self) -> None:
        """Nothing to stop: the server belongs to the user."""


class ReplaySwitch:
    """The model behind the replay mode's one Ollama server: each golden case plugs in its own recording.

    One server for the whole run, because apps often build their Ollama client at import time from OLLAMA_HOST and
    keep it; a new port per case would leave them talking to the first case's server.
    """

    def __init__(self) -> None:
        self._current: ModelBackend | None = None

    def use(self, backend: ModelBackend | None) -> None:
        self._current = backend

    def models(self) -> Sequence[ModelInfo]:
        return self._current.models() if self._current is not None else []

    def chat(self, request: ChatRequest) -> ChatResult:
        if self._current is None:
            raise BackendError(
                503,
                "pytest-llmtrace replay server: no golden case is being replayed now (use --llmtrace-mode=live "
                "for a real model outside golden cases)",
            )
        return self._current.chat(request)


class ReplayOllama:
    """The replay mode's Ollama: our Ollama-API front over the run's ``ReplaySwitch``, on a free loopback port."""

    backend = "replay"

    def __init__(self, switch: ReplaySwitch) -> None:
        self.switch = switch
        self._server: OllamaAPIServer | None = None

    def start(self) -> Endpoint:
        started = time.monotonic()
        self._server = OllamaAPIServer(self.switch).start()
        return Endpoint.from_url(SERVICE, self.backend, self._server.url, started=started)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
