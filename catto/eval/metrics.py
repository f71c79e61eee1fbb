"""Calibration and selective-prediction metrics: pure functions, arrays in, floats out.

Every function takes numpy arrays, torch tensors or lists and returns Python floats (or small numpy arrays for
curves). Each scheme choice (number of bins, binning, norm, clipping eps, ...) is an argument, and
`calibration_summary` records it next to the value, because ECE conventions differ between papers (docs/design.md §5):
CORAL uses 15 equal-width bins, SECL 10 equal-width bins plus equal-mass "AdaECE", the MSP paper an unweighted mean
over 10 equal-mass bins.

Conventions shared by every binned metric:

- Bins are half-open ``[lo, hi)`` against the float64 edge array, the last bin is closed ``[lo, 1]``, as in
  ``numpy.histogram``. A confidence equal to an interior edge therefore falls in the bin above it, and a confidence of
  exactly 1.0 in the last bin. (torchmetrics instead gives 1.0 an extra bin of its own; the two agree whenever no
  confidence is exactly 1.0.)
- Equal-width edges are ``numpy.linspace(0, 1, n_bins + 1)``. Equal-mass edges are the ``numpy.quantile`` (linear
  interpolation) of the confidences at ``linspace(0, 1, n_bins + 1)``, with the outer edges pinned to 0 and 1 so that
  the bins always partition [0, 1]. Tied confidences always share a bin, so with many ties equal-mass bins hold
  unequal counts and duplicated edges give empty bins.
- Empty bins are skipped: they carry no weight in ECE and are left out of MCE and of the unweighted mean.

Inputs are validated up front and a bad input raises a `ValueError` that names the argument (mismatched lengths,
NaN, probabilities outside [0, 1], empty input, ``n_bins < 1``, unknown scheme names with the allowed ones).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

BINNING_SCHEMES = ("equal_width", "equal_mass")
NORMS = ("l1", "l2", "max")
RIGHT_EDGES = ("closed", "open")
# -log(1e-12) = 27.6 nats: an item whose gold option got probability 0 costs a large but finite amount, so one such
# item cannot turn a whole data set's NLL into inf.
DEFAULT_NLL_EPS = 1e-12
# Float32 softmax rows sum to 1 within ~1e-6; anything further off is not a probability vector.
_ROW_SUM_ATOL = 1e-4
# Index arrays of one bootstrap chunk hold at most this many int64 entries (32 MiB), whatever the data size.
_BOOTSTRAP_CHUNK_ENTRIES = 1 << 22

ArrayLike = Any  # numpy array, torch tensor or (nested) list


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this input (e.g. AUROC with one class) and NaN was returned."""


class ReliabilityBins(NamedTuple):
    """Per-bin statistics behind every binned metric (and the reliability diagram).

    ``mean_confidence`` and ``accuracy`` are NaN for empty bins; ``n_excluded`` counts items that fell in no bin
    (only possible with ``right_edge="open"``).
    """

    edges: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    n_excluded: int


class RiskCoverage(NamedTuple):
    """Selective risk (error rate) among the ``k`` most confident items, at coverage ``k / N``, ``k = 1..N``."""

    coverage: np.ndarray
    risk: np.ndarray


# --------------------------------------------------------------------------------------------------------------
# input handling


def _to_numpy(name: str, x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch here
        t = x.detach().cpu()
        # bfloat16 has no numpy dtype; float64 also keeps sums of many items exact enough.
        x = (t.double() if t.is_floating_point() else t).numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise ValueError(f"`{name}` could not be converted to an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"`{name}` must be numeric, got dtype {arr.dtype}.")
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    nan = np.isnan(arr)
    if nan.any():
        raise ValueError(f"`{name}` contains NaN (first at index {tuple(int(i) for i in np.argwhere(nan)[0])}).")
    if np.isinf(arr).any():
        raise ValueError(f"`{name}` contains an infinite value.")


def _scores(name: str, x: ArrayLike, *, probability: bool) -> np.ndarray:
    """1-D float64 array of confidences; in [0, 1] when ``probability``."""
    arr = _to_numpy(name, x)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty.")
    arr = arr.astype(np.float64)
    _check_finite(name, arr)
    if probability and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"`{name}` must be probabilities in [0, 1], got values in [{arr.min():g}, {arr.max():g}].")
    return arr


def _binary(name: str, x: ArrayLike, n: int, other: str) -> np.ndarray:
    """1-D bool array from bools, 0/1 ints or 0.0/1.0 floats, of length ``n`` (the length of ``other``)."""
    arr = _to_numpy(name, x)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty.")
    if arr.shape[0] != n:
        raise ValueError(f"`{other}` has {n} items but `{name}` has {arr.shape[0]}.")
    if arr.dtype != bool:
        if np.issubdtype(arr.dtype, np.floating):
            _check_finite(name, arr)
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"`{name}` must hold only 0/1 or booleans, got values {np.unique(arr)[:5].tolist()}.")
    return arr.astype(bool)


