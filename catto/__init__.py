"""catto: calibrated confidence for preference-aligned language models.

Public API:

- `CATTOConfig`, `CATTODPOTrainer`: drop-in `trl.DPOConfig` / `trl.DPOTrainer` with the CATTO token-level
  calibration term (arXiv 2601.23096).
- `calibration_term` and friends: the term as pure tensor functions.
- `chunked_calibration_stats`: the fused LM-head statistics (log-probabilities of the label and the top-2 tokens)
  without `(batch, seq, vocab)` logits.
"""

from .calibration import (
    CalibrationTerm,
    best_wrong_log_prob,
    binned_calibration_counts,
    calibration_margin,
    calibration_term,
    confidence_log_prob,
    ece_from_binned_counts,
    per_token_calibration_loss,
    surrogate_target,
)
from .config import CATTOConfig
from .fused_head import CATTOFusedCausalLMOutput, add_catto_head, chunked_calibration_stats
from .trainer import CATTODPOTrainer

__version__ = "0.1.0"

__all__ = [
    "CATTOConfig",
    "CATTODPOTrainer",
    "CATTOFusedCausalLMOutput",
    "CalibrationTerm",
    "add_catto_head",
    "best_wrong_log_prob",
    "binned_calibration_counts",
    "calibration_margin",
    "calibration_term",
    "chunked_calibration_stats",
    "confidence_log_prob",
    "ece_from_binned_counts",
    "per_token_calibration_loss",
    "surrogate_target",
    "__version__",
]
