"""`CATTODPOTrainer`: `trl.DPOTrainer` plus the CATTO token-level calibration term.

Wiring only; the math is in `catto.core.calibration`, the fused LM-head statistics in `catto.core.fused_head`.

TRL 1.16 keeps the DPO logic in the private `_compute_loss` and documents the public `compute_loss` as the override
point, so that is the one method overridden here. The policy's forward is reached through the `model` argument of
`_compute_loss`, while the reference pass goes through `self.model` / `self.ref_model`. `compute_loss` therefore hands
`_compute_loss` a thin proxy of `model` that adds `catto_stats=...` to the policy's fused call and keeps its outputs:
the statistics come from the policy pass only, also under PEFT where the reference pass runs through the same module
with its adapters disabled.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.utils import is_peft_available
from trl import DPOConfig, DPOTrainer

from ..core.calibration import (
    binned_calibration_counts,
    calibration_term,
    ece_from_binned_counts,
)
from .._logging import get_logger
from ..errors import ConfigError
from .config import CATTOConfig, check_sequence_sharding
from .fused_forward import add_catto_head, router_aux_loss_function

logger = get_logger(__name__)

if is_peft_available():
    from peft import PeftModel
else:  # pragma: no cover - peft is a runtime dependency
    PeftModel = ()

_CITATION = """\
@article{parikh2026catto,
    title        = {{CATTO: Balancing Preferences and Confidence in Language Models}},
    author       = {Parikh, N. and Panchal, K. and Sai, A. and Shivaswamy, P. and Lan, A.},
    journal      = {arXiv preprint arXiv:2601.23096},
    year         = 2026,
    eprint       = {2601.23096},
    archivePrefix = {arXiv}
}"""


class _PolicyCall:
    """Stands in for `model` inside `DPOTrainer._compute_loss`: tags the policy's fused call, records its outputs.

    Only the first call with `fused_lm_head=True` is the policy pass; any other call (the deprecated
    `return_outputs` forward) goes through untouched. Attribute access falls through to the wrapped model.
    """

    def __init__(self, model, mode: str):
        self._model = model
        self._mode = mode
        self.outputs = None

    def __call__(self, *args, **kwargs):
        if kwargs.get("fused_lm_head") and self.outputs is None:
            self.outputs = self._model(*args, catto_stats=self._mode, **kwargs)
            return self.outputs
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):  # our own attributes (and copy/pickle probes) never fall through
            raise AttributeError(name)
        return getattr(self._model, name)


def _check_eos(args: CATTOConfig, processing_class) -> int | None:
    """The EOS id `catto_exclude_eos` leaves out (a processor's tokenizer's); a one-line error when there is none."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    eos = getattr(tokenizer, "eos_token_id", None)
    if args.catto_exclude_eos and eos is None:
        raise ConfigError("catto_exclude_eos=True, but the processing class has no eos_token_id to leave out. Fix: "
                          "set the tokenizer's eos_token, or catto_exclude_eos=False.")
    return eos


def _as_catto_config(args) -> CATTOConfig:
    """A plain `trl.DPOConfig` (built by code that does not know catto) becomes a `CATTOConfig` with every DPO setting
    and catto's defaults, said in one log line; anything else is a `TypeError`."""
    if not isinstance(args, DPOConfig):
        raise TypeError(f"`args` must be a `CATTOConfig` (or a `trl.DPOConfig`), got `{type(args).__name__}`.")
    converted = CATTOConfig.from_dpo_config(args)
    own = {f.name for f in dataclasses.fields(CATTOConfig)}
    dropped = sorted(f.name for f in dataclasses.fields(args) if f.init and f.name not in own)
    defaults = ", ".join(f"{f.name}={getattr(converted, f.name)!r}" for f in dataclasses.fields(CATTOConfig)
                         if f.name in ("catto_alpha", "catto_confidence", "catto_margin", "catto_loss_form"))
    logger.info(f"args is a {type(args).__name__}, not a CATTOConfig: converted with CATTOConfig.from_dpo_config "
                f"(every DPO setting kept; catto defaults {defaults}"
                + (f"; fields CATTOConfig does not have were dropped: {dropped}" if dropped else "") + ").")
    return converted


