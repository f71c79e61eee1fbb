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
    TokenSequence,
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
                       catto_log_metrics=True, per_device_eval_batch_size=4, gradient_checkpointing=False)
    trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs,
                              eval_dataset=pairs, processing_class=tokenizer)
    metrics = trainer.evaluate()
    results = token_calibration(model, tokenizer, pairs, progress=False)
    conf = [c for r in results for s in (r.chosen, r.rejected) for c in s.confidence]
    corr = [c for r in results for s in (r.chosen, r.rejected) for c in s.correct]
    assert metrics["eval_catto/confidence"] == pytest.approx(np.mean(conf), abs=1e-5)
    assert metrics["eval_catto/token_accuracy"] == pytest.approx(np.mean(corr), abs=1e-6)


@pytest.mark.parametrize("sharing", [True, False])
def test_resume_scores_only_missing_pairs(tmp_path, sharing):
    tokenizer = make_tokenizer()
    model = make_model(seed=7)
    pairs = preference_dataset(6, seed=5)
    path = tmp_path / "results.jsonl"
    config = TokenEvalConfig(batch_size=16, prefix_sharing=sharing)
    first = token_calibration(model, tokenizer, list(pairs)[:3], results_path=path, config=config, progress=False)
    calls = []
    model.model.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state.shape[0]))
    full = token_calibration(model, tokenizer, pairs, results_path=path, config=config, progress=False)
    rows = 3 if sharing else 6  # three new pairs: one shared row each, or two sequences each
    assert sum(calls) == rows
    assert [r.to_json() for r in full[:3]] == [r.to_json() for r in first]
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and TokenPairResult.from_dict(json.loads(lines[0])).id == "0"
    again = token_calibration(model, tokenizer, pairs, results_path=path, config=config, progress=False)
    assert sum(calls) == rows and [r.to_json() for r in again] == [r.to_json() for r in full]


@pytest.mark.parametrize("arch,attention", [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa"),
                                            ("gemma3", "eager"), ("gemma3", "sdpa")])
@pytest.mark.parametrize("options", [{}, {"max_length": 42}, {"include_eos": False}])
def test_prefix_sharing_scores_what_two_rows_score(arch, attention, options):
    """One row per pair gives every pair the same per-token values as two rows (prompts of 2 and 40 words, answers
    of 1 to 4; with max_length 42 the long-prompt answers are cut; Gemma 3 with a sliding window shorter than the
    rows)."""
    from datasets import Dataset
    from test_prefix_sharing import model_for

    rows = [{"id": str(i), "prompt": " ".join(f"w{(i + j) % 40}" for j in range(40 if i % 2 else 2)),
             "chosen": " " + " ".join(f"w{(3 * i + j) % 40}" for j in range(1 + i % 4)),
             "rejected": " " + " ".join(f"w{(5 * i + j + 1) % 40}" for j in range(1 + (i + 2) % 3))} for i in range(8)]
    model = model_for(arch, attention, seed=2)
    tokenizer = make_tokenizer()
    results = {sharing: token_calibration(model, tokenizer, Dataset.from_list(rows), progress=False,
                                          config=TokenEvalConfig(prefix_sharing=sharing, batch_size=3, **options))
               for sharing in (True, False)}
    for a, b in zip(results[True], results[False]):
        assert a.id == b.id and a.truncated == b.truncated
        for role in ("chosen", "rejected"):
            sa, sb = a.sequence(role), b.sequence(role)
            assert sa.token_ids == sb.token_ids and sa.correct == sb.correct
            assert np.allclose(sa.confidence, sb.confidence, atol=1e-5)
            assert np.allclose(sa.label_prob, sb.label_prob, atol=1e-5)
    assert any(r.truncated for r in results[True]) == ("max_length" in options)


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


def _hand_pairs(chosen):
    """TokenPairResults whose chosen sequences hold the given [(confidence, correct), ...] tokens."""
    out = []
    for i, tokens in enumerate(chosen):
        seq = TokenSequence(token_ids=list(range(len(tokens))), confidence=[c for c, _ in tokens],
                            correct=[ok for _, ok in tokens], label_prob=[c if ok else 0.1 for c, ok in tokens])
        out.append(TokenPairResult(f"p{i}", seq, TokenSequence([0], [0.5], [False], [0.1])))
    return out


