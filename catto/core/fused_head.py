"""The tiled LM-head statistics kernel: TRL's per-token outputs *and* the statistics of the CATTO term in one pass.

TRL 1.16 computes per-token log-probabilities tile by tile over the vocabulary (``trl.trainer.utils``), never
building ``(batch, seq, vocab)`` logits. The CATTO term needs three more numbers per response token: the
log-probabilities of the top-1 and top-2 tokens and the top-1/top-2 token ids. Computing them in a second pass over
the vocabulary would cost a second LM-head projection (forward and backward), which on small models is as expensive
as the backbone. :class:`ChunkedCalibrationStats` therefore folds every tile once into the running statistics TRL
needs (log-sum-exp, entropy, mean logit, ``log sum p^2``, is-top-1) *plus* a running top-2, and its backward
recomputes each tile once to form the gradient of all differentiable outputs together.

This module is the kernel only (tensors in, tensors out) and imports neither half of catto: the trainer wires it
into the policy forward (``catto.train.fused_forward``) and the held-out token evaluation (``catto.eval.token``)
calls it directly, so both read the very same numbers.
"""

from __future__ import annotations

import math

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from trl.trainer.utils import maybe_gather_lm_head_ctx

# TRL's optional per-token outputs, in the order of `FusedCausalLMOutput` and of TRL's kernel.
TRL_OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
# Vocabulary columns per tile; TRL's `_CHUNKED_LOGPROB_CHUNK_SIZE`.
DEFAULT_VOCAB_CHUNK_SIZE = 32768


def logit_transform_from_config(config) -> tuple[float, float | None]:
    """`(logit_scale, final_logit_softcapping)` of a causal LM config, read the way TRL's fused LM head reads them.

    Mirrors `trl.trainer.utils.add_fused_lm_head` (TRL 1.16) so that the CATTO statistics see exactly the
    distribution TRL's log-probabilities come from; `tests/test_fused_head.py` checks the two agree.
    """
    text_config = config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    return (1.0 if scale is None else scale), softcap


