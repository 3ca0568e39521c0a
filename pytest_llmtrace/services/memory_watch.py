"""The pytest process's RSS sampled during a case: an app that fetches a huge result (libpq keeps it all) or a check
that would, makes the case fail with ``[memory]`` and its backends ended (``pg_deadline``), before the machine swaps.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import psutil

MEMORY_SAMPLE_S = 0.02


class MemoryWatch:
    """This process's RSS sampled while a case runs; ``exceeded`` is called once when the growth since the case began
    passes ``limit_mb`` (with the growth and the peak, in MB), and never after ``running`` has returned."""

    def __init__(self, limit_mb: float, exceeded: Callable[[float, float], None]) -> None:
        self.limit_mb = limit_mb
        self.exceeded = exceeded
        self.process = _this_process()
        self.start_mb = self._rss_mb()
        self.peak_mb = self.start_mb
        self.tripped = False

    def _rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / (1024 * 1024)

    def sample(self) -> None:
        now = self._rss_mb()
        self.peak_mb = max(self.peak_mb, now)
        if now - self.start_mb > self.limit_mb:
            self.tripped = True
            self.exceeded(now - self.start_mb, self.peak_mb)

    @contextlib.contextmanager
    def running(self) -> Iterator[MemoryWatch]:
        _SAMPLER.watch(self)
        try:
            yield self
        finally:
            _SAMPLER.unwatch(self)


class _MemorySampler:
    """One daemon thread per process that samples the watched case's ``MemoryWatch`` every ``MEMORY_SAMPLE_S``, and
    waits while no case is watched.

    A case starts and stops its watch without waiting for the thread: a thread handed each case's watch and waited
    for at its end cost 0.2 ms of every case. A sample runs under the lock ``unwatch`` takes, so none runs (and no
    ``exceeded`` is called) once a case's watch has ended.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: MemoryWatch | None = None
        self._pid: int | None = None  # a forked child has none of its parent's threads: it starts its own

    def watch(self, watch: MemoryWatch) -> None:
        if self._pid != os.getpid():
            self._cond, self._pid = threading.Condition(), os.getpid()
            threading.Thread(target=self._loop, args=(self._cond,), name="llmtrace-memory", daemon=True).start()
        with self._cond:
            self._watched = watch
            self._cond.notify()

    def unwatch(self, watch: MemoryWatch) -> None:
        with self._cond:
            if self._watched is watch:
                self._watched = None

    def _loop(self, cond: threading.Condition) -> None:
        while True:
            with cond:
                while self._watched is None or self._watched.tripped:
                    cond.wait()
                cond.wait(MEMORY_SAMPLE_S)  # woken early only by the next case's watch, which is sampled later
                watched = self._watched
                if watched is not None and not watched.tripped:
                    watched.sample()


_SAMPLER = _MemorySampler()


_PROCESSES: dict[int, psutil.Process] = {}


def _this_process() -> psutil.Process:
    """This process's ``psutil.Process``, made once (a few hundred microseconds each case otherwise); by pid, so a
    forked child reads its own."""
    pid = os.getpid()
    found = _PROCESSES.get(pid)
    if found is None:
        found = _PROCESSES[pid] = psutil.Process(pid)
    return found
