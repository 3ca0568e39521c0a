"""An Ollama stand-in for the Docker backend tests: the project's Ollama-API front over llama.cpp, in a container.

No Ollama image can be pulled where these tests run, so ``images.sh`` packages this program as
``local/llmtrace-ollama:standin``. It behaves like the official image in what ``DockerOllama`` relies on:

- it prints ``Listening on`` once it accepts connections (testcontainers' OllamaContainer waits for that line);
- it starts with the models found under ``OLLAMA_MODELS`` (the persistent volume) and nothing else;
- blobs and models are kept in Ollama's own layout there (``blobs/sha256-<hex>``,
  ``manifests/registry.ollama.ai/library/<name>/<tag>``, a layer per template, system, params and messages), so a
  model made in one container is there in the next;
- ``HEAD/POST /api/blobs/sha256:<hex>`` and ``POST /api/create`` (the JSON form, Ollama >= 0.5.6) build a model from
  a GGUF blob and the Modelfile's fields.

``/api/tags``, ``/api/show``, ``/api/chat``, ``/api/generate`` and the OpenAI routes are the package's own
``OllamaAPIServer``, unchanged, on a loopback port inside the container; llama.cpp (xllamacpp) answers for the created
models. Blob and create requests are handled here, in front of it; everything else is passed through.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pytest_llmtrace.modelapi import (
    BackendError,
    ChatRequest,
    ChatResult,
    ModelInfo,
    OllamaAPIServer,
    normalize_model_name,
)
from pytest_llmtrace.modelapi.llamacpp import LlamaCppBackend, guess_model_details
from pytest_llmtrace.modelapi.modelfile import Modelfile
from pytest_llmtrace.modelapi.ollama_routes import OLLAMA_VERSION

REGISTRY = "registry.ollama.ai"
LAYER = "application/vnd.ollama.image."
DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


class ModelStore:
    """Ollama's on-disk layout under ``OLLAMA_MODELS``."""

    def __init__(self, root: Path) -> None:
        self.blobs = root / "blobs"
        self.manifests = root / "manifests" / REGISTRY
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        match = DIGEST.match(digest)
        if match is None:
            raise BackendError(400, f"invalid digest format: {digest!r}")
        return self.blobs / f"sha256-{match.group(1)}"

    def write_blob(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if not path.exists():
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            tmp.replace(path)
        return {"digest": digest, "size": len(data)}

    def receive_blob(self, digest: str, chunks: Iterator[bytes]) -> None:
        """Store an upload under its digest; a body that does not hash to it is refused, as Ollama does."""
        path = self.blob(digest)
        tmp = path.with_name(path.name + f".{threading.get_ident()}.partial")
        hasher = hashlib.sha256()
        with tmp.open("wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
        if "sha256:" + hasher.hexdigest() != digest.replace("sha256-", "sha256:"):
            tmp.unlink()
            raise BackendError(400, "digest mismatch")
        tmp.replace(path)

    def manifest(self, name: str) -> Path:
        base, _, tag = normalize_model_name(name).rpartition(":")
        parts = base.split("/")
        return self.manifests.joinpath(*(["library", *parts] if len(parts) == 1 else parts), tag)

    def names(self) -> list[str]:
        found = []
        for path in sorted(p for p in self.manifests.rglob("*") if p.is_file()):
            *namespace, model, tag = path.relative_to(self.manifests).parts
            shown = model if namespace == ["library"] else "/".join([*namespace, model])
            found.append(f"{shown}:{tag}")
        return found

    def create(self, name: str, body: Mapping[str, Any]) -> None:
        """Write a model's manifest from a create request: the GGUF blob it names plus one layer per field."""
        files = body.get("files") or {}
        source = body.get("from")
        if files:
            if len(files) != 1:
                raise BackendError(400, "the stand-in builds a model from exactly one GGUF file")
            file_name, digest = next(iter(files.items()))
            if not self.blob(str(digest)).exists():
                raise BackendError(400, f"blob {digest} not found: upload it with POST /api/blobs/{digest} first")
            blob = self.blob(str(digest))
            layers = [{"mediaType": LAYER + "model", "digest": str(digest), "size": blob.stat().st_size}]
        elif isinstance(source, str) and self.manifest(source).is_file():
            base = json.loads(self.manifest(source).read_text())
            layers = [layer for layer in base["layers"] if layer["mediaType"] == LAYER + "model"]
            file_name = json.loads(self.blob(base["config"]["digest"]).read_text()).get("file_name", "")
        else:
            raise BackendError(404, f'model "{source}" not found, try pulling it first')
        for field in ("template", "system"):
            if body.get(field):
                layers.append({"mediaType": LAYER + field, **self.write_blob(str(body[field]).encode())})
        if body.get("parameters"):
            layers.append({"mediaType": LAYER + "params", **self.write_blob(json.dumps(body["parameters"]).encode())})
        if body.get("messages"):
            layers.append({"mediaType": LAYER + "messages", **self.write_blob(json.dumps(body["messages"]).encode())})
        family, parameter_size, quantization = guess_model_details(file_name)
        config = {"model_format": "gguf", "model_family": family, "model_type": parameter_size}
        config.update(file_type=quantization, file_name=file_name)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                **self.write_blob(json.dumps(config).encode()),
            },
            "layers": layers,
        }
        path = self.manifest(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))

    def modelfile(self, name: str) -> Modelfile:
        """The stored model as the Modelfile llama.cpp's backend reads (FROM a link named like the original GGUF)."""
        manifest_path = self.manifest(name)
        manifest = json.loads(manifest_path.read_text())
        config = json.loads(self.blob(manifest["config"]["digest"]).read_text())
        texts: dict[str, str] = {}
        model_blob = None
        for layer in manifest["layers"]:
            kind = layer["mediaType"].removeprefix(LAYER)
            if kind == "model":
                model_blob = self.blob(layer["digest"])
            else:
                texts[kind] = self.blob(layer["digest"]).read_text()
        assert model_blob is not None, f"{manifest_path} has no model layer"
        # guess_model_details reads the family from the file name, so the GGUF is shown under its own name
        work = Path(tempfile.gettempdir()) / "ollama-standin" / model_blob.name
        work.mkdir(parents=True, exist_ok=True)
        link = work / (config.get("file_name") or "model.gguf")
        if not link.is_symlink():
            link.symlink_to(model_blob)
        params: dict[str, Any] = json.loads(texts.get("params", "{}"))
        parameters = {k: tuple(str(x) for x in (v if isinstance(v, list) else [v])) for k, v in params.items()}
        messages = tuple((m["role"], m["content"]) for m in json.loads(texts.get("messages", "[]")))
        text = [f"FROM {link}"]
        text += [f'{field.upper()} """{texts[field]}"""' for field in ("template", "system") if field in texts]
        text += [
            f"PARAMETER {k} {json.dumps(v)}" for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])
        ]
        text += [f"MESSAGE {role} {content}" for role, content in messages]
        path = work / f"{normalize_model_name(name).replace('/', '_')}.Modelfile"
        path.write_text("\n".join(text) + "\n")
        return Modelfile(
            path=path,
            source=str(link),
            system=texts.get("system"),
            template=texts.get("template"),
            parameters=parameters,
            messages=messages,
        )


