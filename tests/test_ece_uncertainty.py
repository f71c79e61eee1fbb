"""ECE on small samples: the noise floor, the debiased estimate, the bias-aware interval, the cluster bootstrap."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from catto.eval.metrics import (
    bootstrap_ci,
    bootstrap_distribution,
    ece,
    ece_estimate,
    ece_noise_floor,
    interval_from_distribution,
)


def _calibrated(n, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.25, 1.0, n)
    return conf, rng.random(n) < conf


def test_noise_floor_matches_calibrated_ece_and_shrinks_with_n():
    floors = []
    for n in (100, 400, 1600):
        conf, _ = _calibrated(n)
        floor, q95 = ece_noise_floor(conf, n_bins=15, n_simulations=300, seed=1)
        # an independent draw of a calibrated predictor lands below the 95th percentile most of the time
        measured = [ece(conf, np.random.default_rng(s).random(n) < conf) for s in range(100, 140)]
        assert np.mean(np.array(measured) <= q95) >= 0.85
        assert abs(np.mean(measured) - floor) < 0.25 * floor
        floors.append(floor)
    assert floors[0] > floors[1] > floors[2]  # ~ 1 / sqrt(n)


def test_debiased_ece_is_closer_to_the_truth_than_the_plug_in():
    """On calibrated data the true ECE is 0; on data miscalibrated by a known shift it is that shift."""
    conf, correct = _calibrated(300, seed=2)
    r = ece_estimate(conf, correct, n_resamples=400, n_simulations=20)
    assert r["debiased"] < r["value"]
    assert r["ci"][0] <= r["debiased"] <= r["ci"][1]
    assert r["ci"][0] == 0.0  # a calibrated predictor: the bias-aware interval reaches zero
    # a shifted predictor (confidence 0.15 above its accuracy everywhere): both estimates find the shift
    rng = np.random.default_rng(3)
    acc = rng.uniform(0.2, 0.8, 2000)
    shifted = ece_estimate(acc + 0.15, rng.random(2000) < acc, n_resamples=200, n_simulations=20)
    assert abs(shifted["debiased"] - 0.15) < abs(shifted["value"] - 0.15) + 0.01
    assert shifted["ci"][0] <= 0.15 <= shifted["ci"][1]


def _ece_by_hand(conf, correct, n_bins=15):
    """Equal-width binned ECE written out: bin b holds confidences in [b/n_bins, (b+1)/n_bins) (1.0 in the last)."""
    total = 0.0
    n = len(conf)
    for b in range(n_bins):
        members = [i for i in range(n) if min(int(conf[i] * n_bins), n_bins - 1) == b]
        if members:
            gap = abs(sum(correct[i] for i in members) / len(members) - sum(conf[i] for i in members) / len(members))
            total += len(members) / n * gap
    return total


def _exact_bootstrap_debiased(conf, correct, groups=None, n_bins=15):
    """max(0, 2 * ECE - E*[ECE of a resample]) with the bootstrap expectation E* taken exactly, by enumerating every
    equally likely resample (of items, or of whole groups): what the bootstrap bias correction estimates."""
    units = [[i] for i in range(len(conf))] if groups is None else [
        [i for i in range(len(conf)) if groups[i] == g] for g in sorted(set(groups))]
    values = []
    for pick in itertools.product(range(len(units)), repeat=len(units)):
        idx = [i for u in pick for i in units[u]]
        values.append(_ece_by_hand([conf[i] for i in idx], [correct[i] for i in idx], n_bins))
    point = _ece_by_hand(conf, correct, n_bins)
    return point, max(0.0, 2 * point - float(np.mean(values))), float(np.std(values))


@pytest.mark.parametrize("conf, correct, groups", [
    # shared bins with mixed outcomes: a resample's bins are purer than the sample's, hence the large bias
    ([0.62, 0.64, 0.66, 0.61, 0.31, 0.33], [1, 1, 0, 1, 0, 1], None),
    ([0.72, 0.70, 0.71, 0.69, 0.73, 0.35], [1, 0, 1, 1, 0, 0], None),
    ([0.72, 0.70, 0.71, 0.69, 0.73, 0.35, 0.36], [1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 2, 3, 3, 4]),  # whole groups
])
def test_debiased_ece_is_two_plug_in_minus_the_bootstrap_mean(conf, correct, groups):
    """On a handful of items the plug-in ECE is heavily biased; catto's debiased value must be the bootstrap bias
    correction 2 * ECE - mean(resampled ECE), checked against the exact bootstrap expectation computed by hand."""
    point, expected, spread = _exact_bootstrap_debiased(conf, correct, groups)
    n_resamples = 20000
    r = ece_estimate(conf, correct, groups=groups, n_resamples=n_resamples, n_simulations=0, seed=3)
    assert r["value"] == pytest.approx(point, abs=1e-12)
    assert point - expected > 0.05  # the correction is large here, so "no correction" cannot pass
    # Monte Carlo error of the mean of n_resamples resampled ECEs: 2 * ... for the point counts once
    assert r["debiased"] == pytest.approx(expected, abs=5 * spread / np.sqrt(n_resamples))
    assert 5 * spread / np.sqrt(n_resamples) < 0.01


def test_debiased_ece_is_clipped_at_zero():
    # in-sample perfectly calibrated (ECE 0): every resample has ECE >= 0, so 2 * 0 - mean < 0 is clipped to 0
    conf, correct = [0.5, 0.5, 0.25, 0.25, 0.25, 0.25], [1, 0, 1, 0, 0, 0]
    r = ece_estimate(conf, correct, n_resamples=200, n_simulations=0)
    assert r["value"] == pytest.approx(0.0, abs=1e-12) and r["debiased"] == 0.0


def test_debiased_ece_averages_much_closer_to_zero_on_a_calibrated_predictor():
    """y ~ Bernoulli(conf): the true ECE is 0. Over many draws the plug-in ECE averages well above it (its bias);
    the bias-corrected estimate must remove a clear part of that bias (measured: it keeps about 0.63 of it here)."""
    n = 60
    conf = np.random.default_rng(0).uniform(0.25, 1.0, n)
    plug_in, debiased = [], []
    for s in range(150):
        correct = np.random.default_rng(1000 + s).random(n) < conf
        r = ece_estimate(conf, correct, n_resamples=200, n_simulations=0, seed=s)
        plug_in.append(r["value"])
        debiased.append(r["debiased"])
    assert np.mean(plug_in) > 0.1  # the bias at this n: what there is to correct
    assert np.mean(debiased) < 0.75 * np.mean(plug_in)
    assert np.mean(plug_in) - np.mean(debiased) > 0.03


def test_percentile_interval_can_exclude_the_plug_in_basic_does_not():
    conf, correct = _calibrated(150, seed=4)
    metric = functools.partial(ece, n_bins=15)
    point, values = bootstrap_distribution(metric, conf, correct, n_resamples=500, seed=0)
    assert np.mean(values) > point  # resampled ECE is biased upward once more
    low, high = interval_from_distribution(point, values, method="basic")
    q_low, q_high = interval_from_distribution(point, values, method="percentile")
    assert low == pytest.approx(2 * point - q_high) and high == pytest.approx(2 * point - q_low)
    assert low <= 2 * point - np.mean(values) <= high
    with pytest.raises(ValueError, match="method"):
        interval_from_distribution(point, values, method="bca")


def test_cluster_bootstrap_resamples_groups():
    """Duplicating every item 5 times inside its group leaves the cluster interval as wide as the one on the
    originals, while the item bootstrap is fooled into a narrower one."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=60)
    dup = np.repeat(x, 5)
    groups = np.repeat(np.arange(60), 5)
    _, lo, hi = bootstrap_ci(np.mean, x, n_resamples=2000, seed=1)
    _, glo, ghi = bootstrap_ci(np.mean, dup, n_resamples=2000, seed=1, groups=groups)
    _, ilo, ihi = bootstrap_ci(np.mean, dup, n_resamples=2000, seed=1)
    assert (ghi - glo) == pytest.approx(hi - lo, rel=0.15)
    assert (ihi - ilo) < 0.6 * (hi - lo)
    # every resample is a union of whole groups: the resampled sizes are multiples of the group size
    sizes = []
    bootstrap_distribution(lambda a: sizes.append(a.size) or 0.0, dup, n_resamples=20, groups=groups)
    assert all(s == 300 for s in sizes[1:])
    unequal = np.array([0, 0, 0, 1, 2, 2])
    sizes.clear()
    bootstrap_distribution(lambda a: sizes.append(a.size) or 0.0, np.arange(6.0), n_resamples=50, groups=unequal)
    assert len(set(sizes[1:])) > 1 and all(s >= 3 for s in sizes[1:])  # 3 groups drawn, sizes 1-3 each
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(np.mean, x, groups=groups)


def test_calibration_summary_uses_bias_aware_intervals_for_calibration_errors():
    from catto.eval.metrics import calibration_summary

    conf, correct = _calibrated(120, seed=6)
    s = calibration_summary(conf, correct, n_resamples=300, seed=0)
    for key in ("ece", "ece_equal_mass", "mce", "unweighted_ce"):
        e = s[key]
        assert e["ci_method"] == "basic" and 0.0 <= e["ci"][0] <= e["debiased"] <= e["ci"][1] <= 1.0
    assert s["auroc"]["ci_method"] == "percentile" and s["accuracy"]["ci"][0] <= s["accuracy"]["value"]
    # the same resamples as bootstrap_ci with method="basic" (before clipping)
    _, low, high = bootstrap_ci(functools.partial(ece, n_bins=15), conf, correct, n_resamples=300, seed=0,
                                method="basic")
    assert s["ece"]["ci"] == [max(0.0, low), min(1.0, high)]
