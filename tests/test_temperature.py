"""Temperature scaling: recovers a planted T, never worsens the fit NLL, round-trips through save/load, CLI."""

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
from catto.data import MCQAItem
from catto.eval.results import ItemResult
from catto.methods import load_evaluator
from catto.methods.temperature import (
    T_RANGE,
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


def _by_hand(option_probs, temperature):
    """softmax(log p / T) over each item's options, in numpy (independent of catto.methods.temperature)."""
    out = []
    for p in option_probs:
        z = np.log(np.asarray(p, dtype=np.float64) / np.sum(p)) / temperature
        e = np.exp(z - z.max())
        out.append((e / e.sum()).tolist())
    return out


def _planted_results(n, sharpness, seed):
    """Items whose gold is drawn from softmax(z) while the "scoring layer" reports softmax(sharpness * z): over-
    confident for sharpness > 1, under-confident for sharpness < 1; the calibrating temperature is `sharpness`.
    Option counts are mixed (3 and 4) to go through the padded path."""
    rng = np.random.default_rng(seed)
    items, results = [], {}
    for i in range(n):
        k = 3 if i % 3 == 0 else 4
        z = rng.normal(size=k) * 2.0
        truth = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        gold = int(rng.choice(k, p=truth))
        shown = np.exp(sharpness * (z - z.max()))
        shown /= shown.sum()
        item = MCQAItem(f"p{seed}-{i}", "w1 w2", tuple(f"w{j + 3}" for j in range(k)), gold=gold)
        pred = int(shown.argmax())
        items.append(item)
        results[item.id] = ItemResult(item.id, shown.tolist(), pred, float(shown[pred]), gold, pred == gold)
    return items, results


@pytest.mark.parametrize("sharpness", [3.0, 0.4])
def test_planted_miscalibration_gives_t_on_the_right_side_of_one_and_softmax_of_log_p_over_t(monkeypatch,
                                                                                              sharpness):
    """Over-confident scores (sharpness 3) must be softened (T > 1), under-confident ones (0.4) sharpened (T < 1),
    and `evaluate` must return softmax(log p / T) of the scoring layer's probabilities, recomputed here by hand."""
    fit_items, fit_results = _planted_results(1500, sharpness, seed=11)
    test_items, test_results = _planted_results(40, sharpness, seed=12)
    planted = {**fit_results, **test_results}
    monkeypatch.setattr(TemperatureConfig, "score", lambda self, model, tok, items, **kw: [planted[it.id]
                                                                                          for it in items])
    ts = TemperatureScaling().fit(None, None, fit_items)
    if sharpness > 1:
        assert ts.temperature > 1.5
    else:
        assert ts.temperature < 0.7
    assert ts.temperature == pytest.approx(sharpness, rel=0.15)  # it recovers the planted miscalibration
    out = ts.evaluate(None, None, test_items)
    expected = _by_hand([test_results[it.id].option_probs for it in test_items], ts.temperature)
    moved = []
    for r, it, want in zip(out, test_items, expected):
        raw = test_results[it.id]
        assert len(r.option_probs) == len(raw.option_probs)
        assert r.option_probs == pytest.approx(want, abs=1e-6)
        assert r.prediction == raw.prediction and r.confidence == pytest.approx(want[raw.prediction], abs=1e-6)
        assert r.extra["uncalibrated_probs"] == raw.option_probs
        moved.append(max(abs(a - b) for a, b in zip(want, raw.option_probs)))
    assert np.median(moved) > 0.02  # T really moves them: a T-free apply_temperature cannot pass the check above
    # the held-out NLL improves over the uncalibrated probabilities (the point of fitting T)
    nll = lambda rs: -np.mean([np.log(r.option_probs[it.gold]) for r, it in zip(rs, test_items)])  # noqa: E731
    assert nll(out) < nll([test_results[it.id] for it in test_items])


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_fit_evaluate_save_reload_identical(tmp_path, scoring):
    model, tok = tiny_model_and_tokenizer()
    items = toy_items(24)
    ts = TemperatureScaling(scoring=scoring, batch_size=8).fit(model, tok, items[:12])
    assert ts.fit_nll["fitted"] <= ts.fit_nll["t1"] + 1e-12 and ts.temperature > 0
    before = ts.evaluate(model, tok, items[12:])
    raw = ts.config.score(model, tok, items[12:])
    assert [r.prediction for r in before] == [r.prediction for r in raw]  # temperature never changes the argmax
    # The evaluated probabilities are softmax(log p / T) of the scoring layer's, with the fitted T (a random model
    # carries no signal about the labels, so T is far from 1 here: the check below tells T from no T).
    assert abs(np.log(ts.temperature)) > 0.5
    expected = _by_hand([r.option_probs for r in raw], ts.temperature)
    for r, want, r0 in zip(before, expected, raw):
        assert r.option_probs == pytest.approx(want, abs=1e-6)
        assert r.confidence == pytest.approx(want[r.prediction], abs=1e-6)
        assert max(abs(a - b) for a, b in zip(want, r0.option_probs)) > 1e-3  # differs from the uncalibrated
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


# ----------------------------------------------------------------------------------------------------------------
# one fit for both callers (temperature scaling and Confidence@k), one search range, a warning at its bounds


def _bound_warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "fit_temperature" in line and "bound" in line]


