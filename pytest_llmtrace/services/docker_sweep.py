"""The containers a dead run left behind, removed by the next run on this host: only those it provably owned.

That sweep removes a container only when it provably is a dead run's own (``provably_owned``): its id is in the run's
record, and its labels carry this host and the hash of that record's token. Labels alone prove nothing: anyone with
access to the daemon can set them, and ``docker commit`` copies them onto every container made from the committed
image; such a container has another id. A token hash seen on a label can be copied onto any container, but the id
cannot: only the record, a file in this user's private folder, names it. The token hash ties the id to that run, so
a record cannot be made to remove a container of another run (or of a user's own making) by naming its id.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llmtrace.services.docker import HOST_LABEL, TOKEN_LABEL, daemon_reason, docker_available, token_hash


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
            return [f"kept {len(wanted)} recorded container(s) for later: {daemon_reason(exc)}"], wanted
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
        return [f"kept {len(wanted)} recorded container(s) for later: {daemon_reason(exc)}"], wanted
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
            done.append(f"could not remove container {container.name}: {daemon_reason(exc)}")
            continue
        done.append(f"removed container {container.name} ({str(container.id)[:12]})")
    return done, left
