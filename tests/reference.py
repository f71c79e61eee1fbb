"""An independent, full-logits implementation of the CATTO term, written without `catto.core.calibration`.

It materialises the whole `(tokens, vocab)` softmax, which is exactly what the library avoids; tests compare the
library's pure functions and its fused LM-head path against it.
"""

from __future__ import annotations

import torch


def reference_term(logits, labels, mask, confidence="max", margin="logit", scale=1.0, detach=True, loss_form="l1"):
    """Returns (mean loss over mask, per-token loss, confidence, target) from full logits `(N, V)`."""
    probs = torch.softmax(logits, dim=-1)
    p_label = probs.gather(-1, labels[:, None])[:, 0]
    wrong = probs.scatter(-1, labels[:, None], -1.0)  # exclude the label, then take the max
    p_wrong = wrong.max(-1).values
    c = probs.max(-1).values if confidence == "max" else p_label
    if margin == "prob":
        m = p_label - p_wrong
    else:
        m = torch.log(p_label) - torch.log(p_wrong)
    z = torch.sigmoid(scale * m)
    if detach:
        z = z.detach()
    if loss_form == "l1":
        per_token = (c - z).abs()
    elif loss_form == "l2":
        per_token = (c - z) ** 2
    else:
        per_token = -(z * torch.log(c) + (1 - z) * torch.log1p(-c))
    maskf = mask.to(per_token.dtype)
    return (per_token * maskf).sum() / maskf.sum().clamp(min=1), per_token, c, z
