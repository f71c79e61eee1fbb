"""The shared layout of preference pairs: one row per pair, `prompt + chosen + rejected`, in which the rejected
tokens never see the chosen ones and the position ids of both responses continue from the prompt's end (Wang and
Hegde 2024, arXiv 2410.20305). Pure tensor bookkeeping, used by training (`catto.train.prefix_sharing`) and by the
held-out token evaluation (`catto.eval.token`), so both compute each token with exactly the context and position it
has in TRL's two-row layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Attention backends that take a custom 4D mask as given (transformers 5: `masking_utils` returns a 4D mask unchanged);
# flash-attention splits sequences on position resets and cannot express it.
SUPPORTED_ATTENTION = ("sdpa", "eager")
SHARED_KEYS = ("catto_shared_input_ids", "catto_shared_position_ids", "catto_shared_mask", "catto_shared_index")


def shared_layout(examples: Sequence[dict[str, Any]], width: int, *, pad_token_id: int,
                  max_length: int | None = None, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """The shared rows of a batch whose TRL layout is `(2B, width)`: `prompt + chosen + rejected` per pair, truncated
    exactly as TRL's `keep_start` truncation cuts `prompt + chosen` and `prompt + rejected` at `max_length`.

    Returns `SHARED_KEYS`: `catto_shared_input_ids` and `catto_shared_position_ids` `(B, N)`; `catto_shared_mask`
    `(B, N, N)`, True where a query may attend a key (causal; rejected never sees chosen; a padding position sees only
    itself, so no row is empty); `catto_shared_index` `(2B, width)`, the flat index into `(B * N)` of the hidden
    state that position of TRL's layout reads (positions past a row's end point at its pair's first token: their
    outputs are masked out by TRL, like padding).

    Example:
        >>> out = shared_layout([{"prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8, 9]}], 4, pad_token_id=0)
        >>> out["catto_shared_input_ids"].tolist(), out["catto_shared_position_ids"].tolist()
        ([[5, 6, 7, 8, 9]], [[0, 1, 2, 2, 3]])
        >>> out["catto_shared_index"].tolist()  # chosen row: 5 6 7 (pad); rejected row: 5 6 8 9
        [[0, 1, 2, 0], [0, 1, 3, 4]]
        >>> out["catto_shared_mask"][0, 3].tolist()  # the first rejected token sees the prompt and itself
        [True, True, False, True, False]
    """
    rows = []
    for ex in examples:
        prompt, chosen, rejected = list(ex["prompt_ids"]), list(ex["chosen_ids"]), list(ex["rejected_ids"])
        if max_length is not None:
            prompt = prompt[:max_length]
            keep = max_length - len(prompt)
            chosen, rejected = chosen[:keep], rejected[:keep]
        rows.append((prompt, chosen, rejected))
    n = max(len(p) + len(c) + len(r) for p, c, r in rows)
    if pad_to_multiple_of:
        n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    b = len(rows)
    ids = torch.full((b, n), pad_token_id, dtype=torch.long)
    positions = torch.zeros((b, n), dtype=torch.long)
    segment = torch.full((b, n), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, -1 padding
    index = torch.zeros((2 * b, width), dtype=torch.long)
    for i, (p, c, r) in enumerate(rows):
        lp, lc, lr = len(p), len(c), len(r)
        ids[i, : lp + lc + lr] = torch.tensor(p + c + r, dtype=torch.long)
        positions[i, : lp + lc] = torch.arange(lp + lc)
        positions[i, lp + lc: lp + lc + lr] = torch.arange(lp, lp + lr)
        segment[i, :lp], segment[i, lp: lp + lc], segment[i, lp + lc: lp + lc + lr] = 0, 1, 2
        base = i * n
        index[i, : lp + lc] = base + torch.arange(lp + lc)
        index[i, lp + lc:] = base
        index[b + i, :lp] = base + torch.arange(lp)
        index[b + i, lp: lp + lr] = base + lp + lc + torch.arange(lr)
        index[b + i, lp + lr:] = base
    return {"catto_shared_input_ids": ids, "catto_shared_position_ids": positions,
            "catto_shared_mask": segment_mask(segment), "catto_shared_index": index}


def segment_mask(segment: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask `(B, N, N)` of rows whose positions are labelled by `segment` `(B, N)`: 0 the
    shared prefix, 1, 2, ... the continuations that follow it, -1 padding. A query sees, causally, the prefix and its
    own segment, never another continuation (for a pair: rejected never sees chosen); a padding position sees only
    itself, so no softmax row is empty."""
    n = segment.size(1)
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((n, n), dtype=torch.bool, device=segment.device).tril()
    mask = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))
    return mask | (torch.eye(n, dtype=torch.bool, device=segment.device) & (q < 0))


def continuation_layout(requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *,
                        pad_token_id: int) -> dict[str, Any]:
    """One row per `(context, continuations)`: the context, then every continuation, each seeing the context and
    itself only, its position ids continuing from the context's end: the cloze scoring of all options of an item
    in one pass, each option token computed with exactly the context and position it has in `context + option`.

    Returns `input_ids`, `position_ids` `(B, N)`, `mask` `(B, N, N)` (see `segment_mask`) and `predictors`: per
    request, per continuation, the flat indices into `(B * N)` of the hidden states that predict its tokens (the
    context's last position for its first token, then its own previous positions).

    Example:
        >>> out = continuation_layout([([5, 6], [[7], [8, 9]])], pad_token_id=0)
        >>> out["input_ids"].tolist(), out["position_ids"].tolist(), out["predictors"]
        ([[5, 6, 7, 8, 9]], [[0, 1, 2, 2, 3]], [[[1], [1, 3]]])
    """
    if any(not ctx or not conts or not all(conts) for ctx, conts in requests):
        raise ValueError("continuation_layout needs a non-empty context and non-empty continuations per request.")
    n = max(len(ctx) + sum(len(c) for c in conts) for ctx, conts in requests)
    b = len(requests)
    ids = torch.full((b, n), pad_token_id, dtype=torch.long)
    positions = torch.zeros((b, n), dtype=torch.long)
    segment = torch.full((b, n), -1, dtype=torch.long)
    predictors = []
    for i, (ctx, conts) in enumerate(requests):
        lc = len(ctx)
        ids[i, :lc], positions[i, :lc], segment[i, :lc] = torch.tensor(list(ctx)), torch.arange(lc), 0
        start, per_request = lc, []
        for k, cont in enumerate(conts, start=1):
            end = start + len(cont)
            ids[i, start:end] = torch.tensor(list(cont))
            positions[i, start:end] = torch.arange(lc, lc + len(cont))
            segment[i, start:end] = k
            per_request.append([i * n + lc - 1] + [i * n + p for p in range(start, end - 1)])
            start = end
        predictors.append(per_request)
    return {"input_ids": ids, "position_ids": positions, "mask": segment_mask(segment), "predictors": predictors}


def backend_mask(mask: torch.Tensor, positions: torch.Tensor, config, dtype: torch.dtype):
    """The shared boolean mask `(B, N, N)` in the form the model's attention takes: `(B, 1, N, N)` booleans for sdpa,
    an additive float mask for eager, and a `{layer type: mask}` dict with the sliding window applied (measured in
    position ids) for models with sliding-window layers."""
    impl = getattr(config, "_attn_implementation", None) or "eager"

    def form(m: torch.Tensor) -> torch.Tensor:
        m = m[:, None]
        if impl == "sdpa":
            return m
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)

    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types and window:
        distance = positions[:, :, None] - positions[:, None, :]
        sliding = mask & (distance < window)
        sliding |= torch.eye(mask.size(-1), dtype=torch.bool, device=mask.device)  # no empty row
        return {"full_attention": form(mask), "sliding_attention": form(sliding)}
    return form(mask)
