"""Q&A with abstention (the MSP paper, arXiv 2402.13213 §5): pure functions over (confidence, correct) arrays.

A question answered with confidence below the threshold is abstained on. Scores are points per question x 100:
+1 per correct answer, 0 per abstention, `-penalty` per wrong answer (`penalty` 1 = "balanced", 2 = "conservative").
The threshold is chosen on a few labelled questions (the paper uses 20) over the paper's grid: 200 evenly spaced
values from 0 to the largest confidence, a point just below 0 (never abstain) and, when confidences reach 0.99,
100 more between 0.99 and 1. Several datasets share one threshold by maximising their averaged training score.

>>> import numpy as np
>>> conf, correct = np.array([0.9, 0.8, 0.3, 0.2]), np.array([True, True, False, False])
>>> abstention_score(conf, correct, threshold=0.0, penalty=1)   # answer everything: (2 - 2) / 4
0.0
>>> abstention_score(conf, correct, threshold=0.5, penalty=1)   # abstain on the two wrong ones: 2 / 4
50.0
>>> select_threshold([(conf, correct)], penalty=2).score
50.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

PENALTIES = {"balanced": 1.0, "conservative": 2.0}
#: the point "just below 0" of the paper's grid: a threshold that never abstains
NEVER_ABSTAIN = -1e-9


class ThresholdChoice(NamedTuple):
    threshold: float
    score: float  # the (dataset-averaged) training score at `threshold`


def _arrays(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    corr = np.asarray(correct, dtype=bool).reshape(-1)
    if conf.shape != corr.shape:
        raise ValueError(f"confidence ({conf.shape[0]}) and correct ({corr.shape[0]}) differ in length.")
    if conf.size == 0:
        raise ValueError("Abstention scores need at least one question.")
    if not np.isfinite(conf).all():
        raise ValueError("confidence holds NaN/inf.")
    return conf, corr


def _check_penalty(penalty: float) -> float:
    penalty = float(penalty)
    if not penalty >= 0:
        raise ValueError(f"`penalty` (points lost per wrong answer) must be >= 0, got {penalty}.")
    return penalty


def abstention_score(confidence, correct, threshold: float, penalty: float = 1.0) -> float:
    """(#correct - penalty * #wrong) / #questions * 100, answering only where `confidence >= threshold`."""
    conf, corr = _arrays(confidence, correct)
    penalty = _check_penalty(penalty)
    answered = conf >= threshold
    return float((np.sum(answered & corr) - penalty * np.sum(answered & ~corr)) / conf.size * 100)


def abstention_rate(confidence, threshold: float) -> float:
    """Percentage of questions abstained on (`confidence < threshold`)."""
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    return float(np.mean(conf < threshold) * 100)


def threshold_grid(confidence: np.ndarray, n: int = 200, n_high: int = 100) -> np.ndarray:
    """The paper's candidate thresholds for `confidence` (all labelled confidences pooled)."""
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    top = float(conf.max()) if conf.size else 1.0
    grid = [np.array([NEVER_ABSTAIN]), np.linspace(0.0, top, n)]
    if top >= 0.99:
        grid.append(np.linspace(0.99, 1.0, n_high))
    return np.concatenate(grid)


def select_threshold(datasets: Sequence[tuple[Sequence[float], Sequence[bool]]], penalty: float = 1.0,
                     grid: np.ndarray | None = None) -> ThresholdChoice:
    """The grid threshold maximising the mean over `datasets` of the training score (ties: the first in grid
    order, i.e. the "never abstain" point, then the smallest threshold)."""
    if not datasets:
        raise ValueError("select_threshold needs at least one (confidence, correct) dataset.")
    pairs = [_arrays(c, k) for c, k in datasets]
    penalty = _check_penalty(penalty)
    if grid is None:
        grid = threshold_grid(np.concatenate([c for c, _ in pairs]))
    grid = np.asarray(grid, dtype=float)
    total = np.zeros(grid.size)
    for conf, corr in pairs:
        answered = conf[None, :] >= grid[:, None]  # (thresholds, questions)
        points = np.where(corr, 1.0, -penalty)[None, :] * answered
        total += points.sum(1) / conf.size * 100
    scores = total / len(pairs)
    best = int(np.argmax(scores))
    return ThresholdChoice(float(grid[best]), float(scores[best]))


def abstention_summary(confidence, correct, threshold: float, penalty: float) -> dict:
    """Score with and without abstention, and the abstention rate, at one threshold."""
    conf, corr = _arrays(confidence, correct)
    return {
        "penalty": _check_penalty(penalty),
        "threshold": float(threshold),
        "score_base": abstention_score(conf, corr, NEVER_ABSTAIN, penalty),
        "score_abstain": abstention_score(conf, corr, threshold, penalty),
        "pct_abstained": abstention_rate(conf, threshold),
        "n": int(conf.size),
    }


def mann_whitney_u_test(confidence, correct) -> dict:
    """Two-sided Mann-Whitney U test of confidence(correct) vs confidence(wrong), as the paper ran it.

    With scipy installed (it comes with scikit-learn): `scipy.stats.mannwhitneyu(..., alternative="two-sided")`.
    Without it: the normal approximation with tie correction and continuity correction, which is what scipy's
    "auto" method uses whenever there are ties or more than 8 items per group. `U` counts the (correct, wrong)
    pairs where the correct answer is more confident (ties count half), so `U / (n_correct * n_wrong)` is the AUROC.
    """
    conf, corr = _arrays(confidence, correct)
    n1, n2 = int(corr.sum()), int((~corr).sum())
    if n1 == 0 or n2 == 0:
        return {"u": None, "p_value": None, "reason": "needs both correct and wrong answers"}
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        u, p = _mann_whitney_normal(conf, corr)
        test = "normal approximation with tie and continuity correction (scipy not installed)"
    else:
        res = mannwhitneyu(conf[corr], conf[~corr], alternative="two-sided")
        u, p, test = float(res.statistic), float(res.pvalue), "scipy.stats.mannwhitneyu, two-sided"
    return {"u": u, "p_value": p, "test": test, "n_correct": n1, "n_wrong": n2}


def _mann_whitney_normal(conf: np.ndarray, corr: np.ndarray) -> tuple[float, float]:
    """U and the two-sided p-value from the tie-corrected normal approximation with continuity correction."""
    import math

    n1, n2 = int(corr.sum()), int((~corr).sum())
    n = n1 + n2
    from ..eval.metrics import average_ranks

    _, counts = np.unique(conf, return_counts=True)
    u = float(average_ranks(conf)[corr].sum() - n1 * (n1 + 1) / 2.0)
    tie_term = float(np.sum(counts.astype(float) ** 3 - counts))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))))
    if sigma == 0:
        return u, 1.0
    z = (abs(u - n1 * n2 / 2.0) - 0.5) / sigma
    return u, float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0))))
