"""Embedded Postgres: it starts, clones, reports broken fixture files by name, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from pytest_llmtrace.services.base import Endpoint, redact_url
from pytest_llmtrace.services.pg_databases import (
    SqlFileError,
    clone_database,
    create_template,
    database_url,
    drop_database,
)
from pytest_llmtrace.services.postgres import EmbeddedPostgres, PostgresDatabase
from pytest_llmtrace.services.run_records import wait_gone


def test_template_clone_and_clean_stop(tmp_path: Path) -> None:
    good = tmp_path / "01_schema.sql"
    good.write_text("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);")
    bad = tmp_path / "02_broken.sql"
    bad.write_text("INSERT INTO t VALUES (3);\nSELECT * FROM missing_table;")
    pg = EmbeddedPostgres()
    endpoint = pg.start()
    pgdata = Path(endpoint.extra["pgdata"])
    pid = pg._pid
    try:
        assert (endpoint.service, endpoint.backend) == ("postgres", "embedded")
        create_template(endpoint.url, "tpl", [good])
        url = clone_database(endpoint.url, "tpl", "one")
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT sum(x) FROM t")
            assert cur.fetchone() == (3,)
        conn.close()
        with pytest.raises(SqlFileError, match=r"02_broken\.sql: loading into database 'tpl2' failed: .*missing_table"):
            create_template(endpoint.url, "tpl2", [good, bad])
        create_template(endpoint.url, "tpl2", [good])  # the failed attempt left nothing in the way
        drop_database(endpoint.url, "one")
        drop_database(endpoint.url, "tpl")
        drop_database(endpoint.url, "not_there")
    finally:
        pg.stop()
    pg.stop()  # twice is fine
    assert pid is not None
    assert wait_gone(pid, timeout=0), "the server still runs"  # exited (init may not have reaped it yet)
    assert not pgdata.exists()
    assert not pgdata.parent.exists()


def test_database_url_keeps_the_socket_parameter() -> None:
    url = "postgresql://postgres:@/postgres?host=/tmp/x/pgdata"
    assert database_url(url, "clone_1") == "postgresql://postgres:@/clone_1?host=/tmp/x/pgdata"
    with pytest.raises(ValueError, match="must match"):
        database_url(url, 'x"; DROP DATABASE postgres; --')


def test_a_database_and_its_server_print_no_password() -> None:
    """pytest prints fixture values and locals in failure reports; a user's DSN may carry a password, in its user
    part or in its query."""
    server = "postgresql://admin:s3cret@db.example:5432/postgres?sslmode=require&sslpassword=k3y"
    endpoint = Endpoint.from_url("postgres", "url", server, started=0.0)
    database = PostgresDatabase(
        endpoint=endpoint,
        url=database_url(server, "llmtrace_main_1"),
        reader_url="postgresql://llmtrace_reader:r3ader@db.example:5432/llmtrace_main_1?password=r3ader",
        database="llmtrace_main_1",
        template="llmtrace_tpl_0",
    )
    shown = "\n".join([repr(database), repr(endpoint), str(endpoint), repr([database])])
    for secret in ("s3cret", "k3y", "r3ader"):
        assert secret not in shown
    assert "url='postgresql://admin:***@db.example:5432/llmtrace_main_1?sslmode=require&sslpassword=***'" in shown
    assert "reader_url='postgresql://llmtrace_reader:***@db.example:5432/llmtrace_main_1?password=***'" in shown
    assert str(endpoint).startswith("postgres (url) at postgresql://admin:***@db.example:5432/postgres?")
    # a URL a user mistyped (no "//") is not a URL to urllib, but its password is still hidden
    assert redact_url("postgresql:admin:s3cret@db.example/postgres") == "postgresql:admin:***@db.example/postgres"
