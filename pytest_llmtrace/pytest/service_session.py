"""The services as pytest sees them: set up at configure, one header line each, stopped at unconfigure, and stopped
as well when the run is told to stop by a signal.

Ctrl-C raises ``KeyboardInterrupt``: pytest tears the fixtures down and calls ``pytest_unconfigure``, which stops
every server the run started. SIGTERM (what CI runners send on cancel or timeout) and SIGHUP (a closed terminal)
would end the process at once instead, leaving detached servers such as embedded Postgres running until the next
run reaps them. So the run turns them into the same interrupt; a second signal ends the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.services.manager import ServiceManager
from pytest_llmtrace.services.run_records import run_context
from pytest_llmtrace.services.user_folder import UnsafeRunFolder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

    Handler = Callable[[int, FrameType | None], Any] | int | None


class RunStopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP asked the run to stop. A ``KeyboardInterrupt``, so pytest ends the run as it does on Ctrl-C:
    fixtures torn down, servers stopped, exit status 2 (interrupted)."""


class StopOnSignal:
    """Turns the first SIGTERM or SIGHUP into ``RunStopped``; the second ends the process at once, as the signal's
    default action would (what that leaves behind is reaped by the next run).

    Installed only where the handler is still the default: a handler another plugin or the app set stays, and so
    does SIGHUP ignored by ``nohup``. Signal handlers belong to the main thread, so elsewhere nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.closing = False  # the run is already stopping its servers: a first signal must not interrupt that
        self._previous: dict[signal.Signals, Handler] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """From here on the run is stopping anyway (fixtures torn down, xdist workers ended, servers stopped): a first
        signal must not cut that clean-up short, so it no longer interrupts; a second still exits at once."""
        self.closing = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.uninstall()
            os.kill(os.getpid(), signum)  # the default action now: the process ends here
            return
        self.received = signal.Signals(signum)
        if not self.closing:
            raise RunStopped(
                f"{self.received.name}: stopping the servers this run started (a second signal exits at once)"
            )


@contextlib.contextmanager
def app_environment(**values: str) -> Iterator[None]:
    """Set the app's variables for the session and put back what was there before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


_MANAGER_KEY = pytest.StashKey[ServiceManager]()
_SIGNALS_KEY = pytest.StashKey[StopOnSignal]()


def configure(config: pytest.Config, *, replay: bool) -> None:
    """Resolve and check the service settings (a bad value is a UsageError now, not at the first test), reap what
    dead runs left, and get ready to stop everything this run starts, on a signal too."""
    settings = session_settings.of(config)
    try:
        context = run_context(config)
    except UnsafeRunFolder as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        manager = ServiceManager(settings, context, replay=replay)
    except pytest.UsageError:
        if context.coordinator:  # nothing started yet: remove the run's state folder now
            context.record.cleanup()
        raise
    config.stash[_MANAGER_KEY] = manager
    guard = StopOnSignal()
    guard.install()
    config.pluginmanager.register(guard, "llmtrace-stop-on-signal")
    config.stash[_SIGNALS_KEY] = guard


def get_manager(config: pytest.Config) -> ServiceManager:
    return config.stash[_MANAGER_KEY]


def unconfigure(config: pytest.Config) -> None:
    guard = config.stash.get(_SIGNALS_KEY, None)
    if guard is not None:
        guard.closing = True
    try:
        manager = config.stash.get(_MANAGER_KEY, None)
        if manager is not None:
            del config.stash[_MANAGER_KEY]
            manager.close()
    finally:
        if guard is not None:
            guard.uninstall()
            del config.stash[_SIGNALS_KEY]


def report_header(config: pytest.Config) -> list[str]:
    return get_manager(config).header_lines()
