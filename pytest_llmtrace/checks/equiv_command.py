"""``llmtrace equiv``: the semantic verdict on the command line, for one pair or a JSONL file of pairs.

It starts its own embedded Postgres unless given ``--postgres URL`` (a role that may create databases and roles),
loads the fixtures into a template there, and judges each pair on the gold query's suite. Exit status: 0 when
every pair is equivalent, 1 when any differs or fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TextIO

from pytest_llmtrace.checks.semantic import Verdict, judge
from pytest_llmtrace.checks.suite_build import SuiteBuilder
from pytest_llmtrace.core.errors import first_line

USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gold", nargs="?", metavar="GOLD_SQL", help="the golden SQL")
    parser.add_argument("candidate", nargs="?", metavar="CANDIDATE_SQL", help="the SQL to judge against it")
    parser.add_argument(
        "--fixtures",
        action="append",
        type=Path,
        required=True,
        metavar="FILE",
        help="a schema or seed .sql file, loaded in the order given (repeat the option)",
    )
    parser.add_argument("--pairs", type=Path, metavar="JSONL", help='lines {"id", "gold", "candidate"} to judge')
    parser.add_argument("--json", type=Path, metavar="OUT", help="write one JSON line per pair here")
    parser.add_argument("--postgres", metavar="URL", help="a server to use (default: start an embedded one)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="keep built suites here for the next run")
    parser.add_argument("--timeout-ms", type=int, default=5000, help="statement timeout of each query (ms)")


Server = Callable[[str | None], AbstractContextManager[str]]


def run(args: argparse.Namespace, server: Server, out: TextIO | None = None) -> int:
    """``server(args.postgres)``: the admin DSN of the server to use (``cli.py`` starts an embedded one: the
    checks layer does not import server backends)."""
    out = out or sys.stdout
    pairs, problem = _pairs(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return USAGE
    missing = [str(p) for p in args.fixtures if not p.is_file()]
    if missing:
        print(f"error: --fixtures: no such file: {', '.join(missing)}", file=sys.stderr)
        return USAGE
    results: list[dict[str, Any]] = []
    with server(args.postgres) as admin_url:
        from pytest_llmtrace.services.pg_suite import suite_session

        with suite_session(admin_url, args.fixtures) as (clones, seed_url, digest):
            builder = SuiteBuilder(clones, seed_url, digest, timeout_ms=args.timeout_ms, cache_dir=args.cache_dir)
            try:
                for pair_id, gold, candidate in pairs:
                    try:
                        verdict = judge(builder, gold, candidate)
                    except Exception as exc:  # one pair's failure is its verdict; the others are still judged
                        verdict = Verdict("error", 0, error=first_line(exc))
                    results.append({"id": pair_id, **verdict.to_dict()})
                    _print(out, pair_id, verdict, single=args.pairs is None)
            finally:
                builder.close()
    if args.json is not None:
        args.json.write_text("".join(json.dumps(r, default=str) + "\n" for r in results), encoding="utf-8")
    return 0 if all(r["verdict"] == "equivalent" for r in results) else 1


def _pairs(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], str | None]:
    if args.pairs is not None:
        if args.gold or args.candidate:
            return [], "give either GOLD_SQL CANDIDATE_SQL or --pairs, not both"
        try:
            lines = args.pairs.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            return [], f"--pairs: {exc}"
        pairs = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                pairs.append((str(item.get("id", number)), str(item["gold"]), str(item["candidate"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                return [], f'{args.pairs}:{number}: expected {{"id", "gold", "candidate"}}, got {line[:80]!r}'
        return pairs, None
    if not args.gold or not args.candidate:
        return [], "give GOLD_SQL and CANDIDATE_SQL, or --pairs FILE"
    return [("1", args.gold, args.candidate)], None


def _print(out: TextIO, pair_id: str, verdict: Verdict, *, single: bool) -> None:
    print(verdict.summary if single else f"{pair_id}: {verdict.summary}", file=out)
    if verdict.counterexample is not None:
        for line in verdict.counterexample.lines():
            print(("" if single else "  ") + line, file=out)
