"""What every benchmark row needs: timed child processes, the generated golden cases, and throwaway projects.

Every figure is a whole child process timed from start to exit (``os.wait4``, which also gives its peak resident
memory), so the plugin and its baseline pay the same interpreter start and imports, and nothing in the measuring
process (this one) leaks into either. Child processes get this checkout first on ``PYTHONPATH``, so the plugin
measured is the one in the working tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cases import write_cases

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
FIXTURES = ROOT / "fixtures"
# Pytest plugins that come with the dev extras (LangChain brings langsmith's, arize-phoenix-client brings phoenix's)
# and cost seconds of import per session, and the cache (a write per run): no part of what is measured, so no run
# loads them.
FOREIGN_PLUGINS = ("langsmith_plugin", "phoenix", "anyio", "hypothesispytest", "randomly", "cacheprovider")
PYTEST = (sys.executable, "-m", "pytest", "-q", *(arg for name in FOREIGN_PLUGINS for arg in ("-p", f"no:{name}")))


@dataclass(frozen=True)
class Run:
    """One child process: wall time, CPU time and peak resident memory (of it and the children it waited for), exit
    code, output. CPU time is what the process itself spent, whatever the neighbours on a shared machine did."""

    wall_s: float
    maxrss_mb: float
    returncode: int
    output: str
    cpu_s: float = 0.0

    def summary(self) -> str:
        """pytest's last line (``5 failed, 195 passed in 9.1s``), or the output's last line."""
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1].strip("= ") if lines else "(no output)"


def env() -> dict[str, str]:
    values = dict(os.environ)
    values["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [values.get("PYTHONPATH")])])
    values.pop("PYTEST_ADDOPTS", None)
    values.pop("PYTEST_XDIST_WORKER", None)
    # Bytecode is cached as on a user's machine: pytest and the other installed packages come compiled, so without
    # this only the plugin in this checkout would be compiled again at every run (a second of every session).
    values.pop("PYTHONDONTWRITEBYTECODE", None)
    return values


def run(cmd: Sequence[str], cwd: Path, *, timeout_s: float = 900, extra_env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to its end: wall time from spawn to reaping, and ``ru_maxrss`` from ``wait4``."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env={**env(), **(extra_env or {})}, stdout=out, stderr=out)
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Run(wall, usage.ru_maxrss / 1024, proc.returncode, text, usage.ru_utime + usage.ru_stime)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdicts(output: str) -> tuple[int, int]:
    """(passed, failed) from pytest's summary line."""

    def count(word: str) -> int:
        found = re.search(rf"(\d+) {word}", output.strip().splitlines()[-1] if output.strip() else "")
        return int(found.group(1)) if found else 0

    return count("passed"), count("failed")


# -- generated golden cases -------------------------------------------------------------------------------------------


def _fingerprint(seed: int, count: int) -> str:
    """What the recorded cases depend on: change any of these files and they are recorded again."""
    digest = hashlib.sha256(f"{seed}:{count}".encode())
    for path in (
        ROOT / "benchmarks" / "cases.py",
        FIXTURES / "record_golden.py",
        FIXTURES / "gateway" / "app.py",
        ROOT / "pytest_llmtrace" / "trace" / "otlp.py",
        *sorted((FIXTURES / "company_db").glob("*.sql")),
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def golden_cases(count: int, seed: int = 10) -> Path:
    """A folder with ``cases.json`` and ``golden/``: ``count`` generated cases recorded through the reference app.

    Recorded once per content (in ``benchmarks/.cache``) with the scripted model on virtual time: a thousand cases take
    about half a minute on two cores.
    """
    target = CACHE / f"golden-{count}-{seed}-{_fingerprint(seed, count)}"
    if (target / "golden").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="golden-", dir=CACHE))
    cases = write_cases(count, work / "cases.json", seed)
    print(f"recording {count} generated cases through the reference app (once; cached in {CACHE}) ...", flush=True)
    script = [sys.executable, str(FIXTURES / "record_golden.py"), "--cases", str(cases), "--out", str(work / "golden")]
    recorded = run([*script, "--virtual-time", "--one-database", "--quiet"], ROOT)
    if recorded.returncode != 0:
        raise SystemExit(f"recording the generated cases failed:\n{recorded.output[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    return target


# -- projects ---------------------------------------------------------------------------------------------------------

PYPROJECT = """\
[tool.pytest.ini_options]
pythonpath = [{fixtures!r}]
llmtrace_target = "gateway.app:handle_user_request"
llmtrace_sql_fixtures = ["fixtures/company_db/*.sql"]
"""


def replay_project(cases: Path, where: Path) -> Path:
    """A user's project: the reference app as target, company_db as fixtures, the generated cases as golden traces.

    The SQL fixtures are copied in because the plugin reads them relative to the rootdir.
    """
    project = where / "replay"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT.format(fixtures=str(FIXTURES)))
    company_db(project)
    shutil.copytree(cases / "golden", project / "golden_traces")
    return project


def company_db(project: Path) -> None:
    """The schema and seed under ``fixtures/``, where the plugin's default ``llmtrace_sql_fixtures`` looks."""
    shutil.copytree(FIXTURES / "company_db", project / "fixtures" / "company_db")


def recorded_sql_seconds(golden: Path) -> float:
    """The time the recorded SQL took, every golden trace's SQL spans summed: what a replay cannot skip (the model's
    answers come at once in replay, its SQL runs for real)."""
    from pytest_llmtrace.trace.otlp import read_trace
    from pytest_llmtrace.trace.views import SqlStatement

    total_ns = 0
    for path in sorted(golden.glob("*.json")):
        total_ns += sum(s.duration_ns for s in read_trace(path) if SqlStatement.from_span(s) is not None)
    return total_ns / 1e9


def expected_failures(cases: Path) -> int:
    """The generated cases whose SQL fails by design (an unknown column): the only ones a run should fail."""
    return sum(1 for c in json.loads((cases / "cases.json").read_text())["cases"] if "_error_" in c["name"])