def _prob_matrix(name: str, x: ArrayLike) -> np.ndarray:
    """(N, K) float64 matrix of probabilities whose rows sum to 1."""
    arr = _to_numpy(name, x)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D (N, K) probability matrix, got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}).")
    arr = arr.astype(np.float64)
    _check_finite(name, arr)
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"`{name}` must be probabilities in [0, 1], got values in [{arr.min():g}, {arr.max():g}].")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"rows of `{name}` must sum to 1; row {i} sums to {sums[i]:.6g}.")
    return arr


def _class_labels(name: str, x: ArrayLike, n: int, n_classes: int, other: str) -> np.ndarray:
    arr = _to_numpy(name, x)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}.")
    if arr.shape[0] != n:
        raise ValueError(f"`{other}` has {n} items but `{name}` has {arr.shape[0]}.")
    if np.issubdtype(arr.dtype, np.floating):
        _check_finite(name, arr)
        if (arr != np.round(arr)).any():
            raise ValueError(f"`{name}` must hold integer class indices.")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ValueError(
            f"`{name}` must be class indices in [0, {n_classes - 1}] for {n_classes} columns of `{other}`, "
            f"got values in [{arr.min()}, {arr.max()}]."
        )
    return arr


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _check_n_bins(n_bins: int) -> None:
    _check_int("n_bins", n_bins, 1)


def _conf_correct(confidence: ArrayLike, correct: ArrayLike, *, probability: bool = True):
    conf = _scores("confidence", confidence, probability=probability)
    return conf, _binary("correct", correct, conf.shape[0], "confidence")


def _undefined(reason: str) -> float:
    warnings.warn(reason, UndefinedMetricWarning, stacklevel=3)
    return float("nan")


# --------------------------------------------------------------------------------------------------------------
# binning


def bin_edges(confidence: ArrayLike, n_bins: int = 15, binning: str = "equal_width") -> np.ndarray:
    """The ``n_bins + 1`` non-decreasing bin edges on [0, 1] for ``binning`` ("equal_width" or "equal_mass").

    Equal-mass edges are quantiles of ``confidence`` (numpy's default linear interpolation) with the outer edges
    pinned to 0 and 1; ties can make several edges equal, which leaves the bins between them empty.

    >>> bin_edges([0.1, 0.2, 0.9], n_bins=2).tolist()
    [0.0, 0.5, 1.0]
    >>> bin_edges([0.1, 0.2, 0.9], n_bins=2, binning="equal_mass").tolist()
    [0.0, 0.2, 1.0]
    """
    _check_n_bins(n_bins)
    _check_choice("binning", binning, BINNING_SCHEMES)
    conf = _scores("confidence", confidence, probability=True)
    if binning == "equal_width":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    # Linear interpolation is monotone in exact arithmetic; guard against a rounding step backwards.
    return np.maximum.accumulate(edges)


def _bin_index(conf: np.ndarray, edges: np.ndarray, right_edge: str) -> np.ndarray:
    """Bin of each confidence (-1: none). Bins are ``[lo, hi)``; the last is ``[lo, hi]`` if ``right_edge="closed"``."""
    n_bins = edges.shape[0] - 1
    idx = np.searchsorted(edges, conf, side="right") - 1
    if right_edge == "closed":
        idx = np.where(conf == edges[-1], n_bins - 1, idx)
    idx[(idx < 0) | (idx >= n_bins)] = -1
    return idx


def reliability_bins(
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    binning: str = "equal_width",
    right_edge: str = "closed",
) -> ReliabilityBins:
    """Count, mean confidence and accuracy per bin: the data of a reliability diagram.

    ``right_edge="closed"`` (default) makes the last bin ``[lo, 1]``; ``"open"`` makes it ``[lo, 1)`` like the
    others, so confidences of exactly 1.0 fall in no bin and are counted in ``n_excluded`` (the MSP paper's code).

    >>> rb = reliability_bins([0.2, 0.3, 0.8, 1.0], [0, 1, 1, 1], n_bins=2)
    >>> rb.count.tolist(), rb.accuracy.tolist(), rb.mean_confidence.tolist()
    ([2, 2], [0.5, 1.0], [0.25, 0.9])
    """
    conf, corr = _conf_correct(confidence, correct)
    _check_choice("right_edge", right_edge, RIGHT_EDGES)
    edges = bin_edges(conf, n_bins, binning)
    idx = _bin_index(conf, edges, right_edge)
    keep = idx >= 0
    count = np.bincount(idx[keep], minlength=n_bins)
    conf_sum = np.bincount(idx[keep], weights=conf[keep], minlength=n_bins)
    corr_sum = np.bincount(idx[keep], weights=corr[keep].astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, corr_sum / count, np.nan)
    return ReliabilityBins(edges, count, mean_conf, acc, int((~keep).sum()))


