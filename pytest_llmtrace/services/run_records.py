"""What a test run leaves on disk, so that nothing it started outlives it, and nobody else can abuse that.

Every process and temporary folder a run starts is written to a small record file in a per-user folder,
``$TMPDIR/pytest-llmtrace-<uid>/runs/``. A run stops and deletes what its record lists when it ends; a run killed
with SIGKILL never gets to, so the next run reads the records of dead runs and finishes the job. Under xdist the
workers share a state folder, ``$TMPDIR/pytest-llmtrace-<uid>/run-<id>/``, keyed by the run id the controller
hands them, and write into the controller's record.

A record tells a later run to kill and delete, so it is trusted no further than this (as pytest does for its
basetemp): the per-user folder is created 0700 and its owner checked before use; a record is read only if this user
owns it; a path is deleted only if it is one of the plugin's own kinds (``llmtrace-*`` in the temp root, ``run-*``
in the per-user folder), is not a symlink, and this user owns it; a process is killed only if it is the very process
recorded: same pid, same start time, same command line.

Docker containers are recorded too, but a container is not a file or a process of this user: anyone who can reach
the daemon can make one with any labels, and ``docker commit`` copies a container's labels onto every container
made from the committed image. So a record holds a random ``token`` that never leaves it (the containers carry only
its SHA-256) and the id of each container as the daemon gave it at creation; a later run removes a container only
when its id is in a dead run's record and its labels carry that record's token hash and this host
(``services.docker_sweep.sweep``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from pytest_llmtrace.services.user_folder import (
    RUN_DIR_PREFIX,
    UnsafeRunFolder,
    file_lock,
    may_delete,
    owned_by_me,
    private_dir,
    records_dir,
    user_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import pytest

KINDS = ("processes", "paths", "containers")  # what a record lists
TOKEN_BYTES = 16
STOP_TIMEOUT_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)  # all a run record may ask for


def running(pid: object, create_time: object) -> psutil.Process | None:
    """The very process recorded, if it still runs: a reused pid has a different start time."""
    if not isinstance(pid, int) or not isinstance(create_time, (int, float)):
        return None
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - create_time) < 0.01 else None
    except (psutil.Error, ValueError):  # ValueError: a negative pid, which no process has
        return None


def _is_recorded_process(entry: Mapping[str, Any]) -> str | None:
    """Why the process in ``entry`` is not the one recorded (so must not be touched), or None when it is."""
    cmdline = entry.get("cmdline")
    if not isinstance(cmdline, list):
        return "the record does not say which command it ran"
    proc = running(entry.get("pid"), entry.get("create_time"))
    if proc is None:
        return "it has exited"
    try:
        now = proc.cmdline()
    except psutil.Error as exc:
        return f"its command line cannot be read ({type(exc).__name__})"
    if now != cmdline:
        return f"its command line is {' '.join(now)!r}, the record says {' '.join(map(str, cmdline))!r}"
    return None


def stop_process(pid: int, *, group: bool, timeout: float = STOP_TIMEOUT_S, stop_signal: int = signal.SIGTERM) -> None:
    """``stop_signal``, then SIGKILL after ``timeout``: servers get a chance to flush, but never hang the session.

    A throwaway Postgres takes SIGQUIT (its immediate shutdown): on SIGTERM it waits for every client to disconnect,
    and its fast shutdown (SIGINT) writes a checkpoint of data that is deleted right after.
    """
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(pid, stop_signal)
    if not wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)
    if group:  # children that ignored SIGTERM after their leader exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` ended within ``timeout``; a zombie counts as ended.

    A server that detached (Postgres under ``pg_ctl``) is no child of ours: once it exits, its pid stays a zombie
    until init reaps it, and a container's or a micro-VM's init may take seconds to do that. ``psutil``'s ``wait``
    waits for the reaping, so every session end would wait for init.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:  # not ours to look at: only its disappearance tells
            if not psutil.pid_exists(pid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


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
        self.path = path or (directory or records_dir()) / f"{self.owner_pid}-{uuid.uuid4().hex[:8]}.json"
        self.owner_create_time = (
            psutil.Process(self.owner_pid).create_time() if owner_create_time is None else owner_create_time
        )
        # The run's secret: a worker writing into its controller's record takes the controller's (see _load).
        token = _read_record(self.path).get("token") if path is not None else None
        self.token = str(token) if _is_token(token) else secrets.token_hex(TOKEN_BYTES)

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        data = _read_record(self.path)
        if _is_token(data.get("token")):
            self.token = str(data["token"])
        return {kind: _entries(data, kind) for kind in KINDS}

    def _save(self, data: dict[str, list[dict[str, Any]]]) -> None:
        if not any(data.values()):
            self.path.unlink(missing_ok=True)
            return
        body = {
            "owner_pid": self.owner_pid,
            "owner_create_time": self.owner_create_time,
            "token": self.token,
            "host": socket.gethostname(),
            **data,
        }
        _write_record(self.path, body)

    def _update(
        self, kind: str, add: dict[str, Any] | None = None, remove: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        with file_lock(self.path.with_suffix(".lock")):
            data = self._load()
            if remove is not None:
                data[kind] = [entry for entry in data[kind] if not remove(entry)]
            if add is not None:
                data[kind].append(add)
            self._save(data)

    def add_process(self, pid: int, *, group: bool, stop_signal: int = signal.SIGTERM) -> None:
        """Record a running server; its command line is kept so that a reused pid is never mistaken for it."""
        try:
            proc = psutil.Process(pid)
            entry = {
                "pid": pid,
                "create_time": proc.create_time(),
                "cmdline": _settled_cmdline(proc),
                "group": group,
                "stop_signal": int(stop_signal),
            }
        except psutil.Error:  # it exited already (a server that failed at once): nothing a later run could stop
            return
        self._update("processes", entry)

    def add_path(self, path: Path) -> None:
        self._update("paths", {"path": str(path)})

    def remove_process(self, pid: int) -> None:
        self._update("processes", remove=lambda entry: entry.get("pid") == pid)

    def remove_path(self, path: Path) -> None:
        self._update("paths", remove=lambda entry: entry.get("path") == str(path))

    def add_container(self, container_id: str, service: str) -> None:
        """Record a container the moment the daemon has created it: its id is what proves it ours later."""
        self._update("containers", {"id": container_id, "service": service})

    def remove_container(self, container_id: str) -> None:
        self._update("containers", remove=lambda entry: entry.get("id") == container_id)

    def cleanup(self) -> list[str]:
        """Stop everything still recorded (what workers started for the run, what a failed stop left) and forget it.

        Containers a killed xdist worker left are removed here too; when Docker does not answer, they stay recorded
        for the next run's ``reap_orphans``.
        """
        with file_lock(self.path.with_suffix(".lock")):
            data = self._load()
            done = _clean(data)
            left = _reap_containers(data["containers"], self.token, socket.gethostname(), done)
            if left:
                self._save({"processes": [], "paths": [], "containers": left})
            else:
                self.path.unlink(missing_ok=True)
        if not left:
            self.path.with_suffix(".lock").unlink(missing_ok=True)
        return done


def _is_token(value: object) -> bool:
    return isinstance(value, str) and len(value) == 2 * TOKEN_BYTES and all(c in "0123456789abcdef" for c in value)


def _entries(data: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    entries = data.get(kind)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _settled_cmdline(proc: psutil.Process, timeout: float = 2.0) -> list[str]:
    """The command line of a process that has just been started.

    ``Popen`` returns once the child has called exec, but the kernel sets up the new program's arguments a moment
    later; read in between, the command line is empty, and a record saying so would never match the running server.
    """
    deadline = time.monotonic() + timeout
    while not (cmdline := proc.cmdline()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return cmdline


def _read_record(path: Path) -> dict[str, Any]:
    """A record's content, or {} when it is missing, unreadable, or not this user's own regular file."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or not owned_by_me(info):
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def reap_orphans(directory: Path | None = None) -> list[str]:
    """Stop processes, delete paths and remove containers recorded by runs whose pytest process no longer exists.

    Returns what it did and what it refused, one line each: a record another user owns is left alone, and every
    entry of a trusted record still has to pass ``may_delete``, the command-line check or the container proof. A
    record whose containers could not be removed now (Docker did not answer) is kept with those alone, for the next
    run to try again.
    """
    done: list[str] = []
    for record in sorted((directory or records_dir()).glob("*.json")):
        try:
            info = os.lstat(record)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or not owned_by_me(info):
            done.append(f"ignored {record}: not a file of yours (uid {info.st_uid})")
            continue
        data = _read_record(record)
        if running(data.get("owner_pid"), data.get("owner_create_time")) is not None:
            continue  # that run is alive (another session, or an xdist controller): not ours to touch
        done.extend(_clean(data))
        left = _reap_containers(_entries(data, "containers"), data.get("token"), data.get("host"), done)
        if left:  # Docker did not answer: keep the containers' part of the record for the next run
            _write_record(record, {**data, "processes": [], "paths": [], "containers": left})
            continue
        record.unlink(missing_ok=True)
        record.with_suffix(".lock").unlink(missing_ok=True)
    return done


