"""Nothing a run starts outlives it: a normal run restores the app's environment, Ctrl-C, SIGTERM and SIGHUP (also
under xdist) stop every server and remove every file the run made, a second signal exits at once and leaves the rest
to the next run, as a run killed with SIGKILL does; a run folder that is not the user's own stops the run before it
deletes or kills anything; an in-process inner run leaves the outer run's server alone.

Which services a session gets, and how they are chosen and configured, is in test_services_setup.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from services_helpers import REPO, dead_owner_records, leftovers, make_project
from services_helpers import own_tmpdir as own_tmpdir  # autouse: the inner runs' own TMPDIR
from services_helpers import tmp_before as tmp_before
from support import default_signals

if TYPE_CHECKING:
    from pytest_llmtrace.services.postgres import PostgresDatabase


def _postgres_of(pgdata_prefix: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if pgdata_prefix in cmdline:
            found.append(proc)
    return found


def test_a_run_folder_that_is_not_the_users_own_stops_the_run(
    pytester: pytest.Pytester, own_tmpdir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (own_tmpdir / f"pytest-llmtrace-{os.getuid()}").symlink_to(elsewhere)
    make_project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    result.stderr.fnmatch_lines(
        [f"ERROR: pytest-llmtrace: {own_tmpdir}/pytest-llmtrace-{os.getuid()} is a symlink (to {elsewhere}), *"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert list(elsewhere.iterdir()) == []


def test_db_uri_is_restored_after_the_session(
    pytester: pytest.Pytester, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's conftest sets DB_URI in its process's environment; in process, so monkeypatch puts this
    process's back afterwards. On the session's Postgres."""
    monkeypatch.delenv("DB_URI", raising=False)
    make_project(pytester)
    pytester.makeconftest(
        """
        import os
        os.environ["DB_URI"] = "postgresql://prod.example/db"

        def pytest_unconfigure(config):
            assert os.environ["DB_URI"] == "postgresql://prod.example/db", os.environ["DB_URI"]
            print("DB_URI RESTORED")
        """
    )
    pytester.makepyfile(
        """
        import os

        def test_uses_local(llmtrace_postgres):
            assert os.environ["DB_URI"] == llmtrace_postgres.reader_url
            assert "prod.example" not in os.environ["DB_URI"]
        """
    )
    result = pytester.runpytest_inprocess(f"--llmtrace-postgres={postgres_url}", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*DB_URI RESTORED*"])


# A detached embedded Postgres (unix socket) and a stand-in `ollama serve` (TCP port), each in its own process group:
# neither dies with pytest, so only the plugin's clean-up (or the next run's) can stop them. The test says where they
# are in a file, since xdist workers' output does not reach the terminal while they run.
SLEEPER = """
import pathlib
import time
from urllib.parse import urlsplit

import pytest

@pytest.mark.parametrize("i", range(2))
def test_sleeps(llmtrace_postgres, llmtrace_ollama, i):
    ollama_port = urlsplit(llmtrace_ollama.extra["upstream"]).port  # `ollama serve`'s, not the timing proxy's
    servers = f"{llmtrace_postgres.endpoint.extra['pgdata']} {ollama_port}"
    pathlib.Path("servers.txt").write_text(servers)
    time.sleep(60)
"""

SLOW_TEARDOWN = """
import pathlib
import time

import pytest

@pytest.fixture(scope="session", autouse=True)
def slow_teardown():
    yield
    pathlib.Path("teardown.txt").write_text("started")
    time.sleep(600)
"""


def _project_with_servers(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The project, a stand-in `ollama` first on PATH, the sleeping test, and the options that pick both servers."""
    make_project(pytester)
    pytester.path.joinpath("fixtures", "Modelfile").write_text("FROM ./model.gguf\n")
    bin_dir = pytester.path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ollama"
    fake.write_text(f"#!{sys.executable}\n" + (REPO / "tests" / "data" / "fake_ollama.py").read_text())
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OLLAMA_HAS", "qwen-sql-prod")
    monkeypatch.setenv("LLMTRACE_OLLAMA_MODELS", str(pytester.path / "models"))
    pytester.makepyfile(SLEEPER)
    return ["--llmtrace-postgres=embedded", "--llmtrace-ollama=binary"]


def _start_and_wait(pytester: pytest.Pytester, *args: str) -> tuple[subprocess.Popen[str], str, int]:
    """Start pytest and wait until its test sleeps with both servers up; returns the run, the pgdata and the port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_signals,
    )
    _wait_for(proc, pytester.path / "servers.txt")
    pgdata, port = (pytester.path / "servers.txt").read_text().split()
    assert _postgres_of(pgdata), "the server should be running while the test sleeps"
    return proc, pgdata, int(port)


def _wait_for(proc: subprocess.Popen[str], path: Path) -> None:
    deadline = time.monotonic() + 180
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not path.exists():
        proc.kill()
        raise AssertionError(f"pytest never wrote {path.name}:\n{proc.communicate()[0]}")


def _left_behind(pytester: pytest.Pytester, tmp_before: set[str], port: int) -> list[str]:
    """Every process, port, temp folder and run record the inner runs left, one line each (none after a clean-up)."""
    roots = (os.environ["TMPDIR"], str(pytester.path))  # Postgres runs in the first, the stand-in from the second
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if any(root in cmdline for root in roots):
            found.append(f"process {proc.info['pid']}: {cmdline}")
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            found.append(f"port {port} still listening (pid {conn.pid})")
    found += [f"temp folder {name}" for name in sorted(leftovers(tmp_before))]
    found += [f"run record {path}" for path in dead_owner_records()]
    return found


@pytest.mark.slow  # signals to a pytest in its own process, with its servers
@pytest.mark.parametrize(
    ("signum", "xdist"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGTERM, True)],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGTERM-xdist"],
)
def test_a_signal_stops_every_server_the_run_started_and_removes_its_files(
    pytester: pytest.Pytester,
    tmp_before: set[str],
    monkeypatch: pytest.MonkeyPatch,
    signum: signal.Signals,
    xdist: bool,
) -> None:
    """Ctrl-C, CI's SIGTERM on cancel or timeout, and SIGHUP from a closed terminal all end the run the same way;
    under xdist the controller stops the servers its workers started."""
    options = _project_with_servers(pytester, monkeypatch)
    proc, _, port = _start_and_wait(pytester, *options, *(["-n", "2"] if xdist else []))
    assert _left_behind(pytester, tmp_before, port), "while the test sleeps, the servers and their folders exist"
    os.kill(proc.pid, signum)  # the pytest process only, as `kill PID` does: the servers get no signal of their own
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    if signum != signal.SIGINT:
        assert f"{signum.name}: stopping the servers this run started (a second signal exits at once)" in output
    assert _left_behind(pytester, tmp_before, port) == []


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_next_run_cleans_up(
    pytester: pytest.Pytester, tmp_before: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _project_with_servers(pytester, monkeypatch)
    pytester.makeconftest(SLOW_TEARDOWN)
    proc, pgdata, port = _start_and_wait(pytester, *options)
    os.kill(proc.pid, signal.SIGTERM)
    _wait_for(proc, pytester.path / "teardown.txt")  # the first signal started the teardown, which hangs
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)  # far sooner than the hanging teardown's ten minutes
    assert proc.returncode == -signal.SIGTERM
    assert _postgres_of(pgdata), "exiting at once leaves the servers for the next run"
    (pytester.path / "conftest.py").unlink()  # the next run must not hang in the same teardown
    pytester.makepyfile(test_other="def test_nothing(): pass")
    pytester.runpytest_subprocess("test_other.py", timeout=180).assert_outcomes(passed=1)
    assert _left_behind(pytester, tmp_before, port) == []


@pytest.mark.slow
def test_a_killed_run_is_cleaned_up_by_the_next_run(
    pytester: pytest.Pytester, tmp_before: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _project_with_servers(pytester, monkeypatch)
    proc, pgdata, port = _start_and_wait(pytester, *options)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert _postgres_of(pgdata), "SIGKILL gives no chance to clean up: the detached server survives it"
    # the next run, even one that starts no service, reaps what the dead run left
    pytester.makepyfile(test_other="def test_nothing(): pass")
    pytester.runpytest_subprocess("test_other.py").assert_outcomes(passed=1)
    assert _left_behind(pytester, tmp_before, port) == []


def test_an_in_process_pytester_run_leaves_the_outer_runs_services_alone(
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase
) -> None:
    """Both runs live in one process: the inner run's clean-up must not reap the outer run's server."""
    import psycopg2

    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    pytester.makepyfile("def test_nothing(): pass")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    with psycopg2.connect(llmtrace_postgres.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM customers")
        assert cur.fetchone() == (300,)
