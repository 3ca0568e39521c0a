"""The service under test: a process the run starts from ``llmtrace_app_command``, or one already running at
``llmtrace_app_url``, asked over HTTP.

A started service runs in its own process group (``process.ManagedProcess``: stopped with everything it spawned, on
Ctrl-C, SIGTERM and SIGHUP too, and reaped by the next run after a SIGKILL), in the rootdir, with its output in a log
whose tail every error about it shows. No shell: the command is split like a shell would (quotes), ``{port}`` is
replaced by a free loopback port, and nothing else is interpreted. A service that dies during a case fails that case
with its exit code and log tail; the next case starts it again.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.services.base import ServiceStartError, free_port, http_ok, wait_until
from pytest_llmtrace.services.process import ManagedProcess, OwnedTempDir

if TYPE_CHECKING:
    from pytest_llmtrace.services.app_request import RequestTemplate
    from pytest_llmtrace.services.run_records import RunRecord

PORT_FIELD = "{port}"
_BODY_SHOWN = 500  # characters of an error answer shown in the case's failure


class ServiceError(LLMTraceError):
    """The service could not answer a case; the message is the case's app error."""


class ServiceDied(ServiceError):
    pass


class RequestTimeout(ServiceError):
    pass


class ServiceAnswered(ServiceError):
    """A non-2xx answer: its status and the start of its body."""


def parse_command(text: str) -> list[str]:
    """``llmtrace_app_command`` as argv: split as a shell would, never run by one. ValueError says what is wrong."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r} into arguments: {exc}") from None
    if not argv:
        raise ValueError("the command is empty")
    if not any(PORT_FIELD in arg for arg in argv):
        raise ValueError(
            f"the command has no {PORT_FIELD}: the service must listen on the free loopback port the run picks "
            "(e.g. uvicorn server:app --host 127.0.0.1 --port {port})"
        )
    return argv


def _executable(name: str, path: str | None) -> str:
    """``name`` as the PATH finds it, else as installed next to this Python (``uvicorn`` in the venv pytest runs
    from, when that venv's bin is not on the PATH: ``.venv/bin/pytest`` run without activating it)."""
    if os.sep in name or shutil.which(name, path=path):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else name


def shown(argv: Sequence[str]) -> str:
    """A command as the user wrote it: quoted only where a shell would need it ({port} left bare)."""
    return " ".join(arg if re.fullmatch(r"[\w@%+=:,./{}-]+", arg) else shlex.quote(arg) for arg in argv)


def parse_ready(text: str) -> str | None:
    """``llmtrace_app_ready``: ``GET /path`` (any 2xx), or empty for the port opening. ValueError when neither."""
    if not text.strip():
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0].upper() != "GET" or not parts[1].startswith("/"):
        raise ValueError(f"expected 'GET /path' (e.g. GET /healthz), or nothing to wait for the port; got {text!r}")
    return parts[1]


