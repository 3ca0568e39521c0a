"""The bare baseline of the replay row: a plain loop making the same HTTP calls and SQL queries, without the plugin.

Run by ``benchmarks/run.py`` as its own process, timed from start to exit as the pytest run it is compared with is:

    python benchmarks/baseline_loop.py --cases CASES.json --db URL [--reader-db URL]

For every case it does what a replayed golden case does at the least: the reference gateway answers the question
(one HTTP request to an Ollama-API server answering from a table, at once, as virtual-time replay does; one
connection and query to Postgres), and the statement is executed again, read-only and rolled back, as the sql check
does. No spans are recorded, no golden file is read, nothing is compared: what a person would write by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=Path, required=True, help="the generated cases (JSON)")
    parser.add_argument("--db", required=True, help="DSN of a database holding company_db (the app's DB_URI)")
    parser.add_argument("--reader-db", default=None, help="DSN the statement is re-executed with (default --db)")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT), str(ROOT / "fixtures")]
    import psycopg2

    from pytest_llmtrace.modelapi import OllamaAPIServer
    from pytest_llmtrace.modelapi.scripted import ScriptedBackend

    cases = json.loads(args.cases.read_text(encoding="utf-8"))["cases"]
    backend = ScriptedBackend({c["question"]: c["answer"] for c in cases})
    with OllamaAPIServer(backend) as server:
        os.environ["OLLAMA_HOST"] = server.url
        os.environ["DB_URI"] = args.db
        from gateway.app import handle_user_request

        reader = psycopg2.connect(args.reader_db or args.db)
        reader.autocommit = True  # the loop opens and rolls back its own READ ONLY transaction, as the check does
        errors = 0
        for case in cases:
            result = handle_user_request(case["question"])
            with reader.cursor() as cur:
                try:
                    cur.execute("BEGIN READ ONLY")
                    cur.execute("SET LOCAL statement_timeout = 5000")
                    cur.execute(result["sql"])
                    cur.fetchall()
                except psycopg2.Error:
                    errors += 1
                finally:
                    cur.execute("ROLLBACK")
        reader.close()
    print(f"{len(cases)} cases, {errors} SQL errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
