"""Cloze scoring and held-out token calibration in one pass (`catto.eval.joint`) against the two evaluations apart,
computed independently (cloze: every `context + option` run in full; tokens: two rows per pair), on Llama, Qwen2 and
Gemma 3 (a sliding window shorter than the rows), eager and sdpa, with and without the EOS; what the pass cannot
take is left out; and the evaluation runner, which fills both methods' results files from the one pass."""

from __future__ import annotations

import random

import pytest
import torch

from catto.data import MCQAItem
from catto.data.synthetic import MCQA_VOCAB, WORDS, make_model, make_tokenizer
from catto.eval.joint import score_cloze_and_tokens
from catto.eval.scoring import ScoringConfig, score_items
from catto.eval.token import TokenEvalConfig, token_calibration
from catto.methods.scoring import ScoringMethod, ScoringMethodConfig
from catto.methods.token import TokenCalibration, TokenMethodConfig

CLOZE = ScoringConfig("cloze", cloze_normalization="char")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(MCQA_VOCAB)


def _items(n=13, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([2, 3, 4, 5])
        choices = []
        while len(choices) < k:  # distinct option texts: a pair's answers map to one option each
            text = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
            if text not in choices:
                choices.append(text)
        out.append(MCQAItem(f"q{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))), tuple(choices),
                            gold=rng.randrange(k), context="w1 w2 w3" if i % 4 == 0 else None, source="toy"))
    return out


def _model(arch: str):
    name, attention = arch.split("-")
    if name == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        torch.manual_seed(0)
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=len(MCQA_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1, bos_token_id=2))
    else:
        model = make_model(name, vocab_size=len(MCQA_VOCAB))
    model.config._attn_implementation = attention
    return model.eval()


def _pairs(items, seed=0):
    return TokenCalibration(TokenMethodConfig(seed=seed)).pairs(items)


@pytest.mark.parametrize("include_eos", [True, False])
@pytest.mark.parametrize("batch_size", [1, 5, 100])
@pytest.mark.parametrize("arch", ["llama-eager", "qwen2-sdpa", "gemma3-eager", "gemma3-sdpa"])
def test_one_pass_equals_the_two_evaluations(tokenizer, arch, batch_size, include_eos):
    model, items = _model(arch), _items()
    pairs = _pairs(items)
    config = TokenEvalConfig(include_eos=include_eos, prefix_sharing=False)
    cloze, tokens = score_cloze_and_tokens(model, tokenizer, items, pairs, scoring=CLOZE, token=config,
                                           batch_size=batch_size)
    assert sorted(cloze) == sorted(it.id for it in items) and sorted(tokens) == sorted(str(p["id"]) for p in pairs)
    apart = {r.id: r for r in score_items(model, tokenizer, items, config=CLOZE, share_context="none",
                                          progress=False)}
    for item in items:
        a, b = cloze[item.id], apart[item.id]
        assert a.extra["loglik_sum"] == pytest.approx(b.extra["loglik_sum"], abs=1e-4)
        assert a.option_probs == pytest.approx(b.option_probs, abs=1e-4) and a.prediction == b.prediction
        assert a.extra["n_tokens"] == b.extra["n_tokens"] and a.correct == b.correct
    for ref in token_calibration(model, tokenizer, pairs, config=config, progress=False):
        got = tokens[ref.id]
        assert got.n_prompt_tokens == ref.n_prompt_tokens and got.extra == ref.extra and not got.truncated
        for role in ("chosen", "rejected"):
            x, y = got.sequence(role), ref.sequence(role)
            assert x.token_ids == y.token_ids and x.correct == y.correct
            assert x.confidence == pytest.approx(y.confidence, abs=1e-5)
            assert x.label_prob == pytest.approx(y.label_prob, abs=1e-5)
            assert (x.token_ids[-1] == tokenizer.eos_token_id) is include_eos


