"""The policy forward that yields TRL's per-token outputs *and* the statistics of the CATTO term in one pass.

TRL 1.16 patches the policy's ``forward`` (``trl.trainer.utils.add_fused_lm_head``) so that, called with
``fused_lm_head=True``, it projects the final hidden states through the LM head tile by tile and returns per-token
log-probabilities without ever building ``(batch, seq, vocab)`` logits. The CATTO term needs three more numbers per
response token: the log-probabilities of the top-1 and top-2 tokens and the top-1/top-2 token ids. Computing them in
a second pass over the vocabulary would cost a second LM-head projection (forward and backward), which on small
models is as expensive as the backbone. The kernel (:mod:`catto.core.fused_head`) therefore folds every tile once
into the running statistics TRL needs (log-sum-exp, entropy, mean logit, ``log sum p^2``, is-top-1) *plus* a
running top-2, and its backward recomputes each tile once to form the gradient of all differentiable outputs
together.

:func:`add_catto_head` wraps the forward that TRL installed. Without the ``catto_stats`` keyword the call goes to
TRL's forward untouched (reference passes, generation, the extra ``return_outputs`` forward). With
``catto_stats="fused"`` the backbone runs once and this module's kernel replaces TRL's; with
``catto_stats="detached"`` TRL's forward runs bit-for-bit as usual and the statistics are computed afterwards,
without gradient, from the captured final hidden states (used for the ``catto/*`` metrics of a ``catto_alpha=0``
baseline, so that baseline stays identical to ``trl.DPOTrainer``).
"""

from __future__ import annotations

import functools
import types
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

from ..core.fused_head import (
    DEFAULT_VOCAB_CHUNK_SIZE,
    TRL_OPTIONAL_OUTPUTS,
    chunked_calibration_stats,
    head_weight_and_bias,
    logit_transform_from_config,
    unshard_fsdp_head,
)

CATTO_STATS_MODES = ("fused", "detached")


@dataclass
class CATTOFusedCausalLMOutput(FusedCausalLMOutput):
    """[`~trl.trainer.utils.FusedCausalLMOutput`] plus the per-token statistics of the CATTO term.

    Declared as dataclass fields (not ad-hoc keys) because DDP rebuilds model outputs from their fields.

    Args:
        top_log_probs (`torch.Tensor` of shape `(batch, seq_len - 1, 2)`):
            Log-probabilities of the most and second most likely next tokens; zero where the label is `-100`.
        top_ids (`torch.Tensor` of shape `(batch, seq_len - 1, 2)`, `long`):
            Their token ids (first maximum wins ties, like `argmax`); zero where the label is `-100`.
    """

    top_log_probs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None



def router_aux_loss_function(model: torch.nn.Module):
    """The load-balancing loss of `model`'s own family: `load_balancing_loss_func` of the module that defines its class
    (`modeling_qwen2_moe` for `Qwen2MoeForCausalLM`, ...), called the way the model's forward calls it.

    Returns `fn(router_logits, attention_mask) -> aux_loss`, or None when the family has no such function with the
    usual `(gate_logits, num_experts, top_k, attention_mask)` signature (e.g. Doge's takes a number of keys too): the
    trainer then refuses to train with the term and the auxiliary loss rather than compute another family's loss.
    """
    import inspect
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    if fn is None:
        return None
    if list(inspect.signature(fn).parameters)[:4] != ["gate_logits", "num_experts", "top_k", "attention_mask"]:
        return None
    text_config = model.config.get_text_config()
    # The model's forward passes `self.num_experts` / `self.num_experts_per_tok` (vision-language wrappers: their text
    # config's); the config's value is the same number under another name in some families (Mixtral:
    # `num_local_experts`, aliased as `num_experts`).
    num_experts = getattr(model, "num_experts", None) or text_config.num_experts
    top_k = getattr(model, "num_experts_per_tok", None) or text_config.num_experts_per_tok
    return lambda router_logits, attention_mask: fn(router_logits, num_experts, top_k, attention_mask)


def router_aux_loss(model: torch.nn.Module, router_logits, attention_mask) -> torch.Tensor:
    """The MoE load-balancing loss of the fused pass, with the family's own function (`router_aux_loss_function`)."""
    fn = router_aux_loss_function(model)
    if fn is None:  # the trainer refuses this case in `__init__`; a direct caller gets the same message
        raise NotImplementedError(f"{type(model).__name__}: no `load_balancing_loss_func(gate_logits, num_experts, "
                                  "top_k, attention_mask)` in its modeling module; catto cannot compute its router "
                                  "auxiliary loss in the fused pass.")
    return fn(router_logits, attention_mask)


