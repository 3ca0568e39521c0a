"""Run records and the per-user folder are trusted no further than they can be: each refusal here with real folders
in tmp_path and real processes, because a record tells the next run what to delete and what to kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import psutil
import pytest

from pytest_llmtrace.services import user_folder
from pytest_llmtrace.services.process import OwnedTempDir
from pytest_llmtrace.services.run_records import RunRecord, reap_orphans, run_context
from pytest_llmtrace.services.user_folder import UnsafeRunFolder, may_delete, records_dir, user_dir

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")


@pytest.fixture(autouse=True)
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temp root: the per-user folder, records and llmtrace-* folders all land in it."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def sleeper() -> Iterator[Any]:
    """Start real processes that would run for a minute; whatever a test leaves alive is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(tag: str, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        argv = argv or [sys.executable, "-c", "import time; time.sleep(60)", tag]
        proc = subprocess.Popen(argv, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _entry(proc: subprocess.Popen[bytes], **changes: Any) -> dict[str, Any]:
    ps = psutil.Process(proc.pid)
    return {"pid": proc.pid, "create_time": ps.create_time(), "cmdline": ps.cmdline(), "group": True, **changes}


def _dead_run(processes: list[dict[str, Any]] = (), paths: list[Path] = ()) -> Path:  # type: ignore[assignment]
    """A record whose owner is gone: this process's pid with another start time is what a reused pid looks like."""
    record = records_dir() / "dead-run.json"
    body = {
        "owner_pid": os.getpid(),
        "owner_create_time": 0.0,
        "processes": list(processes),
        "paths": [{"path": str(p)} for p in paths],
    }
    record.write_text(json.dumps(body))
    return record


# -- the per-user folder --------------------------------------------------------------------------------------------


def test_the_user_folder_is_created_private(temp_root: Path) -> None:
    folder = user_dir()
    assert folder == temp_root / f"pytest-llmtrace-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700


def test_an_open_user_folder_of_your_own_is_made_private(temp_root: Path) -> None:
    """Older versions made it 0755; only its owner could have, so it is tightened, as pytest does for basetemp."""
    folder = temp_root / f"pytest-llmtrace-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    user_dir()
    assert folder.stat().st_mode & 0o777 == 0o700


@needs_root
def test_a_user_folder_someone_else_created_is_refused(temp_root: Path) -> None:
    folder = temp_root / f"pytest-llmtrace-{os.getuid()}"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(UnsafeRunFolder) as caught:
        records_dir()
    assert str(caught.value) == (
        f"pytest-llmtrace: {folder} is owned by uid {NOBODY}, not by you (uid {os.getuid()}); another user may have "
        "created it to make this run delete files or stop processes. Remove it, or set TMPDIR to a folder of your "
        "own, then run again"
    )
    assert not (folder / "runs").exists()


def test_a_user_folder_that_is_a_symlink_is_refused(temp_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (temp_root / f"pytest-llmtrace-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(UnsafeRunFolder, match=rf"is a symlink \(to {elsewhere}\), not a folder; remove it"):
        user_dir()
    assert list(elsewhere.iterdir()) == []


def test_the_records_folder_inside_it_is_checked_too(temp_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (user_dir() / "runs").symlink_to(elsewhere)
    with pytest.raises(UnsafeRunFolder, match="runs is a symlink"):
        reap_orphans()


# -- which records are read -----------------------------------------------------------------------------------------


@needs_root
def test_a_record_someone_else_owns_is_ignored(temp_root: Path, sleeper: Any) -> None:
    proc = sleeper("foreign-record")
    folder = temp_root / "llmtrace-pg-foreign"
    folder.mkdir()
    record = _dead_run([_entry(proc)], [folder])
    os.chown(record, NOBODY, NOBODY)
    done = reap_orphans()
    assert done == [f"ignored {record}: not a file of yours (uid {NOBODY})"]
    assert proc.poll() is None
    assert folder.exists()


def test_a_live_runs_record_is_left_alone(temp_root: Path, sleeper: Any) -> None:
    proc = sleeper("live-run")
    record = RunRecord()
    record.add_process(proc.pid, group=True)
    assert reap_orphans() == []
    assert proc.poll() is None
    assert record.path.exists()
    assert record.cleanup() == [f"stopped process {proc.pid}"]
    assert proc.wait(10) is not None


# -- which processes are stopped ------------------------------------------------------------------------------------


def test_a_process_is_stopped_only_if_it_still_runs_the_recorded_command_line(sleeper: Any) -> None:
    recorded, changed, unnamed = sleeper("recorded"), sleeper("changed"), sleeper("unnamed")
    claimed = [sys.executable, "-c", "import time; time.sleep(60)", "something-else"]
    _dead_run([_entry(recorded), _entry(changed, cmdline=claimed), {**_entry(unnamed), "cmdline": None}])
    done = reap_orphans()
    assert done == [
        f"stopped process {recorded.pid}",
        f"left process {changed.pid} alone: its command line is {' '.join(psutil.Process(changed.pid).cmdline())!r}, "
        f"the record says {' '.join(claimed)!r}",
        f"left process {unnamed.pid} alone: the record does not say which command it ran",
    ]
    assert recorded.wait(10) is not None
    assert changed.poll() is None
    assert unnamed.poll() is None


def test_a_pid_that_now_belongs_to_another_process_is_not_stopped(sleeper: Any) -> None:
    proc = sleeper("reused-pid")
    _dead_run([_entry(proc, create_time=psutil.Process(proc.pid).create_time() - 100)])
    assert reap_orphans() == []  # to the record, its process has exited; the one with that pid now is not it
    assert proc.poll() is None


def test_a_negative_pid_in_a_record_is_no_process(temp_root: Path) -> None:
    """psutil raises ValueError for a pid below 0 (and kill(-1) would signal every process): such a record is dead."""
    folder = temp_root / "llmtrace-pg-negative"
    folder.mkdir()
    record = _dead_run([{"pid": -1, "create_time": 0.0, "cmdline": ["postgres"], "group": False}], [folder])
    record.write_text(json.dumps({**json.loads(record.read_text()), "owner_pid": -1}))
    assert reap_orphans() == [f"removed {folder}"]
    assert not record.exists()


def test_a_process_recorded_the_moment_it_starts_is_recorded_with_the_command_line_it_runs(
    tmp_path: Path, sleeper: Any
) -> None:
    """Right after Popen returns, the kernel may not have set up the new program's arguments yet: the record must wait
    for them. The window is short and shows on a busy machine (it did here, with a script run through its #! line
    like the stand-in `ollama serve`), so the test takes several chances at it."""
    script = tmp_path / "server"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)
    record = RunRecord(tmp_path)
    for _ in range(10):
        record.add_process(sleeper("", [str(script), "serve"]).pid, group=True)
    commands = [entry["cmdline"] for entry in json.loads(record.path.read_text())["processes"]]
    assert commands == [[sys.executable, str(script), "serve"]] * 10
    assert len(record.cleanup()) == 10


# -- which paths are deleted ----------------------------------------------------------------------------------------


def test_only_the_plugins_own_folders_are_deleted(temp_root: Path, tmp_path: Path) -> None:
    own = temp_root / "llmtrace-pg-abc"
    run = user_dir() / "run-0123"
    precious = tmp_path / "precious"
    other_kind = temp_root / "build-cache"
    target = tmp_path / "target"
    link = temp_root / "llmtrace-link"
    for folder in (own, run, precious, other_kind, target):
        folder.mkdir()
        (folder / "file").write_text("data")
    link.symlink_to(target)
    _dead_run(paths=[own, run, precious, other_kind, link, temp_root / "llmtrace-gone"])
    done = reap_orphans()
    kinds = f"({temp_root.resolve()}/llmtrace-*, /dev/shm/llmtrace-* or {user_dir().resolve()}/run-*)"
    assert done == [
        f"removed {own}",
        f"removed {run}",
        f"kept {precious}: it is not a pytest-llmtrace folder {kinds}",
        f"kept {other_kind}: it is not a pytest-llmtrace folder {kinds}",
        f"kept {link}: it is a symlink",
    ]
    assert not own.exists()
    assert not run.exists()
    assert [p.name for p in (precious, other_kind, target) if (p / "file").exists()] == [
        "precious",
        "build-cache",
        "target",
    ]


@needs_root
def test_a_folder_of_the_plugins_kind_owned_by_someone_else_is_kept(temp_root: Path) -> None:
    planted = temp_root / "llmtrace-ollama-planted"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    assert may_delete(planted) == f"it is owned by uid {NOBODY}"
    _dead_run(paths=[planted])
    assert reap_orphans() == [f"kept {planted}: it is owned by uid {NOBODY}"]
    assert planted.exists()


def test_temp_folders_are_made_only_of_the_kinds_a_later_run_may_delete() -> None:
    with pytest.raises(ValueError, match="must start with 'llmtrace-'"):
        OwnedTempDir("pg-")
    folder = OwnedTempDir("llmtrace-test-")
    assert may_delete(folder.path) is None
    folder.cleanup()
    assert not folder.path.exists()


def test_a_ram_temp_folder_is_in_dev_shm_when_it_has_room_and_a_later_run_may_delete_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = OwnedTempDir("llmtrace-test-", ram=True)
    try:
        expected = user_folder.RAM_ROOT if user_folder.ram_root() is not None else Path(tempfile.gettempdir())
        assert folder.path.parent == expected
        assert may_delete(folder.path) is None
    finally:
        folder.cleanup()
    assert not folder.path.exists()
    monkeypatch.setattr(user_folder, "RAM_MIN_FREE_BYTES", 1 << 62)  # no tmpfs has that much free: the temp dir
    assert user_folder.ram_root() is None
    folder = OwnedTempDir("llmtrace-test-", ram=True)
    folder.cleanup()
    assert folder.path.parent == Path(tempfile.gettempdir())


def test_a_folder_of_another_name_in_dev_shm_is_not_the_plugins(tmp_path: Path) -> None:
    assert may_delete(user_folder.RAM_ROOT) is not None  # /dev/shm itself: its parent is /dev
    if user_folder.ram_root() is None:
        pytest.skip("no /dev/shm with room here")
    other = Path(tempfile.mkdtemp(prefix="other-", dir=user_folder.RAM_ROOT))
    try:
        assert "is not a pytest-llmtrace folder" in (may_delete(other) or "")
    finally:
        other.rmdir()


# -- xdist workers --------------------------------------------------------------------------------------------------


def test_a_worker_refuses_a_state_folder_that_names_a_record_elsewhere(tmp_path: Path) -> None:
    run_dir = user_dir() / "run-abc"
    run_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "not-a-record.json"
    (run_dir / "owner.json").write_text(json.dumps({"pid": 1, "create_time": 0, "record": str(elsewhere)}))
    config = cast(pytest.Config, SimpleNamespace(workerinput={"testrunuid": "abc", "workerid": "gw0"}))
    with pytest.raises(UnsafeRunFolder, match=r"owner\.json does not name a run record of yours"):
        run_context(config)
    assert not elsewhere.exists()
