"""What composes catto's parts into jobs: the evaluation runner, the report, the demo, the study pipeline, asset
fetching and tracker logging.

- `catto.pipeline.runner`: `EvalRunner` (data and model loading, the fit-source flow, resume checks, result files,
  run records) behind `catto eval`, `catto report`, `catto demo` and the studies.
- `catto.pipeline.report`: several methods side by side (report.md / .html / .json).
- `catto.pipeline.study`: arms x seeds trained once, evaluated through the runner, paired differences, the selection
  rule, tables and plots.
- `catto.pipeline.demo`: `catto demo`.
- `catto.pipeline.assets`: the demo model and MCQA data from PyPI wheels, cached (no model hub).
- `catto.pipeline.trackers`: metrics and plots to `report_to` trackers.

The methods (`catto.methods`) never import this package; `catto.cli` only parses arguments and calls it.
"""
