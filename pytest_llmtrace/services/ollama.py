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

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.core.errors import first_line
from pytest_llmtrace.modelapi import BackendError, OllamaAPIServer, normalize_model_name
from pytest_llmtrace.modelapi.llamacpp import LlamaCppBackend, LlamaCppError
from pytest_llmtrace.modelapi.modelfile import Modelfile, ModelfileError, parse_modelfile
from pytest_llmtrace.services.base import Endpoint, ServiceStartError, free_port, http_ok, wait_until
from pytest_llmtrace.services.docker import OLLAMA_IMAGE
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
    "create_command",
    "ensure_model",
    "models_dir",
]

DEFAULT_MODEL = "qwen-sql-prod"
START_TIMEOUT_S = 60.0
LIST_TIMEOUT_S = 30.0
# Importing a GGUF hashes and copies it (about 1 GB for the production model); pulling downloads it.
CREATE_TIMEOUT_S = 900.0
SERVICE = "ollama"
OTHER_BACKENDS = "--llmtrace-ollama=embedded, binary, docker or http://host:11434"


def models_dir(configured: str = "") -> Path:
    """Where Ollama keeps models between runs: the ``ollama_models`` setting, else
    ``~/.cache/pytest-llmtrace/ollama/models``.

    The default is found when a backend starts, not at import, so a test (or conftest) can set ``XDG_CACHE_HOME``
    first.
    """
    if configured:
        return Path(configured).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pytest-llmtrace" / "ollama" / "models"


def create_command(model_name: str, modelfile_path: Path | None) -> str:
    """The command a user runs to make the model, with the Modelfile path as they would type it."""
    if modelfile_path is None:
        return f"ollama create {model_name} -f fixtures/Modelfile"
    try:
        shown = modelfile_path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = modelfile_path
    return f"ollama create {model_name} -f {shown}"


def _endpoint(backend: str, url: str, started: float, model_name: str, **extra: str) -> Endpoint:
    """An Ollama endpoint names the model it was checked to serve."""
    return Endpoint.from_url(SERVICE, backend, url, started=started, model=model_name, **extra)


def answers(endpoint: Endpoint) -> bool:
    """Whether the Ollama at ``endpoint`` is up: how an xdist worker tells a live shared server from a stale note."""
    return http_ok(endpoint.url + "/api/version")


def _read_modelfile(path: Path | None, backend: str) -> Modelfile | None:
    if path is None:
        return None
    try:
        return parse_modelfile(path)
    except ModelfileError as exc:
        raise ServiceStartError(SERVICE, backend, str(exc), fix="fix the Modelfile") from exc


def ensure_model(
    url: str,
    model_name: str,
    modelfile: Modelfile | None,
    *,
    backend: str,
    create: bool = True,
    modelfile_path: Path | None = None,
    timeout: float = CREATE_TIMEOUT_S,
    models: Path | None = None,
) -> bool:
    """Make sure the server at ``url`` has ``model_name``; returns True when it had to be created.

    When it is missing and ``create`` is set, it is built from the Modelfile the way ``ollama create`` does over the
    JSON API (Ollama >= 0.5.6 takes no raw Modelfile): a local GGUF becomes a blob referenced by digest; a FROM naming
    a registry model is pulled first. ``models`` is the server's model directory when it is mounted from here (binary,
    docker): the GGUF is then linked into its blob store, so a 1 GB file is not sent through HTTP. Anything else is a
    ``ServiceStartError`` with the command to run.
    """
    # The ollama client pulls in httpx and pydantic (over a second cold): paid only when a server is checked.
    import httpx
    import ollama

    path = modelfile.path if modelfile is not None else modelfile_path
    fix = f"create it with `{create_command(model_name, path)}`"
    client = ollama.Client(host=url, timeout=timeout)
    try:
        present = _model_names(ollama.Client(host=url, timeout=LIST_TIMEOUT_S))
    except (ollama.ResponseError, httpx.HTTPError) as exc:
        raise ServiceStartError(SERVICE, backend, f"GET {url}/api/tags failed: {exc}", fix=fix) from exc
    wanted = normalize_model_name(model_name)
    if wanted in present:
        return False
    have = ", ".join(sorted(present)) or "no models"
    missing = f"model {model_name!r} is not on the Ollama server at {url} (it has {have})"
    if not create or modelfile is None:
        raise ServiceStartError(SERVICE, backend, missing, fix=fix)
    gguf = modelfile.from_path
    if gguf is not None and not gguf.is_file():
        then = (
            f"then run the tests again: the {backend} backend creates it from the Modelfile (as "
            f"`{create_command(model_name, path)}` would)"
            if create
            else f"then {fix}"
        )
        raise ServiceStartError(
            SERVICE,
            backend,
            f"{missing}, and it cannot be created: {modelfile.path} says FROM {modelfile.source}, "
            f"but the GGUF file {gguf} does not exist",
            fix=f"download the GGUF to {gguf} (see the comments in {modelfile.path}), {then}",
        )
    try:
        if gguf is None:
            client.pull(modelfile.source)
            source: dict[str, Any] = {"from_": modelfile.source}
        else:
            source = {"files": {gguf.name: _blob(client, url, gguf, models)}}
        client.create(
            model=model_name,
            template=modelfile.template,
            system=modelfile.system,
            parameters=modelfile.options() or None,
            messages=[{"role": role, "content": content} for role, content in modelfile.messages] or None,
            stream=False,
            **source,
        )
        present = _model_names(client)
    except (ollama.ResponseError, httpx.HTTPError, OSError) as exc:
        how = f"pulling {modelfile.source}" if gguf is None else f"importing {gguf}"
        raise ServiceStartError(
            SERVICE, backend, f"{missing}; creating it from {modelfile.path} ({how}) failed: {exc}", fix=fix
        ) from exc
    if wanted not in present:
        raise ServiceStartError(
            SERVICE, backend, f"{missing}; /api/create reported success but it is not listed", fix=fix
        )
    return True


