"""pytest-llmtrace against bare baselines: one command, every figure measured in the same run as its baseline.

    python benchmarks/run.py --quick            # under 3 minutes on 2 cores: 200 replayed cases
    python benchmarks/run.py --json out.json    # under 10 minutes: 1,000 replayed cases, and capture from Phoenix

Rows (each the median of ``--repeat`` alternating runs of the plugin and its baseline; 3 quick, 2 full):

- span_capture: a test making 20 spans with the plugin recording them (``llm_trace``), per test, against the same
  test with the bare OpenTelemetry SDK and an ``InMemorySpanExporter`` and the plugin disabled; target <= 1.05x.
- replay: N generated golden cases through ``pytest`` (HTTP replay, real Postgres, all checks, snapshots) against a
  plain loop making the same HTTP calls and SQL queries; target <= 1.5x, and 1,000 cases in <= 20 s.
- replay_xdist: the same run with ``-n 2``; ratio = serial / parallel, target >= 1.6x.
- startup: a session whose one test uses the embedded Postgres, against ``pytest -p no:llmtrace`` with a plain
  test; target <= 1.5 s extra. The first run builds the cached cluster (``pg_cluster_cache``); the median is a run
  that copies it, as every run after a user's first does.
- peak_memory: peak resident memory of the replay run against the plain loop's; target <= 1.5x.
- sql_cost: the replay run with the ``cost`` check against the same run without it; target <= 1.2x. Replayed SQL
  is the golden SQL, which the check passes without measuring (``check_unchanged_cost``): this row is the price of
  the check where replay usually leaves it; SQL that changed pays an EXPLAIN ANALYZE of each of the two statements.
- semantic_suite / semantic_unchanged (``benchmarks/semantic.py``): building a semantic test suite for a new gold
  query, target <= 10 s; a case whose SQL is unchanged under ``llmtrace_result_match = suite``, target <= 50 ms.
- main_job: the README's main job, ``pytest golden_traces`` in this checkout (23 shipped cases, one of them a slow
  query), wall time, against the time the recorded SQL took (the golden traces' SQL spans, summed: the model
  answers at once in replay, the SQL runs for real); target <= 10 s.
- suite (full run, or ``--only suite``): the README's test command, ``pytest -n auto --maxprocesses=4`` (the fast
  tier), wall time; its baseline is the 120 s target, so its ratio is the share of it used; target <= 120 s.
- capture (full run, when arize-phoenix is installed): ``llmtrace capture`` against Phoenix's raw REST read of the
  same spans; target >= 5,000 spans/s.

The table is printed; ``--json PATH`` writes ``{"date", "duration_s", "command", "machine": {host, arch, cores,
cpu_model, python, load}, "quick", "cases", "repeat", "rows": [{name, plugin_median_s, baseline_median_s, ratio,
target, met, note}, ...]}`` (for peak_memory the two medians are in MB, not seconds). ``benchmarks/table.py`` turns
that file into the docs' benchmarks page.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness
from benchmarks.harness import PYTEST, ROOT, median, run
from benchmarks.semantic import semantic_rows


@dataclass(frozen=True)
class Row:
    name: str
    plugin_median_s: float
    baseline_median_s: float
    ratio: float
    target: str
    met: bool
    note: str = ""


@dataclass
class Context:
    quick: bool
    repeat: int
    cases: int
    tmp: Path
    postgres_url: str = ""


# -- span_capture ---------------------------------------------------------------------------------------------------

SPAN_CONFTEST = '''\
import json, os, time
import pytest

TIMES = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    yield
    TIMES.append((time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own))


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMES"], "w") as out:
        json.dump(TIMES, out)


@pytest.fixture(scope="session")
def _bare_exporter():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(request):
    """The test's spans: from the plugin's llm_trace, or from a bare SDK exporter when the plugin is off."""
    if request.config.pluginmanager.hasplugin("llmtrace"):
        recording = request.getfixturevalue("llm_trace")
        return lambda: recording.trace.spans
    exporter = request.getfixturevalue("_bare_exporter")
    exporter.clear()
    return exporter.get_finished_spans
'''

SPAN_TEST = """\
import pytest
from opentelemetry import trace


def twenty_spans():
    tracer = trace.get_tracer("bench")
    with tracer.start_as_current_span("request") as root:
        root.set_attribute("openinference.span.kind", "CHAIN")
        for j in range(19):
            with tracer.start_as_current_span(f"step {{j}}") as span:
                span.set_attribute("step", j)