def _transform_(tile: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """Logit scale then soft-capping, in place on a float32 tile (a no-op for plain models)."""
    if logit_scale != 1.0:
        tile.mul_(logit_scale)
    if softcap is not None:
        tile.div_(softcap).tanh_().mul_(softcap)
    return tile


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`acc += a @ b` into an fp32 (or fp64) accumulator without first rounding the product to bf16/fp16.

    Rounding each vocabulary tile's gradient product to bf16 before summing biases training (TRL measured entropy
    drift); CUDA can write the fp32 product directly, elsewhere the inputs are upcast.
    """
    if acc.device.type == "cuda" and a.dtype in (torch.float16, torch.bfloat16):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _merge_top2(v1, i1, v2, i2, t1, j1, t2, j2):
    """Merge two sorted top-2 lists; the running one (lower vocabulary ids) wins ties, like `argmax`."""
    tile_wins = t1 > v1
    new_v1 = torch.where(tile_wins, t1, v1)
    new_i1 = torch.where(tile_wins, j1, i1)
    # Runner-up: if the tile's best won, compare the old best with the tile's second; else the old second with the
    # tile's best. Ties go to the running list, whose ids are lower.
    a_v, a_i = torch.where(tile_wins, v1, v2), torch.where(tile_wins, i1, i2)
    b_v, b_i = torch.where(tile_wins, t2, t1), torch.where(tile_wins, j2, j1)
    b_wins = b_v > a_v
    return new_v1, new_i1, torch.where(b_wins, b_v, a_v), torch.where(b_wins, b_i, a_i)


class ChunkedCalibrationStats(torch.autograd.Function):
    """Per-token LM-head statistics of `hidden @ weight.T (+ bias)` without materialising `[N, V]` logits.

    Returns `(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1, top_log_probs, top_ids)`; the TRL
    outputs not named in `outputs` are empty placeholders, never `None` (`chunked_calibration_stats` turns them into
    `None`): under `torch.compile` (torch 2.13, any backend) an `autograd.Function` whose `None` outputs come before
    non-differentiable ones loses the gradient of a later output, here `top_log_probs`, without an error.
    `log_probs`, `entropy` and `top_log_probs` are differentiable.

    Every output is a function of the log-softmax at a few token ids, so the backward is
    `dL/dz_j = sum_k g_k (1[j = id_k] - p_j) - g_H p_j (log p_j + H)` over the label and the top-2 ids, formed on
    the recomputed tile and pushed through the projection with fp32 accumulation.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        bias: torch.Tensor | None,  # [V]
        targets: torch.Tensor,  # [N]
        token_chunk_size: int,
        vocab_chunk_size: int,
        logit_scale: float,
        softcap: float | None,
        outputs: tuple[str, ...],
    ):
        ctx.set_materialize_grads(False)
        device, n_tokens, vocab = hidden.device, hidden.shape[0], weight.shape[0]
        if vocab < 2:
            raise ValueError("The CATTO statistics need a vocabulary of at least 2 tokens (top-2 probabilities).")
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        # Statistics accumulate in fp32 (fp64 when the inputs are fp64, e.g. for gradcheck).
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        f32 = dict(device=device, dtype=acc_dtype)
        running_max = torch.full((n_tokens,), -math.inf, **f32)
        sum_exp = torch.zeros((n_tokens,), **f32)
        z_sum_exp = torch.zeros((n_tokens,), **f32) if "entropy" in outputs else None
        sq_sum_exp = torch.zeros((n_tokens,), **f32) if "log_sum_sq_probs" in outputs else None
        z_sum = torch.zeros((n_tokens,), **f32) if "mean_logits" in outputs else None
        target_logit = torch.zeros((n_tokens,), **f32)
        top_v = [torch.full((n_tokens,), -math.inf, **f32) for _ in range(2)]
        top_i = [torch.zeros((n_tokens,), device=device, dtype=torch.long) for _ in range(2)]

        for r0 in range(0, n_tokens, token_chunk_size):
            r1 = min(r0 + token_chunk_size, n_tokens)
            rows = slice(r0, r1)
            h = hidden[rows].to(compute_dtype)
            t = targets[rows]
            for c0 in range(0, vocab, vocab_chunk_size):
                c1 = min(c0 + vocab_chunk_size, vocab)
                z = h @ weight[c0:c1].to(compute_dtype).t()
                if bias is not None:
                    z = z + bias[c0:c1].to(compute_dtype)
                z = _transform_(z.to(acc_dtype), logit_scale, softcap)
                if z_sum is not None:
                    z_sum[rows] += z.sum(-1)
                # Top-2 of the tile: first maximum, then the maximum with it masked out.
                t1, j1 = z.max(-1)
                if c1 - c0 > 1:
                    z.scatter_(1, j1[:, None], -math.inf)
                    t2, j2 = z.max(-1)
                    z.scatter_(1, j1[:, None], t1[:, None])
                else:
                    t2, j2 = torch.full_like(t1, -math.inf), j1
                v1, i1, v2, i2 = _merge_top2(top_v[0][rows], top_i[0][rows], top_v[1][rows], top_i[1][rows],
                                             t1, j1 + c0, t2, j2 + c0)
                top_v[0][rows], top_i[0][rows], top_v[1][rows], top_i[1][rows] = v1, i1, v2, i2
                # Online log-sum-exp (and entropy / sum p^2 accumulators) rescaled to the new running maximum.
                m_old = running_max[rows]
                m_new = torch.maximum(m_old, t1)
                rescale = torch.exp(m_old - m_new)
                local = t - c0
                in_tile = (local >= 0) & (local < c1 - c0)
                target_logit[rows] = torch.where(
                    in_tile, z.gather(1, local.clamp(0, c1 - c0 - 1)[:, None]).squeeze(1), target_logit[rows]
                )
                e = torch.sub(z, m_new[:, None]).exp_()
                if z_sum_exp is not None:
                    z_sum_exp[rows] = z_sum_exp[rows] * rescale + (e * z).sum(-1)
                if sq_sum_exp is not None:
                    sq_sum_exp[rows] = sq_sum_exp[rows] * rescale * rescale + (e * e).sum(-1)
                sum_exp[rows] = sum_exp[rows] * rescale + e.sum(-1)
                running_max[rows] = m_new

        log_z = running_max + torch.log(sum_exp)
        log_probs = target_logit - log_z
        empty = log_z.new_empty(0)  # the placeholder of an output not asked for (see the class docstring)
        entropy = log_z - z_sum_exp / sum_exp if z_sum_exp is not None else empty.clone()
        log_sum_sq = torch.log(sq_sum_exp) - 2 * torch.log(sum_exp) if sq_sum_exp is not None else empty.clone()
        mean_logits = z_sum / vocab if z_sum is not None else empty.clone()
        top_ids = torch.stack(top_i, dim=-1)
        is_top1 = top_ids[:, 0] == targets if "is_top1" in outputs else empty.new_empty(0, dtype=torch.bool)
        top_log_probs = torch.stack(top_v, dim=-1) - log_z[:, None]

        has_entropy = z_sum_exp is not None
        ctx.save_for_backward(hidden, weight, bias, targets, top_ids, log_z, entropy)
        ctx.config = (acc_dtype, compute_dtype, token_chunk_size, vocab_chunk_size, logit_scale, softcap, has_entropy)
        ctx.mark_non_differentiable(log_sum_sq, mean_logits, is_top1, top_ids, *(() if has_entropy else (entropy,)))
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1, top_log_probs, top_ids

    @staticmethod
    def backward(ctx, g_logp, g_entropy, _g_sq, _g_mean, _g_top1, g_top, _g_ids):  # type: ignore[override]
        hidden, weight, bias, targets, top_ids, log_z, entropy = ctx.saved_tensors
        acc_dtype, compute_dtype, token_chunk_size, vocab_chunk_size, logit_scale, softcap, has_entropy = ctx.config
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n_tokens = hidden.shape[0]
        # Per-token weights of (1[j = id] - p_j) for the label and the top-2 ids, as one [N, 3] gather/scatter.
        ids = torch.cat([targets[:, None], top_ids], dim=1)
        coef = torch.zeros(ids.shape, device=hidden.device, dtype=acc_dtype)
        if g_logp is not None:
            coef[:, 0] = g_logp
        if g_top is not None:
            coef[:, 1:] = g_top
        coef_sum = coef.sum(1)
        g_entropy = g_entropy.to(acc_dtype) if g_entropy is not None and has_entropy else None

        with maybe_gather_lm_head_ctx(weight, bias):
            grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=acc_dtype) if need_h else None
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc_dtype) if need_w else None
            grad_b = torch.zeros(bias.shape, device=bias.device, dtype=acc_dtype) if need_b else None
            vocab = weight.shape[0]
            for r0 in range(0, n_tokens, token_chunk_size):
                r1 = min(r0 + token_chunk_size, n_tokens)
                rows = slice(r0, r1)
                h = hidden[rows].to(compute_dtype)
                for c0 in range(0, vocab, vocab_chunk_size):
                    c1 = min(c0 + vocab_chunk_size, vocab)
                    w = weight[c0:c1].to(compute_dtype)
                    y = h @ w.t()
                    if bias is not None:
                        y = y + bias[c0:c1].to(compute_dtype)
                    y = y.to(acc_dtype)
                    if logit_scale != 1.0:
                        y.mul_(logit_scale)
                    tanh = None
                    if softcap is not None:
                        tanh = torch.tanh(y / softcap)
                        y = tanh * softcap
                    log_p = y.sub_(log_z[rows, None])
                    if g_entropy is not None:
                        # d(entropy)/dz_j = -p_j (log p_j + H)
                        factor = -(coef_sum[rows, None] + g_entropy[rows, None] * (log_p + entropy[rows, None]))
                    else:
                        factor = -coef_sum[rows, None]
                    grad = log_p.exp_().mul_(factor)  # -p_j * (sum_k g_k + entropy term), in place
                    local = ids[rows] - c0
                    in_tile = (local >= 0) & (local < c1 - c0)
                    grad.scatter_add_(1, local.clamp(0, c1 - c0 - 1), coef[rows] * in_tile)
                    if softcap is not None:
                        grad *= 1 - tanh * tanh
                    if logit_scale != 1.0:
                        grad *= logit_scale
                    grad = grad.to(compute_dtype)
                    if grad_h is not None:
                        _addmm_fp32(grad_h[rows], grad, w)
                    if grad_w is not None:
                        _addmm_fp32(grad_w[c0:c1], grad.t(), h)
                    if grad_b is not None:
                        grad_b[c0:c1] += grad.sum(0, dtype=acc_dtype)
        return (
            grad_h.to(hidden.dtype) if grad_h is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None, None, None, None, None, None,
        )