# --------------------------------------------------------------------------------------------------------------
# calibration errors


def ece(
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    binning: str = "equal_width",
    norm: str = "l1",
) -> float:
    """Expected calibration error: bin-count-weighted gap between accuracy and mean confidence.

    ``norm="l1"``: ``sum_b (n_b / N) |acc_b - conf_b|`` (the usual ECE; with ``binning="equal_mass"`` it is
    "AdaECE"); ``"l2"``: ``sqrt(sum_b (n_b / N) (acc_b - conf_b)^2)``; ``"max"``: ``max_b |acc_b - conf_b|`` over
    non-empty bins (MCE). Matches torchmetrics' binary/multiclass calibration error for equal-width bins whenever
    no confidence is exactly 1.0 (see the module docstring).

    >>> round(ece([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1], n_bins=10), 6)
    0.4
    """
    _check_choice("norm", norm, NORMS)
    rb = reliability_bins(confidence, correct, n_bins, binning)
    nonempty = rb.count > 0
    gap = np.abs(rb.accuracy[nonempty] - rb.mean_confidence[nonempty])
    if norm == "max":
        return float(gap.max())
    weight = rb.count[nonempty] / rb.count.sum()
    if norm == "l1":
        return float(np.sum(weight * gap))
    return float(np.sqrt(np.sum(weight * gap**2)))


def mce(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, binning: str = "equal_width") -> float:
    """Maximum calibration error, ``ece(..., norm="max")``: the largest gap over non-empty bins.

    >>> round(mce([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1], n_bins=10), 6)
    0.4
    """
    return ece(confidence, correct, n_bins=n_bins, binning=binning, norm="max")


def unweighted_binned_calibration_error(
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 10,
    binning: str = "equal_mass",
    right_edge: str = "closed",
) -> float:
    """Unweighted mean over non-empty bins of ``|accuracy - mean confidence|`` (the MSP paper's calibration error).

    arXiv 2402.13213 v2 uses 10 equal-mass (quantile) bins and averages the per-bin gaps without weighting them by
    bin size. Its released code makes every bin ``[lo, hi)`` including the last, so confidences of exactly 1.0 fall
    in no bin and drop out; pass ``right_edge="open"`` to reproduce its published table to the printed digit (with
    ``"closed"``, Llama 3 70B and Mixtral 8x7B, which often give 1.0, differ by 0.03 and 0.01). Returns NaN with an
    `UndefinedMetricWarning` when every item was excluded.

    >>> round(unweighted_binned_calibration_error([0.2, 0.3, 0.8, 1.0], [0, 1, 1, 1], n_bins=2), 6)
    0.175
    >>> round(unweighted_binned_calibration_error([0.2, 0.3, 0.8, 1.0], [0, 1, 1, 1], n_bins=2,
    ...                                           right_edge="open"), 6)
    0.225
    """
    rb = reliability_bins(confidence, correct, n_bins, binning, right_edge)
    nonempty = rb.count > 0
    if not nonempty.any():
        return _undefined("unweighted_binned_calibration_error: every confidence was excluded (all equal 1.0).")
    return float(np.mean(np.abs(rb.accuracy[nonempty] - rb.mean_confidence[nonempty])))


def classwise_ece(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "equal_width",
    norm: str = "l1",
) -> float:
    """Class-wise ECE (Kull et al., 2019): mean over classes k of ``ece(probs[:, k], labels == k)``.

    Each class column is binned on its own (so equal-mass edges are per class).

    >>> round(classwise_ece([[0.8, 0.2], [0.4, 0.6]], [0, 1], n_bins=10), 6)
    0.3
    """
    p = _prob_matrix("probs", probs)
    y = _class_labels("labels", labels, p.shape[0], p.shape[1], "probs")
    return float(np.mean([ece(p[:, k], y == k, n_bins, binning, norm) for k in range(p.shape[1])]))


# --------------------------------------------------------------------------------------------------------------
# proper scores


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multiclass Brier score: mean over items of ``sum_k (p_k - 1[k == label])^2`` (in [0, 2]).

    >>> round(brier_score([[0.7, 0.3], [0.4, 0.6]], [0, 0]), 6)
    0.45
    """
    p = _prob_matrix("probs", probs)
    y = _class_labels("labels", labels, p.shape[0], p.shape[1], "probs")
    return float(np.mean(_brier_per_item(p, y)))


def _brier_per_item(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return np.sum((p - onehot) ** 2, axis=1)


def top_label_brier_score(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Top-label Brier score: ``mean((confidence - correct)^2)`` (in [0, 1]); sklearn's ``brier_score_loss``.

    >>> round(top_label_brier_score([0.9, 0.6], [1, 0]), 6)
    0.185
    """
    conf, corr = _conf_correct(confidence, correct)
    return float(np.mean((conf - corr) ** 2))


