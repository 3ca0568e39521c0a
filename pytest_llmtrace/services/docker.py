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
  do neither (SIGKILL) leaves it behind, and the next run on this host removes it (``runs.reap_orphans``).

That sweep removes a container only when it provably is a dead run's own (``provably_owned``): its id is in the run's
record, and its labels carry this host and the hash of that record's token. Labels alone prove nothing: anyone with
access to the daemon can set them, and ``docker commit`` copies them onto every container made from the committed
image; such a container has another id. A token hash seen on a label can be copied onto any container, but the id
cannot: only the record, a file in this user's private folder, names it. The token hash ties the id to that run, so
a record cannot be made to remove a container of another run (or of a user's own making) by naming its id.

Ryuk, where it can run, keeps removing what testcontainers started when the session's connection drops; nothing here
turns it off (``TESTCONTAINERS_RYUK_DISABLED`` is the user's choice, or CI's where Ryuk's image cannot be pulled).

testcontainers and the docker SDK are imported here, lazily: without Docker, constructing a container raises at once,
so ``auto`` asks ``docker_available()`` first and never pays for the import on a machine without a daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psutil

from pytest_llmtrace.core.errors import first_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from pytest_llmtrace.services.run_records import RunRecord

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
        return False, _first_line(exc)
    try:
        client.ping()
    except Exception as exc:
        return False, _first_line(exc)
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return True, ""


def _first_line(exc: BaseException) -> str:
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
    record: RunRecord | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, record: RunRecord | None) -> ContainerOwner:
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


@dataclass(frozen=True)
class DeadRun:
    """What a run record proves about containers: the ids it recorded, its token, and the host it ran on. A dead
    run's record, or at its end the run's own (what a killed xdist worker left)."""

    token: str
    host: str
    container_ids: frozenset[str]


def provably_owned(container_id: str, labels: Mapping[str, str], runs: Iterable[DeadRun], host: str) -> bool:
    """Whether a container is one of these runs' own: recorded by id in a run of this host, and labelled with this
    host and that run's token hash. A container made from a committed image has the labels but not the id."""
    if labels.get(HOST_LABEL) != host:
        return False
    mark = labels.get(TOKEN_LABEL, "")
    return any(
        run.host == host and container_id in run.container_ids and hmac.compare_digest(mark, token_hash(run.token))
        for run in runs
    )


def sweep(runs: Sequence[DeadRun], client: Any = None, host: str | None = None) -> tuple[list[str], set[str]]:
    """Remove the containers these runs provably own; returns one line per container removed (or not) and the ids
    still to remove because Docker did not answer, which the caller keeps recorded for the next run.

    Only this host's labelled containers are listed, and each is checked with ``provably_owned`` before removal.
    """
    host = host or socket.gethostname()
    wanted: set[str] = set().union(*(run.container_ids for run in runs)) if runs else set()
    if not wanted:
        return [], set()
    own_client = client is None
    if own_client:
        ok, why = docker_available()
        if not ok:
            return [f"kept {len(wanted)} recorded container(s) for later: {why}"], wanted
    import docker

    if own_client:
        try:
            client = docker.from_env()
        except Exception as exc:  # the daemon went away since the ping
            return [f"kept {len(wanted)} recorded container(s) for later: {_first_line(exc)}"], wanted
    try:
        return _remove_owned(client, runs, host, wanted)
    finally:
        if own_client:
            with contextlib.suppress(Exception):
                client.close()


def _remove_owned(client: Any, runs: Sequence[DeadRun], host: str, wanted: set[str]) -> tuple[list[str], set[str]]:
    import docker.errors

    try:
        listed = client.containers.list(all=True, filters={"label": f"{HOST_LABEL}={host}"})
    except Exception as exc:
        return [f"kept {len(wanted)} recorded container(s) for later: {_first_line(exc)}"], wanted
    done: list[str] = []
    left: set[str] = set()
    for container in listed:
        if not provably_owned(str(container.id), container.labels, runs, host):
            continue
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:  # removed meanwhile (by its own run's stop, say): done
            continue
        except Exception as exc:  # tried again by the next run
            left.add(str(container.id))
            done.append(f"could not remove container {container.name}: {_first_line(exc)}")
            continue
        done.append(f"removed container {container.name} ({str(container.id)[:12]})")
    return done, left


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


def _record_at_creation(container: Any, record: RunRecord, service: str) -> None:
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


def start_prepared(container: Any) -> None:
    """Start ``container`` (and wait, with its own wait strategy). What dead runs left was swept at the session's
    start (``runs.reap_orphans``)."""
    container.start()


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


def remove(container: Any, record: RunRecord | None = None) -> None:
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
    path); start it with ``start_prepared`` and wait with ``wait_http``, which needs nothing inside the image (the
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
    from pytest_llmtrace.services.base import http_ok, wait_until

    def up() -> bool:
        container.get_wrapped_container().reload()
        return bool(container.get_wrapped_container().status in ("created", "running"))

    if not wait_until(lambda: http_ok(url), timeout=timeout, interval=0.5, alive=up):
        state = "the container is running" if up() else "the container exited"
        raise TimeoutError(f"GET {url} did not answer within {timeout:.0f} s ({state})")
