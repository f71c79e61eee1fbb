"""Calibration curves during training: score a held-out MCQA set every N steps and log it with the DPO metrics.

`CalibrationEvalCallback` runs catto's scoring layer (`catto.eval.scoring.score_items`, the same code as `catto eval`)
on a small labelled MCQA set and logs `eval_calibration/{accuracy,ece,brier,nll,auroc,confidence}` through the
trainer's loggers (`report_to`: tensorboard, wandb, trackio, ...), so the calibration curves sit next to the DPO
rewards. With the same items, scoring mode and binning, its ECE is exactly what `catto eval` reports for the same
weights.

Under DDP, ZeRO-3 and FSDP every process scores *all* items with identical forward calls: sharded parameters are
gathered collectively, so the processes must run the model in lockstep, and the item set is kept small
(`calibration_eval_limit`, default 200) so this stays cheap. Metrics come from the full set on every rank, so they
are identical across ranks and need no gather.

Example (prose, needs a trainer): ``CalibrationEvalCallback(items, tokenizer, eval_steps=50).attach(trainer)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from ..data.items import MCQAItem
from ..eval.scoring import ScoringConfig, score_items

METRIC_PREFIX = "eval_calibration"


class CalibrationEvalCallback(TrainerCallback):
    """Log the calibration of the model being trained on `items` every `eval_steps` optimizer steps.

    Args:
        items: labelled MCQA items (a few hundred at most: every process scores all of them).
        tokenizer: the tokenizer the model is trained with.
        scoring: letter or cloze scoring and prompt format (`catto.eval.scoring.ScoringConfig`).
        eval_steps: score every N optimizer steps (None: the trainer's `eval_steps`, else `logging_steps`). The last
            step is always scored.
        at_start: also score before the first step, so the curves start at the initial model (logged at step 0).
        batch_size, n_bins, binning: as `catto eval --eval_batch_size/--n_bins/--binning`.
    """

    def __init__(self, items: Sequence[MCQAItem], tokenizer, *, scoring: ScoringConfig | None = None,
                 eval_steps: int | None = None, at_start: bool = True, batch_size: int = 16, n_bins: int = 15,
                 binning: str = "equal_width"):
        unlabelled = [item.id for item in items if item.gold is None]
        if not items or unlabelled:
            raise ValueError("CalibrationEvalCallback needs labelled items; "
                             + (f"{len(unlabelled)} have no gold label, e.g. {unlabelled[:3]}." if unlabelled
                                else "got none."))
        if eval_steps is not None and eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}.")
        self.items = list(items)
        self.tokenizer = tokenizer
        self.scoring = scoring or ScoringConfig()
        self.eval_steps = eval_steps
        self.at_start = at_start
        self.batch_size = batch_size
        self.n_bins = n_bins
        self.binning = binning
        self.trainer = None
        self.history: list[dict[str, float]] = []

    def attach(self, trainer) -> CalibrationEvalCallback:
        """Register on `trainer` (the callback logs through `trainer.callback_handler`)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def _interval(self, args) -> int:
        return self.eval_steps or int(args.eval_steps or 0) or int(args.logging_steps)

    def evaluate(self, model) -> dict[str, float]:
        """Score the items with `model` now; returns the `eval_calibration/*` metrics."""
        from ..eval.aggregate import summarize_results

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                results = score_items(model, self.tokenizer, self.items, config=self.scoring,
                                      batch_size=self.batch_size, progress=False)
        finally:
            model.train(was_training)
        summary = summarize_results(results, n_bins=self.n_bins, binning=self.binning, n_resamples=0)
        metrics = {"accuracy": summary["accuracy"], "ece": summary["ece"], "brier": summary["brier"],
                   "nll": summary["nll"], "auroc": summary["auroc"],
                   "confidence": sum(r.confidence for r in results) / len(results)}
        return {f"{METRIC_PREFIX}/{k}": float(v["value"] if isinstance(v, dict) else v) for k, v in metrics.items()}

    def _log(self, args, state, control, model) -> None:
        if self.trainer is None:
            raise RuntimeError("CalibrationEvalCallback was added without `attach(trainer)`; it needs the trainer "
                               "to log through its loggers.")
        logs = self.evaluate(model)
        self.history.append({"step": state.global_step, **logs})
        # Straight to the loggers, not through `trainer.log`: TRL's `log` would also flush (and reset) the running
        # DPO/CATTO training metrics of the current logging window into this line.
        # The handler's `on_log` clears `control.should_log`, which the flow callback may just have set for this
        # step's training log: keep it.
        should_log = control.should_log
        state.log_history.append({**logs, "step": state.global_step})
        self.trainer.callback_handler.on_log(args, state, control, logs)
        control.should_log = should_log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start and state.global_step == 0:
            self._log(args, state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self._interval(args) == 0 or step == state.max_steps:
            self._log(args, state, control, model)
