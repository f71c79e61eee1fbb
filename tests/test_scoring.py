import json
import random

import pytest
import torch

from catto.data import ClozeFormat, LetterFormat, MCQAItem
from catto.eval.results import ResultsFile
from catto.eval.scoring import ScoringConfig, letter_token_ids, score_items
from catto.data.synthetic import MCQA_VOCAB, WORDS, make_model, make_tokenizer


@pytest.fixture(scope="module")
def mcqa_tokenizer():
    return make_tokenizer(MCQA_VOCAB)


def _model(arch="llama"):
    model = make_model(arch, vocab_size=len(MCQA_VOCAB))
    model.eval()
    return model


def _items(n=11, seed=0, context_every=3):
    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = rng.choice([2, 3, 4, 5])
        items.append(MCQAItem(
            f"q{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7))),
            tuple(" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(k)), gold=rng.randrange(k),
            context="w1 w2 w3" if i % context_every == 0 else None, source="synthetic",
        ))
    return items


def _reference_letter(model, tok, item):
    prompt = LetterFormat().prompt(item)
    ids = tok(prompt)["input_ids"]
    logits = model(torch.tensor([ids])).logits[0, -1]
    letter_ids = [tok(prompt + " " + letter, add_special_tokens=False)["input_ids"][-1] for letter in item.letters]
    return logits[letter_ids].softmax(-1), logits.softmax(-1)


def _reference_cloze(model, tok, item):
    fmt = ClozeFormat()
    ctx = tok(fmt.context(item))["input_ids"]
    out = []
    for cont in fmt.continuations(item):
        whole = tok(fmt.context(item) + cont)["input_ids"]
        lp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
        out.append(sum(lp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_letter_scoring_equals_unbatched_forward(mcqa_tokenizer, arch, batch_size):
    model, items = _model(arch), _items()
    results = score_items(model, mcqa_tokenizer, items, config=ScoringConfig("letter"), batch_size=batch_size,
                          progress=False)
    assert [r.id for r in results] == [i.id for i in items]
    with torch.no_grad():
        for item, r in zip(items, results):
            probs, full = _reference_letter(model, mcqa_tokenizer, item)
            assert torch.allclose(torch.tensor(r.option_probs), probs, atol=1e-5)
            assert r.prediction == int(probs.argmax()) and r.confidence == pytest.approx(float(probs.max()))
            assert r.correct == (r.prediction == item.gold)
            assert r.extra["max_prob_full_vocab"] == pytest.approx(float(full.max()), abs=1e-6)
            assert r.extra["option_mass"] == pytest.approx(float(full[[
                mcqa_tokenizer.convert_tokens_to_ids(letter) for letter in item.letters]].sum()), abs=1e-6)


def _gemma3(attention: str):
    """A tiny Gemma 3 whose sliding window (4) is shorter than the scored rows, over the MCQA vocabulary."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(MCQA_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                              sliding_window=4, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                              eos_token_id=1, bos_token_id=2, final_logit_softcapping=5.0)
    model = Gemma3ForCausalLM(config).eval()
    model.config._attn_implementation = attention
    return model


# Every cloze path on every architecture, except Gemma 3 on the KV-cache path (its sliding-window cache is not
# reordered per option; `auto` never picks it there, since Gemma 3 takes the layout's mask).
CLOZE_PATHS = [(arch, mode) for arch in ("llama", "qwen2", "llama-sdpa", "gemma3-eager", "gemma3-sdpa")
               for mode in ("layout", "cache", "none", True) if not (arch.startswith("gemma3") and mode == "cache")]


@pytest.mark.parametrize("arch,share_context", CLOZE_PATHS)
@pytest.mark.parametrize("batch_size", [1, 5, 100])
def test_cloze_scoring_equals_unbatched_forward(mcqa_tokenizer, arch, batch_size, share_context):
    if arch.startswith("gemma3"):
        model = _gemma3(arch.split("-")[1])
    else:
        model = _model(arch.split("-")[0])
        if arch.endswith("sdpa"):
            model.config._attn_implementation = "sdpa"
    items = _items(seed=1)
    results = score_items(model, mcqa_tokenizer, items, config=ScoringConfig("cloze"), batch_size=batch_size,
                          progress=False, share_context=share_context)
    with torch.no_grad():
        for item, r in zip(items, results):
            ref = _reference_cloze(model, mcqa_tokenizer, item)
            assert r.extra["loglik_sum"] == pytest.approx(ref, abs=1e-4)
            chars = [len(c) for c in item.choices]
            expected = torch.tensor([lp / c for lp, c in zip(ref, chars)], dtype=torch.float64).softmax(-1)
            assert torch.allclose(torch.tensor(r.option_probs, dtype=torch.float64), expected, atol=1e-4)
            assert r.extra["pred_sum"] == max(range(len(ref)), key=ref.__getitem__)


def test_context_sharing_resolves_by_attention_and_refuses_unknown_values():
    from catto.eval.scoring import resolve_context_sharing

    model = _model()
    assert resolve_context_sharing(model, True) == "layout" and resolve_context_sharing(model, False) == "none"
    model.config._attn_implementation = "flash_attention_2"  # cannot take the mask: the cache path
    assert resolve_context_sharing(model, "auto") == "cache" and resolve_context_sharing(model, "layout") == "layout"
    with pytest.raises(ValueError, match="share_context"):
        resolve_context_sharing(model, "always")


@pytest.mark.parametrize("norm", ["sum", "token", "char"])
def test_cloze_normalisation_is_recorded_and_used(mcqa_tokenizer, norm):
    config = ScoringConfig("cloze", cloze_normalization=norm)
    (r,) = score_items(_model(), mcqa_tokenizer, _items(1), config=config, progress=False)
    scores = torch.tensor(r.extra[f"loglik_{norm}"], dtype=torch.float64)
    assert torch.allclose(torch.tensor(r.option_probs, dtype=torch.float64), scores.softmax(-1))
    assert norm in config.to_dict()["confidence"] and config.to_dict()["cloze_normalization"] == norm


def test_letters_sharing_one_token_are_an_error():
    tok = make_tokenizer()  # no letters in this vocabulary: "A" is <unk>, so " A" still adds one token...
    tok.name_or_path = "tiny-no-letters"
    with pytest.raises(ValueError, match="share token ids"):  # ...but every letter maps to the same <unk> id
        letter_token_ids(tok, "Question: w1\nAnswer:", ["A", "B"])


def test_multi_token_letter_is_an_error(mcqa_tokenizer):
    mcqa_tokenizer.name_or_path = "tiny-mcqa"
    with pytest.raises(ValueError, match="not a single token.*tiny-mcqa"):
        letter_token_ids(mcqa_tokenizer, "Answer:", ["A.B"])


def test_resume_after_interruption_gives_the_same_results(mcqa_tokenizer, tmp_path):
    model, items = _model(), _items(12, seed=3)
    path = tmp_path / "results.jsonl"
    full = score_items(model, mcqa_tokenizer, items, config=ScoringConfig("letter"), batch_size=4, progress=False)

    calls = {"n": 0}
    original = ResultsFile.append

    def crash_after_two(self, results):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, results)

    ResultsFile.append = crash_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            score_items(model, mcqa_tokenizer, items, config=ScoringConfig("letter"), batch_size=4,
                        results_path=path, progress=False)
    finally:
        ResultsFile.append = original
    assert len(path.read_text().splitlines()) == 8
    with open(path, "a") as f:  # a torn last line, as a kill mid-write would leave
        f.write('{"id": "q99", "option_pro')
    resumed = score_items(model, mcqa_tokenizer, items, config=ScoringConfig("letter"), batch_size=4,
                          results_path=path, progress=False)
    assert [r.id for r in resumed] == [i.id for i in items]
    for a, b in zip(resumed, full):
        assert a.option_probs == pytest.approx(b.option_probs, abs=1e-6)
    lines = path.read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line)["id"] for line in lines)


def test_nan_logits_are_a_clear_error(mcqa_tokenizer):
    model = _model()
    with torch.no_grad():
        model.lm_head.weight[3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        score_items(model, mcqa_tokenizer, _items(2), progress=False)


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"scoring.*\['letter', 'cloze'\]"):
        ScoringConfig("logits")
    with pytest.raises(ValueError, match="cloze_normalization"):
        ScoringConfig("cloze", cloze_normalization="bytes")
