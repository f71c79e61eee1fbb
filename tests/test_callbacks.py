"""The calibration-eval callback reports through the trainer's logging callbacks (what report_to integrations are)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
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
    # the last value is the final model's, recomputed here from its logits: option probabilities by hand (no
    # scoring layer), metrics by hand (no catto.eval.metrics)
    final = make_model("llama", vocab_size=len(MCQA_VOCAB))
    final.load_state_dict(trainer.model.state_dict())
    expected = _metrics_by_hand(_option_probs_by_hand(final.eval(), tokenizer, heldout, scoring),
                                [item.gold for item in heldout])
    logged = calib[-1][1]
    for key, value in expected.items():
        assert logged[f"eval_calibration/{key}"] == pytest.approx(value, abs=1e-5), key
    assert expected["ece"] > 0.01 and "auroc" in expected  # both correct and wrong answers: AUROC is defined
    # and the same through catto's scoring layer + metrics (what `catto eval` reports)
    results = score_items(trainer.model, tokenizer, heldout, config=ScoringConfig(scoring), progress=False)
    summary = summarize_results(results, n_resamples=0)
    assert logged["eval_calibration/ece"] == pytest.approx(summary["ece"]["value"], abs=1e-6)
    assert callback.history[-1]["step"] == 3


def _option_probs_by_hand(model, tokenizer, items, scoring):
    """Per item the option probabilities straight from the model's logits, one unpadded forward per sequence.

    letter: the prompt lists "A. text" lines and ends with "Answer:"; softmax over the logits of the letter tokens at
    the last position. cloze: each " option" continues "Question: ...\nAnswer:"; its summed token log-probability
    divided by the option's length in characters (the default acc_norm normalisation), softmaxed over the options.
    """
    out = []
    with torch.no_grad():
        for item in items:
            letters = "ABCDEFGH"[: len(item.choices)]
            if scoring == "letter":
                lines = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, item.choices))
                ids = tokenizer(f"Question: {item.question}\n{lines}\nAnswer:")["input_ids"]
                last = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
                scores = last[tokenizer.convert_tokens_to_ids(list(letters))]
            else:
                context = tokenizer(f"Question: {item.question}\nAnswer:")["input_ids"]
                values = []
                for text in item.choices:
                    cont = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
                    logp = model(input_ids=torch.tensor([context + cont])).logits[0].double().log_softmax(-1)
                    values.append(sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(cont)) / len(text))
                scores = torch.tensor(values, dtype=torch.float64)
            out.append(scores.softmax(-1).tolist())
    return out


def _metrics_by_hand(probs, golds, n_bins=15):
    """accuracy, equal-width ECE, multiclass Brier, NLL, AUROC (Mann-Whitney, ties half) and mean confidence."""
    conf = [max(p) for p in probs]
    correct = [p.index(max(p)) == g for p, g in zip(probs, golds)]
    n = len(probs)
    ece = 0.0
    for b in range(n_bins):
        members = [i for i in range(n) if min(int(conf[i] * n_bins), n_bins - 1) == b]
        if members:
            ece += abs(sum(correct[i] for i in members) - sum(conf[i] for i in members)) / n
    right = [c for c, ok in zip(conf, correct) if ok]
    wrong = [c for c, ok in zip(conf, correct) if not ok]
    out = {
        "accuracy": sum(correct) / n,
        "ece": ece,
        "brier": sum(sum((q - (k == g)) ** 2 for k, q in enumerate(p)) for p, g in zip(probs, golds)) / n,
        "nll": -sum(math.log(p[g]) for p, g in zip(probs, golds)) / n,
        "confidence": sum(conf) / n,
    }
    if right and wrong:
        out["auroc"] = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / (len(right) * len(wrong))
    return out


def test_callback_rejects_unlabelled_items_and_needs_attach():
    tokenizer = make_tokenizer(MCQA_VOCAB)
    with pytest.raises(ValueError, match="no gold label"):
        CalibrationEvalCallback([MCQAItem("u1", "w1 ?", ("w1", "w2"), gold=None)], tokenizer)
    with pytest.raises(ValueError, match="eval_steps"):
        CalibrationEvalCallback(synthetic_mcqa(2), tokenizer, eval_steps=0)
