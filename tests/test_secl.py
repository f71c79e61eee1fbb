"""SECL: label-free streaming self-calibration (pure math, the update, label-freedom, resume, tokenizer checks, CLI)."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from catto.data.items import MCQAItem
from catto.methods import get_method_class, load_evaluator
from catto.methods.secl import (
    SECLConfig,
    SECLEvaluator,
    clipped_target,
    confidence_bin,
    lora_target_names,
    normalized_ptrue,
    soft_confidence,
)
from catto.data.synthetic import SPECIAL, WORDS, make_model

KEYWORDS = ["Question", "Answer", "Confidence", "bin", "Proposed", "answer", "True", "False", "Is", "the", "correct"]
VOCAB = SPECIAL + WORDS + list("ABCDEFGH") + list("0123456789") + [".", ":", "?", "'", "(", ")", "%", "-"] + KEYWORDS


def _tokenizer(vocab=VOCAB, split_digits=True):
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    steps = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    raw.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def _model(seed=0):
    return make_model(vocab_size=len(VOCAB), hidden=32, layers=2, seed=seed)


def _items(n, seed=0, k=4):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(WORDS, k + 2)
        out.append(MCQAItem(f"q{i}", f"{words[0]} {words[1]} ?", tuple(words[2:]), gold=rng.randrange(k),
                            source="toy", metadata={"choice_order": list(range(k))}))
    return out


# Forces an update on every question (gate always open, no bin-agreement skip) so short streams exercise training.
TRAIN_ALL = dict(gate="always", skip_bin_distance=0, seed=0)
STREAM = _items(4)


@pytest.fixture(scope="module")
def trained(tok):
    """(evaluator, results) of a stream of 4 questions that all update (shared by several tests: CPU is scarce)."""
    secl = SECLEvaluator(**TRAIN_ALL)
    return secl, secl.evaluate(_model(), tok, STREAM)


@pytest.fixture(scope="module")
def frozen(tok):
    secl = SECLEvaluator(gate="never", target_for_all=True)
    return secl, secl.evaluate(_model(), tok, STREAM)


# -- pure math -------------------------------------------------------------------------------------------------------
def test_soft_confidence_is_expected_bin_centre():
    one_hot = torch.full((10,), -1e4)
    one_hot[7] = 0.0
    assert soft_confidence(one_hot).item() == pytest.approx(0.75)
    assert soft_confidence(torch.zeros(10)).item() == pytest.approx(0.5)
    two = torch.full((10,), -1e4)
    two[[0, 9]] = 0.0
    assert soft_confidence(two).item() == pytest.approx((0.05 + 0.95) / 2)


def test_bins_clipped_target_and_normalised_ptrue():
    assert [confidence_bin(x) for x in (0.0, 0.0999, 0.1, 0.55, 0.95, 1.0)] == [0, 0, 1, 5, 9, 9]
    assert clipped_target(torch.tensor(0.9), torch.tensor(0.3)).item() == pytest.approx(0.825)
    assert clipped_target(torch.tensor(0.4), torch.tensor(0.5)).item() == pytest.approx(0.45)
    assert clipped_target(torch.tensor(0.2), torch.tensor(0.9), 1.0, 0.1).item() == pytest.approx(0.3)
    p = torch.tensor([0.8, 0.4, 0.2])
    assert torch.allclose(normalized_ptrue(p, 1.0), p / p.sum())
    sharp, flat = normalized_ptrue(p, 0.5), normalized_ptrue(p, 4.0)
    assert sharp[0] > (p / p.sum())[0] > flat[0] and torch.allclose(sharp.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("field, value", [
    ("lora_r", 0), ("train_steps", 0), ("learning_rate", 0.0), ("step_fraction", 1.5), ("ema_alpha", 0.0),
    ("gate", "sometimes"), ("prompt_style", "xml"), ("ptrue_temperature", -1.0), ("burst", 0), ("warmup", 0),
    ("target_modules", []), ("skip_bin_distance", -1), ("ptrue_normalization", "softmax"),
])
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        SECLConfig(**{field: value})


def test_lora_targets_are_q_v_of_last_layers():
    model = make_model(vocab_size=len(VOCAB), layers=3)
    names = lora_target_names(model, ["q_proj", "v_proj"], 2)
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in (1, 2) for p in ("q_proj", "v_proj")]
    with pytest.raises(ValueError, match="target_modules"):
        lora_target_names(model, ["c_attn"], 2)


# -- the update ------------------------------------------------------------------------------------------------------
def test_one_update_moves_soft_confidence_toward_clipped_target(tok, trained):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    res = SECLEvaluator(**TRAIN_ALL).evaluate(model, tok, STREAM[:1])[0]
    assert res == trained[1][0]  # deterministic: same as the first question of the shared stream
    e = res.extra
    assert e["updated"] and e["skip_reason"] is None
    c0, c_hat, c1 = e["confidence_before_update"], e["clipped_target"], res.confidence
    assert c_hat == pytest.approx(c0 + 0.5 * max(-0.15, min(0.15, e["ptrue_target"] - c0)), abs=1e-6)
    assert abs(c1 - c_hat) < abs(c0 - c_hat), (c0, c_hat, c1)
    # the caller's model comes back untouched: same weights, no LoRA modules, same requires_grad flags
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any("lora" in n for n, _ in model.named_modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


def test_bigger_learning_rate_moves_further(tok):
    item = _items(1)
    moves = []
    for lr in (5e-5, 5e-3):
        res = SECLEvaluator(**TRAIN_ALL, learning_rate=lr).evaluate(_model(), tok, item)[0]
        moves.append(abs(res.confidence - res.extra["confidence_before_update"]))
    assert 0 < moves[0] < moves[1]


def test_gate_signal_and_targets_come_from_the_frozen_model(trained, frozen):
    trained, frozen = trained[1], frozen[1]
    assert all(r.extra["updated"] for r in trained) and not any(r.extra["updated"] for r in frozen)
    for a, b in zip(trained, frozen):  # adapters off: identical even after updates
        assert a.extra["entropy"] == pytest.approx(b.extra["entropy"], abs=1e-6)
        assert a.extra["ptrue"] == pytest.approx(b.extra["ptrue"], abs=1e-6)
        assert a.extra["base_option_probs"] == pytest.approx(b.extra["base_option_probs"], abs=1e-6)
        assert a.extra["base_confidence"] == pytest.approx(b.extra["base_confidence"], abs=1e-6)
    # while the adapter is still zero the adapted model is the base model
    assert trained[0].extra["confidence_before_update"] == pytest.approx(frozen[0].confidence, abs=1e-6)
    # after updates the adapted confidence differs from the frozen one
    assert trained[-1].extra["confidence_before_update"] != pytest.approx(frozen[-1].confidence, abs=1e-7)


def test_skip_when_bins_agree_and_gate_closed(tok, frozen):
    res = SECLEvaluator(gate="always", skip_bin_distance=9).evaluate(_model(), tok, STREAM[:2])
    assert [r.extra["skip_reason"] for r in res] == ["bins_agree"] * 2 and all("ptrue" in r.extra for r in res)
    assert [r.extra["skip_reason"] for r in frozen[1]] == ["gate_closed"] * 4


def test_page_hinkley_gate_warmup_and_burst_in_the_stream(tok):
    # A threshold this small fires as soon as the warm-up ends; the burst then opens exactly `burst` questions.
    cfg = dict(gate="page_hinkley", warmup=3, burst=2, ph_threshold=1e-9, ph_epsilon=0.0, ema_alpha=1.0)
    res = SECLEvaluator(**cfg).evaluate(_model(), tok, _items(6))
    gate = [r.extra["gate"] for r in res]
    assert [g["warmup"] for g in gate[:3]] == [True, True, False]
    assert not any(g["may_update"] for g in gate[:2])
    first = next(i for i, g in enumerate(gate) if g["detected"])
    assert first >= 2 and [g["may_update"] for g in gate[first:first + 2]] == [True, True]


def test_cost_is_counted(trained, frozen):
    never, res = frozen
    s = never.summarize(res)  # P(True) on every question (4 options) is diagnostic cost when the gate is closed
    assert s["cost_per_question"] == {**s["cost_per_question"], "method": 2.0, "diagnostic": 4.0}
    assert "ptrue" in s and s["ptrue"]["covers"] == "all questions"
    always, res = trained
    # first question: base 1 + confidence 1 + P(True) 4 + 3 steps x 3 + confidence after 1 (the adapted answer is the
    # base one while the adapter is zero); later ones add the adapted answer forward, and 1 diagnostic forward for
    # the base model's own confidence
    assert [r.extra["cost"]["method"] for r in res] == [16, 17, 17, 17]
    assert [r.extra["cost"]["diagnostic"] for r in res] == [0, 1, 1, 1]
    s = always.summarize(res)
    assert s["share_trained"] == 1.0 and s["n_updates"] == 4 and s["cost_per_question"]["method"] == pytest.approx(67 / 4)
    assert {"secl", "verbalized_base", "ptrue", "secl_before_update"} <= s.keys() and s["secl"]["n"] == 4
    assert 0.0 <= s["format"]["mean_digit_mass"] <= 1.0 and sum(s["format"]["verbalized_bin_counts"]) == 4


# -- label-freedom ---------------------------------------------------------------------------------------------------
def _label_free_view(results):
    return [(r.id, r.prediction, r.confidence, r.option_probs,
             {k: v for k, v in r.extra.items()}) for r in results]


def test_gold_labels_change_nothing_the_evaluator_produces(tok, monkeypatch, trained):
    items = STREAM[:3]
    seen_golds = []
    original = SECLEvaluator._process

    def spy(self, peft_model, prompter, pad, item, optimizer, params):
        seen_golds.append((item.gold, dict(item.metadata)))
        return original(self, peft_model, prompter, pad, item, optimizer, params)

    monkeypatch.setattr(SECLEvaluator, "_process", spy)
    rng = random.Random(1)
    variants = {
        "labelled": items,
        "shuffled": [dataclasses.replace(it, gold=rng.randrange(len(it.choices)),
                                         metadata={"choice_order": [3, 2, 1, 0]}) for it in items],
        "deleted": [dataclasses.replace(it, gold=None, metadata={}) for it in items],
    }
    views = {}
    for name, variant in variants.items():
        results = SECLEvaluator(**TRAIN_ALL).evaluate(_model(), tok, variant)
        views[name] = _label_free_view(results)
        assert [r.gold for r in results] == [it.gold for it in variant]  # re-attached for the metrics only
        assert [r.correct for r in results] == [None if it.gold is None else r.prediction == it.gold
                                                for r, it in zip(results, variant)]
    assert views["labelled"] == views["shuffled"] == views["deleted"] == _label_free_view(trained[1][:3])
    assert seen_golds == [(None, {})] * 9


# -- checkpoint / resume ---------------------------------------------------------------------------------------------
RESUME = dict(gate="page_hinkley", warmup=2, burst=3, ph_threshold=1e-9, ph_epsilon=0.0, ema_alpha=1.0,
              skip_bin_distance=0, checkpoint_every=2, learning_rate=1e-3)


def test_interrupt_and_resume_equals_uninterrupted(tok, tmp_path, monkeypatch):
    items = _items(7)
    full = SECLEvaluator(**RESUME, checkpoint_dir=str(tmp_path / "full"))
    expected = full.evaluate(_model(), tok, items)
    assert 0 < sum(r.extra["updated"] for r in expected) < len(items)  # the gate both opened and closed

    original, calls = SECLEvaluator._process, []

    def crash_on_sixth(self, *args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(self, *args)

    model = _model()
    monkeypatch.setattr(SECLEvaluator, "_process", crash_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        SECLEvaluator(**RESUME, checkpoint_dir=str(tmp_path / "cut")).evaluate(model, tok, items)
    assert not any("lora" in n for n, _ in model.named_modules())  # unwrapped even after the interruption
    latest = json.loads((tmp_path / "cut" / "latest.json").read_text())
    assert latest["questions_done"] == 4
    monkeypatch.setattr(SECLEvaluator, "_process", original)

    resumed = SECLEvaluator(**RESUME, checkpoint_dir=str(tmp_path / "cut"))
    got = resumed.evaluate(model, tok, items)
    assert [r.confidence for r in got] == [r.confidence for r in expected]
    assert [r.extra["updated"] for r in got] == [r.extra["updated"] for r in expected]
    a, b = full.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys() and any(k.startswith("adapter/") for k in a) and any("exp_avg" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.state_json() == resumed.state_json()
    assert os.path.exists(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")


def test_resume_refuses_another_stream_or_config(tok, tmp_path):
    SECLEvaluator(gate="never", checkpoint_dir=str(tmp_path)).evaluate(_model(), tok, _items(2))
    with pytest.raises(ValueError, match="other items"):
        SECLEvaluator(gate="never", checkpoint_dir=str(tmp_path)).evaluate(_model(), tok, _items(2, seed=5)[::-1])
    with pytest.raises(ValueError, match="lora_r"):
        SECLEvaluator(gate="never", lora_r=4, checkpoint_dir=str(tmp_path)).evaluate(_model(), tok, _items(2))


def test_save_load_continues_the_adapter(tok, tmp_path, trained):
    secl = trained[0]
    secl.save(tmp_path / "ev")
    loaded = load_evaluator(tmp_path / "ev")
    assert isinstance(loaded, SECLEvaluator) and loaded.counters == secl.counters
    assert all(torch.equal(loaded.state_tensors()[k], v) for k, v in secl.state_tensors().items())
    # a later stream starts from the accumulated adapter: its first answer already differs from the base model's
    first = loaded.evaluate(_model(), tok, _items(1, seed=3))[0]
    fresh = SECLEvaluator(**TRAIN_ALL).evaluate(_model(), tok, _items(1, seed=3))[0]
    assert first.extra["confidence_before_update"] != pytest.approx(fresh.extra["confidence_before_update"], abs=1e-7)


# -- tokenizer checks ------------------------------------------------------------------------------------------------
def test_clear_error_without_single_token_digits():
    no_digits = [w for w in VOCAB if not w.isdigit()]
    tok = _tokenizer(no_digits)
    model = make_model(vocab_size=len(no_digits))
    with pytest.raises(ValueError, match="single-token digits 0-9"):
        SECLEvaluator(gate="never").evaluate(model, tok, _items(1))
    assert not any("lora" in n for n, _ in model.named_modules())
    merged = _tokenizer(VOCAB + ["bin3"], split_digits=False)  # "bin3" is one word: the digit is not a next token
    with pytest.raises(ValueError, match="single-token digits"):
        SECLEvaluator(gate="never").evaluate(make_model(vocab_size=len(VOCAB) + 1), merged, _items(1))


def test_chat_style_needs_a_template(tok):
    with pytest.raises(ValueError, match="chat template"):
        SECLEvaluator(prompt_style="chat").evaluate(_model(), tok, _items(1))


# -- CLI -------------------------------------------------------------------------------------------------------------
def test_catto_eval_method_secl(tok, tmp_path):
    from catto.cli import main

    assert get_method_class("secl") is SECLEvaluator and not SECLEvaluator.needs_labels
    model_dir = tmp_path / "model"
    _model().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = [{"question": it.question, "choices": list(it.choices), "answer": it.gold} for it in _items(4)]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["eval", "--method", "secl", "--model", str(model_dir), "--data", f"mmlu:{data}", "--out", str(out),
            "--bootstrap", "0", "--no-progress", "--no-plots", "--gate", "always", "--skip-bin-distance", "0",
            "--train-steps", "1", "--target-modules", "q_proj", "--checkpoint-every", "3"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (name, ds), = metrics["datasets"].items()
    assert ds["n_items"] == 4 and ds["method_metrics"]["share_trained"] == 1.0
    assert ds["evaluator"]["config"]["train_steps"] == 1 and ds["evaluator"]["config"]["target_modules"] == ["q_proj"]
    state = out / name / "state"
    assert json.loads((state / "latest.json").read_text())["questions_done"] == 4
    assert (state / "adapter" / "adapter_model.safetensors").exists()
