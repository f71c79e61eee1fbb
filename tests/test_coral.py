"""CORAL: the probe finds a planted direction (and steering then lowers held-out ECE), claims nothing on noise,
round-trips through save/load on a tiny model, caches activations, and transfers via `catto eval --fit-data`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from posthoc_common import (
    save_tiny_model,
    tiny_model_and_tokenizer,
    toy_items,
    write_dataset,
)

from catto.cli import main
from catto.eval.metrics import ece
from catto.methods import load_evaluator
from catto.methods.coral import (
    ActivationCache,
    CoralConfig,
    CoralEvaluator,
    default_layers,
    option_features,
    r_squared,
    select_probe,
    steer,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny MLPs train much faster on one thread, above all on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(hidden_sizes=[32, 16], weight_decays=[0.0, 1.0], output_penalties=[0.0, 0.1], epochs=40, lr=3e-3,
             probe_batch_size=128)


def _synthetic(n, signal, overconfident, seed, d=16, k=4):
    """Per question: option probabilities p (over-confident or calibrated), a gold drawn from the true distribution,
    and (K, d) activations per layer; layer 2 carries `signal` * y_k along a planted direction, layer 1 is noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=torch.Generator().manual_seed(123))
    u /= u.norm()
    probs, golds, acts = [], [], {1: [], 2: []}
    for _ in range(n):
        z = torch.randn(k, generator=g) * 1.5
        gold = int(torch.multinomial(z.softmax(-1), 1, generator=g))
        probs.append((z * (3.0 if overconfident else 1.0)).softmax(-1))
        golds.append(gold)
        y = torch.nn.functional.one_hot(torch.tensor(gold), k).float()
        acts[1].append(torch.randn(k, d, generator=g))
        acts[2].append(torch.randn(k, d, generator=g) + signal * y[:, None] * u[None, :] * 3.0)
    return acts, probs, golds


def _ece_of(probs, golds):
    conf = [float(p.max()) for p in probs]
    correct = [int(p.argmax()) == g for p, g in zip(probs, golds)]
    return ece(conf, correct, n_bins=15)


def _steered(selection, acts, probs, gamma):
    out = []
    with torch.no_grad():
        for a, p in zip(acts[selection.layer], probs):
            r = selection.probe((option_features(a, p) - selection.mean) / selection.std)
            out.append(steer(p, r, gamma))
    return out


def test_probe_recovers_a_planted_direction_and_steering_lowers_held_out_ece():
    config = CoralConfig(**SMALL, seed=0)
    acts, probs, golds = _synthetic(500, signal=1.0, overconfident=True, seed=0)
    sel = select_probe(acts, probs, golds, config)
    assert sel.layer == 2 and sel.val_r2 > 0.3  # the layer with the direction wins
    assert max(g["val_r2"] for g in sel.grid if g["layer"] == 1) < sel.val_r2
    test_acts, test_probs, test_golds = _synthetic(400, signal=1.0, overconfident=True, seed=1)
    steered = _steered(sel, test_acts, test_probs, 1.0)
    before, after = _ece_of(test_probs, test_golds), _ece_of(steered, test_golds)
    assert after < 0.5 * before, (before, after)
    acc = np.mean([int(p.argmax()) == g for p, g in zip(steered, test_golds)])
    assert acc > np.mean([int(p.argmax()) == g for p, g in zip(test_probs, test_golds)])


def test_noise_claims_no_improvement():
    """Calibrated p and activations without signal: no probe beats predicting zero, so steering is switched off."""
    config = CoralConfig(**SMALL, seed=0)
    acts, probs, golds = _synthetic(300, signal=0.0, overconfident=False, seed=2)
    sel = select_probe(acts, probs, golds, config)
    assert sel.val_r2 <= 0.02, sel.val_r2


def test_noise_switches_steering_off_in_the_evaluator(monkeypatch):
    import catto.methods.coral as coral

    acts, probs, golds = _synthetic(200, signal=0.0, overconfident=False, seed=3)
    ev = CoralEvaluator(**SMALL, layers=[1, 2])
    sel = select_probe(acts, probs, golds, ev.config)
    monkeypatch.setattr(coral, "select_probe", lambda *a, **k: sel)
    monkeypatch.setattr(ev.config.__class__, "score", lambda self, m, t, items, **kwargs: [
        type("R", (), {"option_probs": p.tolist()})() for p in probs])
    monkeypatch.setattr(ev, "_activations", lambda *a: acts)
    items = [toy_items(1)[0].__class__(f"q{i}", "w1", ("w1", "w2", "w3", "w4"), gold=g) for i, g in enumerate(golds)]
    ev.fit(None, None, items)
    assert ev.gamma == 0.0 and ev.selection["steering"].startswith("off")


