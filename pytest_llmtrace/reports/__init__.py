"""What a run's cases become once it ends: repeated runs folded into cases, the "was / now" comparison with a
baseline, the model digests, and the human reports (``summary.md``, ``report.html``).

Pure: every module here reads case dicts as ``results.json`` holds them (docs/results-schema.md) and knows nothing of
pytest, so the in-run reports and the ones built from saved files cannot disagree.
"""
