"""The calibration-eval callback reports through the trainer's logging callbacks (what report_to integrations are)."""

from __future__ import annotations

import copy

import pytest
from transformers import TrainerCallback

from catto import CATTOConfig, CATTODPOTrainer
from catto.data import MCQAItem, mcqa_to_preference
from catto.data.synthetic import synthetic_mcqa
from catto.eval.aggregate import summarize_results
from catto.eval.scoring import ScoringConfig, score_items
from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer
from catto.train.callbacks import CalibrationEvalCallback


class Recorder(TrainerCallback):
    """Stands in for a report_to integration (TensorBoard, W&B): it only sees what reaches `on_log`."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_callback_reports_through_the_loggers(tmp_path, scoring):
    tokenizer = make_tokenizer(MCQA_VOCAB)
    model = make_model("llama", vocab_size=len(MCQA_VOCAB))
    heldout = synthetic_mcqa(10, seed=3)
    config = CATTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                         logging_steps=1, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                         gradient_checkpointing=False, disable_tqdm=True, catto_alpha=0.2)
    recorder = Recorder()
    trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config,
                              train_dataset=mcqa_to_preference(synthetic_mcqa(24), prompt_format=scoring),
                              processing_class=tokenizer, callbacks=[recorder])
    callback = CalibrationEvalCallback(heldout, tokenizer, scoring=ScoringConfig(scoring), eval_steps=2).attach(trainer)
    trainer.train()
    calib = [(step, logs) for step, logs in recorder.logs if "eval_calibration/ece" in logs]
    assert [step for step, _ in calib] == [0, 2, 3]  # start, every 2 steps, and the last step
    assert {f"eval_calibration/{k}" for k in ("accuracy", "ece", "brier", "nll", "auroc", "confidence")} <= set(calib[0][1])
    assert sum("loss" in logs for _, logs in recorder.logs) == 3  # the training logs are all still there
    # the last value is the final model's, computed independently with the scoring layer + metrics
    results = score_items(trainer.model, tokenizer, heldout, config=ScoringConfig(scoring), progress=False)
    summary = summarize_results(results, n_resamples=0)
    assert calib[-1][1]["eval_calibration/ece"] == pytest.approx(summary["ece"]["value"], abs=1e-6)
    assert callback.history[-1]["step"] == 3


def test_callback_rejects_unlabelled_items_and_needs_attach():
    tokenizer = make_tokenizer(MCQA_VOCAB)
    with pytest.raises(ValueError, match="no gold label"):
        CalibrationEvalCallback([MCQAItem("u1", "w1 ?", ("w1", "w2"), gold=None)], tokenizer)
    with pytest.raises(ValueError, match="eval_steps"):
        CalibrationEvalCallback(synthetic_mcqa(2), tokenizer, eval_steps=0)
