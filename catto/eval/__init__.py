"""The evaluation half of catto: scoring, held-out token calibration, metrics, aggregation, plots, and the one
runner behind `catto eval`, `catto report` and `catto demo`.

- `catto.eval.modeling`: load a model (hub id, folder, GGUF, adapter) with errors that say what to do.
- `catto.eval.scoring`: letter / cloze option probabilities, batched and resumable.
- `catto.eval.token`: held-out token calibration of preference pairs (the quantity the CATTO term optimises).
- `catto.eval.answer_parsing`: the MSP paper's answer parser for generated text.
- `catto.eval.results`: the per-item result type and its crash-safe JSONL file.
- `catto.eval.metrics`: calibration and selective-prediction metrics, bootstrap intervals, ECE noise floor.
- `catto.eval.aggregate`: per-dataset summaries of item results; `catto.eval.compare`: paired differences.
- `catto.eval.plots`: reliability diagrams, risk-coverage and accuracy-vs-k plots.
- `catto.eval.runner`: data and model loading, the fit-source flow, resume checks, result files, run records.
- `catto.eval.report`: several methods side by side (report.md / .html / .json).

Importing this package imports none of them (`import catto.eval.metrics` loads numpy only).
"""
