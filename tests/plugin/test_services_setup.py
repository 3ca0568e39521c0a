"""The session services as users meet them: which backend serves each service and why (the header, option
precedence, a misspelled backend, a backend of one's own), what the embedded Postgres gives a test (read-only and owner
DSNs, SQL fixtures and their errors, one server shared by xdist workers), an unreachable or under-privileged URL,
the live model served by llama.cpp when nothing else is there, and Phoenix left alone by a session that never asks
for it.

What a run leaves behind, and clean-up after signals, is in test_services_cleanup.py.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from services_helpers import REPO, dead_owner_records, leftovers, make_project
from services_helpers import own_tmpdir as own_tmpdir  # autouse: the inner runs' own TMPDIR
from services_helpers import tmp_before as tmp_before
from support import bundled_smollm2, live_model_missing

if TYPE_CHECKING:
    from pytest_llmtrace.services.postgres import PostgresDatabase


def test_header_shows_each_service_backend_and_where_it_came_from(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    monkeypatch.setenv("LLMTRACE_PHOENIX", "http://127.0.0.1:9")
    result = pytester.runpytest(
        "--llmtrace-postgres=embedded", "-o", "llmtrace_ollama=http://127.0.0.1:8"
    )  # in process: only the header
    result.stdout.fnmatch_lines(
        [
            "llmtrace postgres: embedded (from --llmtrace-postgres)",
            "llmtrace postgres case limits: bounded: no parallel workers, 1024 MB of private memory per backend, "
            "backends that ignore cancel killed at the deadline",
            "llmtrace ollama: url http://127.0.0.1:8 (from ini llmtrace_ollama)",
            "llmtrace phoenix: url http://127.0.0.1:9 (from LLMTRACE_PHOENIX)",
        ]
    )
    assert result.ret == 0


def test_command_line_beats_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    make_project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    monkeypatch.setenv("LLMTRACE_POSTGRES", "postgresql://nobody@127.0.0.1:1/x")
    result = pytester.runpytest("--llmtrace-postgres=embedded")
    result.stdout.fnmatch_lines(["llmtrace postgres: embedded (from --llmtrace-postgres)"])


def test_a_misspelled_backend_is_a_usage_error_with_the_near_miss(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--llmtrace-postgres=embeded")
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
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmtrace.services.pg_databases import database_url

    make_project(pytester)
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
    monkeypatch.setenv("TEAM_PG_URL", database_url(pg_admin_url, "postgres"))
    result = pytester.runpytest_subprocess("--llmtrace-postgres=team", "-s")
    result.stdout.fnmatch_lines(
        [
            "llmtrace postgres: team (from --llmtrace-postgres); not locked down on a server you gave: CONNECT/TEMP *",
            "llmtrace postgres case limits: not bounded on a server you gave: parallel workers *",
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


def test_embedded_postgres_gives_a_read_only_app_dsn_and_a_writable_owner_dsn(
    pytester: pytest.Pytester, tmp_before: set[str]
) -> None:
    make_project(pytester)
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
    assert leftovers(tmp_before) == set()
    assert dead_owner_records() == [], "the run record must be gone after a normal run"


def test_sql_fixture_pattern_matching_nothing_is_a_usage_error(pytester: pytest.Pytester, postgres_url: str) -> None:
    make_project(pytester)
    pytester.makeini("[pytest]\naddopts = -p no:phoenix\nllmtrace_sql_fixtures =\n    db/schema.sql\n")
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_inprocess(f"--llmtrace-postgres={postgres_url}")
    result.stdout.fnmatch_lines(["*llmtrace_sql_fixtures: 'db/schema.sql' matches no file under *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "raise pytest.UsageError" not in result.stdout.str(), "the message, not the plugin's code"


def test_a_broken_sql_fixture_names_its_file(pytester: pytest.Pytester, postgres_url: str) -> None:
    make_project(pytester)
    pytester.path.joinpath("fixtures", "company_db", "03_broken.sql").write_text("CREATE TABLE oops (;\n")
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_inprocess(f"--llmtrace-postgres={postgres_url}")
    result.stdout.fnmatch_lines(["*fixtures/company_db/03_broken.sql: loading into database * failed: syntax error*"])
    assert "Traceback" not in result.stdout.str()


def test_unreachable_url_fails_with_the_reason_and_the_fix(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_inprocess("--llmtrace-postgres=postgresql://u:secret@127.0.0.1:9/db")
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
    make_project(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_db(llmtrace_postgres, i, worker_id):
            print("SERVER", llmtrace_postgres.host, "DB", llmtrace_postgres.database, "WORKER", worker_id)
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
    assert leftovers(tmp_before) == set()


@pytest.mark.slow  # llama.cpp
@pytest.mark.skipif(live_model_missing() is not None, reason=f"needs the live model: {live_model_missing()}")
def test_auto_ollama_runs_the_modelfile_gguf_in_process_and_the_reference_app_uses_it(
    pytester: pytest.Pytester,
) -> None:
    """No Docker, no ollama binary: auto serves the Modelfile's GGUF with llama.cpp behind the Ollama API."""
    make_project(pytester)
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


def test_a_session_that_does_not_use_phoenix_never_imports_or_starts_it(
    pytester: pytest.Pytester, postgres_url: str
) -> None:
    """In a subprocess: what the run imported is the question. On the session's Postgres, by URL."""
    make_project(pytester)
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            loaded = sorted(m for m in sys.modules if m == "phoenix" or m.startswith(("phoenix.", "testcontainers")))
            print("LOADED", loaded)
            from pytest_llmtrace.pytest.service_session import get_manager

            print("STARTED", list(get_manager(session.config).started))
        """
    )
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_subprocess(f"--llmtrace-postgres={postgres_url}", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOADED [[][]]*", "*STARTED [[]'postgres'[]]*"])


def test_a_url_login_that_may_not_create_databases_is_told_what_it_needs(
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase, pg_admin_url: str
) -> None:
    import psycopg2
    from psycopg2 import sql

    from pytest_llmtrace.services.pg_databases import database_url

    server = pg_admin_url
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
    make_project(pytester)
    pytester.makepyfile("def test_db(llmtrace_postgres): pass")
    result = pytester.runpytest_inprocess(f"--llmtrace-postgres={limited}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*postgres (url) did not start: cannot set up the test databases on *: permission denied to create "
            "database*",
            "*fix: connect as a role with CREATEDB and CREATEROLE *, or use --llmtrace-postgres=embedded",
        ]
    )
    assert "Traceback" not in result.stdout.str()
