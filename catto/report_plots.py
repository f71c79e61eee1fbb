"""The side-by-side reliability figure of `catto report` (matplotlib, imported lazily: the `plots` extra)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .metrics import ece, reliability_bins


def reliability_grid(curves: Mapping[str, tuple[Sequence[float], Sequence[bool]]], path: str | os.PathLike, *,
                     n_bins: int = 15, binning: str = "equal_width", title: str = "") -> str:
    """One reliability panel per method (accuracy per confidence bin, gap to the diagonal, ECE in the panel title),
    in one row with shared axes. `curves` maps a method to `(confidence, correct)`. Returns the path written.

    Example:
        >>> import tempfile, os
        >>> p = reliability_grid({"a": ([0.9, 0.6], [1, 0]), "b": ([0.7, 0.5], [1, 1])},
        ...                      os.path.join(tempfile.mkdtemp(), "grid.png"))
        >>> os.path.getsize(p) > 0
        True
    """
    from .plots import _pyplot, _save

    if not curves:
        raise ValueError("reliability_grid needs at least one method's (confidence, correct).")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.8), sharey=True, squeeze=False)
    for ax, (label, (conf, correct)) in zip(axes[0], curves.items()):
        bins = reliability_bins(conf, correct, n_bins=n_bins, binning=binning)
        lo, hi = bins.edges[:-1], bins.edges[1:]
        centers, widths, filled = (lo + hi) / 2, hi - lo, bins.count > 0
        ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
        ax.bar(centers[filled], bins.accuracy[filled], width=widths[filled], color="tab:blue", edgecolor="black",
               lw=0.5)
        gap_bottom = np.minimum(bins.accuracy, bins.mean_confidence)[filled]
        ax.bar(centers[filled], np.abs(bins.accuracy - bins.mean_confidence)[filled], bottom=gap_bottom,
               width=widths[filled], color="tab:red", alpha=0.35, lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{label}\nECE {ece(conf, correct, n_bins=n_bins, binning=binning):.3f} (n = {len(conf)})",
                     fontsize=9)
    axes[0][0].set_ylabel("accuracy")
    if title:
        fig.suptitle(f"{title} · {n_bins} {binning.replace('_', '-')} bins", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)