def test_one_search_range_for_both_callers():
    import inspect

    import catto.methods.confidence_at_k as cak

    assert T_RANGE == (0.01, 100.0)
    assert inspect.signature(fit_temperature).parameters["t_range"].default == T_RANGE
    assert cak.fit_temperature is fit_temperature  # Confidence@k has no temperature fit of its own
    assert not hasattr(cak, "T_RANGE")


def test_warns_when_the_fit_ends_on_the_upper_bound(capsys):
    # Every item has the same logits while the labels are spread evenly: the logits say nothing about the labels.
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]] * 40, dtype=torch.float64)
    labels = torch.arange(40) % 4
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(T_RANGE[1], rel=1e-6)
    (line,) = _bound_warnings(capsys)
    assert "T = 100" in line and "upper bound 100" in line and "nearly uniform" in line and "near chance" in line


def test_warns_when_labels_are_independent_of_the_logits(capsys):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g, dtype=torch.float64) * 3
    labels = torch.tensor([(int(row.argmax()) + 1 + i % 3) % 4 for i, row in enumerate(logits)])  # never the argmax
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(T_RANGE[1], rel=1e-6)
    assert len(_bound_warnings(capsys)) == 1


def test_warns_when_the_fit_ends_on_the_lower_bound(capsys):
    logits = torch.tensor([[1.0, 0.0, -1.0]] * 10, dtype=torch.float64)
    t = fit_temperature(logits, torch.zeros(10, dtype=torch.long))  # every item right: NLL falls as T shrinks
    assert t == pytest.approx(T_RANGE[0], rel=1e-6)
    (line,) = _bound_warnings(capsys)
    assert "lower bound 0.01" in line and "nearly 0 or 1" in line


def test_no_warning_for_an_ordinary_fit(capsys):
    logits, labels = _sample(2.0, n=500)
    assert 1.5 < fit_temperature(logits, labels) < 2.7
    assert not _bound_warnings(capsys)


def _ragged_data(n=300, t_true=1.8, seed=5):
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for i in range(n):
        k = 3 + i % 3  # three, four and five options mixed
        row = torch.randn(k, generator=g, dtype=torch.float64) * 3
        rows.append(row.tolist())
        labels.append(int(torch.multinomial((row / t_true).softmax(-1), 1, generator=g)))
    return rows, labels


def _scipy_temperature(rows, labels) -> float:
    """An independent fit: scipy's bounded scalar minimisation of the mean NLL over log T in the same range."""
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    arrays = [np.asarray(r) for r in rows]

    def nll(log_t):
        t = np.exp(log_t)
        return float(np.mean([logsumexp(a / t) - a[y] / t for a, y in zip(arrays, labels)]))

    res = minimize_scalar(nll, bounds=(np.log(T_RANGE[0]), np.log(T_RANGE[1])), method="bounded",
                          options={"xatol": 1e-10})
    return float(np.exp(res.x))


def test_both_callers_match_an_independent_fit(monkeypatch, capsys):
    from catto.data import MCQAItem
    from catto.methods.confidence_at_k import Candidate, QuestionResult, fit_calibrator

    rows, labels = _ragged_data()
    reference = _scipy_temperature(rows, labels)
    assert 1.2 < reference < 2.5
    # temperature scaling: the scoring layer's option probabilities of labelled items
    items = [MCQAItem(f"q{i}", "w1 w2", tuple(f"w{j + 3}" for j in range(len(r))), gold=y)
             for i, (r, y) in enumerate(zip(rows, labels))]
    scored = []
    for item, r in zip(items, rows):
        p = torch.tensor(r, dtype=torch.float64).softmax(-1)
        pred = int(p.argmax())
        scored.append(ItemResult(item.id, p.tolist(), pred, float(p[pred]), item.gold, pred == item.gold))
    ts = TemperatureScaling()
    monkeypatch.setattr(ts.config, "score", lambda *args, **kwargs: scored)
    t_scaling = ts.fit(None, None, items).temperature
    # Confidence@k: the answer-step label logits of each question's candidates
    results = [QuestionResult(f"q{i}", y, [Candidate("x", int(torch.tensor(r).argmax()), "letter", 0, None, None,
                                                     None, r, 0.0, 1)], None, {})
               for i, (r, y) in enumerate(zip(rows, labels))]
    calibrator = fit_calibrator(results)
    assert calibrator.n_fit == len(rows)
    assert t_scaling == pytest.approx(reference, abs=1e-3)
    assert calibrator.temperature == pytest.approx(reference, abs=1e-3)
    assert not _bound_warnings(capsys)


def test_confidence_at_k_fit_at_the_bound_says_so(capsys):
    """The case that went unnoticed: a Confidence@k fold whose label logits carry no signal ends on T = 100."""
    from catto.methods.confidence_at_k import Candidate, QuestionResult, fit_calibrator

    results = [QuestionResult(f"q{i}", i % 4, [Candidate("x", 0, "letter", 0, None, None, None,
                                                         [2.0, 0.5, 0.0, -1.0], 0.0, 1)], None, {})
               for i in range(20)]
    assert fit_calibrator(results).temperature == pytest.approx(100.0, rel=1e-6)
    (line,) = _bound_warnings(capsys)
    assert "upper bound 100" in line
