"""The CATTO token-level calibration term as pure tensor functions.

Reconstruction of arXiv 2601.23096 (see docs/design.md §3). For a response token t with next-token distribution p_t and
the token y_t that the sequence actually continues with:

- confidence ``c_t``: ``max_v p_t(v)`` (``"max"``) or ``p_t(y_t)`` (``"label"``);
- best wrong token ``v*_t = argmax_{v != y_t} p_t(v)``: the top-1 token unless that is ``y_t``, then the top-2;
- margin: ``p(y) - p(v*)`` (``"prob"``) or ``log p(y) - log p(v*)`` (``"logit"``);
- correctness surrogate ``z_t = sigmoid(scale * margin)``, optionally detached (a fixed target);
- per-token loss ``|c_t - z_t|`` (``"l1"``, CATTO), ``BCE(c_t, z_t)`` (``"bce"``, the paper's DPO+BCE baseline) or
  ``(c_t - z_t)^2`` (``"l2"``, a Brier-style squared form, for the loss-form study);
- the term is the mean over the selected response tokens of the micro-batch.

Everything takes per-token log-probabilities (of the label and of the top-2 tokens) so it runs on the output of the
fused LM head as well as on full logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

CONFIDENCE_CHOICES = ("max", "label")
MARGIN_CHOICES = ("prob", "logit")
LOSS_FORM_CHOICES = ("l1", "bce", "l2")
# torch.nn.BCELoss clamps its logs at -100 for the same reason: c in {0, 1} must give a finite loss.
_BCE_LOG_FLOOR = -100.0


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def best_wrong_log_prob(labels: torch.Tensor, top_ids: torch.Tensor, top_log_probs: torch.Tensor) -> torch.Tensor:
    """log p(v*) of the most likely token that is not the label: top-1 unless top-1 is the label, then top-2.

    `top_ids` / `top_log_probs` have a trailing dimension of 2 (top-1, top-2) over the shape of `labels`.
    """
    top1_is_label = top_ids[..., 0] == labels
    return torch.where(top1_is_label, top_log_probs[..., 1], top_log_probs[..., 0])


def confidence_log_prob(label_log_probs: torch.Tensor, top_log_probs: torch.Tensor, confidence: str = "max"):
    """log c_t: the log max-probability (``"max"``) or the log-probability of the sequence token (``"label"``)."""
    _check_choice("confidence", confidence, CONFIDENCE_CHOICES)
    return top_log_probs[..., 0] if confidence == "max" else label_log_probs


def calibration_margin(label_log_probs: torch.Tensor, wrong_log_probs: torch.Tensor, margin: str = "logit"):
    """Margin of the label over the best wrong token, in probability (``"prob"``) or log space (``"logit"``).

    ``sigmoid`` of the ``"logit"`` margin equals ``p_y / (p_y + p_v*)``; the ``"prob"`` margin lies in [-1, 1], so its
    sigmoid only spans [0.27, 0.73].
    """
    _check_choice("margin", margin, MARGIN_CHOICES)
    if margin == "prob":
        return label_log_probs.exp() - wrong_log_probs.exp()
    return label_log_probs - wrong_log_probs


def surrogate_target(margin: torch.Tensor, scale: float = 1.0, detach: bool = True) -> torch.Tensor:
    """Correctness surrogate z_t = sigmoid(scale * margin), detached when it serves as a fixed target."""
    target = torch.sigmoid(scale * margin)
    return target.detach() if detach else target


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_p)) for log_p <= 0, stable at both ends and finite at log_p = 0.

    The clamp away from 0 is straight-through: the value is that of the clamped input but the gradient still flows,
    so a saturated confidence (c -> 1, common in fp32 once one logit leads by ~14 nats) keeps BCE's push *down*
    instead of losing the (1 - z) log(1 - c) term's gradient.
    """
    eps = 1e-7 if log_p.dtype == torch.float64 else 1e-6
    log_p = log_p - (log_p - log_p.clamp(max=-eps)).detach()
    return torch.where(log_p > -0.6931, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


def per_token_calibration_loss(confidence_log_probs: torch.Tensor, target: torch.Tensor, loss_form: str = "l1"):
    """Per-token loss between the confidence c_t = exp(log c_t) and the surrogate z_t.

    ``"l1"``: |c - z| (CATTO; upper-bounds the L1 calibration error by Jensen). ``"bce"``:
    -(z log c + (1 - z) log(1 - c)) with logs floored at -100 like `torch.nn.BCELoss`. ``"l2"``: (c - z)^2 (its
    gradient shrinks with the gap, where L1's is constant and BCE's grows as c nears 0 or 1).
    """
    _check_choice("loss_form", loss_form, LOSS_FORM_CHOICES)
    if loss_form == "l1":
        return (confidence_log_probs.exp() - target).abs()
    if loss_form == "l2":
        return (confidence_log_probs.exp() - target).square()
    log_c = confidence_log_probs.clamp(min=_BCE_LOG_FLOOR)
    log_not_c = _log1mexp(confidence_log_probs).clamp(min=_BCE_LOG_FLOOR)
    return -(target * log_c + (1 - target) * log_not_c)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is set; an empty mask gives a zero still connected to `values`' graph."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


class CalibrationTerm(NamedTuple):
    """The reduced term plus the per-token pieces it was built from (for metrics and tests)."""

    loss: torch.Tensor  # scalar, mean of `per_token_loss` over `mask`
    per_token_loss: torch.Tensor
    confidence: torch.Tensor  # c_t
    target: torch.Tensor  # z_t
    mask: torch.Tensor


def calibration_term(
    labels: torch.Tensor,
    label_log_probs: torch.Tensor,
    top_log_probs: torch.Tensor,
    top_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    confidence: str = "max",
    margin: str = "logit",
    target_scale: float = 1.0,
    detach_target: bool = True,
    loss_form: str = "l1",
) -> CalibrationTerm:
    """The CATTO term of a micro-batch from per-token statistics.

    Args:
        labels: token ids y_t, any shape S.
        label_log_probs: log p_t(y_t), shape S.
        top_log_probs, top_ids: log-probabilities and ids of the top-2 tokens, shape S + (2,).
        mask: which tokens count (response tokens of the selected sequences), shape S.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 1.0, 0.0]])
        >>> logp = logits.log_softmax(-1)
        >>> top = logp.topk(2, dim=-1)
        >>> term = calibration_term(torch.tensor([1]), logp[:, 1], top.values, top.indices, torch.tensor([True]))
        >>> round(term.target.item(), 4)  # sigmoid(log p1 - log p0) = p1 / (p0 + p1)
        0.2689
    """
    if target_scale <= 0:
        raise ValueError(f"`target_scale` must be > 0, got {target_scale}.")
    log_c = confidence_log_prob(label_log_probs, top_log_probs, confidence)
    wrong = best_wrong_log_prob(labels, top_ids, top_log_probs)
    z = surrogate_target(calibration_margin(label_log_probs, wrong, margin), target_scale, detach_target)
    per_token = per_token_calibration_loss(log_c, z, loss_form)
    mask = mask.bool()
    return CalibrationTerm(masked_mean(per_token, mask), per_token, log_c.exp(), z, mask)


def binned_calibration_counts(
    confidence: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor, n_bins: int = 15
) -> torch.Tensor:
    """Per-bin `[count, sum of confidence, sum of correct]` (shape `(3, n_bins)`) over equal-width bins of [0, 1]
    (15 by default, as every ECE catto reports).

    Sums rather than means so that counts from several micro-batches or ranks add up before the ECE is taken.
    A confidence of exactly 1 falls in the last bin.
    """
    mask = mask.bool()
    dtype = torch.float32 if confidence.device.type == "mps" else torch.float64  # MPS has no float64
    conf = confidence.detach()[mask].to(dtype)
    corr = correct.detach()[mask].to(dtype)
    idx = (conf * n_bins).long().clamp(0, n_bins - 1)
    out = torch.zeros(3, n_bins, dtype=dtype, device=conf.device)
    out[0].index_add_(0, idx, torch.ones_like(conf))
    out[1].index_add_(0, idx, conf)
    out[2].index_add_(0, idx, corr)
    return out


def ece_from_binned_counts(counts: torch.Tensor) -> float:
    """Expected calibration error sum_b |sum correct_b - sum conf_b| / N from `binned_calibration_counts` output."""
    total = counts[0].sum()
    if total == 0:
        return 0.0
    return ((counts[2] - counts[1]).abs().sum() / total).item()
