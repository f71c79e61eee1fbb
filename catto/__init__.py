"""catto: calibrated confidence for preference-aligned language models.

Public API (imported on first use, so `import catto.eval.metrics` does not load TRL or transformers):

- `CATTOConfig`, `CATTODPOTrainer`: drop-in `trl.DPOConfig` / `trl.DPOTrainer` with the CATTO token-level
  calibration term (arXiv 2601.23096).
- `calibration_term` and friends: the term as pure tensor functions (`catto.train.calibration`).
- `chunked_calibration_stats`: the fused LM-head statistics (log-probabilities of the label and the top-2 tokens)
  without `(batch, seq, vocab)` logits (`catto.train.fused_head`).

The package is in halves: `catto.train` (the term, the fused head, the trainer, the `catto train` script),
`catto.eval` (scoring, token calibration, metrics, the evaluation runner) and `catto.methods` (every evaluation
method behind one interface), with `catto.data` (MCQA items and preference pairs) under both and `catto.cli` (the
console commands) on top.
"""

from __future__ import annotations

from . import _compat
from ._lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "CATTOConfig": "catto.train.config",
    "CATTODPOTrainer": "catto.train.trainer",
    "CATTOFusedCausalLMOutput": "catto.train.fused_head",
    "add_catto_head": "catto.train.fused_head",
    "chunked_calibration_stats": "catto.train.fused_head",
    **{name: "catto.train.calibration" for name in (
        "CalibrationTerm", "best_wrong_log_prob", "binned_calibration_counts", "calibration_margin",
        "calibration_term", "confidence_log_prob", "ece_from_binned_counts", "per_token_calibration_loss",
        "surrogate_target")},
}

__all__ = sorted(_LAZY) + ["__version__"]

_compat.install()

__getattr__, __dir__ = lazy_attributes('catto', globals(), _LAZY)