def nll(probs: ArrayLike, labels: ArrayLike, eps: float = DEFAULT_NLL_EPS) -> float:
    """Mean negative log-likelihood of the gold class, ``-mean(log(max(p_gold, eps)))`` in nats.

    Gold probabilities below ``eps`` (default 1e-12, i.e. at most 27.6 nats per item) are clipped so that one item
    with probability 0 cannot make the mean infinite; report ``eps`` with the value.

    >>> round(nll([[0.5, 0.5], [0.25, 0.75]], [0, 1]), 6)
    0.490415
    """
    if not (isinstance(eps, (int, float)) and 0.0 < eps < 1.0):
        raise ValueError(f"`eps` must be a float in (0, 1), got {eps!r}.")
    p = _prob_matrix("probs", probs)
    y = _class_labels("labels", labels, p.shape[0], p.shape[1], "probs")
    return float(np.mean(_nll_per_item(p, y, eps)))


def _nll_per_item(p: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    return -np.log(np.maximum(p[np.arange(p.shape[0]), y], eps))


# --------------------------------------------------------------------------------------------------------------
# discrimination and selective prediction (scores need not be probabilities: max logits work too)


def average_ranks(x: ArrayLike) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span (scipy's ``rankdata(method="average")``):
    the ranks behind `auroc` and the MSP paper's Mann-Whitney U test.

    >>> average_ranks([0.3, 0.1, 0.3, 0.7]).tolist()
    [2.5, 1.0, 2.5, 4.0]
    """
    x = np.asarray(x)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each tie group
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of ``confidence`` as a score for ``correct``: P(conf of a correct item > a wrong one).

    Rank-based (Mann-Whitney U with average ranks for ties): ``(R_correct - n_c (n_c + 1) / 2) / (n_c n_w)``, so a
    tie between a correct and a wrong item counts 1/2, exactly as sklearn's ``roc_auc_score``. ``confidence`` may be
    any real score (e.g. a max logit). With only correct or only wrong items the AUROC is undefined: returns NaN
    with an `UndefinedMetricWarning` saying so (rather than raising, so that one bootstrap resample or one perfect
    model does not abort a whole evaluation).

    >>> auroc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    0.75
    >>> auroc([0.5, 0.5], [1, 0])
    0.5
    """
    conf, corr = _conf_correct(confidence, correct, probability=False)
    n_pos = int(corr.sum())
    n_neg = corr.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        which = "correct" if n_neg == 0 else "wrong"
        return _undefined(f"auroc is undefined: all {corr.shape[0]} items are {which} (need both classes).")
    rank_sum = average_ranks(conf)[corr].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def risk_coverage_curve(confidence: ArrayLike, correct: ArrayLike) -> RiskCoverage:
    """Error rate among the ``k`` most confident items against coverage ``k / N``, for ``k = 1..N``.

    Items are sorted by confidence, descending. Tied confidences cannot be separated by any threshold, so within a
    tie block each item counts as the block's mean error: the risk at every ``k`` is its expectation over random
    orders of the tied items, independent of input order, and exact at the block ends (where thresholds can be).

    >>> rc = risk_coverage_curve([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    >>> rc.coverage.tolist(), rc.risk.round(4).tolist()
    ([0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 0.3333, 0.5])
    """
    conf, corr = _conf_correct(confidence, correct, probability=False)
    n = conf.shape[0]
    order = np.argsort(-conf, kind="stable")
    errors = (~corr[order]).astype(np.float64)
    # Blocks of equal confidence, in the descending order of `order`.
    _, starts, sizes = np.unique(-conf[order], return_index=True, return_counts=True)
    block_errors = np.add.reduceat(errors, starts)
    before = np.concatenate([[0.0], np.cumsum(block_errors)[:-1]])
    position = np.arange(n) - np.repeat(starts, sizes) + 1  # 1-based position inside the block
    cum_errors = np.repeat(before, sizes) + position * np.repeat(block_errors / sizes, sizes)
    k = np.arange(1, n + 1)
    return RiskCoverage(k / n, cum_errors / k)


def aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve, ``mean_k risk(k)`` over ``k = 1..N`` (Geifman et al., 2019); lower is better.

    Ties as in `risk_coverage_curve`.

    >>> round(aurc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]), 6)
    0.333333
    """
    return float(np.mean(risk_coverage_curve(confidence, correct).risk))


def selective_accuracy(confidence: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage * N)`` most confident items (ties as in `risk_coverage_curve`).

    >>> selective_accuracy([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], coverage=0.5)
    0.5
    """
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0.0 < coverage <= 1.0:
        raise ValueError(f"`coverage` must be a number in (0, 1], got {coverage!r}.")
    rc = risk_coverage_curve(confidence, correct)
    n = rc.risk.shape[0]
    # The tolerance keeps e.g. 0.3 * 10 = 3.0000000000000004 at k = 3 rather than 4.
    k = min(n, max(1, math.ceil(coverage * n - 1e-9)))
    return float(1.0 - rc.risk[k - 1])


