"""The EOS that TRL appends to every completion, told apart from the answer's own tokens: in the held-out token
evaluation (answer and EOS metrics next to the pooled ones, paired differences of each part) and in training
(`catto_exclude_eos` leaves it out of the term only; the DPO loss is unchanged)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from reference import reference_term
from tiny import make_model, preference_dataset
from trl import DPOTrainer

from catto import CATTOConfig, CATTODPOTrainer
from catto.eval.token import (
    TokenEvalConfig,
    eos_token_id_of,
    format_token_table,
    paired_token_difference,
    summarize_token_results,
    token_calibration,
)


@pytest.fixture(scope="module")
def scored(tokenizer):
    """Token records of two different tiny models on the same pairs (answers of 2 words + the EOS)."""
    pairs = [{**row, "id": str(i)} for i, row in enumerate(preference_dataset(12, seed=3, answer_len=2))]
    config = TokenEvalConfig(batch_size=4)
    a = token_calibration(make_model(seed=0), tokenizer, pairs, config=config, progress=False)
    b = token_calibration(make_model(seed=1), tokenizer, pairs, config=config, progress=False)
    return a, b


def _tokens(results, eos, part):
    """(confidence, correct) of the chosen tokens of `part`, collected by hand from the records."""
    conf, correct = [], []
    for r in results:
        for t, c, y in zip(r.chosen.token_ids, r.chosen.confidence, r.chosen.correct):
            if (t == eos) == (part == "eos"):
                conf.append(c)
                correct.append(y)
    return np.array(conf), np.array(correct, dtype=float)


def _ece(conf, correct, n_bins=15):
    """Equal-width ECE written out (bins (k/n, (k+1)/n], 0 in the first)."""
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    return sum(abs(correct[index == k].mean() - conf[index == k].mean()) * (index == k).sum()
               for k in range(n_bins) if (index == k).any()) / len(conf)


def test_records_name_the_eos_and_the_parts_partition_the_tokens(scored, tokenizer):
    a, _ = scored
    assert eos_token_id_of(a) == tokenizer.eos_token_id
    summary = summarize_token_results(a, n_resamples=50, n_simulations=0)
    parts = summary["chosen"]["parts"]
    assert parts["eos"]["n_tokens"] == len(a) and parts["answer"]["n_tokens"] == 2 * len(a)
    assert parts["answer"]["n_tokens"] + parts["eos"]["n_tokens"] == summary["chosen"]["n_tokens"]
    for part in ("answer", "eos"):
        conf, correct = _tokens(a, tokenizer.eos_token_id, part)
        assert parts[part]["accuracy"]["value"] == pytest.approx(correct.mean())
        assert parts[part]["confidence"]["value"] == pytest.approx(conf.mean())
        assert parts[part]["ece"]["value"] == pytest.approx(_ece(conf, correct), abs=1e-9)
        low, high = parts[part]["accuracy"]["ci"]
        assert low <= parts[part]["accuracy"]["value"] <= high
    table = format_token_table(summary)
    assert "| chosen: answer tokens | 12 | 24 |" in table and "| chosen: EOS | 12 | 12 |" in table


def test_paired_difference_of_a_part_is_the_difference_of_its_tokens(scored, tokenizer):
    a, b = scored
    eos = tokenizer.eos_token_id
    for part in ("answer", "eos"):
        diff = paired_token_difference(a, b, "accuracy", part=part, n_resamples=100)
        expected = _tokens(a, eos, part)[1].mean() - _tokens(b, eos, part)[1].mean()
        assert diff["value"] == pytest.approx(expected) and diff["part"] == part
        ece = paired_token_difference(a, b, "ece", part=part, n_resamples=0)
        assert ece["value"] == pytest.approx(_ece(*_tokens(a, eos, part)) - _ece(*_tokens(b, eos, part)), abs=1e-9)
    whole = paired_token_difference(a, b, "accuracy", n_resamples=0)
    assert "part" not in whole


def test_records_without_the_eos_id_report_no_split(scored):
    import dataclasses

    a, b = scored
    old = [dataclasses.replace(r, extra={}) for r in a]  # as written by catto <= 0.1
    assert "parts" not in summarize_token_results(old, n_resamples=0, n_simulations=0)["chosen"]
    with pytest.raises(ValueError, match="EOS"):
        paired_token_difference(old, b, "ece", part="answer")


# ----------------------------------------------------------------------------------------------------------------
# Training: the switch scopes the term only

COMMON = dict(per_device_train_batch_size=4, max_steps=1, learning_rate=1e-2, bf16=False, report_to=[],
              save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True)


def _trainer(cls, tmp_path, tokenizer, **overrides):
    model = make_model(seed=0)
    config = (CATTOConfig if cls is CATTODPOTrainer else __import__("trl").DPOConfig)(
        output_dir=str(tmp_path / cls.__name__), **{**COMMON, **overrides})
    return cls(model=model, ref_model=copy.deepcopy(model), args=config, train_dataset=preference_dataset(8),
               processing_class=tokenizer)


def test_exclude_eos_removes_the_eos_from_the_term_and_leaves_dpo_alone(tmp_path, tokenizer):
    alpha = 0.5
    catto = _trainer(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=alpha, catto_exclude_eos=True)
    dpo = _trainer(DPOTrainer, tmp_path, tokenizer)
    batch = catto._prepare_inputs(catto.data_collator([catto.train_dataset[i] for i in range(4)]))
    catto.model.train()
    dpo.model.train()
    total = catto.compute_loss(catto.model, batch)
    dpo_only = dpo.compute_loss(dpo.model, batch)
    # independent: the full-logits term over the completion tokens whose label is not the EOS
    with torch.no_grad():
        reference = make_model(seed=0)
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    assert (labels[mask] == tokenizer.eos_token_id).sum() == 4 * 2  # one EOS per chosen and rejected completion
    answer = mask & (labels != tokenizer.eos_token_id)
    term, *_ = reference_term(logits[answer], labels[answer], torch.ones(int(answer.sum()), dtype=torch.bool))
    with_eos, *_ = reference_term(logits[mask], labels[mask], torch.ones(int(mask.sum()), dtype=torch.bool))
    assert abs(term.item() - with_eos.item()) > 1e-4  # the switch changes the term on this batch
    assert (total - dpo_only).item() == pytest.approx(alpha * term.item(), abs=1e-5)
    catto.log({})
    assert catto.state.log_history[-1]["catto/calibration_loss"] == pytest.approx(term.item(), abs=1e-5)


def test_exclude_eos_needs_an_eos_id(tmp_path, tokenizer):
    from catto.errors import ConfigError

    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ConfigError, match="catto_exclude_eos"):
        _trainer(CATTODPOTrainer, tmp_path, no_eos, catto_alpha=0.5, catto_exclude_eos=True)
