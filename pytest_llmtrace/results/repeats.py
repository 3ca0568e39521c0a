"""``--llmtrace-repeat N``: the N runs of one golden case folded into the one case every total and gate counts.

Each run is an item of its own (``case[1/3]``) and passes or fails honestly in pytest's output. The case passes when
its pass rate (passed runs / runs) reaches ``llmtrace_min_pass_rate``. Its checks, SQL, durations and tokens are those
of one *representative* run whose verdict is the case's verdict (the first passed run of a passing case, the first
other run of a failing one), so a gate rate never counts a passing case's failed run, nor the reverse. ``runs``
keeps every run's verdict and figures.

pass^k is the chance that k runs in a row all pass, estimated from c passes in n runs without bias as
C(c, k) / C(n, k) (tau-bench's pass^k): pass^1 is the pass rate, pass^n is 1 only when every run passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from pytest_llmtrace.results.case_log import CaseLog
from pytest_llmtrace.results.case_record import CaseRecord, RunRecord, failed_checks, runs_passed, verdict_of

# The field record() puts on each run of a repeated case before folding: {"run": k, "of": n, "case_nodeid": ...}.
REPEAT_FIELD: Final = "repeat"
_RATE_SLACK = 1e-9  # 2/3 runs against a floor written 0.6666666667 still passes


def pass_hat_k(passed: int, runs: int) -> dict[str, float]:
    """``{"1": pass^1, ..., "n": pass^n}``; keys are strings because JSON object keys are."""
    return {str(k): math.comb(passed, k) / math.comb(runs, k) for k in range(1, runs + 1)}


def run_summary(case: CaseRecord, run: int) -> RunRecord:
    """One run as ``runs`` lists it: enough to see how runs of a flaky case differ, not every row again."""
    return {
        "run": run,
        "nodeid": case.get("nodeid"),
        "verdict": verdict_of(case),
        "failed_checks": [c["name"] for c in failed_checks(case)],
        "app_error": case.get("app_error"),
        "replay_misses": len(case.get("replay_misses") or ()),
        "sql": case.get("sql"),
        "durations_ms": dict(case.get("durations_ms") or {}),
        "tokens": dict(case.get("tokens") or {}),
    }


def _run(case: CaseRecord) -> int:
    repeat = case.get(REPEAT_FIELD)
    return 1 if repeat is None else int(repeat["run"])


def _fold(runs: Sequence[CaseRecord], min_pass_rate: float) -> CaseRecord:
    ordered = sorted(runs, key=_run)
    passed = sum(1 for r in ordered if r.get("verdict") == "passed")
    rate = passed / len(ordered)
    ok = rate >= min_pass_rate - _RATE_SLACK
    representative = next(r for r in ordered if (r.get("verdict") == "passed") == ok)
    case = representative.copy()
    repeat = case.pop(REPEAT_FIELD, None)
    if repeat is not None:
        case["nodeid"] = repeat["case_nodeid"]
    case["passed"] = ok
    case["verdict"] = "passed" if ok else representative.get("verdict", "failed")
    case["runs"] = [run_summary(r, _run(r)) for r in ordered]
    case["representative_run"] = int(repeat["run"]) if repeat is not None else 1
    case["pass_rate"] = rate
    case["pass_hat_k"] = pass_hat_k(passed, len(ordered))
    case["min_pass_rate"] = min_pass_rate
    return case


def aggregate(cases: Sequence[CaseRecord], min_pass_rate: float) -> list[CaseRecord]:
    """One dict per case, sorted by node id then case id; only runs of one repeated case are folded together.

    A test that called ``llmtrace_check`` twice has two outcomes under one node id: those stay two cases, as before.
    A run that never produced an outcome (its stand-in, verdict ``error``) is a run that did not pass. The cases
    come back as results.json holds them (``CaseLog``: through JSON), as a run's end folds them (``fold_log``).
    """
    log = CaseLog()
    for case in cases:
        keep(log, case)
    return list(fold_log(log, min_pass_rate))


def keep(log: CaseLog, case: CaseRecord) -> None:
    """Keep ``case`` in a run's ``log``: a run of a repeated case (``REPEAT_FIELD``) as it is, under the case it is a
    run of; any other case already folded, so that ``fold_log`` moves it into place without reading it."""
    repeat = case.get(REPEAT_FIELD)
    if repeat is None:
        log.append(_fold([case], 1.0))
    else:
        log.append(case, repeat_of=str(repeat["case_nodeid"]))


def fold_log(log: CaseLog, min_pass_rate: float) -> CaseLog:
    """``aggregate`` over a run's ``CaseLog``, whose cases were kept by ``keep``: a case that is not repeated is
    moved into place unread, and only the runs of a repeated case are read and folded."""
    groups: dict[str, list[int]] = {}
    whole: list[tuple[tuple[str, str], int, str | None]] = []  # (sort key, its index, None)
    repeated: list[tuple[tuple[str, str], int, str | None]] = []  # (sort key, -1, the case its runs are of)
    for index, key in enumerate(log.keys):
        if key.repeat_of is None:
            whole.append(((key.nodeid, key.case_id), index, None))
        elif key.repeat_of in groups:
            groups[key.repeat_of].append(index)
        else:
            groups[key.repeat_of] = [index]
            repeated.append(((key.repeat_of, key.case_id), -1, key.repeat_of))  # a run's case id is its case's
    folded = CaseLog()
    # whole cases, then repeated ones, each in the order met, then a stable sort: the order ``aggregate`` gives
    for _, index, repeat_of in sorted([*whole, *repeated], key=lambda entry: entry[0]):
        if repeat_of is None:
            folded.move(log, index)
        else:
            folded.append(_fold([log[i] for i in groups[repeat_of]], min_pass_rate))
    return folded


def repeat_lines(cases: Sequence[CaseRecord], repeat: int, min_pass_rate: float, shown: int = 20) -> list[str]:
    """The terminal's account of a repeated run: the verdicts by pass rate, and the cases whose runs disagreed."""
    repeated = [c for c in cases if len(c.get("runs") or ()) > 1]
    passed = sum(1 for c in repeated if c.get("passed"))
    lines = [
        f"llmtrace repeats: {len(repeated)} cases x {repeat} runs, a case passes when its pass rate >= "
        f"{min_pass_rate:g}: {passed} passed, {len(repeated) - passed} failed"
    ]
    mixed = [c for c in repeated if 0 < float(c.get("pass_rate", 0)) < 1]
    for case in mixed[:shown]:
        ok = runs_passed(case)
        verdict = "passed" if case.get("passed") else "failed"
        lines.append(f"  {case['case_id']}: {ok}/{len(case['runs'])} runs passed -> {verdict}")
    if len(mixed) > shown:
        lines.append(f"  ... {len(mixed) - shown} more cases whose runs disagreed (results.json: runs)")
    return lines
