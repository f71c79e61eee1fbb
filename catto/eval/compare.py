"""Differences between two models (or methods) on the same items, with paired bootstrap intervals: the numbers
behind "CATTO − DPO" in `catto demo` and the studies.

Paired means the same resampled items for both: item difficulty cancels, so the interval is much tighter than two
separate intervals would suggest.

Example:
    >>> a = ([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 1])
    >>> b = ([0.9, 0.9, 0.9, 0.9], [1, 1, 0, 1])
    >>> d = paired_difference(lambda c, y: sum(c) / len(c), a, b, n_resamples=100, seed=0)
    >>> round(d["value"], 3), d["paired"]
    (-0.15, True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import bootstrap_ci, ece, top_label_brier_score
from .results import ItemResult


def paired_difference(metric: Callable[..., float], a: tuple, b: tuple, *, n_resamples: int, seed: int,
                      method: str = "percentile") -> dict[str, Any]:
    """`metric(*a) − metric(*b)` on the same items, with a paired bootstrap interval (the same resampled items for
    both; `method` "percentile" or "basic", see `catto.eval.metrics.interval_from_distribution`)."""

    def diff(*arrays):
        half = len(arrays) // 2
        return metric(*arrays[:half]) - metric(*arrays[half:])

    arrays = [np.asarray(x) for x in (*a, *b)]
    if n_resamples <= 0:
        return {"value": float(diff(*arrays))}
    value, low, high = bootstrap_ci(diff, *arrays, n_resamples=n_resamples, seed=seed, method=method)
    return {"value": value, "ci": [low, high], "ci_level": 0.95, "ci_method": method, "n_resamples": n_resamples,
            "paired": True}


def _accuracy(conf, correct) -> float:
    return float(np.mean(correct))


def compare_rows(results: Mapping[str, Sequence[ItemResult]], pairs: Sequence[tuple[str, str]] = (
        ("catto", "dpo"), ("dpo", "base"), ("catto", "base")), *, n_bins: int, n_resamples: int,
        seed: int) -> dict[str, Any]:
    """For each `(a, b)` of `pairs` present in `results` (`{label: item results on the same items}`): a − b of
    accuracy, ECE (`n_bins` equal-width bins; basic bootstrap interval, see `ece_estimate`) and top-label Brier,
    paired bootstrap."""
    metrics = {"ece": (functools.partial(ece, n_bins=n_bins), "basic"), "accuracy": (_accuracy, "percentile"),
               "brier": (top_label_brier_score, "percentile")}
    out = {}
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        ids_a, ids_b = [r.id for r in results[a]], [r.id for r in results[b]]
        if ids_a != ids_b:
            raise ValueError(f"compare_rows: {a} and {b} were not scored on the same items in the same order.")
        xa = ([r.confidence for r in results[a]], [bool(r.correct) for r in results[a]])
        xb = ([r.confidence for r in results[b]], [bool(r.correct) for r in results[b]])
        out[f"{a}-{b}"] = {name: paired_difference(fn, xa, xb, n_resamples=n_resamples, seed=seed, method=method)
                           for name, (fn, method) in metrics.items()}
    return out
