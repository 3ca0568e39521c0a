"""Start and stop, written once for every server the plugin brings up (the Ollama-API front, embedded Postgres,
llama.cpp, ``ollama serve``, Phoenix).

A server is made of parts started one after another (a temp folder, then a process; a model, then an HTTP front).
Each part is handed to ``on_stop`` as soon as it is up, so ``stop`` undoes exactly what was done, newest first, also
after a start that failed half way; one part that fails to stop does not keep the others running (``ExitStack``
runs every callback and raises afterwards), and a second ``stop`` does nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class Stoppable:
    """What was started, to be undone newest first by ``stop``."""

    def __init__(self) -> None:
        self._stops = ExitStack()

    def on_stop(self, callback: Callable[[], object]) -> None:
        self._stops.callback(callback)

    def stop(self) -> None:
        stops, self._stops = self._stops, ExitStack()
        stops.close()


class Lifecycle(Stoppable, ABC, Generic[T]):
    """A server used as ``with server as endpoint:`` or by ``start()`` and ``stop()``; ``start`` returns what a
    caller connects to (an ``Endpoint``, or the server itself)."""

    @abstractmethod
    def start(self) -> T: ...

    def __enter__(self) -> T:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
