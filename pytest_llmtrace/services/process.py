"""Servers this run starts as child processes, and the temporary folders they work in; neither outlives the run.

Each server runs in its own process group, so stopping it stops whatever it spawned too, and Ctrl-C in the terminal
does not hit it mid-teardown. Each process and folder also goes into the run's ``RunRecord`` (see ``runs``), so a
run killed before it could clean up is cleaned up by the next one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmtrace.core.lifecycle import Stoppable
from pytest_llmtrace.services.base import ServiceStartError, http_ok, wait_until
from pytest_llmtrace.services.run_records import STOP_TIMEOUT_S, stop_process
from pytest_llmtrace.services.user_folder import OWN_PREFIX, ram_root

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pytest_llmtrace.services.run_records import RunRecord


class ManagedProcess:
    """A server subprocess with its own process group, a log file, and a record for orphan cleanup."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        record: RunRecord | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.record = record
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: Ctrl-C in the terminal does not hit it mid-teardown
            )
        if self.record is not None:
            self.record.add_process(self._popen.pid, group=True)

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def log_tail(self, lines: int = 50) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self._popen is None:
            return
        pid = self._popen.pid
        if self._popen.poll() is None:
            stop_process(pid, group=True, timeout=timeout)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the leader is gone; its children may not be
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(1)
        if self.record is not None:
            self.record.remove_process(pid)
        self._popen = None


class OwnedTempDir:
    """A temporary directory recorded for orphan cleanup and removed on ``cleanup()``."""

    def __init__(self, prefix: str, record: RunRecord | None = None, *, ram: bool = False) -> None:
        """``ram``: in ``/dev/shm`` when it has room (``user_folder.ram_root``), else in the temp dir."""
        if not prefix.startswith(OWN_PREFIX):  # a later run deletes only folders of the plugin's own kinds
            raise ValueError(f"temporary folder prefix {prefix!r} must start with {OWN_PREFIX!r}")
        where = ram_root() if ram else None
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        self.record = record
        if record is not None:
            record.add_path(self.path)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        # a server may still be writing a last file as it exits
        if self.path.exists():
            time.sleep(0.2)
            shutil.rmtree(self.path, ignore_errors=True)
        if self.record is not None:
            self.record.remove_path(self.path)


class ServerProcess(Stoppable):
    """A server subprocess with a throwaway working dir, awaited over HTTP: what ``phoenix serve`` and
    ``ollama serve`` have in common. A start that fails says why, shows the log's tail and names the fix."""

    def __init__(self, service: str, backend: str, *, prefix: str, record: RunRecord | None = None) -> None:
        super().__init__()
        self.service = service
        self.backend = backend
        self.prefix = prefix
        self.record = record
        self._workdir: OwnedTempDir | None = None
        self._process: ManagedProcess | None = None

    @property
    def workdir(self) -> Path:
        """Created on first use, so the caller can point the server's environment at it before ``start``."""
        if self._workdir is None:
            self._workdir = OwnedTempDir(self.prefix, self.record)
            self.on_stop(self._workdir.cleanup)
        return self._workdir.path

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], health_url: str, timeout: float, fix: str) -> None:
        process = ManagedProcess(argv, log_path=self.workdir / f"{self.service}.log", env=env, record=self.record)
        self._process = process
        self.on_stop(process.stop)
        try:
            process.start()
        except OSError as exc:
            self.stop()
            raise ServiceStartError(
                self.service, self.backend, f"cannot run {argv[0]}: {exc.strerror or exc}", fix=fix
            ) from exc
        if not wait_until(lambda: http_ok(health_url), timeout=timeout, alive=process.alive):
            reason = (
                f"`{' '.join(argv[-2:])}` exited with code {process.returncode}"
                if not process.alive()
                else f"GET {health_url} did not answer within {timeout:.0f} s"
            )
            log = process.log_tail()
            self.stop()
            raise ServiceStartError(self.service, self.backend, reason, log=log, fix=fix)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the process or its working dir still exists (a stop leaves neither)."""
        return self._process is not None or self._workdir is not None

    def log_tail(self) -> list[str]:
        return self._process.log_tail() if self._process is not None else []

    def stop(self) -> None:
        self._process = self._workdir = None
        super().stop()  # the process, then its working dir