def test_what_the_pass_cannot_take_is_left_to_the_two_evaluations(tokenizer):
    model, items = _model("llama-eager"), _items(6)
    items[3] = MCQAItem("q3", " ".join(WORDS[:30]), items[3].choices, gold=items[3].gold)  # a long question
    pairs = _pairs(items)
    pairs[1] = {**pairs[1], "prompt": pairs[1]["prompt"] + " w9"}  # another prompt than the cloze context
    pairs[2] = {**pairs[2], "id": "elsewhere"}  # not this item's pair
    short = max(len(tokenizer(p["prompt"] + max(p["chosen"], p["rejected"], key=len))["input_ids"]) + 1
                for k, p in enumerate(pairs) if k != 3)
    config = TokenEvalConfig(max_length=short)  # truncates only the long question's pair
    cloze, tokens = score_cloze_and_tokens(model, tokenizer, items, pairs, scoring=CLOZE, token=config)
    left_out = {items[1].id, items[2].id, items[3].id}
    assert set(cloze) == {it.id for it in items} - left_out and len(tokens) == len(cloze)
    letters = ScoringConfig("letter")
    assert score_cloze_and_tokens(model, tokenizer, items, pairs, scoring=letters, token=config) == ({}, {})
    model.config._attn_implementation = "flash_attention_2"  # cannot take the mask: nothing here
    assert score_cloze_and_tokens(model, tokenizer, items, pairs, scoring=CLOZE, token=config) == ({}, {})
    with pytest.raises(ValueError, match="one pair per item"):
        score_cloze_and_tokens(model, tokenizer, items, pairs[:-1], scoring=CLOZE, token=config)


def test_the_runner_fills_both_methods_from_one_pass(tokenizer, tmp_path, monkeypatch):
    """The study's two methods through `EvalRunner`: with the joint pass, the per-item files and summaries equal the
    two passes' (`no_joint_pass`), and the token method never runs its own model pass."""
    import catto.eval.token as token_module
    from catto.pipeline.runner import EvalArguments, EvalRunner, MethodSpec

    model = _model("llama-eager")
    items = {"toy": _items(9), "toy2": _items(7, seed=3)}
    specs = [MethodSpec("scoring", ScoringMethod, ScoringMethodConfig(scoring="cloze", cloze_normalization="char")),
             MethodSpec("token", TokenCalibration, TokenMethodConfig())]
    runs = {}
    for joint in (False, True):
        out = tmp_path / f"joint{joint}"
        args = EvalArguments(model="unused", out=str(out), device="cpu", no_plots=True, no_progress=True, bootstrap=0,
                             no_joint_pass=not joint)
        backbone_passes = []
        original = token_module._score_shared
        monkeypatch.setattr(token_module, "_score_shared",
                            lambda *a, **k: backbone_passes.append(1) or original(*a, **k))
        runner = EvalRunner(args, (model, tokenizer), datasets=items)
        runs[joint] = runner.run(specs, folder_of=lambda m, d, out=out: str(out / m / (d or "")))
        assert bool(backbone_passes) is not joint  # joint: the token method found every pair done
        for name in items:
            for method in ("scoring", "token"):
                assert (out / method / name / "results.jsonl").read_text().count("\n") == len(items[name])
    for name in items:
        for a, b in zip(runs[True][name]["scoring"].records, runs[False][name]["scoring"].records):
            assert a.id == b.id and a.option_probs == pytest.approx(b.option_probs, abs=1e-5)
        for a, b in zip(runs[True][name]["token"].records, runs[False][name]["token"].records):
            assert a.id == b.id and a.chosen.confidence == pytest.approx(b.chosen.confidence, abs=1e-5)
        ta, tb = runs[True][name]["token"].method_metrics, runs[False][name]["token"].method_metrics
        assert ta["chosen"]["ece"]["value"] == pytest.approx(tb["chosen"]["ece"]["value"], abs=1e-5)
