import numpy as np
import pytest

from catto.eval.aggregate import (
    format_table,
    padded_probability_matrix,
    summarize_results,
)
from catto.eval.metrics import brier_score, ece, nll
from catto.eval.results import ItemResult


def _results(n=200, seed=0, ragged=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(3, 6)) if ragged else 4
        probs = rng.dirichlet(np.ones(k) * 0.5)
        gold = int(rng.integers(k))
        pred = int(probs.argmax())
        out.append(ItemResult(id=f"q{i}", option_probs=probs.tolist(), prediction=pred, confidence=float(probs[pred]),
                              gold=gold, correct=pred == gold))
    return out


@pytest.mark.parametrize("ragged", [False, True])
def test_summary_matches_metrics_on_the_same_items(ragged):
    results = _results(ragged=ragged)
    summary = summarize_results(results, n_bins=10, n_resamples=200, seed=1)
    conf = [r.confidence for r in results]
    correct = [r.correct for r in results]
    assert summary["ece"]["value"] == pytest.approx(ece(conf, correct, n_bins=10))
    assert summary["ece"]["n_bins"] == 10 and summary["ece"]["binning"] == "equal_width"
    lo, hi = summary["ece"]["ci"]
    assert lo <= summary["ece"]["value"] <= hi
    # Zero-padding ragged option lists changes neither the multiclass Brier score nor the NLL of an item.
    per_item_brier = np.mean([sum((p - (j == r.gold)) ** 2 for j, p in enumerate(r.option_probs)) for r in results])
    assert summary["brier"]["value"] == pytest.approx(per_item_brier)
    assert summary["brier"]["ci"][0] <= summary["brier"]["value"] <= summary["brier"]["ci"][1]
    assert summary["nll"]["value"] == pytest.approx(-np.mean([np.log(r.option_probs[r.gold]) for r in results]))
    probs, labels = padded_probability_matrix(results)
    assert brier_score(probs, labels) == pytest.approx(per_item_brier) and nll(probs, labels) > 0
    assert summary["n_options"] == ([3, 4, 5] if ragged else [4])
    assert "| data | n |" in format_table({"toy": summary})


def test_summary_refuses_unlabelled():
    r = _results(3)
    unlabelled = [ItemResult(x.id, x.option_probs, x.prediction, x.confidence, None, None) for x in r]
    with pytest.raises(ValueError, match="labelled"):
        summarize_results(unlabelled, n_resamples=0)


def test_unanswered_items_count_as_wrong_at_their_confidence():
    results = _results(100, seed=3)
    # Every third item's generation could not be parsed: no prediction, confidence 0 (the MSP paper's convention).
    mixed = [ItemResult(r.id, r.option_probs, None, 0.0, r.gold, False) if i % 3 == 0 else r
             for i, r in enumerate(results)]
    summary = summarize_results(mixed, n_bins=10, n_resamples=0)
    conf = [r.confidence for r in mixed]
    correct = [r.prediction is not None and r.correct for r in mixed]
    assert summary["n_unanswered"] == 34
    assert summary["accuracy"]["value"] == pytest.approx(np.mean(correct))
    assert summary["ece"]["value"] == pytest.approx(ece(conf, correct, n_bins=10))
    assert summarize_results(results, n_resamples=0)["n_unanswered"] == 0


def test_item_result_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        ItemResult("q", [0.5, float("nan")], 0, 0.5, 0, True)


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from catto.eval.plots import reliability_diagram, risk_coverage_plot

    results = _results()
    conf = [r.confidence for r in results]
    correct = [r.correct for r in results]
    rel = reliability_diagram(conf, correct, tmp_path / "rel.png", n_bins=10, title="toy")
    rc = risk_coverage_plot({"toy": (conf, correct)}, tmp_path / "rc.png")
    for path in (rel, rc):
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0  # a real, non-blank picture
    assert not list(tmp_path.glob("*.tmp.png"))


def test_predictions_that_are_not_the_argmax_are_scored_as_given():
    results = _results(60, seed=4)
    # A sampler picked the second most likely option with its own confidence (as Confidence@k may).
    sampled = []
    for r in results:
        second = int(np.argsort(r.option_probs)[-2])
        sampled.append(ItemResult(r.id, r.option_probs, second, 0.5, r.gold, second == r.gold))
    summary = summarize_results(sampled, n_bins=10, n_resamples=0)
    assert summary["accuracy"]["value"] == pytest.approx(np.mean([r.correct for r in sampled]))
    assert summary["ece"]["value"] == pytest.approx(ece([0.5] * 60, [r.correct for r in sampled], n_bins=10))


def test_a_confidence_other_than_the_max_probability_is_the_one_scored():
    results = _results(60, seed=5)
    verbalised = [ItemResult(r.id, r.option_probs, r.prediction, 0.9, r.gold, r.correct) for r in results]
    summary = summarize_results(verbalised, n_bins=10, n_resamples=0)
    assert summary["ece"]["value"] == pytest.approx(ece([0.9] * 60, [r.correct for r in results], n_bins=10))


@pytest.mark.parametrize("unit", ["items", "tokens"])
def test_reliability_histograms_name_what_they_count(tmp_path, monkeypatch, unit):
    pytest.importorskip("matplotlib")
    from catto.eval import plots

    figures = []

    def keep(fig, plt, path):
        figures.append(fig)
        return str(path)

    monkeypatch.setattr(plots, "_save", keep)
    curves = {"dpo": ([0.9, 0.8, 0.6], [1, 0, 1]), "catto": ([0.7, 0.6, 0.6], [1, 0, 1])}
    plots.reliability_diagrams(curves, tmp_path / "r.png", n_bins=5, unit=unit)
    plots.reliability_diagram(*curves["dpo"], tmp_path / "one.png", n_bins=5, unit=unit)
    labels = [ax.get_ylabel() for fig in figures for ax in fig.axes]
    assert labels.count(unit) == 3 and labels.count("accuracy") == 3  # 2 panels + 1, each with its histogram