class StoreBackend:
    """The front's backend: the store's models, one loaded in llama.cpp at a time (as Ollama does on a small box)."""

    def __init__(self, store: ModelStore, threads: int) -> None:
        self.store = store
        self.threads = threads
        self._lock = threading.Lock()
        self._backends: dict[str, tuple[float, LlamaCppBackend]] = {}

    def _backend(self, name: str) -> LlamaCppBackend:
        full = normalize_model_name(name)
        stamp = self.store.manifest(full).stat().st_mtime
        with self._lock:
            known = self._backends.get(full)
            if known is None or known[0] != stamp:
                if known is not None:
                    known[1].close()
                known = (stamp, LlamaCppBackend(self.store.modelfile(full), full, threads=self.threads))
                self._backends[full] = known
            return known[1]

    def models(self) -> Sequence[ModelInfo]:
        return [info for name in self.store.names() for info in self._backend(name).models()]

    def chat(self, request: ChatRequest) -> ChatResult:
        backend = self._backend(request.model)
        with self._lock:
            for other in self._backends.values():
                if other[1] is not backend and other[1].loaded:
                    other[1].close()
        return backend.chat(request)


class Front(BaseHTTPRequestHandler):
    """/api/blobs and /api/create here; every other request is relayed to the package's OllamaAPIServer."""

    protocol_version = "HTTP/1.1"
    server_version = "ollama-stand-in"
    store: ModelStore
    inner: tuple[str, int]

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"[standin] {self.command} {self.path} -> {args[1] if len(args) > 1 else ''}\n")

    def do_HEAD(self) -> None:
        if self.path.startswith("/api/blobs/"):
            self._guard(lambda: self._empty(200 if self.store.blob(self.path.rsplit("/", 1)[1]).exists() else 404))
        else:
            self._relay()

    def do_POST(self) -> None:
        if self.path.startswith("/api/blobs/"):
            self._guard(self._upload)
        elif self.path.rstrip("/") == "/api/create":
            self._guard(self._create)
        else:
            self._relay()

    def do_GET(self) -> None:
        self._relay()

    def do_DELETE(self) -> None:
        self._relay()

    def _upload(self) -> None:
        self.store.receive_blob(self.path.rsplit("/", 1)[1], self._body_chunks())
        self._empty(201)

    def _create(self) -> None:
        body = json.loads(b"".join(self._body_chunks()) or b"{}")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise BackendError(400, "model is required")
        self.store.create(name, body)
        statuses = ["using existing layer", "writing manifest", "success"]
        if body.get("stream", True):
            self._send(
                200, "application/x-ndjson", b"".join(json.dumps({"status": s}).encode() + b"\n" for s in statuses)
            )
        else:
            self._send(200, "application/json; charset=utf-8", json.dumps({"status": "success"}).encode())

    def _guard(self, action: Any) -> None:
        try:
            action()
        except BackendError as exc:
            self._send(exc.status, "application/json; charset=utf-8", json.dumps({"error": exc.message}).encode())

    def _body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _relay(self) -> None:
        body = b"".join(self._body_chunks())
        conn = http.client.HTTPConnection(*self.inner, timeout=600)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            conn.request(self.command, self.path, body=body if self.command != "GET" else None, headers=headers)
            response = conn.getresponse()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                    self.send_header(key, value)
            length = response.getheader("Content-Length")
            if length is not None or self.command == "HEAD":
                data = response.read()
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := response.read1(1 << 16):
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()


def main() -> None:
    host, _, port = os.environ.get("OLLAMA_HOST", "0.0.0.0:11434").rpartition(":")
    store = ModelStore(Path(os.environ.get("OLLAMA_MODELS", "/root/.ollama/models")))
    inner = OllamaAPIServer(StoreBackend(store, threads=int(os.environ.get("OLLAMA_NUM_THREAD", "2")))).start()
    inner_host, _, inner_port = inner.url.removeprefix("http://").rpartition(":")

    class Handler(Front):
        pass

    Handler.store, Handler.inner = store, (inner_host, int(inner_port))
    front = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    front.daemon_threads = True
    # PID 1 in a container ignores SIGTERM without a handler: `docker stop` would wait its 10 s for nothing.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=front.shutdown).start())
    print(f"Listening on {host or '[::]'}:{port} (version {OLLAMA_VERSION})", file=sys.stderr, flush=True)
    try:
        front.serve_forever(poll_interval=0.1)
    finally:
        inner.stop()


if __name__ == "__main__":
    main()