# --------------------------------------------------------------------------------------------------------------
# bootstrap


def _per_item_losses(metric_fn: Callable, arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-item losses when ``metric_fn`` is a plain mean of them (Brier scores, NLL), else None."""
    eps = DEFAULT_NLL_EPS
    if isinstance(metric_fn, functools.partial) and metric_fn.func is nll and not metric_fn.args:
        if set(metric_fn.keywords) != {"eps"}:
            return None
        metric_fn, eps = nll, metric_fn.keywords["eps"]
    if metric_fn is top_label_brier_score and len(arrays) == 2:
        conf, corr = _conf_correct(*arrays)
        return (conf - corr) ** 2
    if metric_fn in (brier_score, nll) and len(arrays) == 2:
        p = _prob_matrix("probs", arrays[0])
        y = _class_labels("labels", arrays[1], p.shape[0], p.shape[1], "probs")
        return _brier_per_item(p, y) if metric_fn is brier_score else _nll_per_item(p, y, eps)
    return None


def _auroc_from_blocks(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC per row from (correct, wrong) counts per tie block, blocks in descending score order."""
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    # Wrong items scoring below a block: all of them minus those in this block or above; tied ones count 1/2.
    neg_below = n_neg[:, None] - np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(pos * (neg_below + 0.5 * neg), axis=1) / (n_pos * n_neg)


def _aurc_from_blocks(total: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """AURC per row from (item, error) counts per tie block, blocks in descending score order.

    Inside a block of size s after C items and E errors, each item carries r = e / s errors, so the block adds
    ``sum_{j=1..s} (E + j r) / (C + j) = e + (E - r C) (H(C + s) - H(C))`` with H the harmonic numbers.
    """
    n = int(total[0].sum())
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])
    before = np.cumsum(total, axis=1) - total
    errors_before = np.cumsum(errors, axis=1) - errors
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total > 0, errors / total, 0.0)
    span = harmonic[(before + total).astype(np.int64)] - harmonic[before.astype(np.int64)]
    return np.sum(errors + (errors_before - rate * before) * span, axis=1) / n


