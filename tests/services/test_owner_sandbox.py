"""What a case's SQL leaves in its database never runs with more rights than the case had.

With ``llmtrace_app_db = owner`` the app's SQL runs as the session's owner role, which owns the clone: it may create
a trigger (or function, rule, policy) on a fixture table. Such code runs as whoever later fires it, so nothing
privileged may ever fire it: the DSN tests and fixtures get is no superuser's, the guard drops what a case left
behind, and the template is never built from a database a role could touch. Each test reads what Postgres says.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from support import rows as _rows

from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.services.pg_databases import create_template, database_url, drop_database
from pytest_llmtrace.services.pg_deadline import Deadline
from pytest_llmtrace.services.pg_guard import CaseGuard, SessionGuard
from pytest_llmtrace.services.postgres import PostgresDatabase

REPO = Path(__file__).resolve().parents[2]

# Records who runs it: what an attacker's trigger would do with COPY ... TO PROGRAM, made observable.
SPY = """
CREATE TABLE llmtrace_spy (who text, super bool);
CREATE FUNCTION llmtrace_spy() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN
  INSERT INTO llmtrace_spy SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
  RETURN NULL;
END$$;
CREATE TRIGGER llmtrace_spy AFTER UPDATE ON products FOR EACH STATEMENT EXECUTE FUNCTION llmtrace_spy();
"""


@pytest.fixture(scope="module")
def guard(request: pytest.FixtureRequest, llmtrace_postgres: PostgresDatabase) -> SessionGuard:
    return services.get_manager(request.config).guard(llmtrace_postgres)


def _case(guard: SessionGuard, url: str, sql: str) -> CaseGuard:
    """``sql`` run as ``url``'s login inside one case of ``guard``."""
    with guard.case(Deadline(60.0, "test")) as held:
        _rows(url, sql)
    return held


def _sandbox(held: CaseGuard) -> list[str]:
    """The details of the case's ``[sandbox]`` findings."""
    return [line for finding in held.findings() if finding.name == "sandbox" for line in finding.details]


# -- the DSN handed to tests ------------------------------------------------------------------------------------------


