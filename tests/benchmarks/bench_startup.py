"""Start-up figures for the embedded services, printed as ratios to their targets (not asserted: machines are noisy).

Run: python tests/benchmarks/bench_startup.py [--runs 5]

- embedded Postgres ready: target < 2 s;
- a pytest session with the plugin but no service in use, against the same session with the plugin disabled:
  target ratio close to 1 (a session that does not use Phoenix, or any service, pays nothing for it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_llmtrace.services.postgres import EmbeddedPostgres

POSTGRES_TARGET_S = 2.0


def postgres_ready_s(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        server = EmbeddedPostgres()
        try:
            times.append(server.start().ready_s)
        finally:
            server.stop()
    return times


def session_s(project: Path, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *extra],
        cwd=project,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    ready = postgres_ready_s(args.runs)
    median = statistics.median(ready)
    print(
        f"embedded Postgres ready: median {median:.2f} s over {args.runs} runs (min {min(ready):.2f}, "
        f"max {max(ready):.2f}); ratio to the {POSTGRES_TARGET_S:.0f} s target: {median / POSTGRES_TARGET_S:.2f}"
    )

    with tempfile.TemporaryDirectory(prefix="llmtrace-bench-") as tmp:
        project = Path(tmp)
        (project / "test_plain.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('i', range(50))\ndef test_plain(i):\n    assert i >= 0\n"
        )
        (project / "pytest.ini").write_text("[pytest]\naddopts = -p no:phoenix\n")
        with_plugin = statistics.median(session_s(project) for _ in range(args.runs))
        without = statistics.median(session_s(project, "-p", "no:llmtrace") for _ in range(args.runs))
    print(
        f"50 plain tests: {with_plugin:.2f} s with the plugin, {without:.2f} s without; "
        f"ratio {with_plugin / without:.2f} (target: close to 1.00; no service starts)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
