"""What the Docker backends share: is a daemon there, and how this plugin runs a container.

Every container the plugin starts
- carries labels (``org.pytest-llmtrace.run``, ``.pid``, ``.pid-started``, ``.host``, ``.service``) naming the run and
  the process that owns it (the pytest process, or the xdist controller), and ``.token-sha256``, the hash of its run
  record's secret token;
- is written into the run record by its id the moment the daemon creates it (before it starts and is waited for);
- publishes its ports on 127.0.0.1 only: a test database must not be open to the network while the tests run (a
  remote daemon, or the host's daemon seen from inside a CI job container, gets all interfaces, or nothing here could
  reach the ports);
- is removed by its backend's ``stop()``, at the end of the session and when a signal stops the run; a run that could
  do neither (SIGKILL) leaves it behind, and the next run on this host removes it (``runs.reap_orphans``, through
  ``docker_sweep.sweep``).

Ryuk, where it can run, keeps removing what testcontainers started when the session's connection drops; nothing here
turns it off (``TESTCONTAINERS_RYUK_DISABLED`` is the user's choice, or CI's where Ryuk's image cannot be pulled).

testcontainers and the docker SDK are imported here, lazily: without Docker, constructing a container raises at once,
so ``auto`` asks ``docker_available()`` first and never pays for the import on a machine without a daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import psutil

from pytest_llmtrace.core.errors import first_line
from pytest_llmtrace.services.base import RunLedger, ServiceStartError, http_ok, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence


# The images the Docker backends run unless --llmtrace-<service>-image says otherwise. Pinned: a tag decides the
# server version results were recorded against, and "latest" changes under a test suite without a commit.
POSTGRES_IMAGE = "postgres:17.6-alpine"
# The Phoenix the importers were checked against (facts.md): REST shapes change between majors.
# tests/docker/images.sh reads the version from this line for its local image.
PHOENIX_IMAGE = "arizephoenix/phoenix:version-20.26.1"
# testcontainers' default (0.1.44) predates the JSON /api/create the Ollama backend uses (Ollama >= 0.5.6), and
# 0.12.6 is the version the package's Ollama-API front reports (modelapi/ollama_routes.py).
OLLAMA_IMAGE = "ollama/ollama:0.12.6"
IMAGES = {"postgres": POSTGRES_IMAGE, "phoenix": PHOENIX_IMAGE, "ollama": OLLAMA_IMAGE}

LABEL_PREFIX = "org.pytest-llmtrace"
HOST_LABEL = f"{LABEL_PREFIX}.host"
TOKEN_LABEL = f"{LABEL_PREFIX}.token-sha256"
LOOPBACK = "127.0.0.1"
DEFAULT_SOCKET = "/var/run/docker.sock"
GPU_SETTINGS = ("auto", "all", "none")


def docker_available(timeout: float = 2.0) -> tuple[bool, str]:
    """(True, "") when a daemon answers a ping; else (False, why) for the report header and error messages.

    Asked once per session for the header: with no DOCKER_HOST and no local socket the answer is known without
    importing the docker SDK (about 60 ms) or connecting anywhere.
    """
    if not os.environ.get("DOCKER_HOST") and not Path(DEFAULT_SOCKET).exists():
        return False, f"no Docker daemon socket at {DEFAULT_SOCKET}, DOCKER_HOST unset"
    try:
        import docker
    except ImportError:
        return False, "the docker package is not installed (pip install testcontainers)"
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)))
    except Exception as exc:  # DockerException and connection errors: all mean "no daemon here"
        return False, daemon_reason(exc)
    try:
        client.ping()
    except Exception as exc:
        return False, daemon_reason(exc)
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return True, ""


def daemon_reason(exc: BaseException) -> str:
    """The reason for the header; docker-py's missing-socket error is a long nested repr, so it is said plainly."""
    text = str(exc)
    if "FileNotFoundError" in text or "No such file or directory" in text:
        return "no Docker daemon socket, DOCKER_HOST " + os.environ.get("DOCKER_HOST", "unset")
    return first_line(exc)


def docker_error_fix(service: str) -> str:
    return f"Docker is not reachable: start it or use --llmtrace-{service}={_fallback(service)}"


def _fallback(service: str) -> str:
    return "binary" if service == "ollama" else "embedded"


def start_fix(service: str, image: str, exc: BaseException) -> str:
    """The fix for a container that did not start: a daemon to start, an image to get, or a log to read."""
    try:
        import docker.errors
    except ImportError:
        return docker_error_fix(service)
    text = str(exc).lower()
    if "could not select device driver" in text:
        return (
            "the Docker host cannot pass GPUs through (no NVIDIA Container Toolkit there): install it, or use "
            f"--llmtrace-{service}-gpu=none"
        )
    if isinstance(exc, docker.errors.ImageNotFound) or (
        isinstance(exc, docker.errors.APIError)
        and any(word in text for word in ("pull", "manifest", "registry", "no such host"))
    ):
        return (
            f"the image {image} is not on the Docker host and could not be pulled: check the name, run "
            f"`docker pull {image}` (or build it), or choose another with --llmtrace-{service}-image"
        )
    if isinstance(exc, docker.errors.DockerException) and not isinstance(exc, docker.errors.APIError):
        return docker_error_fix(service)
    return f"read the container's log above; or use --llmtrace-{service}={_fallback(service)}"