def _ece_by_hand(tokens, n_bins):
    n = len(tokens)
    total = 0.0
    for b in range(n_bins):
        members = [(c, ok) for c, ok in tokens if min(int(c * n_bins), n_bins - 1) == b]
        total += abs(sum(ok for _, ok in members) - sum(c for c, _ in members)) / n
    return total


def test_paired_difference_of_two_known_runs_and_its_pairing():
    # Two runs on the same three pairs (6 chosen tokens each), values chosen away from the bin edges (10 bins).
    run_a = [[(0.93, True), (0.91, False)], [(0.62, True)], [(0.35, False), (0.33, True), (0.97, True)]]
    run_b = [[(0.55, True), (0.58, False)], [(0.72, False)], [(0.41, True), (0.15, False), (0.88, True)]]
    a, b = _hand_pairs(run_a), _hand_pairs(run_b)
    tokens_a = [t for seq in run_a for t in seq]
    tokens_b = [t for seq in run_b for t in seq]
    ece_diff = _ece_by_hand(tokens_a, 10) - _ece_by_hand(tokens_b, 10)
    # by hand, |#correct - sum of confidences| per bin over 6 tokens:
    # a: bin 9 {0.93, 0.91, 0.97} |2 - 2.81|, bin 6 {0.62} |1 - 0.62|, bin 3 {0.35, 0.33} |1 - 0.68|
    # b: bin 5 {0.55, 0.58} |1 - 1.13|, bin 7 {0.72} |0 - 0.72|, bin 4 {0.41} |1 - 0.41|, bin 1 {0.15}, bin 8 {0.88}
    assert ece_diff == pytest.approx((0.81 + 0.38 + 0.32) / 6 - (0.13 + 0.72 + 0.59 + 0.15 + 0.12) / 6)
    d = paired_token_difference(a, b, "ece", n_bins=10, n_resamples=0)
    assert d["value"] == pytest.approx(ece_diff, abs=1e-12) and d["paired"]
    d = paired_token_difference(a, b, "ece", n_bins=10, n_resamples=200)
    assert d["value"] == pytest.approx(ece_diff, abs=1e-12)
    acc = paired_token_difference(a, b, "accuracy", n_resamples=0)["value"]
    assert acc == pytest.approx(4 / 6 - 3 / 6)
    conf = paired_token_difference(b, a, "confidence", n_resamples=0)["value"]
    assert conf == pytest.approx(np.mean([c for c, _ in tokens_b]) - np.mean([c for c, _ in tokens_a]))
    # Paired: run c is run a with every chosen confidence lowered by 0.05, so every resample of the same pairs
    # differs by exactly 0.05; an unpaired bootstrap (independent resamples per run) would spread the interval.
    c = _hand_pairs([[(conf - 0.05, ok) for conf, ok in seq] for seq in run_a])
    d = paired_token_difference(a, c, "confidence", n_resamples=300)
    assert d["value"] == pytest.approx(0.05, abs=1e-12)
    assert d["ci"] == pytest.approx([0.05, 0.05], abs=1e-12)
    # the rejected role is a separate set of tokens
    assert paired_token_difference(a, b, "confidence", role="rejected", n_resamples=0)["value"] == 0.0


def test_paired_difference_on_two_models_is_signed():
    tokenizer = make_tokenizer()
    pairs = preference_dataset(12, seed=9)
    a = token_calibration(make_model(seed=1), tokenizer, pairs, progress=False)
    b = token_calibration(make_model(seed=2), tokenizer, pairs, progress=False)
    d = paired_token_difference(a, b, "confidence", n_resamples=100)
    conf = lambda rs: np.mean([c for r in rs for c in r.chosen.confidence])  # noqa: E731
    assert abs(conf(a) - conf(b)) > 1e-4 and d["value"] == pytest.approx(conf(a) - conf(b))
    assert d["ci"][0] <= d["value"] <= d["ci"][1]
    with pytest.raises(ValueError, match="not in `b`"):
        paired_token_difference(a, b[:5], "ece")
