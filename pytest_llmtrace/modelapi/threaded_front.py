"""A ``RouteServer`` in a daemon thread, started and stopped: what the Ollama-API front and the timing proxy share.

Both are what ``OLLAMA_HOST`` points at, both keep a ``stream_log`` of the answers they timed, and both are started
once per session and stopped at its end; only the server they run differs (``_make_server``).
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import Any, Generic, TypeVar, cast

from pytest_llmtrace.core.lifecycle import Lifecycle
from pytest_llmtrace.modelapi.stream_log import StreamLog
from pytest_llmtrace.modelapi.transport import RouteServer

F = TypeVar("F", bound="ThreadedFront[Any]")


class ThreadedFront(Lifecycle[F], Generic[F]):
    """``start()`` serves on ``(host, port)`` (port 0: a free one) in a daemon thread; ``url`` is where it listens."""

    what = "the server"  # in the error for a front that is not running
    thread_name = "llmtrace-front"

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._address = (host, port)
        self._server: RouteServer | None = None
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _make_server(self) -> RouteServer: ...

    def _running(self) -> RouteServer:
        if self._server is None:
            raise RuntimeError(f"{self.what} is not running; call start() or use it as a context manager")
        return self._server

    @property
    def url(self) -> str:
        host, port = self._running().server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def stream_log(self) -> StreamLog:
        """What it measured of each answer (TTFT, chunk times): ``stream_log.since(start_ns)``."""
        return self._running().stream_log

    def start(self) -> F:
        if self._server is None:
            self._server = self._make_server()
            self._thread = threading.Thread(
                # shutdown() waits out one poll: at the default 0.5 s, every stop would take that long
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=self.thread_name,
                daemon=True,
            )
            self._thread.start()
        return cast(F, self)

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