# -- who owns a container ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerOwner:
    """The run a container belongs to, written on it as labels; ``record`` (when the run has one) is where its id
    goes at creation, and ``token`` that record's secret, of which the labels carry only the hash."""

    run: str
    pid: int
    pid_started: float  # the owner's create time: with the pid, it names one process
    host: str
    token: str | None = None
    record: RunLedger | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, record: RunLedger | None) -> ContainerOwner:
        """The owner of ``record``'s run; without a record (a backend used on its own), this process, and then no
        later run can prove the container its own: only the backend's ``stop()`` removes it."""
        if record is None:
            pid = os.getpid()
            return cls(f"{pid}-{uuid.uuid4().hex[:8]}", pid, psutil.Process(pid).create_time(), socket.gethostname())
        return cls(
            record.path.stem, record.owner_pid, record.owner_create_time, socket.gethostname(), record.token, record
        )

    def labels(self, service: str) -> dict[str, str]:
        labels = {
            f"{LABEL_PREFIX}.run": self.run,
            f"{LABEL_PREFIX}.pid": str(self.pid),
            f"{LABEL_PREFIX}.pid-started": repr(self.pid_started),
            HOST_LABEL: self.host,
            f"{LABEL_PREFIX}.service": service,
        }
        if self.token:
            labels[TOKEN_LABEL] = token_hash(self.token)
        return labels


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- running a container ----------------------------------------------------------------------------------------------


def publish_on_loopback(client: Any) -> bool:
    """Whether this process reaches published ports on 127.0.0.1: the daemon runs on this machine (a unix socket or
    loopback TCP, and the daemon's host name is this machine's).

    Not so from a CI job container that talks to the host's daemon through a mounted socket (loopback there is the
    job's own) or for a remote daemon: their ports go on all interfaces, reached the way testcontainers finds them.
    """
    if os.environ.get("TESTCONTAINERS_HOST_OVERRIDE") or os.environ.get("TC_HOST"):
        return False  # the user said where containers are reached
    url = os.environ.get("DOCKER_HOST", "")
    remote = url and not url.startswith(("unix://", "npipe://"))
    if remote and (urlsplit(url).hostname or "") not in {"localhost", "127.0.0.1", "::1"}:
        return False
    try:
        return bool(client.info().get("Name") == socket.gethostname())
    except Exception:  # an old or unusual daemon: what the socket says
        return True


def gpu_request(setting: str) -> tuple[bool, str]:
    """Whether to pass all GPUs through (``auto``: when ``nvidia-smi`` is on PATH), and why, for the header."""
    if setting == "all":
        return True, "all GPUs (llmtrace_ollama_gpu = all)"
    if setting == "none":
        return False, "none (llmtrace_ollama_gpu = none)"
    found = shutil.which("nvidia-smi")
    if found:
        return True, f"all GPUs (auto: {found})"
    return False, "none (auto: no nvidia-smi on PATH)"


def prepare_container(
    container: Any, *, service: str, ports: Iterable[int], owner: ContainerOwner, gpu: bool = False
) -> None:
    """Label ``container``, publish ``ports`` on loopback (random host ports), and ask for the GPUs if ``gpu``.

    Replaces whatever ``with_kwargs`` set before, so the GPU decision is this one, the one the header shows.
    """
    address = LOOPBACK if publish_on_loopback(container.get_docker_client().client) else "0.0.0.0"
    for port in ports:
        container.ports[str(port)] = (address, None)  # docker-py: (host ip, host port); None = any free port
    kwargs: dict[str, Any] = {"labels": owner.labels(service)}
    if gpu:
        from docker.types import DeviceRequest

        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    container.with_kwargs(**kwargs)
    if owner.record is not None:
        _record_at_creation(container, owner.record, service)


def _record_at_creation(container: Any, record: RunLedger, service: str) -> None:
    """Write the container's id into ``record`` as soon as the daemon has created it, before it starts and is
    waited for: a run killed during the wait still leaves a container the next run can prove its own.

    testcontainers creates through its ``DockerClient.create`` (``run`` in older versions); this container's client
    gets a wrapper around that one call.
    """
    client = container.get_docker_client()
    for name in ("create", "run"):
        made_by: Callable[..., Any] | None = getattr(client, name, None)
        if made_by is not None:
            break
    if made_by is None:
        return

    def recorded(*args: Any, **kwargs: Any) -> Any:
        made = made_by(*args, **kwargs)
        record.add_container(str(made.id), service)
        return made

    setattr(client, name, recorded)


