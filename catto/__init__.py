"""catto: calibrated confidence for preference-aligned language models.

Public API (imported on first use, so `import catto.eval.metrics` does not load TRL or transformers):

- `CATTOConfig`, `CATTODPOTrainer`: drop-in `trl.DPOConfig` / `trl.DPOTrainer` with the CATTO token-level
  calibration term (arXiv 2601.23096).
- `calibration_term` and friends: the term as pure tensor functions (`catto.core.calibration`).
- `chunked_calibration_stats`: the fused LM-head statistics (log-probabilities of the label and the top-2 tokens)
  without `(batch, seq, vocab)` logits (`catto.core.fused_head`).

Packages, bottom to top; each imports only the ones below it (docs/design.md, checked by tests/test_layout.py):

- `catto.errors`, `catto.io`, `catto._logging`, `catto._lazy`: error types, atomic writes, logging (import no
  other catto module);
- `catto.core` (the LM-head statistics kernel, the calibration math, model loading) and `catto.data` (MCQA items,
  prompt formats, dataset adapters, preference pairs, synthetic data and tiny models);
- `catto.eval`: scoring, held-out token calibration, per-item results, metrics, aggregation, comparisons, plots;
- `catto.train` (CATTOConfig, CATTODPOTrainer, the live-calibration callback, the `catto train` script) and
  `catto.methods` (every evaluation method behind one interface), side by side;
- `catto.pipeline`: what composes them (the evaluation runner, the report, the demo, the study pipeline, asset
  fetching, tracker logging);
- `catto.cli`: the console commands, which only parse and dispatch.
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from ._logging import quiet_bitsandbytes_hub_kernel

__version__ = "0.1.0"

# Before anything imports bitsandbytes (peft does): its offline warnings about an optional hub kernel (catto._logging).
quiet_bitsandbytes_hub_kernel()

_LAZY = {
    "CATTOConfig": "catto.train.config",
    "CATTODPOTrainer": "catto.train.trainer",
    "CATTOFusedCausalLMOutput": "catto.train.fused_forward",
    "add_catto_head": "catto.train.fused_forward",
    "chunked_calibration_stats": "catto.core.fused_head",
    **{name: "catto.core.calibration" for name in (
        "CalibrationTerm", "best_wrong_log_prob", "binned_calibration_counts", "calibration_margin",
        "calibration_term", "confidence_log_prob", "ece_from_binned_counts", "per_token_calibration_loss",
        "surrogate_target")},
}

__all__ = sorted(_LAZY) + ["__version__"]

__getattr__, __dir__ = lazy_attributes('catto', globals(), _LAZY)