def chunked_calibration_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    token_chunk_size: int = 1024,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    outputs: tuple[str, ...] = (),
):
    """Functional entry to :class:`ChunkedCalibrationStats` (keyword arguments, validated sizes).

    Example:
        >>> import torch
        >>> h, w = torch.randn(5, 8), torch.randn(11, 8)
        >>> logp, *_, top_logp, top_ids = chunked_calibration_stats(h, w, None, torch.arange(5), token_chunk_size=2)
        >>> torch.allclose(top_logp[:, 0], torch.log_softmax(h @ w.T, -1).max(-1).values, atol=1e-5)
        True
    """
    if token_chunk_size < 1 or vocab_chunk_size < 1:
        raise ValueError(f"Chunk sizes must be >= 1, got token={token_chunk_size}, vocab={vocab_chunk_size}.")
    unknown = set(outputs) - set(TRL_OPTIONAL_OUTPUTS)
    if unknown:
        raise ValueError(f"Unknown outputs {sorted(unknown)}; allowed: {list(TRL_OPTIONAL_OUTPUTS)}.")
    stats = ChunkedCalibrationStats.apply(
        hidden, weight, bias, targets, token_chunk_size, vocab_chunk_size, logit_scale, softcap, tuple(outputs)
    )
    log_probs, *optional, top_log_probs, top_ids = stats
    optional = [x if name in outputs else None for name, x in zip(TRL_OPTIONAL_OUTPUTS, optional)]
    return (log_probs, *optional, top_log_probs, top_ids)


