"""The per-user folder runs keep their records and state in, and what a run may delete: trusted as pytest trusts its
basetemp. The folder is created 0700 and its owner checked before every use; a path is deleted only if it is one of
the plugin's own kinds in its own place, not a symlink, and this user's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmtrace.core.errors import LLMTraceError

if TYPE_CHECKING:
    from collections.abc import Iterator


OWN_PREFIX = "llmtrace-"  # the temp folders servers get: llmtrace-pg-*, llmtrace-ollama-*, llmtrace-phoenix-*


RUN_DIR_PREFIX = "run-"  # xdist state folders, in the per-user folder

# A RAM-backed folder for data a server writes many small files of (an embedded cluster's copy: 1,300 files, 1.5-3.7
# ms each on a slow disk, a tenth of a second on tmpfs); used only with this much free, else the temp dir.
RAM_ROOT = Path("/dev/shm")
RAM_MIN_FREE_BYTES = 1 << 30


def ram_root() -> Path | None:
    """``/dev/shm`` when it is a world-writable sticky directory (a tmpfs, as Linux mounts it) with at least
    ``RAM_MIN_FREE_BYTES`` free: a container's 64 MB default would run out; None otherwise."""
    import shutil

    try:
        info = os.stat(RAM_ROOT, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode) or not info.st_mode & stat.S_ISVTX or not os.access(RAM_ROOT, os.W_OK):
            return None
        return RAM_ROOT if shutil.disk_usage(RAM_ROOT).free >= RAM_MIN_FREE_BYTES else None
    except OSError:
        return None


class UnsafeRunFolder(LLMTraceError):
    """The per-user folder is not this user's own: using it would let another user steer what a run deletes or kills."""


def user_dir() -> Path:
    """``$TMPDIR/pytest-llmtrace-<uid>``: created 0700, verified before every use."""
    return private_dir(Path(tempfile.gettempdir()) / f"pytest-llmtrace-{os.getuid()}")


def records_dir() -> Path:
    """Where runs keep their records: one JSON file per run."""
    return private_dir(user_dir() / "runs")


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can use: created 0700, or checked to be a real folder this user owns.

    Like pytest's basetemp: a folder owned by someone else (or a symlink) is refused, since anyone could have created
    it first in a shared /tmp; a folder this user owns but left open to others (older versions made it 0755) is
    tightened, since only its owner could have opened it.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    fix = "remove it, or set TMPDIR to a folder of your own, then run again"
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeRunFolder(f"pytest-llmtrace: {path} is a symlink (to {os.readlink(path)}), not a folder; {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeRunFolder(f"pytest-llmtrace: {path} is not a folder; {fix}")
    if info.st_uid != os.getuid():
        raise UnsafeRunFolder(
            f"pytest-llmtrace: {path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}); another user "
            f"may have created it to make this run delete files or stop processes. {fix[0].upper()}{fix[1:]}"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def owned_by_me(info: os.stat_result) -> bool:
    return info.st_uid == os.getuid() and not stat.S_ISLNK(info.st_mode)


def may_delete(path: Path) -> str | None:
    """Why ``path`` must not be deleted, or None when it is the plugin's own folder (its kind, its place, its owner)."""
    try:
        info = os.lstat(path)
    except OSError:
        return "it no longer exists"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink"
    temp_root, mine = Path(tempfile.gettempdir()).resolve(), user_dir().resolve()
    parent = path.parent.resolve()
    own_kind = (parent in (temp_root, RAM_ROOT) and path.name.startswith(OWN_PREFIX)) or (
        parent == mine and path.name.startswith(RUN_DIR_PREFIX)
    )
    if not own_kind:
        return (
            f"it is not a pytest-llmtrace folder ({temp_root}/{OWN_PREFIX}*, {RAM_ROOT}/{OWN_PREFIX}* or "
            f"{mine}/{RUN_DIR_PREFIX}*)"
        )
    if not owned_by_me(info):
        return f"it is owned by uid {info.st_uid}"
    return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (the xdist workers and controller of a run), held while in the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
