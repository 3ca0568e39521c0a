"""One Ollama-compatible HTTP front for every stand-in model: scripted answers, recorded traces, llama.cpp.

An app under test talks to Ollama over HTTP with whatever client it ships (the ``ollama`` package, LangChain's
``ChatOllama``, plain ``httpx``, an OpenAI SDK pointed at ``/v1``). Replacing the model at the HTTP level instead of
mocking a client keeps the app's own code path, its instrumentation and its error handling under test.

The front is assembled here from its parts: the plumbing and its limits (``transport``), Ollama's routes
(``ollama_routes``), the OpenAI-compatible route (``openai_routes``), and a ``ModelBackend`` (``backend``) that
decides what the model says.
"""

from __future__ import annotations

from pytest_llmtrace.modelapi.backend import ModelBackend
from pytest_llmtrace.modelapi.ollama_routes import ROUTES as OLLAMA_ROUTES
from pytest_llmtrace.modelapi.openai_routes import ROUTES as OPENAI_ROUTES
from pytest_llmtrace.modelapi.threaded_front import ThreadedFront
from pytest_llmtrace.modelapi.transport import Limits, RouteServer

ROUTES = {**OLLAMA_ROUTES, **OPENAI_ROUTES}


class OllamaAPIServer(ThreadedFront["OllamaAPIServer"]):
    """The front running in a daemon thread; ``url`` is what ``OLLAMA_HOST`` should be set to.

    Port 0 (the default) picks a free port, so parallel test workers never collide. ``limits`` bounds what one client
    may send (Host names, read time, body size): see ``transport``.
    """

    what = "the Ollama API server"
    thread_name = "ollama-api"

    def __init__(
        self, backend: ModelBackend, host: str = "127.0.0.1", port: int = 0, *, limits: Limits | None = None
    ) -> None:
        super().__init__(host, port)
        self.backend = backend
        self.limits = limits or Limits()

    def _make_server(self) -> RouteServer:
        return RouteServer(self._address, self.backend, ROUTES, self.limits)