class AppService:
    """One service per session (per xdist worker): started on first use, restarted after it dies, stopped at the end.
    With ``url`` (a running service) nothing is started."""

    def __init__(
        self,
        *,
        argv: Sequence[str] | None,
        url: str | None,
        ready_path: str | None,
        cwd: Path,
        start_timeout_s: float,
        record: RunRecord | None = None,
    ) -> None:
        self.argv_template = list(argv) if argv else None
        self.ready_path = ready_path
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        self.record = record
        self.starts = 0
        self._url = url.rstrip("/") if url else None
        self._env: dict[str, str] = {}
        self._process: ManagedProcess | None = None
        self._workdir: OwnedTempDir | None = None
        self._argv: list[str] = []

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The started service's process id (its process group's); None for a running service."""
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the service is not started")
        return self._url

    def start(self, env: Mapping[str, str]) -> None:
        """Start the command and wait until it is ready; ServiceStartError with the exit code and log tail if not."""
        if self.argv_template is None:
            return  # a running service (llmtrace_app_url)
        self._env = dict(env)
        port = free_port()
        self._argv = [arg.replace(PORT_FIELD, str(port)) for arg in self.argv_template]
        self._argv[0] = _executable(self._argv[0], self._env.get("PATH"))
        if self._workdir is None:
            self._workdir = OwnedTempDir("llmtrace-app-", self.record)
        process = ManagedProcess(
            self._argv, log_path=self._workdir.path / "app.log", env=self._env, cwd=self.cwd, record=self.record
        )
        fix = f"run `{shown(self._argv)}` yourself in {self.cwd} to see it start, and check llmtrace_app_command"
        try:
            process.start()
        except OSError as exc:
            raise ServiceStartError(
                "app", "command", f"cannot run {self._argv[0]}: {exc.strerror or exc}", fix=fix + " (on PATH?)"
            ) from None
        self._process = process
        self._url = f"http://127.0.0.1:{port}"
        self.starts += 1
        if wait_until(self._ready, timeout=self.start_timeout_s, alive=process.alive, interval=0.05):
            return
        if not process.alive():
            reason = f"`{shown(self._argv)}` exited with code {process.returncode} before it was ready"
        else:
            reason = self._not_ready(port)
            fix = (
                "check llmtrace_app_ready (GET /path answering 2xx, or empty to wait for the port) and that the "
                f"service listens on 127.0.0.1:{{port}}; or raise llmtrace_app_start_timeout_s. {fix}"
            )
        log = process.log_tail()
        self._stop_process()
        raise ServiceStartError("app", "command", reason, log=log, fix=fix)

    def _not_ready(self, port: int) -> str:
        """Why a service that is still running was not ready in time (the process's and the container's words)."""
        what = f"GET {self._url}{self.ready_path} gave no 2xx" if self.ready_path else f"port {port} did not open"
        return f"{what} within {self.start_timeout_s:g} s (llmtrace_app_start_timeout_s)"

    def _ready(self) -> bool:
        if self.ready_path is not None:
            return http_ok(self.url + self.ready_path, timeout=1.0)
        parts = urlsplit(self.url)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1.0):
                return True
        except OSError:
            return False

    def ensure_running(self) -> str | None:
        """Before a case: a service that died since the last one is started again; says so, with its exit code."""
        if self._process is None or self._process.alive():
            return None
        code = self._process.returncode
        self._stop_process()
        self.start(self._env)
        return f"the service had exited with code {code}; started again"

    def died(self) -> str | None:
        """Why the service is gone, with its log's tail; None while it runs (or when the run did not start it)."""
        if self._process is None or self._process.alive():
            return None
        tail = "\n".join("    " + line for line in self._process.log_tail(30))
        return f"the service exited with code {self._process.returncode}; last lines of its log:\n{tail}"

    def log_tail(self, lines: int = 30) -> list[str]:
        return self._process.log_tail(lines) if self._process is not None else []

    def send(
        self, template: RequestTemplate, values: Mapping[str, str], traceparent: str, timeout_s: float
    ) -> tuple[int, bytes]:
        """One request; a non-2xx answer, a timeout or a lost connection raise ``ServiceError`` saying which."""
        parts = urlsplit(self.url)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
        body = template.render(values)
        headers = {"traceparent": traceparent, "Accept": "application/json", **dict(template.headers)}
        if template.body is not None:
            headers.setdefault("Content-Type", "application/json")
        path = (parts.path.rstrip("/") or "") + template.path
        started = time.monotonic()
        try:
            connection.request(template.method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            status, data = response.status, response.read()
        except TimeoutError:
            raise RequestTimeout(
                f"{template.method} {path} got no answer within {timeout_s:g} s (the case deadline, "
                "llmtrace_case_timeout_s)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            time.sleep(0.2)  # a process that crashed on the request is reaped a moment later
            died = self.died()
            if died is not None:
                raise ServiceDied(f"{template.method} {path} failed ({exc}): {died}") from None
            raise ServiceError(
                f"{template.method} {path} failed after {time.monotonic() - started:.1f} s: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            connection.close()
        if not 200 <= status < 300:
            text = data.decode("utf-8", "replace")
            shown = text[:_BODY_SHOWN] + ("..." if len(text) > _BODY_SHOWN else "")
            raise ServiceAnswered(f"{template.method} {path} answered {status}: {shown}")
        return status, data

    def stop(self) -> None:
        self._stop_process()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _stop_process(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def describe(self) -> str:
        if self.argv_template is None:
            return f"the running service at {self._url}"
        return f"`{shown(self.argv_template)}` in {self.cwd}"
