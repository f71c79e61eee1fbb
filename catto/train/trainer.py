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
import os
import re

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
from .prefix_sharing import PrefixSharingCollator, check_prefix_sharing, share_backbone

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


def _hub_dataset_id(name: str | None) -> str | None:
    """`name` when it reads as a hub dataset id (`org/name`, not a local path or a catto MCQA spec), else None: TRL's
    card links the dataset to the hub."""
    if not name or ":" in name or name.startswith(("/", ".", "~")) or os.path.exists(name):
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


# Logged metrics the model card reports: the term's token statistics (train and DPO eval) and the held-out MCQA ones.
CARD_METRIC_PREFIXES = ("catto/", "eval_catto/", "eval_calibration/")


def _card_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return f"`{value}`"


def _add_catto_card_section(trainer, path: str, dataset_name: str | None) -> None:
    """Insert the calibration settings and the last logged calibration metrics into the card at `path`."""
    from huggingface_hub import ModelCard

    from .. import __version__

    args = trainer.args
    settings = [(f.name, getattr(args, f.name)) for f in dataclasses.fields(args) if f.name.startswith("catto_")]
    last: dict[str, tuple[float, int | None]] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if key.startswith(CARD_METRIC_PREFIXES) and isinstance(value, (int, float)):
                last[key] = (value, entry.get("step"))
    lines = ["## Calibration (CATTO)", "",
             f"Trained with catto {__version__}'s `CATTODPOTrainer`: the DPO loss (`loss_type` {args.loss_type}, "
             f"`beta` {args.beta}) plus `catto_alpha` times the token-level calibration term of CATTO "
             "(`catto_alpha` 0 is plain DPO)."
             + (f" Training data: `{dataset_name}`." if dataset_name else ""), "",
             "### Calibration settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{name}` | {_card_value(value)} |" for name, value in settings]
    lines += ["", "### Final calibration metrics", ""]
    if last:
        lines += ["The last logged value of each: `catto/*` over the response tokens of the last training logging "
                  "window, `eval_catto/*` on the DPO eval set, `eval_calibration/*` on the held-out MCQA items of the "
                  "calibration callback.", "", "| metric | value | step |", "|---|---|---|"]
        lines += [f"| `{key}` | {_card_value(float(value))} | {step} |" for key, (value, step) in sorted(last.items())]
    else:
        lines += ["No calibration metric has been logged yet."]
    card = ModelCard.load(path)
    text = card.text
    base = getattr(trainer.model.config, "_name_or_path", None)
    if base:  # TRL names no base model for a local folder ("[None](https://huggingface.co/None)")
        text = text.replace("[None](https://huggingface.co/None)", f"`{base}`")
    if args.hub_model_id is None:  # and its quick start loads model "None": load the folder the card is in
        text = text.replace('model="None"', f'model="{os.path.dirname(os.path.abspath(path))}"')
    anchor = "### Framework versions"
    section = "\n".join(lines) + "\n\n"
    text = text.replace(anchor, section + anchor, 1) if anchor in text else text.rstrip() + "\n\n" + section
    card.text = text
    card.save(path)


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
        add_catto_head(self._policy_module(), outputs=self._policy_outputs(), token_chunk_size=args.catto_chunk_size,
                       compact=args.prefix_sharing)
        if args.prefix_sharing:
            self._install_prefix_sharing()
            if self._catto_mode == "detached":
                # the statistics come from the policy's one compact pass: logging them with catto_alpha=0 costs no
                # second LM-head pass (the term is still not added to the loss)
                self._catto_mode = "fused"
        _check_router_aux_loss(self, self._policy_module())

    def _policy_module(self):
        """The module TRL patched with its fused LM head (the base model under PEFT)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def _policy_outputs(self) -> tuple[str, ...]:
        """TRL's per-token outputs of the policy pass (those TRL 1.16 asks its own fused head for)."""
        outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
        return outputs + ("log_sum_sq_probs",) if self.use_weighting else outputs

    def _install_prefix_sharing(self) -> None:
        """Prefix sharing (`catto.train.prefix_sharing`): the collator adds the shared layout; the policy's and the
        reference model's decoders run it; every fused LM-head call scores only response positions. Runs once,
        before the first forward (TRL's reference precompute happens inside its constructor: see
        `_precompute_ref_logps`)."""
        if getattr(self, "_catto_sharing_installed", False):
            return
        check_prefix_sharing(self.args, self.model)
        if not isinstance(self.data_collator, PrefixSharingCollator):
            pad = getattr(self.data_collator, "pad_token_id", None)
            if pad is None:
                pad = self.processing_class.pad_token_id
            self.data_collator = PrefixSharingCollator(self.data_collator, pad_token_id=pad,
                                                       max_length=self.args.max_length,
                                                       pad_to_multiple_of=getattr(self.data_collator,
                                                                                  "pad_to_multiple_of", None))
        policy = self._policy_module()
        add_catto_head(policy, outputs=self._policy_outputs(), token_chunk_size=self.args.catto_chunk_size,
                       compact=True)
        share_backbone(policy)
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            add_catto_head(ref, outputs=("log_probs",), token_chunk_size=self.args.catto_chunk_size, compact=True)
            share_backbone(ref)
        self._catto_sharing_installed = True

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL precomputes the reference log-probs inside its constructor, before ours has run: share them too.
        if self.args.prefix_sharing:
            self._install_prefix_sharing()
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # What `catto train` trained on (its `dataset_name` or `mcqa_data` spec), for the model card; None: not named.
    model_card_dataset_name: str | None = None

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None):
        """TRL's model card (`output_dir/README.md`) plus what was trained: every `catto_*` setting and the last logged
        value of each calibration metric (`catto/*`, `eval_catto/*`, `eval_calibration/*`), and the training data
        (`dataset_name`, else `model_card_dataset_name`). For a LoRA run PEFT's metadata (library, base model, PEFT
        version) is kept. TRL writes the card at every checkpoint; `save_model` writes it with the final model."""
        if not self.is_world_process_zero():
            return
        dataset_name = dataset_name or self.model_card_dataset_name
        super().create_model_card(model_name=model_name, dataset_name=_hub_dataset_id(dataset_name), tags=tags)
        _add_catto_card_section(self, os.path.join(self.args.output_dir, "README.md"), dataset_name)
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel):  # TRL's card replaced PEFT's: put its metadata back
            model.create_or_update_model_card(self.args.output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, then, for the final model in `output_dir`, the model card (`create_model_card`);
        without it a LoRA run's card would be PEFT's empty template."""
        super().save_model(output_dir, _internal_call)
        same = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if not _internal_call and same and self.is_world_process_zero():
            name = (self.args.hub_model_id or "").split("/")[-1] or os.path.basename(
                os.path.normpath(self.args.output_dir))
            self.create_model_card(model_name=name)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._catto_mode is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        policy_call = _PolicyCall(model, self._catto_mode)
        result = super().compute_loss(policy_call, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if policy_call.outputs is None:  # pragma: no cover - guards against a TRL refactor
            raise RuntimeError("The DPO policy pass did not go through `model(..., fused_lm_head=True)`.")
        term = self._catto_term(policy_call.outputs, inputs)
        if self._catto_mode == "fused" and self.args.catto_enabled:
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