def _check_router_aux_loss(trainer: DPOTrainer, policy) -> None:
    """With the term on, the fused pass computes a MoE model's load-balancing loss with its family's own function;
    refuse, in one line, a family whose function catto cannot call (rather than use another family's)."""
    if trainer.aux_loss_enabled and trainer._catto_mode == "fused" and router_aux_loss_function(policy) is None:
        raise ConfigError(f"{type(policy).__name__} returns router logits for a load-balancing loss, but its modeling "
                          "module has no load_balancing_loss_func(gate_logits, num_experts, top_k, attention_mask) for "
                          "catto's fused pass to call. Fix: router_aux_loss_coef=0.0 (no auxiliary loss), or "
                          "catto_alpha=0 (plain DPO).")


def _keep_4bit_weights_trainable(model) -> int:
    """Keep bitsandbytes' 4-bit layers of `model` in their trainable layout on CPU; returns how many had to be restored.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a `Linear4bit` weight, on its first forward in eval mode
    without gradient (an eval loop, the calibration callback, a reference precompute), into an inference-only layout
    and keeps it: every later training forward then runs a kernel without autograd, so no gradient flows back through
    the quantized layers (LoRA on q_proj/v_proj gets none; with adapters on every linear layer the gradients are
    silently wrong), and a layer with a bias (Qwen2's q/k/v) fails on an in-place add. This turns the repacking off
    for the model and restores, with bitsandbytes' own inverse (the one it uses to save), a layer that was already
    repacked. A no-op without bitsandbytes 4-bit layers, and on GPUs.
    """
    restored = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)
            restored += 1
    return restored


