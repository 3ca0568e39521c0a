"""The databases of a semantic test suite: clones of the fixtures' template, perturbed by the admin, read by the reader.

A perturbed database must be one the schema allows, or a true rewrite could be called different on a database that
cannot exist. So the perturbations are real statements run by the admin inside the clone, each in its own savepoint:
Postgres enforces every constraint (types, NOT NULL, CHECK, UNIQUE, keys, deferred ones at commit), and a statement
it refuses is left out. The statements hold only literals and the suite builder's own SQL, never model text: the
values a query mentions are evaluated by the reader first (``checks/suite_build.py``).

Each clone is opened to the session's roles like the session's own clone (``pg_lockdown.open_clone``), so model SQL
runs on it as the read-only reader (and the session's watchdog, which watches those roles in every database, ends it
at the case deadline), and every clone is dropped by ``close`` (nothing is left on the server). After ``close`` no
clone is made: a build the deadline abandoned runs on in its thread, and must not leave one behind. On a server
given by URL each clone carries the run's marker (``pg_leftovers``), so one a killed run left is dropped by the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.services import pg_databases, pg_lockdown
from pytest_llmtrace.services.pg_roles import RoleLimits, SessionRoles

# A perturbation is one or more statements applied all or none (a copied row and its children).
Perturbation = tuple[str, ...]


class SuiteClosed(LLMTraceError):
    """The session's suite clones were dropped (its database is gone): a build still running makes no more."""


@dataclass(frozen=True)
class SuiteClone:
    """One database of a suite as built: where the reader reads it and which perturbations Postgres accepted."""

    name: str
    reader_url: str
    applied: tuple[Perturbation, ...]
    changed_rows: int  # rows inserted, updated or deleted by the accepted perturbations


class SuiteClones:
    """Clones of ``template`` made, perturbed and dropped by the admin; read by ``roles.reader``."""

    def __init__(
        self, admin_url: str, template: str, roles: SessionRoles, *, mark: Callable[[str], None] | None = None
    ) -> None:
        self.admin_url = admin_url
        self.template = template
        self.roles = roles
        # On a server given by URL: comments a new clone with the run's marker (``pg_leftovers.mark``; passed in, as
        # ``checks`` reads this module and must not import the run records' Docker sweep)
        self.mark = mark
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._closed = False

    def _refuse_when_closed(self, name: str | None = None) -> None:
        """``SuiteClosed`` after ``close``; ``name`` (just created, perhaps after ``close`` took the list) dropped."""
        with self._lock:
            closed = self._closed
        if closed:
            if name is not None:
                pg_databases.drop_database(self.admin_url, name)
            raise SuiteClosed("the session's suite databases were dropped (its case ended): no new one is made")

    def build(self, perturbations: Sequence[Perturbation]) -> SuiteClone:
        """A new clone with each perturbation applied in order; one Postgres refuses (a constraint, a type, a value
        out of range) is rolled back to its savepoint and left out."""
        import psycopg2

        name = f"llmtrace_suite_{uuid.uuid4().hex[:12]}"
        with self._lock:
            if not self._closed:
                self._names.append(name)
        self._refuse_when_closed()
        url = pg_databases.clone_database(self.admin_url, self.template, name)
        if self.mark is not None:  # one statement after creating it, as the session's own clone
            self.mark(name)
        self._refuse_when_closed(name)  # ``close`` may have run while it was being copied
        applied: list[Perturbation] = []
        changed = 0
        if perturbations:
            conn = psycopg2.connect(url)
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("SET LOCAL statement_timeout = 10000; SET CONSTRAINTS ALL IMMEDIATE")
                    for perturbation in perturbations:
                        cur.execute("SAVEPOINT llmtrace_perturb")
                        try:
                            count = 0
                            for statement in perturbation:
                                cur.execute(statement)
                                count += cur.rowcount if cur.rowcount >= 0 else 1  # -1: not counted (DDL)
                        except psycopg2.Error:
                            cur.execute("ROLLBACK TO SAVEPOINT llmtrace_perturb")
                            continue
                        cur.execute("RELEASE SAVEPOINT llmtrace_perturb")
                        if count:
                            applied.append(tuple(perturbation))
                            changed += count
                    cur.execute("ANALYZE")
            finally:
                conn.close()
        pg_lockdown.open_clone(self.admin_url, url, name, self.roles)
        return SuiteClone(name, self.roles.reader.dsn(self.admin_url, name), tuple(applied), changed)

    def drop(self, name: str) -> None:
        with self._lock:
            if name in self._names:
                self._names.remove(name)
        pg_databases.drop_database(self.admin_url, name)

    def close(self) -> None:
        """Drop every clone made here, and make no more; one that cannot be dropped does not keep the others."""
        with self._lock:
            self._closed = True
            names, self._names = list(self._names), []
        for name in names:
            with contextlib.suppress(Exception):
                pg_databases.drop_database(self.admin_url, name)


@contextlib.contextmanager
def suite_session(admin_url: str, files: Sequence[Path]) -> Iterator[tuple[SuiteClones, str, str]]:
    """Outside a pytest session (``llmtrace equiv``): the template of ``files`` on the server, a reader role of its
    own, and an unperturbed clone. Yields (the clones, the seed clone's reader DSN, the files' digest); the clones
    and the role are dropped at the end, the template is kept for the next run."""
    digest = hashlib.sha256(pg_lockdown.LOCKDOWN_VERSION.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    seed_digest = digest.hexdigest()
    template = f"llmtrace_tpl_{seed_digest[:12]}"
    with pg_databases.advisory_lock(admin_url, template):
        if not pg_databases.template_ready(admin_url, template):
            pg_databases.drop_database(admin_url, template)
            pg_databases.create_template(admin_url, template, files)
    roles = SessionRoles.create(admin_url, RoleLimits(), owner=False)
    clones = SuiteClones(admin_url, template, roles)
    try:
        seed = clones.build(())
        yield clones, seed.reader_url, seed_digest
    finally:
        clones.close()
        roles.drop()
