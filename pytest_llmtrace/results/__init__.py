"""What a run's cases become once it ends: repeated runs folded into cases, the "was / now" comparison with a
baseline, the model digests, and the human reports (``summary.md``, ``report.html``).

No module here imports pytest: each reads case dicts as ``results.json`` holds them (docs/results-schema.md), so the
in-run reports and any built later from saved files cannot disagree. Only ``models`` reaches outside (one
``/api/tags`` request, one file hash), and only when ``pytest/run_results.py`` asks it to in live mode.
"""
