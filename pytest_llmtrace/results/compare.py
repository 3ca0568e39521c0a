"""``llmtrace gate`` and ``llmtrace compare``: verdicts over results.json files, outside pytest.

``gate`` merges shards (a CI matrix, each shard one results.json) and evaluates the gate once over all cases, with
the in-run wording and exit status: both call ``gate.evaluate`` and ``gate.format_result``.

``compare`` pairs two runs' cases by id. Whether the difference in pass rates is more than noise is McNemar's exact
test: only the discordant pairs carry information (b cases passed only in OLD, c only in NEW), and under "no
difference" each is a fair coin, so p is the two-sided exact binomial tail of min(b, c) in b + c tosses.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, case_passed

REGRESSION_EXIT_STATUS = 1


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="RESULTS", type=Path, help="results.json of a run or a shard")
    parser.add_argument(
        "--gate", action="append", required=True, metavar="EXPR", help=f"e.g. '{gate.EXAMPLE}'; repeatable"
    )
    parser.add_argument("--baseline", type=Path, metavar="PATH", help="a previous results.json, for `regressions`")
    parser.add_argument("--slo", metavar="EXPR", help="e.g. 'sql_success_rate >= 0.95', for `error_budget_remaining`")
    parser.set_defaults(handler=run_gate)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, metavar="OLD.json")
    parser.add_argument("new", type=Path, metavar="NEW.json")
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help=f"exit {REGRESSION_EXIT_STATUS} when a case that passed in OLD fails in NEW",
    )
    parser.set_defaults(handler=run_compare)


def _load(paths: list[Path]) -> list[CaseRecord] | None:
    cases: list[CaseRecord] = []
    for path in paths:
        try:
            cases.extend(gate.load_cases(path))
        except ValueError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return None
    return cases


@dataclass
class Merged:
    """The cases of several results.json files, each file and each case once, and what was left out and why."""

    cases: list[CaseRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # duplicates dropped: printed, so a count never surprises
    errors: list[str] = field(default_factory=list)  # what makes the merge unusable (a missing shard): fail closed


def merge(paths: list[Path]) -> Merged:
    """Read each file once (by resolved path) and each case once (by its run id and node id), and check that the
    files that are shards of one run (``run.shard``, written by ``--llmtrace-shard K/N``) are all N of them.

    A gate over a CI matrix must not pass because a shard's job died before uploading its file, nor count a file
    given twice (a glob that matched a copy) as twice the cases.
    """
    merged = Merged()
    read: dict[Path, Path] = {}
    seen: dict[tuple[object, object, object], Path] = {}
    shards: dict[int, tuple[Path, object]] = {}
    counts: dict[int, Path] = {}
    unsharded: list[Path] = []
    dropped = 0
    for path in paths:
        key = path.resolve()
        if key in read:
            merged.notes.append(f"{path} is {read[key]} again: read once")
            continue
        read[key] = path
        try:
            run, cases = gate.load_results(path)
        except ValueError as exc:
            merged.errors.append(str(exc))
            continue
        run_id = run.get("run_id")
        shard = run.get("shard")
        if isinstance(shard, dict) and isinstance(shard.get("index"), int) and isinstance(shard.get("count"), int):
            index, count = shard["index"], shard["count"]
            counts.setdefault(count, path)
            if index in shards and shards[index][1] != run_id:
                merged.errors.append(f"shard {index}/{count} is given twice: {shards[index][0]} and {path}")
            shards.setdefault(index, (path, run_id))
        else:
            unsharded.append(path)
        for case in cases:
            identity = (run_id, case.get("nodeid"), case["case_id"])
            if identity in seen:
                dropped += 1
                continue
            seen[identity] = path
            merged.cases.append(case)
    if dropped:
        merged.notes.append(
            f"{dropped} case{'s' if dropped != 1 else ''} already read from another file (same run id and node id): "
            "counted once"
        )
    if counts:
        merged.errors += _shard_errors(shards, counts, unsharded)
    return merged


def _shard_errors(shards: dict[int, tuple[Path, object]], counts: dict[int, Path], unsharded: list[Path]) -> list[str]:
    if len(counts) > 1:
        given = ", ".join(f"{path} (of {count})" for count, path in sorted(counts.items()))
        return [f"the files are shards of different splits: {given}; give the shards of one run"]
    (count,) = counts
    errors = [f"{path} is not a shard, but the other files are shards of {count}" for path in unsharded]
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in shards]
    if missing:
        errors.append(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing: the gate needs every shard's "
            f"results.json (given: {', '.join(f'{k}/{count} {shards[k][0]}' for k in sorted(shards))})"
        )
    return errors


def run_gate(args: argparse.Namespace) -> int:
    try:
        rules = [gate.parse(expr) for expr in args.gate]
        slo = gate.parse_slo(args.slo) if args.slo else None
    except gate.GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    merged = merge(args.files)
    for note in merged.notes:
        print(f"note: {one_line(note)}", file=sys.stderr)
    if merged.errors:
        for error in merged.errors:
            print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    baseline = _load([args.baseline]) if args.baseline else None
    if args.baseline and baseline is None:
        return 2
    try:
        results = gate.evaluate(rules, merged.cases, baseline, slo)
    except gate.GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(gate.format_result(result))
    return 0 if all(r.passed for r in results) else gate.GATE_EXIT_STATUS


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(X <= min(b, c)) doubled, X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail: int = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / (1 << n))  # exact: comb sums are ints, one division at the end


class Comparison:
    """Two runs paired by case id: which cases regressed, improved, or changed SQL with the same verdict."""

    def __init__(self, old: list[CaseRecord], new: list[CaseRecord]) -> None:
        before = {str(c["case_id"]): c for c in old}
        after = {str(c["case_id"]): c for c in new}
        common = sorted(before.keys() & after.keys())
        self.regressed = [i for i in common if case_passed(before[i]) and not case_passed(after[i])]
        self.improved = [i for i in common if not case_passed(before[i]) and case_passed(after[i])]
        self.changed = [
            i
            for i in common
            if i not in self.regressed and i not in self.improved and before[i]["sql"] != after[i]["sql"]
        ]
        self.only_old = sorted(before.keys() - after.keys())
        self.only_new = sorted(after.keys() - before.keys())
        self.p_value = mcnemar_p(len(self.regressed), len(self.improved))

    def lines(self) -> list[str]:
        out = []
        for title, ids in (
            ("regressed", self.regressed),
            ("improved", self.improved),
            ("changed SQL, same verdict", self.changed),
            ("only in OLD", self.only_old),
            ("only in NEW", self.only_new),
        ):
            if ids:
                out.append(f"{title} ({len(ids)}): {', '.join(ids)}")
        out.append(
            f"McNemar exact test: {len(self.regressed)} regressed vs {len(self.improved)} improved, "
            f"p = {self.p_value:.4g}" + (" (not significant at 0.05)" if self.p_value >= 0.05 else "")
        )
        return out


def compare(old: list[CaseRecord], new: list[CaseRecord]) -> Comparison:
    return Comparison(old, new)


def run_compare(args: argparse.Namespace) -> int:
    old, new = _load([args.old]), _load([args.new])
    if old is None or new is None:
        return 2
    result = compare(old, new)
    for line in result.lines():
        print(one_line(line))  # case ids come from the files
    return REGRESSION_EXIT_STATUS if args.fail_on_regression and result.regressed else 0