@pytest.mark.parametrize("i", range({tests}))
def test_twenty_spans(i, spans):
    twenty_spans()


def test_every_span_is_captured(spans):  # once, so the timed tests time capturing, not reading
    twenty_spans()
    assert len(spans()) == 20
"""


def span_capture(ctx: Context) -> Row:
    project = ctx.tmp / "spans"
    project.mkdir()
    (project / "conftest.py").write_text(SPAN_CONFTEST)
    (project / "test_spans.py").write_text(SPAN_TEST.format(tests=300 if ctx.quick else 1000))
    (project / "pytest.ini").write_text("[pytest]\n")
    times_file = project / "times.json"

    def per_test(*extra: str) -> tuple[float, float]:
        done = run([*PYTEST, "-p", "no:xdist", *extra], project, extra_env={"BENCH_TIMES": str(times_file)})
        if done.returncode != 0:
            raise SystemExit(f"span_capture run failed:\n{done.output[-3000:]}")
        times = json.loads(times_file.read_text())
        # CPU per test: the median of the test's own thread (where the test, the span callbacks and the hooks run),
        # plus the mean of what the process's other threads used meanwhile. Not the median of the process's CPU:
        # with a second thread (the plugin's OTLP receiver) Linux accounts the process clock in coarser steps, and
        # its median per test came out up to 70 us above the thread's while the two totals differed by 12 ms in 1,000.
        others = sum(cpu - own for _, cpu, own in times) / len(times)
        return median([wall for wall, _, _ in times]), median([own for _, _, own in times]) + max(0.0, others)

    plugin, bare = [], []
    for _ in range(ctx.repeat):
        plugin.append(per_test())
        bare.append(per_test("-p", "no:llmtrace"))
    # CPU time per test: at a few milliseconds, wall time on a shared machine measures the neighbours
    p, b = median([cpu for _, cpu in plugin]), median([cpu for _, cpu in bare])
    wall = median([w for w, _ in plugin]) / median([w for w, _ in bare])
    note = f"CPU s per test of 20 spans (wall ratio {wall:.2f})"
    return Row("span_capture", p, b, p / b, "<= 1.05x", p / b <= 1.05, note)


# -- replay, replay_xdist, peak_memory, sql_cost ------------------------------------------------------------------


def replay_rows(ctx: Context) -> list[Row]:
    cases = harness.golden_cases(ctx.cases)
    project = harness.replay_project(cases, ctx.tmp)
    pg = ["--llmtrace-postgres", ctx.postgres_url]
    failing = harness.expected_failures(cases)

    def plugin(*extra: str) -> harness.Run:
        done = run([*PYTEST, "golden_traces", *pg, *extra], project)
        passed, failed = harness.verdicts(done.output)
        if (passed, failed) != (ctx.cases - failing, failing):
            raise SystemExit(
                f"the replay run gave {passed} passed / {failed} failed, not {ctx.cases - failing} / {failing}:\n"
                + done.output[-4000:]
            )
        return done

    created = run([*PYTEST, "golden_traces", *pg, "--snapshot-update", "-p", "no:xdist"], project)
    if "snapshot" not in created.output:
        raise SystemExit(f"creating the snapshots failed:\n{created.output[-3000:]}")
    baseline_db = _baseline_database(ctx.postgres_url)
    loop = [sys.executable, str(ROOT / "benchmarks" / "baseline_loop.py"), "--cases", str(cases / "cases.json")]
    loop += ["--db", baseline_db]

    serial, parallel, bare, no_cost = [], [], [], []
    for _ in range(ctx.repeat):
        serial.append(plugin("-p", "no:xdist"))
        bare.append(run(loop, project))
        parallel.append(plugin("-n", "2"))
        if _has_cost_check():
            no_cost.append(plugin("-p", "no:xdist", "--llmtrace-checks", "sql results latency tokens snapshot"))
    for done in bare:
        if done.returncode != 0:
            raise SystemExit(f"the baseline loop failed:\n{done.output[-3000:]}")

    s, p, b = (median([r.wall_s for r in runs]) for runs in (serial, parallel, bare))
    cpu = median([r.cpu_s for r in serial]) / median([r.cpu_s for r in bare])
    replay_target = "<= 1.5x" + (", <= 20 s" if ctx.cases >= 1000 else "")
    replay_met = s / b <= 1.5 and (ctx.cases < 1000 or s <= 20)
    note = f"{ctx.cases} cases, {s / ctx.cases * 1000:.1f} ms each; CPU ratio {cpu:.2f}"
    rows = [
        Row("replay", s, b, s / b, replay_target, replay_met, note),
        Row("replay_xdist", p, s, s / p, ">= 1.6x (serial / -n 2)", s / p >= 1.6, f"{ctx.cases} cases, -n 2"),
    ]
    mem_p, mem_b = median([r.maxrss_mb for r in serial]), median([r.maxrss_mb for r in bare])
    rows.append(Row("peak_memory", mem_p, mem_b, mem_p / mem_b, "<= 1.5x", mem_p / mem_b <= 1.5, "MB, not s"))
    if no_cost:
        n = median([r.wall_s for r in no_cost])
        per_case = (s - n) / ctx.cases * 1000
        rows.append(Row("sql_cost", s, n, s / n, "<= 1.2x", s / n <= 1.2, f"{per_case:+.2f} ms per case"))
    return rows


def _has_cost_check() -> bool:
    import importlib

    try:
        options = importlib.import_module("pytest_llmtrace.checks.options")
    except ImportError:
        return False
    return "cost" in getattr(options, "CHECKS", ())


def _baseline_database(url: str) -> str:
    """company_db for the plain loop, loaded once like the plugin's template (not timed for either)."""
    from pytest_llmtrace.services.pg_databases import clone_database, create_template, database_exists

    files = sorted((ROOT / "fixtures" / "company_db").glob("*.sql"))
    if not database_exists(url, "bench_company_tpl"):
        create_template(url, "bench_company_tpl", files)
    if not database_exists(url, "bench_company"):
        return clone_database(url, "bench_company_tpl", "bench_company")
    from pytest_llmtrace.services.pg_databases import database_url

    return database_url(url, "bench_company")


