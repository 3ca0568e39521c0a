"""One Ollama-compatible HTTP front for every stand-in model: scripted answers, recorded traces, llama.cpp.

An app under test talks to Ollama over HTTP with whatever client it ships (the ``ollama`` package, LangChain's
``ChatOllama``, plain ``httpx``, an OpenAI SDK pointed at ``/v1``). Replacing the model at the HTTP level instead of
mocking a client keeps the app's own code path, its instrumentation and its error handling under test.

The front is assembled here from its parts: the plumbing and its limits (``transport``), Ollama's routes
(``ollama_routes``), the OpenAI-compatible route (``openai_routes``), and a ``ModelBackend`` (``backend``) that
decides what the model says.
"""

from __future__ import annotations

import threading

from pytest_llmtrace.core.lifecycle import Lifecycle
from pytest_llmtrace.modelapi.backend import ModelBackend
from pytest_llmtrace.modelapi.ollama_routes import ROUTES as OLLAMA_ROUTES
from pytest_llmtrace.modelapi.openai_routes import ROUTES as OPENAI_ROUTES
from pytest_llmtrace.modelapi.stream_log import StreamLog
from pytest_llmtrace.modelapi.transport import Limits, RouteServer

ROUTES = {**OLLAMA_ROUTES, **OPENAI_ROUTES}


class OllamaAPIServer(Lifecycle["OllamaAPIServer"]):
    """The front running in a daemon thread; ``url`` is what ``OLLAMA_HOST`` should be set to.

    Port 0 (the default) picks a free port, so parallel test workers never collide. ``limits`` bounds what one client
    may send (Host names, read time, body size): see ``transport``.
    """

    def __init__(
        self, backend: ModelBackend, host: str = "127.0.0.1", port: int = 0, *, limits: Limits | None = None
    ) -> None:
        super().__init__()
        self.backend = backend
        self.limits = limits or Limits()
        self._address = (host, port)
        self._server: RouteServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Ollama API server is not running; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def stream_log(self) -> StreamLog:
        """What the front measured of each answer (TTFT, chunk times): ``stream_log.since(start_ns)``."""
        if self._server is None:
            raise RuntimeError("the Ollama API server is not running; call start() or use it as a context manager")
        return self._server.stream_log

    def start(self) -> OllamaAPIServer:
        if self._server is None:
            self._server = RouteServer(self._address, self.backend, ROUTES, self.limits)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="ollama-api", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
