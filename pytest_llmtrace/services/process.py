"""Child processes that cannot outlive the test run.

Each server runs in its own process group, so stopping it stops whatever it spawned too. Every process and temporary
directory a run owns is also written to a small record file; a run that was killed with SIGKILL never got to clean up,
so the next run reads the records of dead owners and finishes the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

STOP_TIMEOUT_S = 10.0


def registry_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"pytest-llmtrace-{os.getuid()}" / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunRecord:
    """The processes and paths one pytest process owns, on disk, so a later run can reap them after a SIGKILL."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or registry_dir()) / f"{os.getpid()}.json"
        self.owner_create_time = psutil.Process().create_time()

    def _load(self) -> dict[str, list[dict[str, object]]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"processes": [], "paths": []}
        return {"processes": list(data.get("processes", [])), "paths": list(data.get("paths", []))}

    def _save(self, data: Mapping[str, object]) -> None:
        body = {"owner_pid": os.getpid(), "owner_create_time": self.owner_create_time, **data}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.path)

    def add_process(self, pid: int, *, group: bool) -> None:
        data = self._load()
        data["processes"].append({"pid": pid, "create_time": psutil.Process(pid).create_time(), "group": group})
        self._save(data)

    def add_path(self, path: Path) -> None:
        data = self._load()
        data["paths"].append({"path": str(path)})
        self._save(data)

    def remove_process(self, pid: int) -> None:
        data = self._load()
        data["processes"] = [p for p in data["processes"] if p.get("pid") != pid]
        self._finish(data)

    def remove_path(self, path: Path) -> None:
        data = self._load()
        data["paths"] = [p for p in data["paths"] if p.get("path") != str(path)]
        self._finish(data)

    def _finish(self, data: dict[str, list[dict[str, object]]]) -> None:
        if data["processes"] or data["paths"]:
            self._save(data)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def reap_orphans(directory: Path | None = None) -> list[str]:
    """Kill processes and delete paths recorded by runs whose pytest process no longer exists. Returns what it did."""
    done: list[str] = []
    for record in (directory or registry_dir()).glob("*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if _same_process(data.get("owner_pid"), data.get("owner_create_time")):
            continue  # that run is alive (another session, or an xdist controller): not ours to touch
        for proc in data.get("processes", []):
            pid = proc.get("pid")
            if _same_process(pid, proc.get("create_time")):
                assert isinstance(pid, int)
                _kill(pid, group=bool(proc.get("group")))
                done.append(f"killed orphan process {pid}")
        for entry in data.get("paths", []):
            path = Path(str(entry.get("path")))
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed orphan directory {path}")
        record.unlink(missing_ok=True)
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
