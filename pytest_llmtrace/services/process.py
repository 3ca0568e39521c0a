"""Child processes that cannot outlive the test run.

Each server runs in its own process group, so stopping it stops whatever it spawned too. Every process and temporary
directory a run owns is also written to a small record file; a run that was killed with SIGKILL never got to clean up,
so the next run reads the records of dead owners and finishes the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

STOP_TIMEOUT_S = 10.0


def registry_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"pytest-llmtrace-{os.getuid()}" / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunRecord:
    """The processes and paths one test run owns, on disk, so a later run can reap them after a SIGKILL.

    The owner is the process whose end means "the run is over": the pytest process, or the xdist controller when
    workers start shared services on its behalf (they write into the controller's record, under a file lock).
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        owner_pid: int | None = None,
        owner_create_time: float | None = None,
        path: Path | None = None,
    ) -> None:
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        # The run id in the name: two runs in one process (pytester's in-process runs) must not share a record.
        self.path = path or (directory or registry_dir()) / f"{self.owner_pid}-{uuid.uuid4().hex[:8]}.json"
        self.owner_create_time = (
            psutil.Process(self.owner_pid).create_time() if owner_create_time is None else owner_create_time
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self.path.with_suffix(".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self) -> dict[str, list[dict[str, object]]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"processes": [], "paths": []}
        return {"processes": list(data.get("processes", [])), "paths": list(data.get("paths", []))}

    def _save(self, data: dict[str, list[dict[str, object]]]) -> None:
        if not data["processes"] and not data["paths"]:
            self.path.unlink(missing_ok=True)
            return
        body = {"owner_pid": self.owner_pid, "owner_create_time": self.owner_create_time, **data}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.path)

    def _update(
        self, kind: str, add: dict[str, object] | None = None, remove: Callable[[dict[str, object]], bool] | None = None
    ) -> None:
        with self._locked():
            data = self._load()
            if remove is not None:
                data[kind] = [entry for entry in data[kind] if not remove(entry)]
            if add is not None:
                data[kind].append(add)
            self._save(data)

    def add_process(self, pid: int, *, group: bool) -> None:
        self._update("processes", {"pid": pid, "create_time": psutil.Process(pid).create_time(), "group": group})

    def add_path(self, path: Path) -> None:
        self._update("paths", {"path": str(path)})

    def remove_process(self, pid: int) -> None:
        self._update("processes", remove=lambda entry: entry.get("pid") == pid)

    def remove_path(self, path: Path) -> None:
        self._update("paths", remove=lambda entry: entry.get("path") == str(path))

    def cleanup(self) -> list[str]:
        """Stop everything still recorded (what workers started for the run, what a failed stop left) and forget it."""
        with self._locked():
            done = _clean(self._load())
            self.path.unlink(missing_ok=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        return done


def reap_orphans(directory: Path | None = None) -> list[str]:
    """Kill processes and delete paths recorded by runs whose pytest process no longer exists. Returns what it did."""
    done: list[str] = []
    for record in sorted((directory or registry_dir()).glob("*.json")):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if _same_process(data.get("owner_pid"), data.get("owner_create_time")):
            continue  # that run is alive (another session, or an xdist controller): not ours to touch
        done.extend(_clean(data))
        record.unlink(missing_ok=True)
        record.with_suffix(".lock").unlink(missing_ok=True)
    return done


def _clean(data: Mapping[str, object]) -> list[str]:
    done: list[str] = []
    processes = data.get("processes", [])
    paths = data.get("paths", [])
    assert isinstance(processes, list)
    assert isinstance(paths, list)
    for proc in processes:
        pid = proc.get("pid")
        if _same_process(pid, proc.get("create_time")):
            assert isinstance(pid, int)
            _kill(pid, group=bool(proc.get("group")))
            done.append(f"stopped process {pid}")
    for entry in paths:
        path = Path(str(entry.get("path")))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}")
    return done


def _same_process(pid: object, create_time: object) -> bool:
    """True only for the very process recorded: a reused pid has a different create time."""
    if not isinstance(pid, int) or not isinstance(create_time, (int, float)):
        return False
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 0.01
    except psutil.Error:
        return False


def _kill(pid: int, *, group: bool, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: servers get a chance to flush, but never hang the session."""
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)
    except psutil.Error:
        pass
    if group:  # children that ignored SIGTERM after their leader exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


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
            _kill(pid, group=True, timeout=timeout)
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

    def __init__(self, prefix: str, record: RunRecord | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
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


class ServerProcess:
    """A server subprocess with a throwaway working dir, awaited over HTTP: what ``phoenix serve`` and
    ``ollama serve`` have in common. A start that fails says why, shows the log's tail and names the fix."""

    def __init__(self, service: str, backend: str, *, prefix: str, record: RunRecord | None = None) -> None:
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
        return self._workdir.path

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], health_url: str, timeout: float, fix: str) -> None:
        from pytest_llmtrace.services.base import ServiceStartError, http_ok, wait_until

        process = ManagedProcess(argv, log_path=self.workdir / f"{self.service}.log", env=env, record=self.record)
        self._process = process
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
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
