"""Prefix sharing: one sequence per preference pair, `prompt + chosen + rejected`, instead of TRL's two rows.

TRL 1.16 runs every pair as two right-padded rows, `[prompt + chosen; prompt + rejected]`, through the policy and
again through the reference pass, so the prompt is computed twice in each. With sharing, the backbone runs one row
per pair whose attention mask lets the rejected tokens see the prompt and the earlier rejected tokens but never the
chosen ones, and whose position ids continue from the prompt's end for both responses (Wang and Hegde 2024, arXiv
2410.20305). Every token then has exactly the context and position it has in TRL's layout, so the per-token values
are the same up to float rounding.

The seam (chosen so that TRL's losses, metrics and catto's fused statistics are untouched):

- `PrefixSharingCollator` wraps TRL's collator: the batch keeps its usual keys (the `(2B, L)` layout every loss
  reads) and gains the shared layout (`catto.core.prefix_sharing.shared_layout`): token ids and position ids `(B, N)`, a boolean attention mask
  `(B, N, N)` and, for every position of the `(2B, L)` layout, where its hidden state sits in the shared one.
- `share_backbone(causal_lm)` wraps the decoder (`causal_lm.base_model`): called with those keys (TRL passes every
  batch key to the model), it runs the shared rows and gathers the final hidden states back to `(2B, L, H)`; the
  prompt positions are read twice and their gradients add up. Called without them (generation, any other use), it
  is the decoder unchanged.

The mask is given to the attention backend in the form it takes (the notes behind this are in docs/design.md):
sdpa takes it as booleans; eager adds it to the scores, so it gets an additive float mask (a boolean one would be
silently ignored); models with sliding-window layers (Gemma 3) get one mask per layer type, the window measured in
position ids. flash-attention cannot express it and is refused before training (`check_prefix_sharing`), as are
options that change what the backbone receives (prompt-learning PEFT, MoE router losses, `keep_end` truncation,
vision inputs; padding-free batches are refused for every run by `CATTOConfig`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.prefix_sharing import SHARED_KEYS, SUPPORTED_ATTENTION, backend_mask, shared_layout
from ..errors import ConfigError


# ----------------------------------------------------------------------------------------------------------------
# The collator and the backbone


@dataclass
class PrefixSharingCollator:
    """TRL's preference collator plus the shared layout of the same examples (`shared_layout`)."""

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(examples)
        batch.update(shared_layout(examples, batch["input_ids"].size(1), pad_token_id=self.pad_token_id,
                                   max_length=self.max_length, pad_to_multiple_of=self.pad_to_multiple_of))
        return batch


# ----------------------------------------------------------------------------------------------------------------
# The backbone side


def share_backbone(causal_lm: torch.nn.Module) -> None:
    """Wrap `causal_lm`'s decoder so that a call carrying `SHARED_KEYS` runs the shared rows (see the module doc);
    idempotent. The wrapper is an instance attribute, so hooks of DDP, DeepSpeed and FSDP on the module still run."""
    backbone = causal_lm.base_model
    if getattr(backbone.forward, "_catto_shared", False):
        return
    original = backbone.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        shared = {key: kwargs.pop(key) for key in SHARED_KEYS if key in kwargs}
        if not shared:
            return original(*args, **kwargs)
        if args or kwargs.get("inputs_embeds") is not None:
            raise ValueError("prefix sharing received positional inputs or inputs_embeds (prompt-learning PEFT?); "
                             "it runs from input_ids only.")
        for key in ("input_ids", "attention_mask", "position_ids"):  # the (2B, L) layout: replaced by the shared one
            kwargs.pop(key, None)
        ids = shared["catto_shared_input_ids"]
        positions = shared["catto_shared_position_ids"]
        dtype = next(backbone.parameters()).dtype
        if not dtype.is_floating_point:  # quantised weights: the activations' dtype is the config's
            dtype = getattr(backbone.config, "dtype", None) or torch.float32
        mask = backend_mask(shared["catto_shared_mask"].to(ids.device), positions, backbone.config, dtype)
        out = original(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        hidden = out.last_hidden_state
        index = shared["catto_shared_index"].to(hidden.device)
        out.last_hidden_state = hidden.reshape(-1, hidden.size(-1)).index_select(0, index.reshape(-1)).view(
            *index.shape, hidden.size(-1))
        return out

    forward._catto_shared = True
    backbone.forward = forward


def check_prefix_sharing(args, model, *, peft_config=None) -> None:
    """Refuse, in one line naming the fix, what prefix sharing cannot run: attention backends that cannot take the
    mask, options that change what the backbone receives."""
    fix = "Fix: set prefix_sharing=False"
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "flex_attention":
        raise ConfigError(f"prefix_sharing does not build flex_attention block masks yet. {fix}, or load the model "
                          "with attn_implementation='sdpa'.")
    if impl not in SUPPORTED_ATTENTION:
        raise ConfigError(f"prefix_sharing needs an attention backend that takes a custom mask (sdpa or eager); this "
                          f"model uses {impl!r}, which cannot express it. {fix}, or load the model with "
                          "attn_implementation='sdpa'.")
    if args.truncation_mode != "keep_start":
        raise ConfigError(f"prefix_sharing needs truncation_mode='keep_start' (with {args.truncation_mode!r} the two "
                          f"rows of a pair keep different prompts). {fix}, or use truncation_mode='keep_start'.")
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False) or getattr(text_config, "num_experts", None):
        raise ConfigError("prefix_sharing does not compute MoE router losses on shared rows yet. "
                          f"{fix} for mixture-of-experts models.")
    if text_config is not model.config:
        raise ConfigError(f"prefix_sharing runs text-only causal LMs; {type(model).__name__} is a multimodal model. "
                          f"{fix}.")
    peft_type = getattr(peft_config, "peft_type", None) or getattr(
        getattr(model, "active_peft_config", None), "peft_type", None)
    if peft_type is not None and str(getattr(peft_type, "value", peft_type)) in (
            "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING"):
        raise ConfigError(f"prefix_sharing does not run prompt-learning PEFT ({peft_type}), which prepends virtual "
                          f"tokens to every row. {fix}, or use LoRA.")
