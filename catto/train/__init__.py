"""The training half of catto: `CATTOConfig` / `CATTODPOTrainer` (the TRL wiring of the term in `catto.core`), the
live-calibration callback and the `catto train` script.

- `catto.train.fused_forward`: the policy forward that runs the kernel of `catto.core.fused_head` in TRL's place.
- `catto.train.config`, `catto.train.trainer`: `CATTOConfig(DPOConfig)`, `CATTODPOTrainer(DPOTrainer)` (wiring).
- `catto.train.callbacks`: `CalibrationEvalCallback` (eval_calibration/* curves while training).
- `catto.train.script`: the recipe-driven training job (`python -m catto.train --config recipe.yaml`).
- `catto.train.checks`: what is checked before any model loads (model, data, output folder, resume checkpoint).
- `catto.train.distributed`: DeepSpeed / FSDP2 launches rehearsed on CPU processes, and checks that the engine a
  launch asked for is the one it got.
- `catto.train.launcher`: `catto train`, the `accelerate launch` line around the script.
- `catto.train.runs`: train a recipe once and reuse a finished run (the demo and the studies).

Names are imported on first use.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "CATTOConfig": "catto.train.config",
    "CATTODPOTrainer": "catto.train.trainer",
    "CalibrationEvalCallback": "catto.train.callbacks",
    **{name: "catto.train.script" for name in (
        "CATTOScriptArguments", "check_recipe_keys", "load_calibration_items",
        "load_preference_data", "main", "make_parser", "parse_args", "run")},
    **{name: "catto.train.checks" for name in ("RecipeError", "check_model", "check_checkpoint", "preflight")},
    **{name: "catto.train.launcher" for name in (
        "LAUNCH_FLAGS", "build_launch_command", "launch", "resolve_accelerate_config", "split_launch_args")},
    **{name: "catto.train.runs" for name in ("train_run", "finished_run", "latest_checkpoint")},
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes('catto.train', globals(), _LAZY)