def _reap_containers(
    entries: list[dict[str, Any]], token: object, host: object, done: list[str]
) -> list[dict[str, Any]]:
    """Remove a record's containers (``services.docker_sweep.sweep`` checks each one's proof); returns the entries still
    to remove because Docker did not answer. The Docker SDK is imported only when a record lists containers."""
    if not entries or not _is_token(token) or not isinstance(host, str):
        return []
    from pytest_llmtrace.services.docker_sweep import DeadRun, sweep

    lines, left = sweep([DeadRun(str(token), host, frozenset(str(e.get("id")) for e in entries))])
    done.extend(lines)
    return [e for e in entries if str(e.get("id")) in left]


def _write_record(path: Path, body: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def _clean(data: Mapping[str, Any]) -> list[str]:
    done: list[str] = []
    for entry in data.get("processes", []):
        if not isinstance(entry, dict):
            continue
        pid = entry.get("pid")
        refused = _is_recorded_process(entry)
        if refused is None:
            assert isinstance(pid, int)
            stop_signal = entry.get("stop_signal")
            if not isinstance(stop_signal, int) or stop_signal not in STOP_SIGNALS:
                stop_signal = signal.SIGTERM  # a record is a file: only the plugin's own stop signals
            stop_process(pid, group=bool(entry.get("group")), stop_signal=stop_signal)
            done.append(f"stopped process {pid}")
        elif refused != "it has exited":
            done.append(f"left process {pid} alone: {refused}")
    for entry in data.get("paths", []):
        path = Path(str(entry.get("path") if isinstance(entry, dict) else entry))
        refused = may_delete(path)
        if refused is None:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}")
        elif refused != "it no longer exists":
            done.append(f"kept {path}: {refused}")
    return done