# -- startup --------------------------------------------------------------------------------------------------------


def startup(ctx: Context) -> Row:
    project = ctx.tmp / "startup"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    harness.company_db(project)
    (project / "test_db.py").write_text("def test_db(llmtrace_postgres):\n    assert llmtrace_postgres.url\n")
    (project / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    plugin, bare = [], []
    for _ in range(ctx.repeat):
        done = run([*PYTEST, "test_db.py", "--llmtrace-postgres", "embedded"], project)
        if done.returncode != 0:
            raise SystemExit(f"startup run failed:\n{done.output[-3000:]}")
        plugin.append(done.wall_s)
        bare.append(run([*PYTEST, "test_plain.py", "-p", "no:llmtrace"], project).wall_s)
    p, b = median(plugin), median(bare)
    return Row("startup", p, b, p / b, "<= 1.5 s extra", p - b <= 1.5, f"{p - b:+.2f} s with embedded Postgres")


# -- main_job, suite --------------------------------------------------------------------------------------------------


def main_job(ctx: Context) -> Row:
    """``pytest golden_traces`` as the README runs it: it exits 1 by design (the cases that show failures fail)."""
    walls = []
    for _ in range(ctx.repeat):
        done = run([*PYTEST, "golden_traces"], ROOT)
        passed, failed = harness.verdicts(done.output)
        if done.returncode not in (0, 1) or passed == 0:
            raise SystemExit(f"the main job did not run its cases:\n{done.output[-3000:]}")
        walls.append(done.wall_s)
    p, recorded = median(walls), harness.recorded_sql_seconds(ROOT / "golden_traces")
    note = f"{passed} passed, {failed} failed; baseline: the recorded SQL's time"
    return Row("main_job", p, recorded, p / recorded, "<= 10 s", p <= 10.0, note)


def suite(ctx: Context) -> Row:
    """The README's test command over this checkout's fast tier; the baseline is the target, 120 s."""
    walls = []
    for _ in range(ctx.repeat if not ctx.quick else 1):
        done = run([sys.executable, "-m", "pytest", "-q", "-n", "auto", "--maxprocesses=4"], ROOT, timeout_s=1800)
        if done.returncode != 0:
            raise SystemExit(f"the fast tier failed:\n{done.output[-3000:]}")
        walls.append(done.wall_s)
    p = median(walls)
    return Row("suite", p, 120.0, p / 120.0, "<= 120 s", p <= 120.0, f"fast tier, -n auto: {done.summary()}")


# -- capture ----------------------------------------------------------------------------------------------------------


def capture(ctx: Context) -> Row | None:
    from pytest_llmtrace.services.phoenix import server_installed

    if not server_installed():  # asked without importing phoenix, which makes ~/.phoenix and takes seconds
        print("capture: skipped (pip install -e '.[phoenix]' to measure it)", file=sys.stderr)
        return None
    from benchmarks.capture import measure

    spans, capture_s, raw_s = measure(traces=500, runs=ctx.repeat)
    rate = spans / capture_s
    return Row("capture", capture_s, raw_s, capture_s / raw_s, ">= 5000 spans/s", rate >= 5000, f"{rate:,.0f} spans/s")


# -- the table --------------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = ("name", "plugin", "baseline", "ratio", "target", "met", "note")
    cells = [
        (r.name, f"{r.plugin_median_s:.4g}", f"{r.baseline_median_s:.4g}", f"{r.ratio:.2f}", r.target,
         "yes" if r.met else "NO", r.note)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(c[i])) for c in (header, *cells)) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (header, *cells)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, object]:
    """What the figures were measured on: a ratio means little without the cores, the CPU and the load."""
    return {
        "host": platform.node(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "load": [round(v, 2) for v in os.getloadavg()],
    }


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux); platform.processor() elsewhere, which may be empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(box: dict[str, object]) -> str:
    """The machine on one line, for the printed table."""
    load = ", ".join(f"{v:.1f}" for v in box["load"]) if isinstance(box["load"], list) else ""
    return (
        f"{box['host']} {box['arch']}, {box['cores']} cores ({box['cpu_model']}), Python {box['python']}, load {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 cases, no capture row: under 3 minutes")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (default 3 quick, 2 full)")
    parser.add_argument("--cases", type=int, default=None, help="replayed cases (default 200 quick, 1000 full)")
    parser.add_argument("--note", default="", help="the conditions, kept in the JSON: 'The machine was shared.'")
    parser.add_argument("--only", nargs="*", default=None, help="rows to run, e.g. replay startup")
    args = parser.parse_args(argv)

    started = datetime.datetime.now(datetime.timezone.utc)
    box = machine()  # before the run: the load average it started under, not the one it caused
    with tempfile.TemporaryDirectory(prefix="llmtrace-bench-") as tmp:
        ctx = Context(
            quick=args.quick,
            repeat=args.repeat or (3 if args.quick else 2),
            cases=args.cases or (200 if args.quick else 1000),
            tmp=Path(tmp),
        )
        everyday = ("span_capture", "replay", "startup", "semantic", "main_job")
        wanted = set(args.only or everyday + (() if args.quick else ("suite", "capture")))
        rows: list[Row] = []
        steps: list[tuple[str, Callable[[Context], list[Row]]]] = [
            ("span_capture", lambda c: [span_capture(c)]),
            ("replay", _with_postgres(replay_rows)),
            ("startup", lambda c: [startup(c)]),
            ("semantic", _with_postgres(lambda c: semantic_rows(c.postgres_url, c.repeat, Row))),
            ("main_job", lambda c: [main_job(c)]),
            ("suite", lambda c: [suite(c)]),
        ]
        if not args.quick:
            steps.append(("capture", lambda c: [r for r in [capture(c)] if r is not None]))
        for name, step in steps:
            if name in wanted:
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                rows.extend(step(ctx))
    ended = datetime.datetime.now(datetime.timezone.utc)
    print(f"pytest-llmtrace benchmarks, {started:%Y-%m-%d %H:%M} UTC, {(ended - started).total_seconds():.0f} s")
    print(f"machine: {describe(box)}")
    print(table(rows))
    if args.json:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "duration_s": round((ended - started).total_seconds(), 1),
            "command": command_line(sys.argv[1:] if argv is None else argv),
            "machine": box,
            "quick": args.quick,
            "note": args.note,
            "cases": ctx.cases,
            "repeat": ctx.repeat,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def command_line(argv: list[str]) -> str:
    """The command that made the figures, without ``--note`` (the JSON keeps the note apart, and a page shows it)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            kept.append(arg)
    return shlex.join(["python", "benchmarks/run.py", *kept])


def _with_postgres(step: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
    """One embedded Postgres for the replay rows, shared by the plugin runs and the baseline loop."""

    def wrapped(ctx: Context) -> list[Row]:
        from pytest_llmtrace.services.postgres import EmbeddedPostgres

        with EmbeddedPostgres() as endpoint:
            ctx.postgres_url = endpoint.url
            return step(ctx)

    return wrapped


if __name__ == "__main__":
    raise SystemExit(main())
