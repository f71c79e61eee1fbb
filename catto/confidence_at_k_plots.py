"""Accuracy vs k of the Confidence@k selectors as a PNG (the `plots` extra: matplotlib, imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Mapping

LABELS = {"greedy": "greedy", "majority": "majority@k", "best_logprob": "best-of-k (seq. log-prob)",
          "confidence": "Confidence@k"}


def accuracy_vs_k_plot(curves: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike, *,
                       title: str = "") -> str:
    """One line per selector: accuracy against k (log2 axis), from `catto.confidence_at_k.accuracy_vs_k`'s output
    `{selector: {k: {"accuracy": ...}}}`. Returns the path written.

    Example:
        >>> import tempfile, os
        >>> curves = {"confidence": {"1": {"accuracy": 0.5}, "4": {"accuracy": 0.6}},
        ...           "majority": {"1": {"accuracy": 0.5}, "4": {"accuracy": 0.55}}}
        >>> os.path.getsize(accuracy_vs_k_plot(curves, os.path.join(tempfile.mkdtemp(), "acc.png"))) > 0
        True
    """
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ks_all: set[int] = set()
    for selector, per_k in curves.items():
        ks = sorted(int(k) for k in per_k)
        ks_all.update(ks)
        ax.plot(ks, [per_k[str(k)]["accuracy"] for k in ks], marker="o", label=LABELS.get(selector, selector),
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