def test_the_dsn_tests_and_fixtures_get_is_no_superuser_and_may_write_test_data(
    llmtrace_postgres: PostgresDatabase,
) -> None:
    db = llmtrace_postgres
    for url in (db.url, db.endpoint.url):
        ((user, superuser),) = _rows(url, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert superuser is False, user
    conn = psycopg2.connect(db.url)
    try:
        with conn.cursor() as cur:  # test data goes into the clone (rolled back here: the clone is shared)
            cur.execute(
                "INSERT INTO products (id, sku, name, category, list_price) "
                "SELECT max(id) + 1, 'llmtrace-x', 'x', 'Add-on', 1 FROM products"
            )
            cur.execute("CREATE TABLE llmtrace_scratch (x int)")
    finally:
        conn.rollback()
        conn.close()
    ((login, superuser),) = _rows(db.url, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    assert login != "postgres"


# -- the escalation, end to end ---------------------------------------------------------------------------------------


def _owner_project(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\nllmtrace_app_db = owner\n"
        "llmtrace_sql_fixtures = fixtures/company_db/*.sql\n"
    )


SPY_TESTS = f'''
import psycopg2

SPY = """{SPY}"""


def _run(url, sql):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def test_1_the_app_leaves_a_trigger(llmtrace_postgres):
    _run(llmtrace_postgres.owner_url, SPY)  # what model SQL run by an app in owner mode may do


def test_2_a_fixture_writes_later(llmtrace_postgres):
    _run(llmtrace_postgres.url, "UPDATE products SET active = active WHERE id = 1")
    print("SPY", _run(llmtrace_postgres.owner_url, "SELECT who, super FROM llmtrace_spy"), llmtrace_postgres.owner_role)
'''


def _printed(result: pytest.RunResult, tag: str) -> list[str]:
    return [line.split(f"{tag} ", 1)[1] for line in result.stdout.lines if f"{tag} " in line]


def test_a_trigger_an_owner_app_left_runs_as_no_superuser_when_a_fixture_writes(
    pytester: pytest.Pytester, pg_admin_url: str
) -> None:
    _owner_project(pytester)
    pytester.makepyfile(test_spy=SPY_TESTS)
    result = pytester.runpytest_inprocess(f"--llmtrace-postgres={pg_admin_url}", "-s", "-v")
    result.assert_outcomes(passed=2)
    ((rows, owner),) = [line.rsplit(" ", 1) for line in _printed(result, "SPY")]
    # before the fix: [('postgres', True)]: the fixture's superuser login ran the owner's trigger
    assert rows == f"[('{owner}', False)]"


def test_a_golden_case_whose_sql_leaves_a_trigger_fails_and_the_trigger_is_gone(
    pytester: pytest.Pytester, pg_admin_url: str
) -> None:
    _owner_project(pytester)
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    golden.mkdir()
    doc = json.loads((REPO / "golden_traces" / "customers_by_tier.json").read_text())
    select = "SELECT tier, count(*) AS customers FROM customers GROUP BY tier ORDER BY customers DESC;"
    for span in (s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]):
        for attribute in span["attributes"]:
            if attribute["key"] in ("llm.output_messages.0.message.content", "output.value") and span["name"] == (
                "ollama.chat"
            ):
                attribute["value"] = {"stringValue": SPY + select}
    (golden / "customers_by_tier.json").write_text(json.dumps(doc))
    pytester.makepyfile(
        test_zz_after="""
        import psycopg2

        def test_a_fixture_writes_after_the_case(llmtrace_postgres):
            conn = psycopg2.connect(llmtrace_postgres.url)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("UPDATE products SET active = active WHERE id = 1")
                cur.execute("SELECT who, super FROM llmtrace_spy")
                print("SPY", cur.fetchall())
                cur.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
                print("TRIGGERS", cur.fetchone()[0])
            conn.close()
        """
    )
    result = pytester.runpytest_inprocess(
        f"--llmtrace-postgres={pg_admin_url}",
        "--llmtrace-replay-speed=virtual",
        "-o",
        "llmtrace_target=gateway.app:handle_user_request",
        "-o",
        "llmtrace_checks=sql",
        "-s",
        "golden_traces",
        "test_zz_after.py",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["golden case customers_by_tier: 2 checks failed"])  # [sql]: several statements
    result.stdout.fnmatch_lines(
        [
            "[[]sandbox] the case left code in its database that would run with the rights of whoever fires it next;*",
            "    function public.llmtrace_spy(): left behind (dropped)",
            "    trigger llmtrace_spy on public.products: left behind (dropped)",
        ]
    )
    assert _printed(result, "SPY") == ["[]"]
    assert _printed(result, "TRIGGERS") == ["0"]


# -- each kind of object a case may leave behind ----------------------------------------------------------------------

_LEFT = {
    "trigger": (
        "CREATE FUNCTION llmtrace_t() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$; "
        "CREATE TRIGGER llmtrace_t BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION llmtrace_t()",
        [
            "function public.llmtrace_t(): left behind (dropped)",
            "trigger llmtrace_t on public.products: left behind (dropped)",
        ],
        "SELECT tgname FROM pg_trigger WHERE tgname = 'llmtrace_t' UNION ALL "
        "SELECT proname FROM pg_proc WHERE proname = 'llmtrace_t'",
    ),
    "function": (
        "CREATE PROCEDURE llmtrace_p(x int) LANGUAGE sql AS 'SELECT 1'; "
        "CREATE FUNCTION llmtrace_f(text) RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
        [
            "function public.llmtrace_f(text): left behind (dropped)",
            "procedure public.llmtrace_p(integer): left behind (dropped)",
        ],
        "SELECT proname FROM pg_proc WHERE proname LIKE 'llmtrace\\_%'",
    ),
    "rule": (
        "CREATE RULE llmtrace_r AS ON INSERT TO products DO INSTEAD NOTHING",
        ["rule llmtrace_r on public.products: left behind (dropped)"],
        "SELECT rulename FROM pg_rewrite WHERE rulename = 'llmtrace_r'",
    ),
    "policy": (
        "CREATE POLICY llmtrace_pol ON products USING (true)",
        ["policy llmtrace_pol on public.products: left behind (dropped)"],
        "SELECT polname FROM pg_policy WHERE polname = 'llmtrace_pol'",
    ),
}


@pytest.mark.parametrize("kind", sorted(_LEFT))
def test_a_case_that_leaves_code_behind_fails_with_sandbox_and_the_code_is_dropped(
    llmtrace_postgres: PostgresDatabase, guard: SessionGuard, pg_admin_url: str, kind: str
) -> None:
    sql, expected, left = _LEFT[kind]
    held = _case(guard, llmtrace_postgres.url, sql)
    assert _sandbox(held) == expected
    (finding,) = [f for f in held.findings() if f.name == "sandbox"]
    assert finding.reason.startswith(
        "the case left code in its database that would run with the rights of whoever fires"
    )
    assert _rows(database_url(pg_admin_url, llmtrace_postgres.database), left) == []
    assert _sandbox(_case(guard, llmtrace_postgres.url, "SELECT 1")) == []  # nothing left for the next case


def test_code_that_was_there_before_the_case_is_not_the_cases(
    llmtrace_postgres: PostgresDatabase, guard: SessionGuard
) -> None:
    """Test setup may make a helper function through the fixture DSN: the next case is not blamed for it."""
    _rows(llmtrace_postgres.url, "CREATE FUNCTION llmtrace_helper() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    try:
        assert _sandbox(_case(guard, llmtrace_postgres.url, "SELECT llmtrace_helper()")) == []
        changed = _case(
            guard,
            llmtrace_postgres.url,
            "CREATE OR REPLACE FUNCTION llmtrace_helper() RETURNS int LANGUAGE sql AS 'SELECT 2'",
        )
        assert _sandbox(changed) == ["function public.llmtrace_helper(): changed (dropped)"]
    finally:
        _rows(llmtrace_postgres.url, "DROP FUNCTION IF EXISTS llmtrace_helper()")


def test_a_write_moves_the_servers_snapshot_and_a_change_right_after_a_quiet_case_is_found(
    llmtrace_postgres: PostgresDatabase, guard: SessionGuard
) -> None:
    """The guard skips its reads while the server's transaction snapshot stays the one it verified (``pg_guard``):
    a write must move it, and a case that changes its roles or leaves code right after a case that wrote nothing
    must still be found, whether the reads around the quiet case were skipped or not."""
    before = guard.roles.transactions()
    _rows(llmtrace_postgres.url, "CREATE TABLE llmtrace_moves (x int); DROP TABLE llmtrace_moves")
    assert guard.roles.transactions() != before
    reader = llmtrace_postgres.reader_role
    assert _sandbox(_case(guard, llmtrace_postgres.url, "SELECT 1")) == []
    held = _case(
        guard, llmtrace_postgres.reader_url, "BEGIN READ WRITE; ALTER ROLE CURRENT_USER SET work_mem = '64kB'; COMMIT"
    )
    assert held.after == [f"role {reader}: work_mem: (unset) -> 64kB"]
    assert _sandbox(_case(guard, llmtrace_postgres.url, "SELECT 1")) == []
    held = _case(
        guard, llmtrace_postgres.url, "CREATE FUNCTION llmtrace_quiet() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    )
    assert _sandbox(held) == ["function public.llmtrace_quiet(): left behind (dropped)"]
    assert _sandbox(_case(guard, llmtrace_postgres.url, "SELECT 1")) == []


@pytest.fixture
def other_role(pg_admin_url: str, llmtrace_postgres: PostgresDatabase) -> Iterator[str]:
    """A role the session's owner is a member of, so the owner may give its objects away to it (the new owner of a
    schema must be allowed to create in the database)."""
    name = f"llmtrace_test_{uuid.uuid4().hex[:8]}"
    owner = _rows(llmtrace_postgres.url, "SELECT current_user")[0][0]
    _rows(pg_admin_url, f"CREATE ROLE {name} NOLOGIN")
    _rows(pg_admin_url, f"GRANT {name} TO {owner}")
    _rows(pg_admin_url, f"GRANT CREATE ON DATABASE {llmtrace_postgres.database} TO {name}")
    yield name
    _rows(database_url(pg_admin_url, llmtrace_postgres.database), f"DROP OWNED BY {name}")
    _rows(pg_admin_url, f"DROP ROLE {name}")


def test_a_case_that_gives_a_table_or_schema_away_fails_and_the_owner_is_restored(
    llmtrace_postgres: PostgresDatabase, guard: SessionGuard, other_role: str
) -> None:
    owners = (
        "SELECT (SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.products'::regclass), "
        "(SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public')"
    )
    before = _rows(llmtrace_postgres.url, owners)
    owner = _rows(llmtrace_postgres.url, "SELECT current_user")[0][0]
    held = _case(
        guard,
        llmtrace_postgres.url,
        f"ALTER SCHEMA public OWNER TO {other_role}; ALTER TABLE products OWNER TO {other_role}",
    )
    assert _sandbox(held) == [
        f"schema public: owner {owner} -> {other_role} (restored)",
        f"table public.products: owner {owner} -> {other_role} (restored)",
    ]
    assert _rows(llmtrace_postgres.url, owners) == before


def test_the_template_is_built_from_template0_not_from_a_database_others_may_have_touched(
    pg_admin_url: str,
) -> None:
    """A function left in template1 (by any role that could connect there) would be in every new database built
    from it, and the fixture SQL loaded as the admin might call it."""
    template1 = database_url(pg_admin_url, "template1")
    name = f"llmtrace_tpl_test_{uuid.uuid4().hex[:8]}"
    _rows(template1, "CREATE FUNCTION public.llmtrace_planted() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    try:
        url = create_template(pg_admin_url, name, [])
        assert _rows(url, "SELECT count(*) FROM pg_proc WHERE proname = 'llmtrace_planted'") == [(0,)]
    finally:
        _rows(template1, "DROP FUNCTION public.llmtrace_planted()")
        drop_database(pg_admin_url, name)