def add_catto_head(
    model: torch.nn.Module,
    outputs: tuple[str, ...] = ("log_probs", "entropy", "mean_logits", "is_top1"),
    token_chunk_size: int = 1024,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    compact: bool = False,
) -> None:
    """Wrap the forward that `trl.trainer.utils.add_fused_lm_head` installed on `model` with the CATTO statistics.

    Call it on the same module TRL patched (the base model under PEFT). `outputs` are TRL's per-token outputs the
    trainer asked TRL for; the fused path computes the same ones. With `compact`, fused calls without `catto_stats`
    (reference passes, plain DPO) also go through this module's kernel over the response positions only, where TRL's
    own head scores every position on devices without Triton (CPU).
    """
    # Whether a call without `catto_stats` (the reference pass, plain DPO) also scores only the response positions,
    # through this module's kernel (prefix sharing turns it on; off, such calls stay TRL's own, bit for bit). Read
    # at call time, so a later `add_catto_head(..., compact=True)` on an already wrapped model takes effect.
    model._catto_compact = compact or getattr(model, "_catto_compact", False)
    # A second trainer on the same model makes TRL wrap the current forward again; ours must then go on top once
    # more (the older wrapper, called without `catto_stats`, just passes through).
    if getattr(getattr(model.forward, "__func__", None), "_catto_wrapper", False):
        return
    trl_forward = model.forward
    logit_scale, softcap = logit_transform_from_config(model.config)
    trl_outputs = tuple(o for o in outputs if o in TRL_OPTIONAL_OUTPUTS)
    text_config = model.config.get_text_config()

    def stats(hidden, labels, grad: bool, lm_head):
        mask = labels != -100
        weight, bias = head_weight_and_bias(lm_head)
        hidden = hidden.to(weight.device)
        mask = mask.to(weight.device)
        with (nullcontext() if grad else torch.no_grad()), maybe_gather_lm_head_ctx(weight, bias):
            per_token = chunked_calibration_stats(
                hidden[mask], weight, bias, labels.to(weight.device)[mask],
                token_chunk_size=token_chunk_size, vocab_chunk_size=vocab_chunk_size,
                logit_scale=logit_scale, softcap=softcap, outputs=trl_outputs if grad else (),
            )
        # `masked_scatter` keeps an all-masked micro-batch connected to the graph (a differentiable zero).
        out = []
        for x in per_token:
            if x is None:
                out.append(None)
                continue
            shape = mask.shape + x.shape[1:]
            full_mask = mask if x.dim() == 1 else mask[..., None].expand(shape)
            out.append(x.new_zeros(shape).masked_scatter(full_mask, x))
        return mask, out

    @functools.wraps(type(model).forward)
    def forward(self, *args, catto_stats=None, **kwargs):
        if kwargs.get("fused_lm_head"):
            unshard_fsdp_head(self)  # also for TRL's own fused pass (catto_alpha=0), which has the same flaw
        if catto_stats is None:
            if not (self._catto_compact and kwargs.get("fused_lm_head") and kwargs.get("labels") is not None):
                return trl_forward(*args, **kwargs)
            catto_stats = "fused"  # the same outputs TRL returns, from the response positions only
        if catto_stats not in CATTO_STATS_MODES:
            raise ValueError(f"catto_stats must be one of {CATTO_STATS_MODES}, got {catto_stats!r}.")
        if not kwargs.get("fused_lm_head") or kwargs.get("labels") is None:
            raise ValueError("catto_stats needs `fused_lm_head=True` and `labels` (the DPO policy pass).")
        if kwargs.get("shift_labels") is not None:
            raise NotImplementedError("catto_stats does not support pre-shifted `shift_labels` (context parallel).")
        labels = kwargs["labels"]

        if catto_stats == "detached":
            # TRL's forward unchanged; its backbone output is captured and scored afterwards without gradient.
            captured = []
            handle = self.base_model.register_forward_hook(lambda m, i, o: captured.append(o.last_hidden_state))
            try:
                trl_out = trl_forward(*args, **kwargs)
            finally:
                handle.remove()
            _, (_, _, _, _, _, top_logp, top_ids) = stats(
                captured[-1][:, :-1].detach(), labels[:, 1:], grad=False, lm_head=self.get_output_embeddings()
            )
            return CATTOFusedCausalLMOutput(**dict(trl_out.items()), top_log_probs=top_logp, top_ids=top_ids)

        # Fused: one backbone pass, one tiled LM-head pass for TRL's outputs and the CATTO statistics.
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("fused_lm_head")
        kwargs.pop("labels")
        kwargs.pop("shift_labels", None)
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        backbone_outputs = self.base_model(*args, **kwargs)
        mask, per_token = stats(
            backbone_outputs.last_hidden_state[:, :-1], labels[:, 1:], grad=True, lm_head=self.get_output_embeddings()
        )
        log_probs, entropy, log_sum_sq, mean_logits, is_top1, top_logp, top_ids = per_token
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        aux_loss = None
        if kwargs.get("output_router_logits"):
            aux_loss = router_aux_loss(self, backbone_outputs.router_logits, kwargs.get("attention_mask"))
            loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
        return CATTOFusedCausalLMOutput(
            loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq, mean_logits=mean_logits,
            is_top1=is_top1, label_mask=mask, aux_loss=aux_loss, top_log_probs=top_logp, top_ids=top_ids,
        )

    forward._catto_wrapper = True
    model.forward = types.MethodType(forward, model)
