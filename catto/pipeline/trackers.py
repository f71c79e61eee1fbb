"""Metrics and plots of an evaluation, a report or the demo to experiment trackers (`report_to`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any


def log_to_trackers(report_to: Sequence[str], project_dir: str, run_name: str, metrics: Mapping[str, Any],
                    images: Mapping[str, str], config: Mapping[str, Any]) -> list[str]:
    """Log flattened numeric `metrics` and PNG `images` to the `report_to` trackers (tensorboard, wandb, ...: the
    names transformers' `report_to` knows) through accelerate's tracking API, with `project_dir` as the trackers'
    folder; returns the trackers logged to (none when `report_to` is empty)."""
    if not report_to:
        return []
    from accelerate import Accelerator

    flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    accelerator = Accelerator(log_with=list(report_to), project_dir=project_dir, cpu=True)
    accelerator.init_trackers(f"catto-{run_name}", config={k: v for k, v in _flatten(config).items()
                                                           if isinstance(v, (int, float, str, bool))})
    accelerator.log(flat, step=0)
    if images:
        import numpy as np
        from PIL import Image

        arrays = {k: np.asarray(Image.open(v).convert("RGB")) for k, v in images.items() if os.path.exists(v)}
        for tracker in accelerator.trackers:
            if hasattr(tracker, "log_images") and arrays:
                tracker.log_images(arrays, step=0)
    accelerator.end_training()
    return [t.name for t in accelerator.trackers]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": {"value": 1}}}` -> `{"a/b": 1}` (metric entries collapse to their value)."""
    if isinstance(tree, Mapping):
        if "value" in tree and not isinstance(tree["value"], Mapping):
            return {prefix: tree["value"]} if prefix else {"value": tree["value"]}
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: tree} if prefix else {}