@dataclass(frozen=True)
class RunContext:
    """Who coordinates this run and where its shared state lives."""

    run_id: str
    run_dir: Path  # state files and locks shared by the coordinator and its workers
    record: RunRecord
    coordinator: bool
    worker_id: str  # "main" without xdist, else gw0, gw1, ...


def run_context(config: pytest.Config) -> RunContext:
    """Who coordinates this run; the controller gives xdist a run id it knows, so its workers find the state dir.

    The coordinator first reaps what dead runs left. Raises ``UnsafeRunFolder`` when the per-user folder is not
    the user's own.
    """
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id = str(workerinput["testrunuid"])
        run_dir = private_dir(user_dir() / f"{RUN_DIR_PREFIX}{run_id}")
        owner = _read_record(run_dir / "owner.json")
        record_path = Path(str(owner.get("record")))
        if not owner or record_path.parent.resolve() != records_dir().resolve():
            raise UnsafeRunFolder(f"pytest-llmtrace: {run_dir / 'owner.json'} does not name a run record of yours")
        record = RunRecord(owner_pid=int(owner["pid"]), owner_create_time=float(owner["create_time"]), path=record_path)
        return RunContext(run_id, run_dir, record, coordinator=False, worker_id=str(workerinput["workerid"]))
    reap_orphans()
    run_id = uuid.uuid4().hex
    if getattr(config.option, "dist", "no") != "no" and hasattr(config.option, "testrunuid"):
        if config.option.testrunuid is None:
            config.option.testrunuid = run_id
        run_id = str(config.option.testrunuid)
    run_dir = private_dir(user_dir() / f"{RUN_DIR_PREFIX}{run_id}")
    record = RunRecord()
    record.add_path(run_dir)
    owner = {"pid": record.owner_pid, "create_time": record.owner_create_time, "record": str(record.path)}
    (run_dir / "owner.json").write_text(json.dumps(owner))
    return RunContext(run_id, run_dir, record, coordinator=True, worker_id="main")
