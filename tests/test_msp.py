"""MSP evaluator and the abstention math: hand cases, both confidence modes on a tiny model, save/reload, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from posthoc_common import (
    save_tiny_model,
    tiny_model_and_tokenizer,
    toy_items,
    write_dataset,
)

from catto.cli import main
from catto.eval.metrics import auroc
from catto.methods import load_evaluator
from catto.methods.abstention import (
    NEVER_ABSTAIN,
    abstention_rate,
    abstention_score,
    abstention_summary,
    mann_whitney_u_test,
    select_threshold,
    threshold_grid,
)
from catto.methods.msp import MSPConfig, MSPEvaluator


def test_scores_by_hand():
    conf = [0.9, 0.7, 0.6, 0.4, 0.2]
    correct = [True, False, True, False, False]
    assert abstention_score(conf, correct, NEVER_ABSTAIN, 1) == pytest.approx((2 - 3) / 5 * 100)
    assert abstention_score(conf, correct, NEVER_ABSTAIN, 2) == pytest.approx((2 - 6) / 5 * 100)
    assert abstention_score(conf, correct, 0.5, 1) == pytest.approx((2 - 1) / 5 * 100)  # answers 0.9, 0.7, 0.6
    assert abstention_score(conf, correct, 0.8, 2) == pytest.approx(1 / 5 * 100)
    assert abstention_rate(conf, 0.5) == pytest.approx(40.0)
    # balanced: answering the top three (+1) ties answering only the top one (+1); the grid's first (lowest) wins
    choice = select_threshold([(conf, correct)], penalty=1)
    assert choice.score == pytest.approx(20.0) and 0.4 < choice.threshold <= 0.6
    choice = select_threshold([(conf, correct)], penalty=2)
    assert choice.score == pytest.approx(20.0) and 0.7 < choice.threshold <= 0.9


def test_never_abstain_wins_ties_and_all_correct_keeps_everything():
    conf, correct = [0.3, 0.5], [True, True]
    choice = select_threshold([(conf, correct)], penalty=2)
    assert choice.threshold == NEVER_ABSTAIN and choice.score == 100.0


def test_grid_follows_the_paper():
    g = threshold_grid(np.array([0.1, 0.5]))
    assert g.size == 201 and g[0] < 0 and g[-1] == 0.5
    g = threshold_grid(np.array([0.1, 0.995]))
    assert g.size == 301 and g[-1] == 1.0 and (g[-100:] >= 0.99).all()


def test_shared_threshold_maximises_the_dataset_average():
    a = ([0.9, 0.2], [True, False])  # wants a threshold in (0.2, 0.9]
    b = ([0.8, 0.6, 0.3], [True, True, False])  # wants one in (0.3, 0.6]
    choice = select_threshold([a, b], penalty=1)
    assert 0.3 < choice.threshold <= 0.6 and choice.score == pytest.approx((50 + 200 / 3) / 2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in length"):
        abstention_score([0.5], [True, False], 0.1)
    with pytest.raises(ValueError, match="penalty"):
        abstention_score([0.5], [True], 0.1, penalty=-1)
    with pytest.raises(ValueError, match="mode"):
        MSPConfig(mode="vibes")
    with pytest.raises(ValueError, match="scoring='letter'"):
        MSPConfig(mode="letters", scoring="cloze")


def test_mann_whitney_u_is_auroc_times_pairs():
    rng = np.random.default_rng(0)
    conf = rng.random(50).round(1)
    correct = rng.random(50) < conf
    out = mann_whitney_u_test(conf, correct)
    assert out["u"] == pytest.approx(auroc(conf, correct) * correct.sum() * (~correct).sum())
    assert 0 <= out["p_value"] <= 1
    assert mann_whitney_u_test([0.1, 0.2], [True, True])["p_value"] is None


@pytest.mark.parametrize("mode", ["letters", "generate"])
def test_fit_evaluate_save_reload_identical(tmp_path, mode):
    model, tok = tiny_model_and_tokenizer()
    items = toy_items(20)
    msp = MSPEvaluator(mode=mode, max_new_tokens=4, bootstrap=20).fit(model, tok, items[:8])
    assert set(msp.thresholds) == {"balanced", "conservative"} and msp.n_fit == 8
    results = msp.evaluate(model, tok, items[8:])
    assert all(r.extra["msp_mode"] == mode and r.abstain == (r.confidence < msp.thresholds["balanced"])
               for r in results)
    for r in results:
        assert 0.0 <= r.confidence <= 1.0 and abs(sum(r.option_probs) - 1) < 1e-6
        if r.prediction is None:  # unparseable: wrong with MSP 0
            assert r.confidence == 0.0 and r.correct is False
    msp.save(tmp_path / "msp")
    loaded = load_evaluator(tmp_path / "msp")
    assert loaded.thresholds == msp.thresholds and loaded.config == msp.config
    assert [r.to_json() for r in loaded.evaluate(model, tok, items[8:])] == [r.to_json() for r in results]
    summary = msp.summarize(results)
    assert set(summary["abstention"]) == {"balanced", "conservative"}
    bal = summary["abstention"]["balanced"]
    conf = [r.confidence for r in results]
    ok = [r.prediction is not None and bool(r.correct) for r in results]
    assert bal["score_base"] == pytest.approx(abstention_score(conf, ok, NEVER_ABSTAIN, 1))
    assert bal == abstention_summary(conf, ok, msp.thresholds["balanced"], 1) | {
        "train_score": msp.train_scores["balanced"], "n_fit": 8}


def test_generate_mode_reads_the_answer_tokens_probability(monkeypatch):
    """A parsed answer's confidence is the max softmax at the step that emitted it (greedy: that token's prob)."""
    import torch

    model, tok = tiny_model_and_tokenizer()
    item = toy_items(1)[0]
    config = MSPConfig(mode="generate", max_new_tokens=3)
    forced = [tok.convert_tokens_to_ids(t) for t in ("w1", "C", ".")]

    class Forced(torch.nn.Module):  # emits "w1 C ." with known distributions
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.config = model.config

        def generate(self, input_ids, attention_mask, **kw):
            logits = []
            for step, t in enumerate(forced):
                row = torch.full((input_ids.shape[0], model.config.vocab_size), -5.0)
                row[:, t] = 1.0 + step
                logits.append(row)
            seq = torch.cat([input_ids, torch.tensor([forced] * input_ids.shape[0])], 1)
            return type("G", (), {"sequences": seq, "logits": tuple(logits)})()

    from catto.methods.msp import generate_msp

    (r,) = generate_msp(Forced(), tok, [item], config)
    expected = torch.full((model.config.vocab_size,), -5.0)
    expected[forced[1]] = 2.0
    assert r.prediction == 2 and r.extra["generation"] == "w1 C ." and r.extra["answer_step"] == 1
    assert r.confidence == pytest.approx(float(expected.softmax(-1).max()))


def test_catto_eval_method_msp_fit_first(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    spec = write_dataset(tmp_path / "a.jsonl", 30)
    out = tmp_path / "out"
    assert main(["eval", "--method", "msp", "--model", model_dir, "--data", spec, "--fit-first", "20",
                 "--out", str(out), "--bootstrap", "20", "--no-plots", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (ds,) = metrics["datasets"].values()
    assert ds["n_items"] == 10 and len(ds["fit_ids"]) == 20
    mm = ds["method_metrics"]
    assert mm["mode"] == "letters" and {"balanced", "conservative"} <= set(mm["abstention"])
    assert "p_value" in mm["mann_whitney"]