def container_host(container: Any) -> str:
    """Where the published ports are reached: 127.0.0.1 when they are bound there (not ``localhost``, which may
    resolve to ::1 first), else where testcontainers says (the daemon's host, or a gateway inside a CI container)."""
    bound = container.get_wrapped_container().attrs["HostConfig"].get("PortBindings") or {}
    if any(b.get("HostIp") == LOOPBACK for entries in bound.values() for b in entries or []):
        return LOOPBACK
    return str(container.get_container_host_ip())


def log_tail(container: Any, lines: int = 50) -> list[str]:
    """The end of a container's output, for a start that failed; empty when there is no container to ask."""
    if container is None or getattr(container, "_container", None) is None:
        return []
    try:
        stdout, stderr = container.get_logs()
    except Exception:  # the container is already gone
        return []
    text: str = (stdout + stderr).decode(errors="replace")
    return text.splitlines()[-lines:]


def remove(container: Any, record: RunLedger | None = None) -> None:
    """Remove a started (or half-started) container and its anonymous volumes, and forget it in ``record``; one
    already gone is no error."""
    if container is None or getattr(container, "_container", None) is None:
        return  # never created: the image was missing, or the daemon refused the request
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        container.stop()
    if record is not None:
        record.remove_container(str(container._container.id))


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each secret replaced by ``***``: docker errors and logs may quote the environment."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def http_container(
    image: str,
    *,
    service: str,
    port: int,
    owner: ContainerOwner,
    env: Mapping[str, str] | None = None,
    volumes: Mapping[str, str] | None = None,
    gpu: bool = False,
) -> Any:
    """A prepared container of ``image`` (labels, ``port`` published on loopback, ``volumes`` host path -> container
    path); ``DockerService`` starts it, and ``wait_http`` waits for it, which needs nothing inside the image (the
    Phoenix image is distroless)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image)
    for key, value in (env or {}).items():
        container = container.with_env(key, value)
    for host_path, container_path in (volumes or {}).items():
        container = container.with_volume_mapping(host_path, container_path, "rw")
    prepare_container(container, service=service, ports=[port], owner=owner, gpu=gpu)
    return container


def wait_http(container: Any, url: str, *, timeout: float) -> None:
    """Wait for ``GET url`` to answer 2xx from here, where the tests connect from (testcontainers' own HTTP wait
    asks the address it computes, a gateway inside a CI container, not the loopback port the plugin published).
    Raises ``TimeoutError`` saying whether the container exited."""

    def up() -> bool:
        container.get_wrapped_container().reload()
        return bool(container.get_wrapped_container().status in ("created", "running"))

    if not wait_until(lambda: http_ok(url), timeout=timeout, interval=0.5, alive=up):
        state = "the container is running" if up() else "the container exited"
        raise TimeoutError(f"GET {url} did not answer within {timeout:.0f} s ({state})")


# -- the lifecycle every Docker backend shares ------------------------------------------------------------------------


class DockerService:
    """One service in one container, as testcontainers' backends are one class each over a shared lifecycle:
    ``configure`` the container (labelled, published on loopback), start it, ``wait`` until it answers; any failure
    is a ``ServiceStartError`` with the container's log and the fix, after the container is removed. ``stop``
    removes it too. What dead runs left was swept at the session's start (``runs.reap_orphans``).

    A backend names its ``service``, builds its container in ``configure`` (``http_container``, or a testcontainers
    class passed through ``prepare_container``), returns the URL the tests use from ``wait``, and lists in
    ``secrets`` what a docker error or log may quote but must not show.
    """

    service: ClassVar[str]
    backend: ClassVar[str] = "docker"

    def __init__(self, image: str, record: RunLedger | None = None) -> None:
        self.image = image
        self.record = record
        self._container: Any = None

    @property
    def owner(self) -> ContainerOwner:
        return ContainerOwner.of(self.record)

    def configure(self) -> Any:
        """A prepared, not yet started testcontainers container."""
        raise NotImplementedError

    def wait(self, container: Any) -> str:
        """Block until the started ``container`` serves; its URL as seen from here."""
        raise NotImplementedError

    def secrets(self) -> Sequence[str]:
        return ()

    def start_container(self) -> str:
        """Configure, start and wait: the URL the service answers on, or a ``ServiceStartError``."""
        try:
            self._container = container = self.configure()
            container.start()  # testcontainers' own wait strategy, if the class has one, runs here
            return self.wait(container)
        except Exception as exc:  # docker's errors have many types; all mean "could not start"
            raise self.failed(f"{self.image}: {first_line(exc)}", start_fix(self.service, self.image, exc)) from exc

    def failed(self, reason: str, fix: str) -> ServiceStartError:
        """The error for a start that failed after the container was made: its log is kept, then it is removed."""
        secrets = self.secrets()
        log = [scrub(line, secrets) for line in log_tail(self._container)]
        self.stop()
        return ServiceStartError(self.service, self.backend, scrub(reason, secrets), log=log, fix=fix)

    def stop(self) -> None:
        container, self._container = self._container, None
        remove(container, self.record)