def head_weight_and_bias(lm_head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(weight, bias)` of an LM head, gathered into full tensors when FSDP2 shards them."""
    weight, bias = lm_head.weight, lm_head.bias
    # FSDP2 exposes sharded parameters as DTensors; gather the head once, as TRL does.
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        if bias is not None:
            bias = bias.full_tensor()
    return weight, bias


def unshard_fsdp_head(model: torch.nn.Module) -> None:
    """FSDP2: gather an LM head that is an FSDP unit of its own through that unit, before the fused pass reads it.

    The fused pass reads `lm_head.weight` without calling `lm_head`, so a head that is its own FSDP unit (not in the
    unit whose forward is running) is never unsharded by a pre-forward hook and its weight is the sharded DTensor.
    `DTensor.full_tensor()` (TRL 1.16's gather) then has a backward that gives each rank the slice of its *own*
    gradient: no reduce-scatter, no average over ranks, so every rank's head shard learns from its own micro-batch
    only. `unshard()` gathers through FSDP instead: the weight is the unsharded parameter and FSDP's post-backward
    (run for every unit at the end of backward) reduce-scatters and averages its gradient like any other. A no-op
    when the head shares the running unit (accelerate's default wrap) or FSDP is not used. See docs/upstream.md.
    """
    head = model.get_output_embeddings()
    if isinstance(head, FSDPModule):
        head.unshard()
