"""The configured model on an Ollama server: there, or created from the Modelfile the way ``ollama create`` does over
the JSON API, with the GGUF linked into a persistent model cache when the server's model folder is mounted from here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.modelapi import normalize_model_name
from pytest_llmtrace.modelapi.modelfile import Modelfile, ModelfileError, parse_modelfile
from pytest_llmtrace.services.base import ServiceStartError

if TYPE_CHECKING:
    pass

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


def read_modelfile(path: Path | None, backend: str) -> Modelfile | None:
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
