"""Held-out token calibration (`catto.eval.token`) against a full-logits computation, TRL's tokenization and
the trainer's own logged metrics."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from tiny import make_model, make_tokenizer, preference_dataset

from catto.eval.token import (
    TokenEvalConfig,
    TokenPairResult,
    paired_token_difference,
    summarize_token_results,
    token_calibration,
    tokenize_pair,
)


def _full_logits_reference(model, tokenizer, row, include_eos=True):
    """Per role: (confidence, correct, label_prob) from the model's full `(seq, vocab)` logits."""
    prompt, chosen, rejected = tokenize_pair(tokenizer, row)
    out = {}
    for role, completion in (("chosen", chosen), ("rejected", rejected)):
        if not include_eos and completion[-1] == tokenizer.eos_token_id:
            completion = completion[:-1]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            probs = model(input_ids=ids).logits[0, :-1].float().softmax(-1)
        targets = ids[0, 1:]
        pos = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
        p = probs[pos]
        out[role] = (p.max(-1).values, p.argmax(-1) == targets[pos], p.gather(-1, targets[pos, None])[:, 0])
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_equals_full_logits(arch, tied, batch_size):
    tokenizer = make_tokenizer()
    model = make_model(arch, seed=3, tie_word_embeddings=tied).eval()
    pairs = preference_dataset(5, seed=1, answer_len=3)
    results = token_calibration(model, tokenizer, pairs, config=TokenEvalConfig(batch_size=batch_size),
                                progress=False)
    assert [r.id for r in results] == [str(i) for i in range(5)]
    for row, result in zip(pairs, results):
        ref = _full_logits_reference(model, tokenizer, row)
        for role in ("chosen", "rejected"):
            seq = result.sequence(role)
            conf, corr, label = ref[role]
            assert len(seq.confidence) == 4  # three answer words + EOS
            torch.testing.assert_close(torch.tensor(seq.confidence), conf, atol=1e-5, rtol=1e-5)
            assert seq.correct == corr.tolist()
            torch.testing.assert_close(torch.tensor(seq.label_prob), label, atol=1e-5, rtol=1e-5)


def test_lora_adapters_are_active_and_eos_switch():
    from peft import LoraConfig, get_peft_model

    tokenizer = make_tokenizer()
    base = make_model(seed=4)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                init_lora_weights=False))
    pairs = preference_dataset(3, seed=2)
    with_lora = token_calibration(peft_model, tokenizer, pairs, progress=False)
    for row, result in zip(pairs, with_lora):
        torch.testing.assert_close(torch.tensor(result.chosen.confidence),
                                   _full_logits_reference(peft_model, tokenizer, row)["chosen"][0], atol=1e-5,
                                   rtol=1e-5)
    plain = token_calibration(base, tokenizer, pairs, progress=False)
    assert with_lora[0].chosen.confidence != plain[0].chosen.confidence  # the adapter changed the numbers
    no_eos = token_calibration(base, tokenizer, pairs, config=TokenEvalConfig(include_eos=False), progress=False)
    for full, short in zip(plain, no_eos):
        assert full.chosen.token_ids[-1] == tokenizer.eos_token_id
        assert short.chosen.token_ids == full.chosen.token_ids[:-1]
        assert short.chosen.confidence == pytest.approx(full.chosen.confidence[:-1], abs=1e-6)


def test_never_builds_full_logits(monkeypatch):
    """Only the decoder runs; the model's own forward (which would project every position) is never called."""
    tokenizer = make_tokenizer()
    model = make_model(seed=5)
    calls = []
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: calls.append(1) or pytest.fail("full forward"))
    head_calls = []
    model.lm_head.register_forward_hook(lambda *a: head_calls.append(1))
    token_calibration(model, tokenizer, preference_dataset(4), progress=False)
    assert calls == [] and head_calls == []


def test_tokenization_is_trl_dpo_trainers(tmp_path):
    """The evaluated tokens are exactly those DPOTrainer trains on (strings: EOS appended)."""
    from trl import DPOConfig, DPOTrainer

    tokenizer = make_tokenizer()
    pairs = preference_dataset(6, seed=3, answer_len=2)
    model = make_model()
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs,
                         processing_class=tokenizer)
    for row, processed in zip(pairs, trainer.train_dataset):
        assert tokenize_pair(tokenizer, row) == (processed["prompt_ids"], processed["chosen_ids"],
                                                 processed["rejected_ids"])


