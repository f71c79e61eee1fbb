import json
import math

import numpy as np
import pytest
import torch

from catto.cli import main
from catto.data import MCQAItem
from catto.eval.answer_parsing import ParsedAnswer
from catto.eval.results import ResultsFile
from catto.methods.confidence_at_k import (
    Candidate,
    ConfidenceAtKConfig,
    QuestionResult,
    TemperatureCalibrator,
    accuracy_vs_k,
    confidence_at_k,
    fit_calibrator,
    mcqa_prompt,
    select_all,
    pad_label_logits,
    select_by_score,
    select_majority,
)
from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer
from catto.methods.temperature import fit_temperature

# ----------------------------------------------------------------------------------------------------------------
# selection logic on simulated candidates (no model)


def _simulate(n, k, anti, seed=0, n_options=4, spread=1.5, greedy_shift=0.5):
    """Per question a difficulty d; each sample i is right with probability c_i = sigmoid(d + spread * noise) (its
    reasoning path's own chance) and, when wrong, names a random distractor; the greedy decode is one more path,
    a little more accurate than a sample. Calibrated candidates report c_i; anti-calibrated ones 1 - c_i."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 1, size=n)
    c = 1 / (1 + np.exp(-(d[:, None] + spread * rng.normal(size=(n, k)))))
    answers = np.where(rng.random((n, k)) < c, 0, rng.integers(1, n_options, size=(n, k)))  # gold is option 0
    c_greedy = 1 / (1 + np.exp(-(d + greedy_shift + spread * rng.normal(size=n))))
    greedy = (rng.random(n) < c_greedy).astype(float)
    reported = 1 - c if anti else c
    conf = np.array([answers[q, select_by_score(list(answers[q]), list(reported[q]))] == 0 for q in range(n)])
    maj = np.array([select_majority(list(answers[q]))[0] == 0 for q in range(n)])
    return conf.astype(float), maj.astype(float), greedy


def _paired(a, b):
    diff = a - b
    return diff.mean(), diff.std(ddof=1) / math.sqrt(len(diff))


@pytest.mark.parametrize("k", [4, 8])
def test_confidence_at_k_beats_majority_and_greedy_when_calibrated_and_loses_when_anti_calibrated(k):
    conf, maj, greedy = _simulate(3000, k, anti=False)
    for baseline in (maj, greedy):
        mean, se = _paired(conf, baseline)
        assert mean > 3 * se, (mean, se)  # >= with a margin of three standard errors (in fact clearly better)
    # Same candidates, same correctness, only the reported confidences reversed: now it picks the worst path.
    conf_anti, maj_anti, greedy_anti = _simulate(3000, k, anti=True)
    assert np.array_equal(maj, maj_anti) and np.array_equal(greedy, greedy_anti)
    for baseline in (maj_anti, greedy_anti):
        mean, se = _paired(conf_anti, baseline)
        assert mean < -3 * se, (mean, se)


def _candidate(answer, confidence, logprob=-1.0):
    return Candidate(text=str(answer), answer=answer, rule="x" if answer is not None else None, answer_token=0,
                     confidence=confidence, confidence_source="letter", full_vocab_prob=confidence,
                     label_logits=None, sequence_logprob=logprob, n_tokens=1)


def test_expected_accuracy_of_confidence_at_k_is_the_mean_selected_confidence_when_calibrated():
    """catto's selection and accuracy-vs-k curves against numpy: Confidence@k takes the argmax confidence of the first
    k candidates (earliest on ties), and its accuracy is that candidate's correctness. Calibration is what makes the
    selected confidence an accuracy estimate: E[correct | selected c] = c."""
    rng = np.random.default_rng(1)
    n, k_max = 4000, 8
    c = rng.uniform(size=(n, k_max))
    right = rng.random(c.shape) < c
    # a wrong candidate names one of three distractors (1-3); gold is 0
    answers = np.where(right, 0, rng.integers(1, 4, size=c.shape))
    logprob = -rng.exponential(2.0, size=c.shape)  # sequence log-probabilities (<= 0)
    ks = (1, 2, 4, 8)
    results = []
    for q in range(n):
        cands = [_candidate(int(answers[q, j]), float(c[q, j]), float(logprob[q, j])) for j in range(k_max)]
        results.append(QuestionResult(f"q{q}", 0, cands, None, select_all(cands, None, ks)))
    curves = accuracy_vs_k(results, n_bins=10)
    for k in ks:
        idx = c[:, :k].argmax(1)  # numpy's argmax: the first maximum
        for q in range(0, n, 97):
            sel = results[q].selections["confidence"][k]
            assert sel.candidate == idx[q] and sel.confidence == c[q, idx[q]] and sel.answer == answers[q, idx[q]]
        acc = right[np.arange(n), idx].mean()
        mean_conf = c[np.arange(n), idx].mean()
        got = curves["confidence"][str(k)]
        assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert got["mean_confidence"] == pytest.approx(mean_conf, abs=1e-12)
        assert got["answered"] == 1.0 and got["n"] == n
        # best-of-k by sequence log-probability, reported at confidence exp(log-prob)
        best = logprob[:, :k].argmax(1)
        assert curves["best_logprob"][str(k)]["accuracy"] == pytest.approx(right[np.arange(n), best].mean(),
                                                                          abs=1e-12)
        assert curves["best_logprob"][str(k)]["mean_confidence"] == pytest.approx(
            np.exp(logprob[np.arange(n), best]).mean(), rel=1e-12)
    # calibrated candidates: the selected confidence estimates Confidence@k's accuracy
    acc, expected = curves["confidence"]["8"]["accuracy"], curves["confidence"]["8"]["mean_confidence"]
    se = math.sqrt(expected * (1 - expected) / n)
    assert abs(acc - expected) < 3 * se
    assert curves["confidence"]["8"]["accuracy"] > curves["confidence"]["1"]["accuracy"] + 0.1  # k helps


def test_ties_break_deterministically():
    assert select_by_score([1, 2, 3], [0.5, 0.5, 0.5]) == 0  # earliest sample
    assert select_by_score([None, 2, 3], [0.9, 0.5, 0.5]) == 1  # unparseable never selected
    assert select_by_score([None, None], [0.9, 0.8]) is None
    assert select_majority([3, 1, 1, 3]) == (3, 2, 0)  # equal votes: earliest first vote
    assert select_majority([1, 3, 3, 1, 2]) == (1, 2, 0)
    assert select_majority([None, 2, 1, 1]) == (1, 2, 2)
    assert select_majority([None, None]) == (None, 0, None)


def test_fit_temperature_recovers_the_generating_temperature():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 4, generator=gen) * 3
    labels = torch.multinomial((logits / 2.0).softmax(-1), 1, generator=gen)[:, 0]
    t = fit_temperature(*pad_label_logits(logits.tolist(), labels.tolist()))
    assert t == pytest.approx(2.0, rel=0.08)
    with pytest.raises(ValueError, match="one label per logit row"):
        pad_label_logits([[0.0, 1.0]], [])
    with pytest.raises(ValueError, match="outside its row"):
        pad_label_logits([[0.0, 1.0], [0.0, 1.0, 2.0]], [2, 0])
    with pytest.raises(ValueError, match="temperature"):
        TemperatureCalibrator(temperature=0.0)


# ----------------------------------------------------------------------------------------------------------------
# tiny model


@pytest.fixture(scope="module")
def tiny():
    return make_model(vocab_size=len(MCQA_VOCAB), seed=3), make_tokenizer(MCQA_VOCAB)


def _items(n=6):
    return [MCQAItem(f"q{i}", f"w{i} w{i + 1} ?", (f"w{i + 2}", f"w{i + 3}", f"w{i + 4}", f"w{i + 5}"), gold=i % 4)
            for i in range(n)]


class _CountingGenerate:
    def __init__(self, model):
        self.model, self.calls, self.original = model, [], model.generate

    def __enter__(self):
        def wrapped(*args, **kwargs):
            self.calls.append(kwargs)
            return self.original(*args, **kwargs)
        self.model.generate = wrapped
        return self

    def __exit__(self, *exc):
        del self.model.generate  # back to the class method


def test_k_candidates_come_from_one_generate_call_per_batch(tiny):
    model, tok = tiny
    items = _items(6)
    with _CountingGenerate(model) as counter:
        out = confidence_at_k(model, tok, items, ConfidenceAtKConfig(k=5, batch_size=3, greedy=False,
                                                                      max_new_tokens=4))
    assert len(counter.calls) == 2  # 6 questions, 3 per batch
    for call in counter.calls:  # each prompt once in the shared cache, repeated to k rows for the one call
        assert call["do_sample"] and call["output_logits"] and call["input_ids"].shape[0] == 3 * 5
        assert call["past_key_values"] is not None
    assert [len(r.candidates) for r in out] == [5] * 6
    with _CountingGenerate(model) as counter:
        out = confidence_at_k(model, tok, items, ConfidenceAtKConfig(k=5, batch_size=6, max_new_tokens=4))
    assert [c["do_sample"] for c in counter.calls] == [True, False]  # plus one true greedy decode per batch
    assert counter.calls[1]["num_return_sequences"] == 1 and all(r.greedy is not None for r in out)


def test_shared_prompt_cache_draws_the_same_samples_as_num_return_sequences(tiny):
    model, tok = tiny
    items = [MCQAItem(f"r{i}", " ".join(f"w{j}" for j in range(i + 1)) + " ?", ("w3", "w4", "w5"), gold=0)
             for i in range(4)]  # ragged prompt lengths: left padding under the repeated cache
    shared = confidence_at_k(model, tok, items, ConfidenceAtKConfig(k=5, batch_size=4, max_new_tokens=4))
    with _CountingGenerate(model) as counter:
        plain = confidence_at_k(model, tok, items, ConfidenceAtKConfig(k=5, batch_size=4, max_new_tokens=4,
                                                                        share_prompt_cache=False))
    assert counter.calls[0]["num_return_sequences"] == 5 and "past_key_values" not in counter.calls[0]
    assert [[c.token_ids for c in r.candidates] for r in shared] == [[c.token_ids for c in r.candidates] for r in plain]
    for r, q in zip(shared, plain):
        for a, b in zip(r.candidates, q.candidates):
            assert a.sequence_logprob == pytest.approx(b.sequence_logprob, abs=1e-5)


def test_greedy_is_the_argmax_decode(tiny):
    model, tok = tiny
    item = _items(1)[0]
    out = confidence_at_k(model, tok, [item], ConfidenceAtKConfig(k=2, max_new_tokens=4))[0]
    ids = tok(mcqa_prompt(tok, item, ConfidenceAtKConfig()))["input_ids"]
    generated = []
    with torch.no_grad():
        for _ in range(4):
            generated.append(int(model(torch.tensor([ids + generated])).logits[0, -1].argmax()))
            if generated[-1] == tok.eos_token_id:
                break
    assert out.greedy.token_ids == generated


@pytest.mark.parametrize("confidence", ["letter", "full_vocab", "sequence"])
def test_confidences_equal_a_recomputed_forward_pass(tiny, confidence):
    model, tok = tiny
    items = _items(6)
    config = ConfidenceAtKConfig(k=8, batch_size=3, temperature=0.7, top_p=0.9, max_new_tokens=5,
                                 confidence=confidence)
    out = confidence_at_k(model, tok, items, config)
    letters = tok.convert_tokens_to_ids(list("ABCD"))
    checked = {"letter_rule": 0, "option_text": 0}
    for r, item in zip(out, items):
        prompt_ids = tok(mcqa_prompt(tok, item, config))["input_ids"]
        for cand in r.candidates:
            body = cand.token_ids
            assert len(body) == cand.n_tokens
            full_ids = prompt_ids + body
            with torch.no_grad():
                logp = model(torch.tensor([full_ids])).logits[0].float().log_softmax(-1)
            gen_lp = logp[len(prompt_ids) - 1: len(full_ids) - 1].gather(-1, torch.tensor(body)[:, None])
            # raw (temperature 1, no top-p) log-probabilities, although sampling used T=0.7 and top-p 0.9
            assert cand.sequence_logprob == pytest.approx(float(gen_lp.sum()), abs=1e-4)
            if cand.answer is None:
                continue
            step = logp[len(prompt_ids) - 1 + cand.answer_token]
            assert cand.full_vocab_prob == pytest.approx(float(step[body[cand.answer_token]].exp()), abs=1e-5)
            if cand.rule == "option_text":
                alt = [tok.convert_tokens_to_ids(c) for c in item.choices]
                checked["option_text"] += 1
            else:
                alt = letters
                checked["letter_rule"] += 1
            assert cand.label_logits is not None
            expected_label = step[alt].softmax(-1)
            assert torch.tensor(cand.label_logits).softmax(-1).tolist() == pytest.approx(expected_label.tolist(),
                                                                                          abs=1e-5)
            expected = {"letter": float(expected_label[cand.answer]), "full_vocab": cand.full_vocab_prob,
                        "sequence": math.exp(cand.sequence_logprob)}[confidence]
            assert cand.confidence == pytest.approx(expected, abs=1e-5) and cand.confidence_source == confidence
    assert checked["letter_rule"] > 0 and checked["option_text"] > 0, checked


def test_same_seed_same_candidates_and_different_seed_different(tiny):
    model, tok = tiny
    config = ConfidenceAtKConfig(k=4, max_new_tokens=4, seed=7)
    a = confidence_at_k(model, tok, _items(3), config)
    b = confidence_at_k(model, tok, _items(3), config)
    c = confidence_at_k(model, tok, _items(3), ConfidenceAtKConfig(k=4, max_new_tokens=4, seed=8))
    texts = [[x.text for x in r.candidates] for r in a]
    assert texts == [[x.text for x in r.candidates] for r in b]
    assert texts != [[x.text for x in r.candidates] for r in c]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    confidence_at_k(model, tok, _items(1), config)
    assert torch.rand(1) == before  # the caller's RNG stream is left alone


def test_unparseable_candidates_are_dropped_and_all_unparseable_gives_a_reason(tiny):
    model, tok = tiny
    items = _items(2)
    out = confidence_at_k(model, tok, items, ConfidenceAtKConfig(k=4, max_new_tokens=3), parser=lambda t, it: None)
    for r in out:
        assert all(c.answer is None and c.confidence is None for c in r.candidates)
        for selector, per_k in r.selections.items():
            for k, sel in per_k.items():
                assert sel.answer is None and sel.confidence == 0.0 and "be parsed" in sel.reason
        res = r.to_item_result()
        assert res.prediction is None and res.correct is False and res.option_probs == [0.25] * 4
    # Only the second sample parses: every selector must pick it, whatever its confidence.
    calls = {"n": 0}

    def second_only(text, item):
        calls["n"] += 1
        return ParsedAnswer(1, "custom", 0, len(text)) if calls["n"] % 5 == 2 else None

    r = confidence_at_k(model, tok, items[:1], ConfidenceAtKConfig(k=4, max_new_tokens=3), parser=second_only)[0]
    assert [c.answer for c in r.candidates] == [None, 1, None, None]
    assert r.selections["confidence"][4].candidate == 1 and r.selections["majority"][4].answer == 1
    assert r.selections["confidence"][1].answer is None  # k=1 is the prefix holding only the first sample
    assert r.candidates[1].confidence_source == "full_vocab_fallback"  # no consistent label alternatives


def test_raw_prompts_with_a_user_parser(tiny):
    model, tok = tiny

    def first_word(text, item):
        assert item is None
        return ParsedAnswer(text.split()[0], "first_word", 0, len(text.split()[0])) if text.strip() else None

    out = confidence_at_k(model, tok, ["w1 w2 w3", "w4 w5"], ConfidenceAtKConfig(k=3, max_new_tokens=3,
                                                                                 confidence="full_vocab"),
                          parser=first_word, golds=["w1", "w2"])
    for r in out:
        parsed = [c for c in r.candidates if c.answer is not None]
        assert all(c.answer == c.text.split()[0] and c.answer_token == 0 for c in parsed)
        sel = r.selections["confidence"][3]
        if parsed:
            assert sel.confidence == max(c.confidence for c in parsed)
    with pytest.raises(ValueError, match="parser"):
        confidence_at_k(model, tok, ["w1"], ConfidenceAtKConfig(k=2, confidence="full_vocab"))
    with pytest.raises(ValueError, match="confidence='letter' needs MCQA items"):
        confidence_at_k(model, tok, ["w1"], ConfidenceAtKConfig(k=2), parser=first_word)


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "`k` must be an integer >= 1"), ({"k": 4, "ks": (2, 8)}, "`ks` must be values in"),
    ({"temperature": 0.0}, "`temperature` must be > 0"), ({"top_p": 0.0}, "`top_p`"),
    ({"confidence": "max"}, "`confidence` must be one of"), ({"max_new_tokens": 0}, "`max_new_tokens`"),
    ({"batch_size": 0}, "`batch_size`"),
])
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConfidenceAtKConfig(**kwargs)


def test_config_fields_all_have_help_and_ks_default_to_powers_of_two():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(ConfidenceAtKConfig))
    assert ConfidenceAtKConfig(k=16).ks == (1, 2, 4, 8, 16) and ConfidenceAtKConfig(k=6).ks == (1, 2, 4, 6)


def test_nan_logits_raise_a_clear_error():
    model, tok = make_model(vocab_size=len(MCQA_VOCAB)), make_tokenizer(MCQA_VOCAB)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN/inf logits"):
        confidence_at_k(model, tok, _items(1), ConfidenceAtKConfig(k=2, max_new_tokens=2))


def test_calibrator_rescales_letter_confidences_and_is_fitted_on_labelled_candidates(tiny):
    model, tok = tiny
    config = ConfidenceAtKConfig(k=8, max_new_tokens=4, greedy=False)
    plain = confidence_at_k(model, tok, _items(6), config)
    cal = fit_calibrator(plain)
    assert cal.n_fit == sum(c.label_logits is not None for r in plain for c in r.candidates) > 0
    hot = TemperatureCalibrator(temperature=3.0)
    scaled = confidence_at_k(model, tok, _items(6), config, calibrator=hot)
    for r0, r1 in zip(plain, scaled):
        for c0, c1 in zip(r0.candidates, r1.candidates):
            assert c0.text == c1.text  # same samples
            if c1.confidence_source == "letter":
                expected = torch.tensor(c1.label_logits, dtype=torch.float64).div(3.0).softmax(-1)[c1.answer]
                assert c1.confidence == pytest.approx(float(expected)) and c1.confidence != c0.confidence
    with pytest.raises(ValueError, match="only applies to confidence='letter'"):
        confidence_at_k(model, tok, _items(1), ConfidenceAtKConfig(k=2, confidence="sequence"), calibrator=hot)


def test_accuracy_vs_k_matches_a_hand_count(tiny):
    model, tok = tiny
    out = confidence_at_k(model, tok, _items(6), ConfidenceAtKConfig(k=4, max_new_tokens=4))
    curves = accuracy_vs_k(out, n_bins=10)
    assert set(curves) == {"greedy", "majority", "best_logprob", "confidence"}
    for k in (1, 2, 4):
        hand = np.mean([select_majority([c.answer for c in r.candidates[:k]])[0] == r.gold for r in out])
        assert curves["majority"][str(k)]["accuracy"] == pytest.approx(hand)
    # the ItemResults written by the CLI give the same curves
    assert accuracy_vs_k([r.to_item_result() for r in out], n_bins=10) == curves


# ----------------------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-cak-model")
    make_model(vocab_size=len(MCQA_VOCAB), seed=3).save_pretrained(path)
    make_tokenizer(MCQA_VOCAB).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cak-data") / "mmlu.jsonl"
    rows = [{"question": f"w{i} w{i + 1}", "choices": [f"w{i}", f"w{i + 2}", f"w{i + 3}", f"w{i + 4}"],
             "answer": i % 4, "subject": "toy"} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_catto_eval_confidence_at_k_end_to_end_and_resume(tmp_path, model_dir, data_file, capsys, monkeypatch):
    out = tmp_path / "cak"
    argv = ["eval", "--method", "confidence_at_k", "--model", model_dir, "--data", f"mmlu:{data_file}",
            "--k", "1,2,4", "--max-new-tokens", "4", "--temperature", "0.8", "--eval-batch-size", "3",
            "--out", str(out), "--bootstrap", "20", "--no-progress", "--n-bins", "10",
            "--calibrate-on", f"mmlu:{data_file}", "--calibrate-limit", "4"]
    assert main(argv) == 0
    assert "| confidence |" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    (name,) = metrics["datasets"]
    entry = metrics["datasets"][name]
    assert metrics["method"] == "confidence_at_k" and metrics["method_config"]["ks"] == [1, 2, 4]
    assert metrics["method_config"]["temperature"] == 0.8 and entry["evaluator"]["calibrator"]["temperature"] > 0
    assert metrics["fit"]["data"] == f"mmlu:{data_file}" and metrics["fit"]["limit"] == 4
    own = entry["method_metrics"]
    assert "prefixes" in own["k_prefixes"] and "raw logits" in own["confidence_from"]
    curves = own["accuracy_vs_k"]
    assert set(curves) == {"greedy", "majority", "best_logprob", "confidence"}
    assert all(set(d) == {"1", "2", "4"} for d in curves.values())
    assert all(0 <= v["ece"] <= 1 and v["n"] == 10 for d in curves.values() for v in d.values())
    results = ResultsFile(out / name / "results.jsonl").results
    assert len(results) == 10
    acc = np.mean([r.correct for r in results.values()])
    assert curves["confidence"]["4"]["accuracy"] == pytest.approx(acc)
    assert entry["metrics"]["accuracy"]["value"] == pytest.approx(acc)
    assert (out / name / "accuracy_vs_k.png").stat().st_size > 0
    # A second run finds every item done (generation only for the 4 calibration items) and reproduces the numbers.
    import catto.methods.confidence_at_k as cak

    calls = []
    real = cak.confidence_at_k
    monkeypatch.setattr(cak, "confidence_at_k", lambda m, t, items, *a, **k: calls.append(len(items)) or
                        real(m, t, items, *a, **k))
    before = (out / name / "results.jsonl").read_text()
    assert main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())["datasets"][name]
    assert calls == [4, 0] and again["method_metrics"]["accuracy_vs_k"] == curves
    assert (out / name / "results.jsonl").read_text() == before
    # A larger k would mix new samples with old ones: refused, naming what differs.
    assert main([*argv[:7], "--k", "1,2,8", *argv[9:]]) == 2
    err = capsys.readouterr().err
    assert "other config" in err and "--overwrite_output_dir" in err
    assert (out / name / "results.jsonl").read_text() == before


def test_catto_eval_rejects_bad_k(tmp_path, model_dir, data_file, capsys):
    assert main(["eval", "--method", "confidence_at_k", "--model", model_dir, "--data", f"mmlu:{data_file}",
                 "--k", "0,2", "--out", str(tmp_path)]) == 2
    assert "values must be integers >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# options format: the options listed without letters, answered with an option's text


def test_options_prompt_lists_the_options_and_answers_parse_as_option_text_only(tiny):
    from catto.data import OptionsFormat

    model, tok = tiny
    items = _items(6)
    config = ConfidenceAtKConfig(k=8, batch_size=3, max_new_tokens=5, prompt_format="options")
    assert mcqa_prompt(tok, items[0], config) == OptionsFormat().context(items[0])
    assert "A." not in mcqa_prompt(tok, items[0], config)
    out = confidence_at_k(model, tok, items, config)
    mapped = 0
    for r, item in zip(out, items):
        prompt_ids = tok(mcqa_prompt(tok, item, config))["input_ids"]
        for cand in r.candidates:
            if cand.answer is None:  # no option's text in it, whatever letters it holds
                assert not any(choice in cand.text.split() for choice in item.choices)
                continue
            mapped += 1
            assert cand.rule == "option_text" and item.choices[cand.answer] in cand.text.split()
            with torch.no_grad():
                logp = model(torch.tensor([prompt_ids + cand.token_ids])).logits[0].float().log_softmax(-1)
            step = logp[len(prompt_ids) - 1 + cand.answer_token]
            alt = [tok.convert_tokens_to_ids(c) for c in item.choices]  # the options' first tokens
            assert cand.confidence == pytest.approx(float(step[alt].softmax(-1)[cand.answer]), abs=1e-5)
    assert mapped > 0
    with pytest.raises(ValueError, match="prompt_format"):
        ConfidenceAtKConfig(prompt_format="cloze")
