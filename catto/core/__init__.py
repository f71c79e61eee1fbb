"""The layer under both halves of catto: what training and evaluation both compute.

- `catto.core.fused_head`: the tiled LM-head statistics kernel (TRL's per-token outputs plus the top-2 statistics of
  the CATTO term, no `(batch, seq, vocab)` logits).
- `catto.core.calibration`: the CATTO term and token-level calibration counts as pure tensor functions.
- `catto.core.modeling`: load a model and tokenizer (hub id, folder, GGUF, a LoRA run) with errors that say what to
  do.

It imports neither `catto.train` nor `catto.eval` (tests/test_layout.py). Names are imported on first use.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    **{name: "catto.core.fused_head" for name in (
        "chunked_calibration_stats", "head_weight_and_bias", "logit_transform_from_config", "unshard_fsdp_head")},
    **{name: "catto.core.calibration" for name in (
        "CalibrationTerm", "best_wrong_log_prob", "binned_calibration_counts", "calibration_margin",
        "calibration_term", "confidence_log_prob", "ece_from_binned_counts", "per_token_calibration_loss",
        "surrogate_target")},
    **{name: "catto.core.modeling" for name in (
        "adapter_base_model", "check_device", "check_device_map", "check_model_folder", "is_adapter_folder",
        "load_model_and_tokenizer", "load_trained_model", "resolve_device", "resolve_model")},
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("catto.core", globals(), _LAZY)