class CATTODPOTrainer(DPOTrainer):
    """
    Trainer for DPO with the CATTO calibration term (arXiv 2601.23096), a drop-in replacement for
    [`~trl.DPOTrainer`]: same constructor, same datasets, every DPO `loss_type`, PEFT, reference precompute, gradient
    checkpointing and accumulation, and the eval loop.

    The loss is `DPO loss + catto_alpha * mean_t l_t` over the response tokens of the micro-batch, with `l_t` the
    per-token calibration loss of `catto.core.calibration.calibration_term`. The statistics it needs (log-probabilities of
    the label and the top-2 tokens) come from the same tiled LM-head pass as TRL's log-probabilities, inside the
    policy's forward, so no `(batch, seq, vocab)` logits are built and no second backbone pass runs.

    Logged, for train and eval and gathered across processes: `catto/calibration_loss`, `catto/confidence`,
    `catto/target`, `catto/token_accuracy` (top-1 = label) and `catto/token_ece` (top-label ECE of the max
    probability, `catto_ece_bins` equal-width bins, over the same tokens).

    Example:

    ```python
    from datasets import load_dataset
    from catto import CATTOConfig, CATTODPOTrainer

    dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
    trainer = CATTODPOTrainer(
        model="Qwen/Qwen3-0.6B",
        args=CATTOConfig(output_dir="Qwen3-0.6B-CATTO", catto_alpha=0.1),
        train_dataset=dataset,
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "dpo", "catto"]
    _name = "CATTO"
    _paper = {
        "title": "CATTO: Balancing Preferences and Confidence in Language Models",
        "id": "2601.23096",
        "citation": _CITATION,
    }

    def __init__(self, model, ref_model=None, args: CATTOConfig | None = None, *pargs, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = CATTOConfig(f"{str(name).split('/')[-1]}-CATTO")
        elif not isinstance(args, CATTOConfig):
            args = _as_catto_config(args)
        if isinstance(model, torch.nn.Module):
            _keep_4bit_weights_trainable(model)  # before TRL's reference precompute runs it without gradient
        given = kwargs.get("processing_class", pargs[3] if len(pargs) > 3 else None)
        if given is not None:  # before TRL's own data preparation, which also needs it
            _check_eos(args, given)
        super().__init__(model, ref_model, args, *pargs, **kwargs)
        self._catto_eos_id = _check_eos(args, self.processing_class)
        if _keep_4bit_weights_trainable(self.model):  # a model TRL loaded, then ran without gradient (precompute)
            logger.info("bitsandbytes had repacked 4-bit weights for CPU inference; restored them for training.")
        # Sequence sharding set up by the launcher (accelerate config) rather than `args.parallelism_config`.
        check_sequence_sharding(getattr(self.accelerator, "parallelism_config", None), args)
        # Per-mode sums behind the catto/* metrics, accumulated over the logging window (see `log`).
        self._catto_sums = {"train": None, "eval": None}
        # Which pass computes the statistics: "fused" (with gradient, replaces TRL's LM-head kernel on the policy
        # pass), "detached" (TRL's pass untouched, statistics without gradient for the metrics), or none at all.
        if args.catto_enabled:
            self._catto_mode = "fused"
        elif args.catto_log_metrics:
            self._catto_mode = "detached"
        else:
            self._catto_mode = None
        # Also without statistics (mode None): the wrapper gathers an LM head that is an FSDP2 unit of its own before
        # TRL's fused pass reads it (`fused_head.unshard_fsdp_head`), and otherwise passes TRL's calls through.
        outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
        if self.use_weighting:
            outputs += ("log_sum_sq_probs",)
        policy = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        _check_router_aux_loss(self, policy)
        add_catto_head(policy, outputs=outputs, token_chunk_size=args.catto_chunk_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._catto_mode is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        policy_call = _PolicyCall(model, self._catto_mode)
        result = super().compute_loss(policy_call, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if policy_call.outputs is None:  # pragma: no cover - guards against a TRL refactor
            raise RuntimeError("The DPO policy pass did not go through `model(..., fused_lm_head=True)`.")
        term = self._catto_term(policy_call.outputs, inputs)
        if self._catto_mode == "fused":
            loss = loss + self.args.catto_alpha * term.loss
        self._log_catto_metrics(term, policy_call.outputs, inputs)
        return (loss, result[1]) if return_outputs else loss

    def _catto_term(self, outputs, inputs):
        """The calibration term of this micro-batch from the policy's per-token statistics."""
        shift_mask = inputs["completion_mask"][..., 1:].bool()
        seq_len = shift_mask.size(1)
        labels = inputs["input_ids"][..., 1:]
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens.
        label_logp = outputs.log_probs[:, -seq_len:]
        top_logp = outputs.top_log_probs[:, -seq_len:]
        top_ids = outputs.top_ids[:, -seq_len:]
        if self.args.catto_sequences == "chosen":
            n_chosen = shift_mask.size(0) // 2
            shift_mask = shift_mask.clone()
            shift_mask[n_chosen:] = False
        if self.args.catto_exclude_eos:
            shift_mask = shift_mask & (labels != self._catto_eos_id)
        args = self.args
        return calibration_term(
            labels, label_logp, top_logp, top_ids, shift_mask,
            confidence=args.catto_confidence, margin=args.catto_margin, target_scale=args.catto_target_scale,
            detach_target=args.catto_detach_target, loss_form=args.catto_loss_form,
        )

    def _log_catto_metrics(self, term, outputs, inputs) -> None:
        """Accumulate this micro-batch's token counts, sums and ECE bin counts, gathered across processes.

        Sums, not per-batch ratios: ECE is not additive and is biased upward on small samples, so `log` computes
        every catto/* value once from the sums of the whole logging window (for eval: the whole eval set).
        """
        if not self.args.catto_log_metrics:
            return
        mode = "train" if self.model.training else "eval"
        seq_len = term.mask.size(1)
        max_prob = outputs.top_log_probs[:, -seq_len:, 0].detach().float().exp()
        correct = (outputs.top_ids[:, -seq_len:, 0] == inputs["input_ids"][..., 1:]).float()
        mask = term.mask.float()
        sums = torch.stack([
            mask.sum(),
            (term.per_token_loss.detach().float() * mask).sum(),
            (term.confidence.detach().float() * mask).sum(),
            (term.target.detach().float() * mask).sum(),
            (correct * mask).sum(),
        ])
        bins = binned_calibration_counts(max_prob, correct, term.mask, self.args.catto_ece_bins).to(sums)
        # One collective per micro-batch, float32 on the device (MPS has no float64); accumulated in float64 on CPU.
        packed = self.accelerator.gather(torch.cat([sums, bins.flatten()])[None]).sum(0).double().cpu()
        running = self._catto_sums[mode]
        self._catto_sums[mode] = packed if running is None else running + packed

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        packed = self._catto_sums.get(mode)
        if packed is not None:
            self._catto_sums[mode] = None
            n = packed[0].item()
            if n > 0:
                metrics = self._metrics[mode]
                for i, key in enumerate(("calibration_loss", "confidence", "target", "token_accuracy"), start=1):
                    metrics[f"catto/{key}"] = [packed[i].item() / n]
                metrics["catto/token_ece"] = [ece_from_binned_counts(packed[5:].view(3, -1))]
        super().log(logs, start_time)
