"""Temperature scaling: recovers a planted T, never worsens the fit NLL, round-trips through save/load, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from posthoc_common import (
    save_tiny_model,
    tiny_model_and_tokenizer,
    toy_items,
    write_dataset,
)

from catto.cli import main
from catto.eval.results import ItemResult
from catto.methods import load_evaluator
from catto.methods.temperature import (
    TemperatureConfig,
    TemperatureScaling,
    fit_temperature,
    padded_log_probs,
)


def _sample(t_true, n=3000, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial((logits / t_true).softmax(-1), 1, generator=g)[:, 0]
    return logits, labels


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_recovers_planted_temperature(t_true):
    logits, labels = _sample(t_true)
    assert fit_temperature(logits, labels) == pytest.approx(t_true, rel=0.08)


def test_never_worsens_fit_nll_and_handles_ragged_options():
    logits, labels = _sample(1.7, n=200, k=5, seed=3)
    logits[::3, 4] = -float("inf")  # three- and five-option items mixed
    labels[::3] = labels[::3] % 4
    t = fit_temperature(logits, labels)
    ce = torch.nn.functional.cross_entropy
    assert ce(logits.clamp_min(-1e300) / t, labels) <= ce(logits.clamp_min(-1e300), labels) + 1e-12
    # a single item cannot push T to a degenerate value with a worse NLL than T = 1
    one = fit_temperature(torch.tensor([[2.0, 0.0]]), torch.tensor([1]))
    assert one >= 1.0


def test_padded_log_probs_marks_missing_options():
    rs = [ItemResult("a", [0.5, 0.5], 0, 0.5, 0, True), ItemResult("b", [0.2, 0.3, 0.5], 2, 0.5, 2, True)]
    lp = padded_log_probs(rs)
    assert lp.shape == (2, 3) and lp[0, 2] == -float("inf") and torch.allclose(lp[1].exp().sum(), torch.tensor(1.0,
                                                                                  dtype=torch.float64))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="scoring"):
        TemperatureConfig(scoring="nope")
    with pytest.raises(ValueError, match="max_iter"):
        TemperatureConfig(max_iter=0)
    with pytest.raises(ValueError, match="gold labels"):
        TemperatureScaling().fit(None, None, [toy_items(1)[0].__class__("x", "w1", ("w2", "w3"), gold=None)])


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_fit_evaluate_save_reload_identical(tmp_path, scoring):
    model, tok = tiny_model_and_tokenizer()
    items = toy_items(24)
    ts = TemperatureScaling(scoring=scoring, batch_size=8).fit(model, tok, items[:12])
    assert ts.fit_nll["fitted"] <= ts.fit_nll["t1"] + 1e-12 and ts.temperature > 0
    before = ts.evaluate(model, tok, items[12:])
    raw = ts.config.score(model, tok, items[12:])
    assert [r.prediction for r in before] == [r.prediction for r in raw]  # temperature never changes the argmax
    ts.save(tmp_path / "ts")
    loaded = load_evaluator(tmp_path / "ts")
    assert isinstance(loaded, TemperatureScaling) and loaded.temperature == ts.temperature
    assert [r.to_json() for r in loaded.evaluate(model, tok, items[12:])] == [r.to_json() for r in before]


def test_catto_eval_method_temperature(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    spec = write_dataset(tmp_path / "a.jsonl", 16)
    out = tmp_path / "out"
    assert main(["eval", "--method", "temperature", "--model", model_dir, "--data", spec, "--scoring", "cloze",
                 "--fit-first", "8", "--out", str(out), "--bootstrap", "10", "--no-plots", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (ds,) = metrics["datasets"].values()
    assert ds["n_items"] == 8 and ds["evaluator"]["config"]["scoring"] == "cloze"
    assert ds["evaluator"]["temperature"] > 0 and ds["metrics"]["n"] == 8