def _blob(client: Any, url: str, gguf: Path, models: Path | None) -> str:
    """The GGUF's digest, with the file in the server's blob store: linked into a mounted model dir, else uploaded."""
    import httpx

    if models is not None:
        digest = place_blob(models, gguf)
        if httpx.head(f"{url}/api/blobs/{digest}", timeout=LIST_TIMEOUT_S).status_code == 200:
            return digest
    return str(client.create_blob(gguf))  # a server that does not see the directory (a remote Docker host)


def place_blob(models: Path, gguf: Path) -> str:
    """Put ``gguf`` into Ollama's blob store under ``models`` (``blobs/sha256-<hex>``); returns ``sha256:<hex>``.

    A hard link when both are on one filesystem (no copy, no extra disk), else a copy; either way it stays in the
    persistent model directory, so the next run (or the next CI job restoring that directory) finds the model.
    """
    hasher = hashlib.sha256()
    with gguf.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    blob = models / "blobs" / f"sha256-{hasher.hexdigest()}"
    if not blob.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(f"{blob.name}-{os.getpid()}-partial")
        try:
            os.link(gguf, partial)
        except OSError:  # another filesystem, or links not allowed there
            shutil.copyfile(gguf, partial)
        partial.replace(blob)
    return f"sha256:{hasher.hexdigest()}"


def _model_names(client: Any) -> set[str]:
    return {normalize_model_name(m.model) for m in client.list().models if m.model}


class EmbeddedOllama:
    """The Ollama API front (``OllamaAPIServer``) in front of llama.cpp in this process, on a free loopback port."""

    backend = "embedded"

    def __init__(
        self,
        modelfile_path: Path,
        model_name: str = DEFAULT_MODEL,
        n_ctx: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.modelfile_path = modelfile_path
        self.model_name = model_name
        self.n_ctx = n_ctx
        self.threads = threads
        self._backend: LlamaCppBackend | None = None
        self._server: OllamaAPIServer | None = None

    def start(self) -> Endpoint:
        started = time.monotonic()
        modelfile = _read_modelfile(self.modelfile_path, self.backend)
        assert modelfile is not None
        backend = LlamaCppBackend(modelfile, self.model_name, n_ctx=self.n_ctx, threads=self.threads)
        try:
            backend.load()
        except LlamaCppError as exc:
            raise ServiceStartError(SERVICE, self.backend, str(exc), fix=exc.fix) from exc
        self._backend = backend
        self._server = OllamaAPIServer(backend).start()
        url = self._server.url
        try:
            ensure_model(url, self.model_name, modelfile, backend=self.backend, create=False)
        except ServiceStartError:
            self.stop()
            raise
        return _endpoint(self.backend, url, started, self.model_name, gguf=str(backend.gguf_path()))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None


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
        modelfile = _read_modelfile(self.modelfile_path, self.backend)
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


class DockerOllama:
    """The official image (pinned; or --llmtrace-ollama-image), labelled and published on loopback, with the
    persistent model cache mounted so models survive the container and the GGUF reaches it without an upload."""

    backend = "docker"

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
        self.models = models  # the ollama_models setting (empty: the default cache)
        self.model_name = model_name
        self.modelfile_path = modelfile_path
        self.image = image
        self.record = record
        self.gpu = gpu
        self._container: Any = None

    def start(self) -> Endpoint:
        from pytest_llmtrace.services import docker

        started = time.monotonic()
        modelfile = _read_modelfile(self.modelfile_path, self.backend)
        models = models_dir(self.models)
        models.mkdir(parents=True, exist_ok=True)
        gpu, _ = docker.gpu_request(self.gpu)
        try:
            self._container = container = docker.http_container(
                self.image,
                service=SERVICE,
                port=11434,
                owner=docker.ContainerOwner.of(self.record),
                volumes={str(models): "/root/.ollama/models"},
                gpu=gpu,
            )
            docker.start_prepared(container)
            url = f"http://{docker.container_host(container)}:{container.get_exposed_port(11434)}"
            docker.wait_http(container, url + "/api/version", timeout=START_TIMEOUT_S)
        except Exception as exc:  # docker errors have many types; all mean "could not start"
            log = docker.log_tail(self._container)
            self.stop()
            fix = docker.start_fix(SERVICE, self.image, exc)
            raise ServiceStartError(
                SERVICE, self.backend, f"{self.image}: {first_line(exc)}", log=log, fix=fix
            ) from exc
        try:
            ensure_model(
                url,
                self.model_name,
                modelfile,
                backend=self.backend,
                modelfile_path=self.modelfile_path,
                models=models,
            )
        except ServiceStartError as exc:
            log = docker.log_tail(self._container)
            self.stop()
            raise ServiceStartError(SERVICE, self.backend, exc.reason, log=log, fix=exc.fix) from exc
        return _endpoint(self.backend, url, started, self.model_name, image=self.image, models_dir=str(models))

    def stop(self) -> None:
        from pytest_llmtrace.services.docker import remove

        container, self._container = self._container, None
        remove(container, self.record)


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
