"""ECE on small samples: the noise floor, the debiased estimate, the bias-aware interval, the cluster bootstrap."""

from __future__ import annotations

import functools

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
