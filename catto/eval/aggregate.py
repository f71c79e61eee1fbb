"""Corpus-level aggregation of per-item results (lm-evaluation-harness style): one summary per dataset, every
choice (scoring, confidence definition, binning, bootstrap) recorded next to the numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import bootstrap_ci, brier_score, calibration_summary, nll
from .results import ItemResult


def padded_probability_matrix(results: Sequence[ItemResult]) -> tuple[np.ndarray, np.ndarray]:
    """(N, K_max) option probabilities (items with fewer options padded with zero-probability columns) and gold
    labels. Zero columns change neither the multiclass Brier score nor the NLL of an item."""
    k_max = max(len(r.option_probs) for r in results)
    probs = np.zeros((len(results), k_max))
    for i, r in enumerate(results):
        probs[i, : len(r.option_probs)] = r.option_probs
    probs /= probs.sum(axis=1, keepdims=True)  # float32 round-off from the scorer
    return probs, np.array([r.gold for r in results])


def summarize_results(results: Sequence[ItemResult], *, n_bins: int = 15, binning: str = "equal_width",
                      n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy and calibration of labelled `results`.

    With the same number of options for every item, and every item answered, the (N, K) matrix is summarised (adding
    multiclass Brier, NLL and class-wise ECE). With ragged option counts, predictions that are not the argmax of their
    option probabilities (a sampled answer), confidences that are not the max option probability (a verbalised
    confidence), or items without an answer (a generation
    that could not be parsed: it counts as wrong, at the confidence its method gave it), the top-label metrics come
    from (confidence, correct) and the multiclass Brier and NLL from the zero-padded matrix. Abstention is not
    applied here: the metrics are those of the full set; methods report their selective scores themselves.
    """
    labelled = [r for r in results if r.gold is not None]
    if not labelled:
        raise ValueError("No labelled results to summarise: metrics need gold labels.")
    n_unanswered = sum(r.prediction is None for r in labelled)
    n_options = {len(r.option_probs) for r in labelled}
    probs, labels = padded_probability_matrix(labelled)
    kwargs = dict(n_bins=n_bins, binning=binning, n_resamples=n_resamples, seed=seed)
    # A sampled answer (Confidence@k) need not be the argmax of its option distribution: then the matrix form, which
    # predicts the argmax, would misreport; (confidence, correct) is what the method actually answered.
    # Likewise a method whose confidence is not its max option probability (SECL's verbalised confidence).
    matrix_is_the_answer = all(r.prediction == int(np.argmax(r.option_probs))
                               and abs(r.confidence - max(r.option_probs)) < 1e-6 for r in labelled)
    if len(n_options) == 1 and not n_unanswered and matrix_is_the_answer:
        summary = calibration_summary(probs, labels, **kwargs)
    else:
        conf = np.array([r.confidence for r in labelled])
        correct = np.array([r.prediction is not None and bool(r.correct) for r in labelled])
        summary = calibration_summary(conf, correct, **kwargs)
        for key, fn, scheme in (("brier", brier_score, {"form": "multiclass"}), ("nll", nll, {})):
            entry = {"value": fn(probs, labels), **scheme, "padding": "zero columns"}
            if n_resamples > 0:  # same seed, hence the same resamples as the other metrics' intervals
                _, low, high = bootstrap_ci(fn, probs, labels, n_resamples=n_resamples, seed=seed)
                entry.update(ci=[low, high], ci_level=0.95, n_resamples=n_resamples, seed=seed)
            summary[key] = entry
    summary["n_options"] = sorted(n_options)
    summary["n_unanswered"] = n_unanswered
    return summary


def format_cell(entry: dict[str, Any] | None) -> str:
    """One metric entry (`{"value", "ci"?}`) as table text: `0.123 [0.100, 0.150]`, `nan`, or `-` when absent."""
    if entry is None:
        return "-"
    value = entry["value"]
    text = "nan" if value != value else f"{value:.3f}"
    if "ci" in entry:
        text += f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"
    return text


def format_table(rows: dict[str, dict[str, Any]], keys: Sequence[str] = ("accuracy", "ece", "brier", "auroc")) -> str:
    """Markdown table of `{dataset: summary}` with bootstrap intervals where present."""

    lines = ["| data | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, summary in rows.items():
        lines.append(f"| {name} | {summary['n']} | " + " | ".join(format_cell(summary.get(k)) for k in keys) + " |")
    return "\n".join(lines)