def _vectorised_resampler(
    metric_fn: Callable, arrays: Sequence[np.ndarray]
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function from a (resamples, n) index matrix to the metric on each resample, when that is cheap."""
    losses = _per_item_losses(metric_fn, arrays)
    if losses is not None:
        return lambda idx: losses[idx].mean(axis=1)
    if metric_fn in (auroc, aurc) and len(arrays) == 2:
        # Both depend only on the (correct, wrong) counts of each block of tied scores, so a resample needs only
        # a bincount over block ids, not a sort.
        conf, corr = _conf_correct(*arrays, probability=False)
        _, block = np.unique(-conf, return_inverse=True)  # block 0 holds the highest score
        n_blocks = int(block.max()) + 1
        key = 2 * block.reshape(-1).astype(np.int64) + (~corr)  # (block, wrong) in one integer

        def counts(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(correct, wrong) counts per block for each resample: one gather and one bincount per chunk."""
            flat = key[idx]
            flat += (2 * n_blocks * np.arange(idx.shape[0]))[:, None]
            c = np.bincount(flat.reshape(-1), minlength=idx.shape[0] * 2 * n_blocks).reshape(-1, n_blocks, 2)
            return c[..., 0].astype(np.float64), c[..., 1].astype(np.float64)

        if metric_fn is auroc:
            return lambda idx: _auroc_from_blocks(*counts(idx))

        def aurc_values(idx: np.ndarray) -> np.ndarray:
            correct, wrong = counts(idx)
            return _aurc_from_blocks(correct + wrong, wrong)

        return aurc_values
    return None


INTERVAL_METHODS = ("percentile", "basic")


def _group_index(groups: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, lengths): item positions sorted by group, and where each group's run starts and how long."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"`groups` must be 1-D with one entry per item ({n}), got shape {g.shape}.")
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    lengths = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return order, starts, lengths


def bootstrap_distribution(
    metric_fn: Callable[..., float],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, np.ndarray]:
    """``(point, values)``: ``metric_fn(*arrays)`` and its value on each of ``n_resamples`` bootstrap resamples
    (NaN where the metric is undefined on a resample).

    Items (rows along the first axis) are resampled with replacement jointly across all ``arrays``. With ``groups``
    (one id per item), whole groups are resampled instead (a cluster bootstrap): the tokens of one sequence are not
    independent, so an interval over tokens must resample sequences. See `bootstrap_ci` for the rest.
    """
    if not arrays:
        raise ValueError("`arrays` is empty: pass the metric's inputs after `metric_fn`.")
    if not callable(metric_fn):
        raise ValueError(f"`metric_fn` must be callable, got {type(metric_fn).__name__}.")
    _check_int("n_resamples", n_resamples, 1)
    arrs = [_to_numpy(f"arrays[{i}]", a) for i, a in enumerate(arrays)]
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(f"`arrays[{i}]` must have at least one dimension (items along the first).")
    n = arrs[0].shape[0]
    if n == 0:
        raise ValueError("`arrays[0]` is empty.")
    for i, a in enumerate(arrs[1:], start=1):
        if a.shape[0] != n:
            raise ValueError(f"`arrays[0]` has {n} items but `arrays[{i}]` has {a.shape[0]}.")

    point = float(metric_fn(*arrs))
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples, dtype=np.float64)
    with warnings.catch_warnings():
        # One warning about dropped resamples (in bootstrap_ci) says it all; do not repeat it per resample.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if groups is not None:
            order, starts, lengths = _group_index(groups, n)
            grouped = [a[order] for a in arrs]
            n_groups = lengths.shape[0]
            for r in range(n_resamples):
                pick = rng.integers(0, n_groups, size=n_groups)
                size = lengths[pick]
                # positions of the picked groups' items, run after run, without a Python loop over groups
                offsets = np.repeat(starts[pick] - (np.cumsum(size) - size), size)
                idx = offsets + np.arange(size.sum())
                values[r] = metric_fn(*(a[idx] for a in grouped))
            return point, values
        vectorised = _vectorised_resampler(metric_fn, arrs)
        chunk = max(1, _BOOTSTRAP_CHUNK_ENTRIES // n)
        for start in range(0, n_resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
            if vectorised is not None:
                values[start : start + idx.shape[0]] = vectorised(idx)
            else:
                for j, row in enumerate(idx):
                    values[start + j] = metric_fn(*(a[row] for a in arrs))
    return point, values


def interval_from_distribution(
    point: float, values: np.ndarray, confidence_level: float = 0.95, method: str = "percentile"
) -> tuple[float, float]:
    """A two-sided bootstrap interval from resampled values (NaNs ignored).

    ``"percentile"``: the quantiles of the resampled values. ``"basic"`` (reverse percentile): ``2 point - q_hi,
    2 point - q_lo``. The two differ when the estimator is biased: the plug-in ECE is biased upward, and its
    resampled values are biased upward once more, so the percentile interval sits above the plug-in value (it can
    exclude it) while the basic interval shifts down by the same bias and brackets the bias-corrected estimate
    ``2 point - mean(values)``.
    """
    _check_choice("method", method, INTERVAL_METHODS)
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence_level) / 2.0
    q_low, q_high = np.quantile(finite, [alpha, 1.0 - alpha])
    if method == "percentile":
        return float(q_low), float(q_high)
    return float(2 * point - q_high), float(2 * point - q_low)


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
    method: str = "percentile",
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``metric_fn(*arrays)`` and its bootstrap interval (``method``: "percentile" or
    "basic", see `interval_from_distribution`).

    Items (rows along the first axis) are resampled with replacement jointly across all ``arrays``, so pairs such
    as (confidence, correct) or (probs, labels) stay together; with ``groups``, whole groups of items are resampled
    (see `bootstrap_distribution`). The same ``seed`` gives the same resamples, hence the same interval, and the
    same resamples for every metric of one data set. Resample indices are drawn in vectorised chunks. For
    `top_label_brier_score`, `brier_score`, `nll` (also ``functools.partial(nll, eps=...)``), `auroc` and `aurc` the
    resampled values are computed for a whole chunk at once (identical up to float rounding); any other metric is
    called once per resample. Resamples on which the metric is NaN (e.g. AUROC of a one-class resample) are dropped
    with an `UndefinedMetricWarning` giving their number.

    >>> point, low, high = bootstrap_ci(top_label_brier_score, [0.9, 0.6, 0.8, 0.3], [1, 0, 1, 0], n_resamples=200)
    >>> low <= point <= high
    True
    """
    if not isinstance(confidence_level, (int, float)) or not 0.0 < confidence_level < 1.0:
        raise ValueError(f"`confidence_level` must be in (0, 1), got {confidence_level!r}.")
    _check_choice("method", method, INTERVAL_METHODS)
    point, values = bootstrap_distribution(metric_fn, *arrays, n_resamples=n_resamples, seed=seed, groups=groups)
    finite = ~np.isnan(values)
    if not finite.all():
        warnings.warn(
            f"bootstrap_ci: the metric was NaN on {int((~finite).sum())} of {n_resamples} resamples; "
            "the interval uses the others.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    if not finite.any():
        return point, float("nan"), float("nan")
    low, high = interval_from_distribution(point, values, confidence_level, method)
    return point, low, high


def ece_noise_floor(
    confidence: ArrayLike,
    n_bins: int = 15,
    binning: str = "equal_width",
    n_simulations: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """``(mean, 95th percentile)`` of the ECE of a *perfectly calibrated* predictor with these confidences.

    Each simulation draws ``correct ~ Bernoulli(confidence)`` item by item and bins as `ece` does. On a finite set
    even a calibrated model shows this much ECE: a measured ECE near the floor says nothing about miscalibration.

    >>> mean, q95 = ece_noise_floor([0.7] * 100, n_bins=10, n_simulations=500)
    >>> 0.02 < mean < 0.06 and q95 > mean   # |Binomial(100, 0.7)/100 - 0.7| averages about 0.037
    True
    """
    _check_int("n_simulations", n_simulations, 1)
    conf = _scores("confidence", confidence, probability=True)
    rng = np.random.default_rng(seed)
    sims = np.array([ece(conf, rng.random(conf.shape[0]) < conf, n_bins=n_bins, binning=binning)
                     for _ in range(n_simulations)])
    return float(sims.mean()), float(np.quantile(sims, 0.95))


def ece_estimate(
    confidence: ArrayLike,
    correct: ArrayLike,
    *,
    n_bins: int = 15,
    binning: str = "equal_width",
    groups: ArrayLike | None = None,
    n_resamples: int = 1000,
    n_simulations: int = 200,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The binned ECE with what it takes to read it on a few hundred items.

    Returns ``value`` (the plug-in binned ECE), ``debiased`` (bootstrap bias-corrected: ``2 value - mean of the
    resampled values``, clipped at 0), ``ci`` (the basic bootstrap interval, clipped to [0, 1]: it brackets the
    debiased value, where the percentile interval of a biased statistic can exclude even the plug-in value; the
    percentile one is kept as ``ci_percentile``), ``noise_floor`` / ``noise_floor_q95`` (`ece_noise_floor`) and the
    scheme. ``groups`` resamples whole groups (sequences of tokens) instead of items.

    >>> r = ece_estimate([0.9] * 50 + [0.6] * 50, [1] * 45 + [0] * 5 + [1] * 20 + [0] * 30, n_bins=10,
    ...                  n_resamples=200, n_simulations=50)
    >>> round(r["value"], 3), r["ci"][0] <= r["debiased"] <= r["ci"][1]
    (0.1, True)
    """
    metric = functools.partial(ece, n_bins=n_bins, binning=binning)
    out: dict[str, Any] = {"n_bins": n_bins, "binning": binning, "norm": "l1"}
    if n_resamples > 0:
        point, values = bootstrap_distribution(metric, confidence, correct, n_resamples=n_resamples, seed=seed,
                                               groups=groups)
        low, high = interval_from_distribution(point, values, confidence_level, "basic")
        p_low, p_high = interval_from_distribution(point, values, confidence_level, "percentile")
        out.update(value=point, debiased=max(0.0, 2 * point - float(np.nanmean(values))),
                   ci=[max(0.0, low), min(1.0, high)], ci_method="basic bootstrap (bias-aware), clipped to [0, 1]",
                   ci_percentile=[p_low, p_high], ci_level=confidence_level, n_resamples=n_resamples, seed=seed,
                   resampled="groups" if groups is not None else "items")
    else:
        out["value"] = metric(confidence, correct)
    if n_simulations > 0:
        floor, floor_q95 = ece_noise_floor(confidence, n_bins, binning, n_simulations, seed)
        out.update(noise_floor=floor, noise_floor_q95=floor_q95, n_simulations=n_simulations)
    return out


# --------------------------------------------------------------------------------------------------------------
# summary


def _accuracy(correct: np.ndarray) -> float:
    return float(np.mean(correct))


def calibration_summary(
    probs_or_conf: ArrayLike,
    correct_or_labels: ArrayLike,
    *,
    n_bins: int = 15,
    binning: str = "equal_width",
    unweighted_n_bins: int = 10,
    nll_eps: float = DEFAULT_NLL_EPS,
    n_resamples: int = 0,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The main metrics in one dict, each ``{"value": ..., <its scheme>}``, so result files carry the choices.

    Pass either an (N, K) probability matrix and gold labels (prediction = argmax, first index on ties;
    confidence = max probability) or 1-D confidences and 0/1 correctness. ``ece`` / ``mce`` / ``classwise_ece`` use
    ``n_bins`` and ``binning``; ``ece_equal_mass`` is the same ECE on equal-mass bins (AdaECE); ``unweighted_ce``
    is the MSP paper's metric on ``unweighted_n_bins`` equal-mass bins. Matrix input adds ``brier``, ``nll`` and
    ``classwise_ece``. With ``n_resamples > 0`` each entry also gets a bootstrap ``ci`` (same resamples for every
    metric): percentile for accuracy, Brier, NLL, AUROC and AURC; for the calibration errors, whose plug-in value is
    biased upward (so the percentile interval can miss it), the basic interval clipped to [0, 1] and a ``debiased``
    value (``ci_method`` says which).

    >>> s = calibration_summary([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]], [0, 1, 1, 1], n_bins=10)
    >>> s["accuracy"]["value"], round(s["ece"]["value"], 6), s["ece"]["n_bins"], s["ece"]["binning"]
    (0.75, 0.3, 10, 'equal_width')
    """
    _check_n_bins(n_bins)
    _check_choice("binning", binning, BINNING_SCHEMES)
    _check_int("unweighted_n_bins", unweighted_n_bins, 1)
    _check_int("n_resamples", n_resamples, 0)
    arr = _to_numpy("probs_or_conf", probs_or_conf)
    if arr.ndim == 2:
        probs = _prob_matrix("probs_or_conf", arr)
        labels = _class_labels(
            "correct_or_labels", correct_or_labels, probs.shape[0], probs.shape[1], "probs_or_conf"
        )
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == labels
    elif arr.ndim == 1:
        probs = labels = None
        conf = _scores("probs_or_conf", arr, probability=True)
        correct = _binary("correct_or_labels", correct_or_labels, conf.shape[0], "probs_or_conf")
    else:
        raise ValueError(f"`probs_or_conf` must be 1-D confidences or a 2-D (N, K) matrix, got shape {arr.shape}.")

    def entry(fn: Callable[..., float], args: tuple, scheme: dict[str, Any] | None = None, *, biased: bool = False,
              **notes: Any):
        """``fn(*args, **scheme)`` with the scheme (and descriptive notes) recorded next to the value. A
        calibration error (``biased``: its plug-in estimate is biased upward on finite samples) gets the basic
        bootstrap interval, clipped to [0, 1], and the bias-corrected ``debiased`` value; see
        `interval_from_distribution`."""
        metric = functools.partial(fn, **scheme) if scheme else fn
        out: dict[str, Any] = {"value": float(metric(*args)), **(scheme or {}), **notes}
        if n_resamples > 0:
            point, values = bootstrap_distribution(metric, *args, n_resamples=n_resamples, seed=seed)
            method = "basic" if biased else "percentile"
            low, high = interval_from_distribution(point, values, confidence_level, method)
            if biased:
                low, high = max(0.0, low), min(1.0, high)
                out["debiased"] = max(0.0, 2 * point - float(np.nanmean(values)))
            out.update(ci=[low, high], ci_level=confidence_level, ci_method=method, n_resamples=n_resamples,
                       seed=seed)
        return out

    top = (conf, correct)
    binned = {"n_bins": n_bins, "binning": binning}
    summary: dict[str, Any] = {
        "n": int(conf.shape[0]),
        "input": "probs" if probs is not None else "confidence",
        "accuracy": entry(_accuracy, (correct,)),
        "ece": entry(ece, top, {**binned, "norm": "l1"}, biased=True),
        "ece_equal_mass": entry(ece, top, {"n_bins": n_bins, "binning": "equal_mass", "norm": "l1"}, biased=True),
        "mce": entry(ece, top, {**binned, "norm": "max"}, biased=True),
        "unweighted_ce": entry(
            unweighted_binned_calibration_error,
            top,
            {"n_bins": unweighted_n_bins, "binning": "equal_mass", "right_edge": "closed"},
            biased=True, weighting="unweighted mean over non-empty bins",
        ),
        "brier_top_label": entry(top_label_brier_score, top, form="top_label"),
        "auroc": entry(auroc, top, score="confidence", positive="correct", ties="average ranks"),
        "aurc": entry(aurc, top, ties="mean error of the tie block"),
    }
    if probs is not None:
        pl = (probs, labels)
        summary["brier"] = entry(brier_score, pl, form="multiclass")
        summary["nll"] = entry(nll, pl, {"eps": nll_eps})
        summary["classwise_ece"] = entry(classwise_ece, pl, {**binned, "norm": "l1"}, biased=True)
    return summary
