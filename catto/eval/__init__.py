"""The evaluation half of catto: scoring, held-out token calibration, per-item results, metrics, aggregation,
comparisons and plots (the runner that composes them with the methods is `catto.pipeline.runner`).

- `catto.eval.scoring`: letter / cloze option probabilities, batched and resumable.
- `catto.eval.token`: held-out token calibration of preference pairs (the quantity the CATTO term optimises).
- `catto.eval.joint`: cloze scoring and token calibration of the same MCQA items in one forward pass.
- `catto.eval.answer_parsing`: the MSP paper's answer parser for generated text.
- `catto.eval.results`: the per-item result type and its crash-safe JSONL file.
- `catto.eval.metrics`: calibration and selective-prediction metrics, bootstrap intervals, ECE noise floor.
- `catto.eval.aggregate`: per-dataset summaries of item results; `catto.eval.compare`: paired differences.
- `catto.eval.plots`: reliability diagrams, risk-coverage and accuracy-vs-k plots.

Importing this package imports none of them (`import catto.eval.metrics` loads numpy only).
"""
