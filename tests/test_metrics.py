"""catto.eval.metrics: hand-computed cases, cross-checks against torchmetrics / scikit-learn, bootstrap, bad inputs."""

import doctest
import functools
import json
import math
import warnings

import numpy as np
import pytest
import torch

import catto.eval.metrics as M
from catto.eval.metrics import (
    UndefinedMetricWarning,
    aurc,
    auroc,
    bin_edges,
    bootstrap_ci,
    brier_score,
    calibration_summary,
    classwise_ece,
    ece,
    mce,
    nll,
    reliability_bins,
    risk_coverage_curve,
    selective_accuracy,
    top_label_brier_score,
    unweighted_binned_calibration_error,
)


# The cross-checks against scikit-learn and torchmetrics need them (the `test` extra); only those tests skip without
# them, never the hand-computed cases.
@pytest.fixture
def sk_metrics():
    return pytest.importorskip("sklearn.metrics")


@pytest.fixture
def tm_cls():
    return pytest.importorskip("torchmetrics.functional.classification")


def _toy_binary(n=2000, seed=0):
    """Confidences strictly inside (0, 1) (no exact bin edges, no 1.0) and correctness drawn from a miscalibration."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.05, 0.999, size=n)
    correct = rng.random(n) < conf**2
    return conf, correct


def _toy_probs(n=1500, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2.0
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=1)
    # Labels agree with the argmax 60% of the time, so the model is over-confident in places.
    labels = np.where(rng.random(n) < 0.6, probs.argmax(1).numpy(), rng.integers(0, k, size=n))
    return probs, labels


def _float64_rows(probs):
    """float64 rows that sum to 1 at float64 precision (sklearn warns about float32 rounding otherwise)."""
    p = probs.double().numpy()
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------------
# hand-computed cases


def test_docstring_examples_run():
    result = doctest.testmod(M, verbose=False)
    assert result.attempted >= 15 and result.failed == 0


@pytest.mark.parametrize(
    "n_bins, binning, expected_edges",
    [
        (4, "equal_width", [0.0, 0.25, 0.5, 0.75, 1.0]),
        (2, "equal_mass", [0.0, 0.5, 1.0]),  # median of [0.2, 0.4, 0.6, 0.8]
        (4, "equal_mass", [0.0, 0.35, 0.5, 0.65, 1.0]),  # linear-interpolated quartiles, outer edges pinned
    ],
)
def test_bin_edges(n_bins, binning, expected_edges):
    assert bin_edges([0.2, 0.4, 0.6, 0.8], n_bins, binning) == pytest.approx(expected_edges)


def test_bin_membership_conventions():
    # [lo, hi) bins: 0.5 sits on the edge and goes up; 1.0 goes in the closed last bin; 0.0 in the first.
    rb = reliability_bins([0.0, 0.5, 1.0], [0, 1, 1], n_bins=2)
    assert rb.count.tolist() == [1, 2] and rb.n_excluded == 0
    # right_edge="open" (the MSP paper's code): 1.0 falls in no bin.
    rb = reliability_bins([0.0, 0.5, 1.0], [0, 1, 1], n_bins=2, right_edge="open")
    assert rb.count.tolist() == [1, 1] and rb.n_excluded == 1


def test_equal_mass_ties_share_a_bin_and_duplicate_edges_leave_empty_bins():
    conf = [0.3] * 7 + [0.9]
    rb = reliability_bins(conf, [1] * 8, n_bins=4, binning="equal_mass")
    # Quantiles 0.25/0.5/0.75 all equal 0.3: [0, .3) and the two [.3, .3) bins are empty, all 8 items in [.3, 1].
    assert rb.edges.tolist() == pytest.approx([0.0, 0.3, 0.3, 0.3, 1.0])
    assert rb.count.tolist() == [0, 0, 0, 8]
    assert np.isnan(rb.accuracy[:3]).all()


def test_equal_mass_bins_hold_equal_counts_on_continuous_data():
    conf, correct = _toy_binary(1000)
    assert reliability_bins(conf, correct, n_bins=10, binning="equal_mass").count.tolist() == [100] * 10


@pytest.mark.parametrize(
    "norm, expected",
    [
        # bins: {0.9, 0.9} acc 0.5 gap 0.4; {0.62, 0.68} acc 1.0 conf 0.65 gap 0.35; {0.1} acc 0 gap 0.1
        ("l1", (2 * 0.4 + 2 * 0.35 + 1 * 0.1) / 5),
        ("l2", math.sqrt((2 * 0.16 + 2 * 0.35**2 + 0.01) / 5)),
        ("max", 0.4),
    ],
)
def test_ece_hand_computed(norm, expected):
    conf, correct = [0.9, 0.9, 0.62, 0.68, 0.1], [1, 0, 1, 1, 0]
    assert ece(conf, correct, n_bins=10, norm=norm) == pytest.approx(expected)


def test_mce_is_ece_max_and_unweighted_mean_is_unweighted():
    conf, correct = [0.9, 0.9, 0.62, 0.68, 0.1], [1, 0, 1, 1, 0]
    assert mce(conf, correct, n_bins=10) == ece(conf, correct, n_bins=10, norm="max") == pytest.approx(0.4)
    got = unweighted_binned_calibration_error(conf, correct, n_bins=10, binning="equal_width")
    assert got == pytest.approx((0.4 + 0.35 + 0.1) / 3)


def test_unweighted_equal_mass_hand_computed():
    # 2 equal-mass bins: edges [0, 0.45, 1]; {0.1, 0.3} acc 0.5 conf 0.2 gap 0.3; {0.6, 1.0} acc 0.5 conf 0.8 gap 0.3
    assert unweighted_binned_calibration_error([0.1, 0.3, 0.6, 1.0], [1, 0, 1, 0], n_bins=2) == pytest.approx(0.3)
    # open right edge drops the 1.0: second bin {0.6} acc 1 gap 0.4
    got = unweighted_binned_calibration_error([0.1, 0.3, 0.6, 1.0], [1, 0, 1, 0], n_bins=2, right_edge="open")
    assert got == pytest.approx(0.35)


def test_unweighted_all_excluded_is_nan_with_reason():
    with pytest.warns(UndefinedMetricWarning, match="excluded"):
        assert math.isnan(unweighted_binned_calibration_error([1.0, 1.0], [1, 0], right_edge="open"))


def test_classwise_ece_hand_computed():
    probs = [[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]
    labels = [0, 1, 1]
    # class 0: (0.8, y=1) gap .2; (0.4, y=0) gap .4; (0.5, y=0) gap .5 -> (0.2 + 0.4 + 0.5) / 3
    # class 1: (0.2, y=0) gap .2; (0.6, y=1) gap .4; (0.5, y=1) gap .5 -> same
    assert classwise_ece(probs, labels, n_bins=10) == pytest.approx(1.1 / 3)


def test_brier_and_nll_hand_computed():
    probs, labels = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], [0, 1]
    assert brier_score(probs, labels) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.49 + 0.36)) / 2)
    assert nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert top_label_brier_score([0.7, 0.6], [1, 0]) == pytest.approx((0.09 + 0.36) / 2)


def test_nll_clips_zero_gold_probability_at_eps():
    assert nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))
    assert nll([[1.0, 0.0]], [1], eps=1e-6) == pytest.approx(-math.log(1e-6))


def test_aurc_hand_computed():
    # descending confidence: correct, wrong, correct, wrong -> risks 0, 1/2, 1/3, 2/4
    conf, correct = [0.6, 0.9, 0.7, 0.8], [0, 1, 1, 0]
    rc = risk_coverage_curve(conf, correct)
    assert rc.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert rc.risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert aurc(conf, correct) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert selective_accuracy(conf, correct, 0.25) == 1.0
    assert selective_accuracy(conf, correct, 0.3) == 0.5  # ceil(0.3 * 4) = 2 items
    assert selective_accuracy(conf, correct, 1.0) == 0.5


def test_risk_coverage_ties_take_the_block_mean_and_ignore_input_order():
    # One tie block of {correct, wrong, wrong} below a correct item.
    conf, correct = [0.5, 0.9, 0.5, 0.5], [1, 1, 0, 0]
    rc = risk_coverage_curve(conf, correct)
    # k=1: 0; inside the block each item carries 2/3 of an error
    assert rc.risk.tolist() == pytest.approx([0.0, (2 / 3) / 2, (4 / 3) / 3, 2 / 4])
    perm = [2, 0, 3, 1]
    rc2 = risk_coverage_curve(np.array(conf)[perm], np.array(correct)[perm])
    np.testing.assert_allclose(rc2.risk, rc.risk)
    # all tied: flat risk at the overall error rate
    assert risk_coverage_curve([0.7] * 4, [1, 0, 0, 0]).risk.tolist() == pytest.approx([0.75] * 4)


def test_selective_accuracy_handles_float_noise_in_coverage():
    conf = np.linspace(1, 0.1, 10)
    correct = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert selective_accuracy(conf, correct, 0.3) == 1.0  # 0.3 * 10 = 3.0000000000000004 -> 3 items, not 4


def test_aurc_best_when_ordering_is_perfect():
    conf, correct = _toy_binary(500)
    perfect = np.where(correct, 1.0, 0.0) + conf * 1e-3
    assert aurc(perfect, correct) < aurc(conf, correct) < aurc(-conf, correct)


def test_torch_inputs_match_numpy():
    conf, correct = _toy_binary(300)
    t_conf = torch.tensor(conf, dtype=torch.float64)
    t_corr = torch.tensor(correct)
    assert ece(t_conf, t_corr) == ece(conf, correct)
    assert auroc(t_conf, t_corr) == auroc(conf, correct)
    assert ece(t_conf.to(torch.bfloat16), t_corr) == pytest.approx(ece(conf, correct), abs=0.02)
    probs, labels = _toy_probs(100)
    assert nll(probs, torch.tensor(labels)) == pytest.approx(nll(probs.numpy(), labels), rel=1e-12)


# --------------------------------------------------------------------------------------------------------------
# cross-checks against torchmetrics and scikit-learn


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 23])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_torchmetrics_binary(n_bins, norm, tm_cls):
    conf, correct = _toy_binary(seed=n_bins)
    expected = tm_cls.binary_calibration_error(
        torch.tensor(conf, dtype=torch.float64), torch.tensor(correct, dtype=torch.long), n_bins=n_bins, norm=norm
    ).item()
    assert ece(conf, correct, n_bins=n_bins, norm=norm) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if norm == "max":
        assert mce(conf, correct, n_bins=n_bins) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
@pytest.mark.parametrize("norm", ["l1", "max"])
def test_ece_matches_torchmetrics_multiclass(n_bins, norm, tm_cls):
    probs, labels = _toy_probs(seed=n_bins)
    expected = tm_cls.multiclass_calibration_error(
        probs, torch.tensor(labels), num_classes=probs.shape[1], n_bins=n_bins, norm=norm
    ).item()
    # torchmetrics works in float32; the same float32 confidences are compared here.
    conf = probs.max(1).values.double().numpy()
    correct = probs.argmax(1).numpy() == labels
    assert ece(conf, correct, n_bins=n_bins, norm=norm) == pytest.approx(expected, abs=1e-6)


def test_confidence_one_joins_the_last_bin_unlike_torchmetrics(tm_cls):
    # Documented difference: torchmetrics gives conf == 1.0 an extra bin of its own.
    conf, correct = [0.95, 1.0], [1, 0]
    tm = tm_cls.binary_calibration_error(torch.tensor(conf), torch.tensor(correct), n_bins=10).item()
    assert tm == pytest.approx(0.5 * 0.05 + 0.5 * 1.0)
    assert ece(conf, correct, n_bins=10) == pytest.approx(abs(0.5 - 0.975))


@pytest.mark.parametrize(
    "kind",
    ["continuous", "ties_rounded", "integer_scores", "all_tied", "logits", "tiny"],
)
def test_auroc_matches_sklearn(kind, sk_metrics):
    rng = np.random.default_rng(1)
    conf, correct = _toy_binary(800, seed=3)
    if kind == "ties_rounded":
        conf = np.round(conf, 1)
    elif kind == "integer_scores":
        conf = rng.integers(0, 4, size=conf.shape[0]).astype(float)
    elif kind == "all_tied":
        conf = np.full(conf.shape[0], 0.7)
    elif kind == "logits":
        conf = 20 * conf + rng.normal(size=conf.shape[0])  # unbounded scores are allowed for AUROC
    elif kind == "tiny":
        conf, correct = np.array([0.3, 0.3, 0.9]), np.array([0, 1, 1])
    expected = sk_metrics.roc_auc_score(correct, conf)
    assert auroc(conf, correct) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("correct", [[1, 1, 1], [0, 0, 0]])
def test_auroc_one_class_is_nan_with_reason(correct):
    with pytest.warns(UndefinedMetricWarning, match="undefined: all 3 items are"):
        assert math.isnan(auroc([0.2, 0.5, 0.9], correct))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_matches_sklearn(seed, sk_metrics):
    conf, correct = _toy_binary(500, seed=seed)
    assert top_label_brier_score(conf, correct) == pytest.approx(sk_metrics.brier_score_loss(correct, conf))
    probs, labels = _toy_probs(400, k=5, seed=seed)
    p = _float64_rows(probs)
    expected = sk_metrics.brier_score_loss(labels, p, labels=list(range(5)), scale_by_half=False)
    assert brier_score(p, labels) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_nll_matches_sklearn(k, sk_metrics):
    probs, labels = _toy_probs(400, k=k, seed=k)
    p = _float64_rows(probs)
    assert nll(p, labels) == pytest.approx(sk_metrics.log_loss(labels, p, labels=list(range(k))), rel=1e-12)


# --------------------------------------------------------------------------------------------------------------
# bootstrap


@pytest.mark.parametrize("metric", [auroc, ece, top_label_brier_score])
def test_bootstrap_contains_point_and_is_deterministic(metric):
    conf, correct = _toy_binary(400)
    point, low, high = bootstrap_ci(metric, conf, correct, n_resamples=200, seed=7)
    assert point == metric(conf, correct)
    assert low < point < high
    assert bootstrap_ci(metric, conf, correct, n_resamples=200, seed=7) == (point, low, high)
    assert bootstrap_ci(metric, conf, correct, n_resamples=200, seed=8) != (point, low, high)


def test_bootstrap_narrows_with_more_data():
    widths = []
    for n in (200, 5000):
        conf, correct = _toy_binary(n, seed=11)
        _, low, high = bootstrap_ci(top_label_brier_score, conf, correct, n_resamples=300)
        widths.append(high - low)
    # The width scales like 1/sqrt(n): 5x narrower expected for 25x the data.
    assert widths[1] < widths[0] / 3


def test_bootstrap_wider_at_higher_confidence_level():
    conf, correct = _toy_binary(300)
    _, lo90, hi90 = bootstrap_ci(auroc, conf, correct, n_resamples=300, confidence_level=0.9)
    _, lo99, hi99 = bootstrap_ci(auroc, conf, correct, n_resamples=300, confidence_level=0.99)
    assert lo99 < lo90 < hi90 < hi99


def test_bootstrap_resamples_items_jointly():
    x = np.arange(50, dtype=float)
    # Identical columns stay identical under joint resampling, so the difference is 0 on every resample.
    assert bootstrap_ci(lambda a, b: float(np.mean(a - b)), x, x.copy(), n_resamples=50) == (0.0, 0.0, 0.0)
    # 2-D inputs resample rows.
    probs, labels = _toy_probs(100)
    point, low, high = bootstrap_ci(nll, probs.numpy(), labels, n_resamples=100)
    assert low < point < high


@pytest.mark.parametrize(
    "metric", [top_label_brier_score, brier_score, nll, functools.partial(nll, eps=0.05), auroc, aurc]
)
@pytest.mark.parametrize("data", ["continuous", "ties", "tiny"])
def test_bootstrap_vectorised_path_equals_generic_loop(metric, data):
    n = {"continuous": 300, "ties": 300, "tiny": 6}[data]
    if metric in (top_label_brier_score, auroc, aurc):
        conf, correct = _toy_binary(n, seed=5)
        args = (np.round(conf, 1) if data == "ties" else conf, correct)
    else:
        probs, labels = _toy_probs(n)
        args = (probs.double().numpy(), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one-class resamples of the tiny case
        fast = bootstrap_ci(metric, *args, n_resamples=100, seed=3)
        slow = bootstrap_ci(lambda *a: metric(*a), *args, n_resamples=100, seed=3)
    assert fast == pytest.approx(slow, rel=1e-12, abs=1e-14)


def test_bootstrap_drops_nan_resamples_with_a_warning():
    conf, correct = np.array([0.9, 0.2, 0.8, 0.7]), np.array([1, 0, 1, 1])
    with pytest.warns(UndefinedMetricWarning, match="NaN on [0-9]+ of 200 resamples"):
        point, low, high = bootstrap_ci(auroc, conf, correct, n_resamples=200)
    assert point == 1.0 and low <= high
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        _, low, high = bootstrap_ci(auroc, conf, np.ones(4), n_resamples=20)
    assert math.isnan(low) and math.isnan(high)


# --------------------------------------------------------------------------------------------------------------
# summary


def test_calibration_summary_records_schemes_and_matches_the_functions():
    probs, labels = _toy_probs(600)
    p = probs.double().numpy()
    s = calibration_summary(p, labels, n_bins=10, binning="equal_mass")
    conf, correct = p.max(1), p.argmax(1) == labels
    assert s["n"] == 600 and s["input"] == "probs"
    assert s["accuracy"]["value"] == pytest.approx(correct.mean())
    assert s["ece"] == {"value": ece(conf, correct, 10, "equal_mass"), "n_bins": 10, "binning": "equal_mass",
                        "norm": "l1"}
    assert s["mce"]["value"] == mce(conf, correct, 10, "equal_mass") and s["mce"]["norm"] == "max"
    assert s["unweighted_ce"]["value"] == unweighted_binned_calibration_error(conf, correct)
    assert s["unweighted_ce"]["n_bins"] == 10 and s["unweighted_ce"]["right_edge"] == "closed"
    assert s["auroc"]["value"] == auroc(conf, correct)
    assert s["aurc"]["value"] == aurc(conf, correct)
    assert s["brier_top_label"]["value"] == top_label_brier_score(conf, correct)
    assert s["brier"]["value"] == brier_score(p, labels) and s["brier"]["form"] == "multiclass"
    assert s["nll"] == {"value": nll(p, labels), "eps": 1e-12}
    assert s["classwise_ece"]["value"] == classwise_ece(p, labels, 10, "equal_mass")
    json.dumps(s)  # result files must be able to carry it as is


def test_calibration_summary_confidence_input_and_bootstrap():
    conf, correct = _toy_binary(300)
    s = calibration_summary(conf, correct, n_resamples=50, seed=1, nll_eps=1e-6)
    assert s["input"] == "confidence" and "nll" not in s and "brier" not in s
    assert s["ece"]["n_bins"] == 15 and s["ece"]["binning"] == "equal_width"
    for key in ("accuracy", "ece", "mce", "auroc", "aurc", "brier_top_label"):
        low, high = s[key]["ci"]
        assert low <= s[key]["value"] <= high
        assert s[key]["n_resamples"] == 50 and s[key]["seed"] == 1 and s[key]["ci_level"] == 0.95
    assert s["auroc"]["ci"] == list(bootstrap_ci(auroc, conf, correct, n_resamples=50, seed=1)[1:])


# --------------------------------------------------------------------------------------------------------------
# bad inputs: every error names the argument

_C, _Y = [0.2, 0.7, 0.9], [0, 1, 1]
_P, _L = [[0.8, 0.2], [0.3, 0.7]], [0, 1]


@pytest.mark.parametrize(
    "fn, args, kwargs, match",
    [
        (ece, ([0.2, 0.7], _Y), {}, r"`confidence` has 2 items but `correct` has 3"),
        (ece, ([0.2, float("nan"), 0.9], _Y), {}, r"`confidence` contains NaN \(first at index \(1,\)\)"),
        (ece, ([0.2, 1.5, 0.9], _Y), {}, r"`confidence` must be probabilities in \[0, 1\]"),
        (ece, ([-0.1, 0.5, 0.9], _Y), {}, r"`confidence` must be probabilities in \[0, 1\]"),
        (ece, ([], []), {}, r"`confidence` is empty"),
        (ece, (_C, _Y), {"n_bins": 0}, r"`n_bins` must be an integer >= 1"),
        (ece, (_C, _Y), {"n_bins": 2.5}, r"`n_bins` must be an integer >= 1"),
        (ece, (_C, _Y), {"binning": "quantile"}, r"`binning` must be one of \['equal_width', 'equal_mass'\]"),
        (ece, (_C, _Y), {"norm": "l3"}, r"`norm` must be one of \['l1', 'l2', 'max'\]"),
        (ece, (_C, [0, 2, 1]), {}, r"`correct` must hold only 0/1"),
        (ece, (_C, [0.0, float("nan"), 1.0]), {}, r"`correct` contains NaN"),
        (ece, ([[0.2, 0.7]], [1]), {}, r"`confidence` must be 1-D"),
        (ece, (["a", "b"], [0, 1]), {}, r"`confidence` must be numeric"),
        (mce, (_C, _Y), {"binning": "x"}, r"`binning` must be one of"),
        (unweighted_binned_calibration_error, (_C, _Y), {"right_edge": "half"}, r"`right_edge` must be one of"),
        (reliability_bins, (_C, _Y), {"n_bins": -1}, r"`n_bins`"),
        (bin_edges, (_C,), {"binning": "uniform"}, r"`binning` must be one of"),
        (classwise_ece, (_P, [0, 2]), {}, r"`labels` must be class indices in \[0, 1\]"),
        (brier_score, ([[0.8, 0.3], [0.3, 0.7]], _L), {}, r"rows of `probs` must sum to 1; row 0"),
        (brier_score, ([0.8, 0.2], _L), {}, r"`probs` must be a 2-D"),
        (brier_score, (_P, [0, 1, 1]), {}, r"`probs` has 2 items but `labels` has 3"),
        (brier_score, (_P, [0.5, 1]), {}, r"`labels` must hold integer class indices"),
        (nll, ([[1.2, -0.2], [0.3, 0.7]], _L), {}, r"`probs` must be probabilities in \[0, 1\]"),
        (nll, (_P, _L), {"eps": 0.0}, r"`eps` must be a float in \(0, 1\)"),
        (top_label_brier_score, (_C, [1, 0]), {}, r"`confidence` has 3 items but `correct` has 2"),
        (auroc, ([0.2, float("nan"), 3.0], _Y), {}, r"`confidence` contains NaN"),
        (auroc, ([0.2, float("inf"), 3.0], _Y), {}, r"`confidence` contains an infinite value"),
        (aurc, (_C, [1, 1]), {}, r"`confidence` has 3 items but `correct` has 2"),
        (selective_accuracy, (_C, _Y, 0.0), {}, r"`coverage` must be a number in \(0, 1\]"),
        (selective_accuracy, (_C, _Y, 1.5), {}, r"`coverage` must be a number in \(0, 1\]"),
        (bootstrap_ci, (auroc,), {}, r"`arrays` is empty"),
        (bootstrap_ci, (auroc, _C, [1, 0]), {}, r"`arrays\[0\]` has 3 items but `arrays\[1\]` has 2"),
        (bootstrap_ci, (auroc, _C, _Y), {"n_resamples": 0}, r"`n_resamples` must be an integer >= 1"),
        (bootstrap_ci, (auroc, _C, _Y), {"confidence_level": 95}, r"`confidence_level` must be in \(0, 1\)"),
        (bootstrap_ci, ("auroc", _C, _Y), {}, r"`metric_fn` must be callable"),
        (calibration_summary, (np.zeros((2, 2, 2)), _L), {}, r"`probs_or_conf` must be 1-D confidences or a 2-D"),
        (calibration_summary, (_P, [0, 5]), {}, r"`correct_or_labels` must be class indices"),
        (calibration_summary, (_C, [1, 1]), {}, r"`probs_or_conf` has 3 items but `correct_or_labels` has 2"),
        (calibration_summary, (_C, _Y), {"binning": "x"}, r"`binning` must be one of"),
        (calibration_summary, (_C, _Y), {"n_resamples": -1}, r"`n_resamples` must be an integer >= 0"),
    ],
)
def test_bad_input_raises_named_value_error(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)