def test_steer_and_features_by_hand():
    p = torch.tensor([0.6, 0.3, 0.1])
    assert torch.allclose(steer(p, torch.zeros(3), 1.0), p)
    assert torch.allclose(steer(p, torch.tensor([0.5, 0.5, 0.5]), 1.0), p)  # only differences matter
    out = steer(p, torch.tensor([-0.9, 0.0, 0.0]), 1.0)  # clipped at 0, renormalised
    assert out[0] == 0 and torch.isclose(out.sum(), torch.tensor(1.0))
    f = option_features(torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]]), p)
    assert torch.allclose(f[:, :2].mean(0), torch.zeros(2)) and f[:, 2].tolist() == pytest.approx(p.tolist())
    assert f[:, 3].tolist() == [0.0, 0.5, 1.0]
    assert r_squared(torch.zeros(4), torch.tensor([1.0, -1.0, 1.0, -1.0])) == 0.0
    assert default_layers(30) == [7, 11, 14, 18, 22] and default_layers(2) == [1]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="val_fraction"):
        CoralConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="weight_decays"):
        CoralConfig(weight_decays=[])
    with pytest.raises(ValueError, match="layers"):
        CoralConfig(layers=[-1])


@pytest.mark.parametrize("scoring", ["cloze", "letter"])
def test_fit_evaluate_save_reload_identical_and_cached(tmp_path, scoring):
    model, tok = tiny_model_and_tokenizer()
    items = toy_items(24)
    cache = tmp_path / "acts"
    coral = CoralEvaluator(scoring=scoring, **{**SMALL, "epochs": 5}, layers=[1, 2], cache_dir=str(cache))
    coral.fit(model, tok, items[:16])
    assert coral.layer in (1, 2) and len(coral.selection["grid"]) == 2 * 2 * 2
    files = sorted(p.name for p in cache.rglob("*.safetensors"))
    assert files == ["layer_1.safetensors", "layer_2.safetensors"]
    results = coral.evaluate(model, tok, items[16:])
    assert all(abs(sum(r.option_probs) - 1) < 1e-6 and r.confidence == max(r.option_probs) for r in results)
    coral.save(tmp_path / "coral")
    loaded = load_evaluator(tmp_path / "coral")
    assert loaded.layer == coral.layer and loaded.gamma == coral.gamma
    again = loaded.evaluate(model, tok, items[16:])
    assert [r.to_json() for r in again] == [r.to_json() for r in results]

    # the cache answers without the model: a model whose forward fails still gets the same activations
    class Broken(torch.nn.Module):
        config = model.config

        def forward(self, *a, **k):
            raise AssertionError("the cache should have answered")

    cached = ActivationCache(str(cache)).get(Broken(), tok, items[:16], [1, 2], coral.config.scoring_config().cloze_format,
                                             8)
    fresh = ActivationCache(None).get(model, tok, items[:16], [1, 2], coral.config.scoring_config().cloze_format, 8)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached[2], fresh[2]))


def test_fit_is_deterministic_given_the_seed():
    model, tok = tiny_model_and_tokenizer()
    items = toy_items(16)
    runs = [CoralEvaluator(scoring="cloze", **{**SMALL, "epochs": 3}, layers=[1]).fit(model, tok, items)
            for _ in range(2)]
    assert all(torch.equal(runs[0].state_tensors()[k], runs[1].state_tensors()[k]) for k in runs[0].state_tensors())


def test_catto_eval_coral_transfer_with_fit_data(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    fit_spec = write_dataset(tmp_path / "fit.jsonl", 20)
    other = [write_dataset(tmp_path / "b.jsonl", 8, offset=1), write_dataset(tmp_path / "c.jsonl", 8, offset=2)]
    out = tmp_path / "out"
    args = ["eval", "--method", "coral", "--model", model_dir, "--data", other[0], "--data", other[1],
            "--fit-data", fit_spec, "--scoring", "cloze", "--hidden-sizes", "16", "--weight-decays", "0",
            "--output-penalties", "0", "--epochs", "3", "--layers", "1", "2", "--cache-dir", str(tmp_path / "acts"),
            "--out", str(out), "--bootstrap", "10", "--no-plots", "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fit"]["data"] == fit_spec and len(metrics["datasets"]) == 2
    layers = {d["evaluator"]["layer"] for d in metrics["datasets"].values()}
    assert len(layers) == 1 and (out / "evaluator" / "state.safetensors").exists()