def test_equals_the_trainers_logged_metrics(tmp_path):
    """catto/confidence and catto/token_accuracy of CATTODPOTrainer's eval loop are the pooled means over the same
    tokens (chosen and rejected) that token_calibration reports."""
    from catto import CATTOConfig, CATTODPOTrainer

    tokenizer = make_tokenizer()
    model = make_model(seed=6)
    pairs = preference_dataset(6, seed=4)
    args = CATTOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, catto_alpha=0.0,
                       per_device_eval_batch_size=4, gradient_checkpointing=False)
    trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs,
                              eval_dataset=pairs, processing_class=tokenizer)
    metrics = trainer.evaluate()
    results = token_calibration(model, tokenizer, pairs, progress=False)
    conf = [c for r in results for s in (r.chosen, r.rejected) for c in s.confidence]
    corr = [c for r in results for s in (r.chosen, r.rejected) for c in s.correct]
    assert metrics["eval_catto/confidence"] == pytest.approx(np.mean(conf), abs=1e-5)
    assert metrics["eval_catto/token_accuracy"] == pytest.approx(np.mean(corr), abs=1e-6)


def test_resume_scores_only_missing_pairs(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model(seed=7)
    pairs = preference_dataset(6, seed=5)
    path = tmp_path / "results.jsonl"
    first = token_calibration(model, tokenizer, list(pairs)[:3], results_path=path, progress=False)
    calls = []
    model.model.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state.shape[0]))
    full = token_calibration(model, tokenizer, pairs, results_path=path, config=TokenEvalConfig(batch_size=16),
                             progress=False)
    assert sum(calls) == 6  # three new pairs, two sequences each
    assert [r.to_json() for r in full[:3]] == [r.to_json() for r in first]
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and TokenPairResult.from_dict(json.loads(lines[0])).id == "0"
    again = token_calibration(model, tokenizer, pairs, results_path=path, progress=False)
    assert sum(calls) == 6 and [r.to_json() for r in again] == [r.to_json() for r in full]


def test_bad_pairs():
    tokenizer = make_tokenizer()
    model = make_model()
    rows = [{"prompt": "w1 w2", "chosen": " w3", "rejected": " w4", "id": "a"},
            {"prompt": "w1", "chosen": " w3", "rejected": " w5", "id": "a"}]
    with pytest.raises(ValueError, match="unique"):
        token_calibration(model, tokenizer, rows, progress=False)
    with pytest.raises(ValueError, match="no pairs"):
        token_calibration(model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="fills max_length"):
        token_calibration(model, tokenizer, [rows[0]], config=TokenEvalConfig(max_length=2), progress=False)
    with pytest.raises(ValueError, match="max_length"):
        TokenEvalConfig(max_length=1)
    with pytest.raises(ValueError, match="batch_size"):
        TokenEvalConfig(batch_size=0)


def test_summary_matches_pooled_metrics_and_trainer_bins():
    from catto.eval.metrics import ece
    from catto.core.calibration import (
        binned_calibration_counts,
        ece_from_binned_counts,
    )

    tokenizer = make_tokenizer()
    results = token_calibration(make_model(seed=8), tokenizer, preference_dataset(20, seed=6, answer_len=3),
                                progress=False)
    summary = summarize_token_results(results, n_bins=10, n_resamples=200, n_simulations=50)
    conf = np.array([c for r in results for c in r.chosen.confidence])
    corr = np.array([c for r in results for c in r.chosen.correct])
    s = summary["chosen"]
    assert s["n_tokens"] == conf.size == 80 and s["n_sequences"] == 20
    assert s["accuracy"]["value"] == pytest.approx(corr.mean())
    assert s["confidence"]["value"] == pytest.approx(conf.mean())
    assert s["ece"]["value"] == pytest.approx(ece(conf, corr, n_bins=10))
    # the trainer's additive bin counts give the same equal-width ECE
    counts = binned_calibration_counts(torch.tensor(conf), torch.tensor(corr), torch.ones(conf.size, dtype=bool), 10)
    assert ece_from_binned_counts(counts) == pytest.approx(s["ece"]["value"], abs=1e-9)
    for key in ("accuracy", "confidence", "brier"):
        low, high = s[key]["ci"]
        assert low <= s[key]["value"] <= high and s[key]["resampled"] == "sequences"
    assert s["ece"]["ci"][0] <= s["ece"]["debiased"] <= s["ece"]["ci"][1]
    assert s["ece"]["resampled"] == "groups" and s["ece"]["noise_floor"] > 0


def test_paired_difference_is_zero_on_itself_and_signed():
    tokenizer = make_tokenizer()
    pairs = preference_dataset(12, seed=9)
    a = token_calibration(make_model(seed=1), tokenizer, pairs, progress=False)
    b = token_calibration(make_model(seed=2), tokenizer, pairs, progress=False)
    same = paired_token_difference(a, a, "ece", n_resamples=50)
    assert same["value"] == 0 and same["ci"] == [0.0, 0.0]
    d = paired_token_difference(a, b, "confidence", n_resamples=100)
    conf = lambda rs: np.mean([c for r in rs for c in r.chosen.confidence])  # noqa: E731
    assert d["value"] == pytest.approx(conf(a) - conf(b))
    assert d["ci"][0] <= d["value"] <= d["ci"][1]
    with pytest.raises(ValueError, match="not in `b`"):
        paired_token_difference(a, b[:5], "ece")
