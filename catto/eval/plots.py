"""Reliability diagrams, risk-coverage curves and Confidence@k's accuracy vs k as PNG files (the `plots` extra:
matplotlib, imported on first use)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .metrics import aurc, ece, reliability_bins, risk_coverage_curve


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; works without a display
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Plots need matplotlib, a dependency of catto: `pip install matplotlib`.") from err
    return plt


def reliability_diagram(confidence: Sequence[float], correct: Sequence[bool], path: str | os.PathLike, *,
                        n_bins: int = 15, binning: str = "equal_width", title: str = "", unit: str = "items") -> str:
    """Accuracy vs confidence per bin, with gap bars to the diagonal and a bin-count histogram below (counting
    `unit`: "items", or "tokens" for token calibration); the ECE (same bins) is in the title. Returns the path
    written.

    Example:
        >>> import tempfile, os
        >>> p = reliability_diagram([0.9, 0.8, 0.6, 0.3], [1, 0, 1, 0], os.path.join(tempfile.mkdtemp(), "r.png"))
        >>> os.path.getsize(p) > 0
        True
    """
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _draw_reliability(ax, hist, confidence, correct, n_bins=n_bins, binning=binning, title=title, unit=unit)
    fig.tight_layout()
    return _save(fig, plt, path)


def _draw_reliability(ax, hist, confidence, correct, *, n_bins: int, binning: str, title: str,
                      unit: str = "items") -> None:
    bins = reliability_bins(confidence, correct, n_bins=n_bins, binning=binning)
    value = ece(confidence, correct, n_bins=n_bins, binning=binning)
    lo, hi = bins.edges[:-1], bins.edges[1:]
    centers, widths = (lo + hi) / 2, (hi - lo)
    filled = bins.count > 0
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
    ax.bar(centers[filled], bins.accuracy[filled], width=widths[filled], color="tab:blue", edgecolor="black",
           lw=0.5, label="accuracy")
    gap_bottom = np.minimum(bins.accuracy, bins.mean_confidence)[filled]
    gap = np.abs(bins.accuracy - bins.mean_confidence)[filled]
    ax.bar(centers[filled], gap, bottom=gap_bottom, width=widths[filled], color="tab:red", alpha=0.35,
           edgecolor="tab:red", hatch="//", lw=0.5, label="gap to mean confidence")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title + chr(10) if title else ''}ECE = {value:.4f} ({n_bins} {binning.replace('_', '-')} bins, "
                 f"n = {int(bins.count.sum())})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, bins.count, width=widths, color="tab:gray", edgecolor="black", lw=0.5)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence")
    hist.set_ylabel(unit)


def reliability_diagrams(curves: Mapping[str, tuple[Sequence[float], Sequence[bool]]], path: str | os.PathLike, *,
                         n_bins: int = 15, binning: str = "equal_width", title: str = "", unit: str = "items") -> str:
    """Reliability diagrams side by side, one panel per `{label: (confidence, correct)}` (same bins, same axes), in
    one PNG: the figure for comparing methods or models on the same items. `unit` names what the histograms count
    ("items", or "tokens"). Returns the path written.

    Example:
        >>> import tempfile, os
        >>> curves = {"dpo": ([0.9, 0.8, 0.6], [1, 0, 1]), "catto": ([0.7, 0.6, 0.6], [1, 0, 1])}
        >>> os.path.getsize(reliability_diagrams(curves, os.path.join(tempfile.mkdtemp(), "r.png"))) > 0
        True
    """
    if not curves:
        raise ValueError("reliability_diagrams needs at least one (confidence, correct) curve.")
    plt = _pyplot()
    n = len(curves)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 5.6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    for i, (label, (confidence, correct)) in enumerate(curves.items()):
        _draw_reliability(axes[0, i], axes[1, i], confidence, correct, n_bins=n_bins, binning=binning, title=label,
                          unit=unit)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


def risk_coverage_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[bool]]], path: str | os.PathLike, *,
                       title: str = "") -> str:
    """Selective risk (error rate among the most confident) vs coverage, one line per method; AURC in the legend.

    `curves` maps a label to `(confidence, correct)`. Returns the path written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (confidence, correct) in curves.items():
        rc = risk_coverage_curve(confidence, correct)
        ax.plot(rc.coverage, rc.risk, label=f"{label} (AURC {aurc(confidence, correct):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk (error rate)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> str:
    from ..io import atomic_write

    path = os.fspath(path)
    with atomic_write(path, "wb") as f:  # a half-written PNG never replaces a good one
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


SELECTOR_LABELS = {"greedy": "greedy", "majority": "majority@k", "best_logprob": "best-of-k (seq. log-prob)",
          "confidence": "Confidence@k"}


def accuracy_vs_k_plot(curves: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike, *,
                       title: str = "") -> str:
    """One line per selector: accuracy against k (log2 axis), from
    `catto.methods.confidence_at_k.accuracy_vs_k`'s output
    `{selector: {k: {"accuracy": ...}}}`. Returns the path written.

    Example:
        >>> import tempfile, os
        >>> curves = {"confidence": {"1": {"accuracy": 0.5}, "4": {"accuracy": 0.6}},
        ...           "majority": {"1": {"accuracy": 0.5}, "4": {"accuracy": 0.55}}}
        >>> os.path.getsize(accuracy_vs_k_plot(curves, os.path.join(tempfile.mkdtemp(), "acc.png"))) > 0
        True
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ks_all: set[int] = set()
    for selector, per_k in curves.items():
        ks = sorted(int(k) for k in per_k)
        ks_all.update(ks)
        ax.plot(ks, [per_k[str(k)]["accuracy"] for k in ks], marker="o", label=SELECTOR_LABELS.get(selector, selector),
                ls="--" if selector == "greedy" else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ks_all), [str(k) for k in sorted(ks_all)])
    ax.set_xlabel("k (samples per question)")
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)
