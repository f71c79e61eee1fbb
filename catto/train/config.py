"""`CATTOConfig`: `trl.DPOConfig` plus the switches of the CATTO calibration term."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from trl import DPOConfig

from ..errors import ConfigError
from ..core.calibration import CONFIDENCE_CHOICES, LOSS_FORM_CHOICES, MARGIN_CHOICES

SEQUENCES_CHOICES = ("both", "chosen")


@dataclass
class CATTOConfig(DPOConfig):
    r"""
    Configuration class for the [`CATTODPOTrainer`]: every [`~trl.DPOConfig`] parameter, plus the CATTO term.

    The total loss is the DPO loss (any `loss_type`, including weighted lists) plus `catto_alpha` times the mean, over
    the response tokens of the micro-batch, of the per-token calibration loss. Two `DPOConfig` options are refused with
    a `catto.errors.ConfigError` (docs/training.md has the table of every option and its test): `padding_free=True`
    (TRL 1.16 ignores it) and context/sequence parallelism (`parallelism_config` with `cp_size` or `sp_size` > 1).
    The defaults are the paper's where it is clear (λ = 0.1, the L1 form) and otherwise the arm the calibration study's
    written rule kept (docs/results.md: no other arm beat them beyond noise; the recipes for the demo model use
    λ = 0.3).

    Parameters:
        > Parameters of the CATTO term

        catto_alpha (`float`, *optional*, defaults to `0.1`):
            Weight λ of the calibration term. `0.0` disables it: the loss and updates are then exactly those of
            [`~trl.DPOTrainer`].
        catto_confidence (`str`, *optional*, defaults to `"max"`):
            Confidence c_t of a token: `"max"` (max next-token probability) or `"label"` (probability of the token in
            the sequence).
        catto_margin (`str`, *optional*, defaults to `"logit"`):
            Margin of the label over the best wrong token inside the surrogate: `"logit"` (log p_y − log p_v*, whose
            sigmoid is p_y / (p_y + p_v*)) or `"prob"` (p_y − p_v*, whose sigmoid only spans [0.27, 0.73]).
        catto_target_scale (`float`, *optional*, defaults to `1.0`):
            Scale s of the surrogate z_t = sigmoid(s · margin). Must be > 0.
        catto_detach_target (`bool`, *optional*, defaults to `True`):
            Whether z_t is a fixed target (no gradient through it).
        catto_loss_form (`str`, *optional*, defaults to `"l1"`):
            Per-token loss: `"l1"` (|c_t − z_t|, CATTO), `"bce"` (binary cross-entropy of c_t against z_t, the
            paper's DPO+BCE baseline) or `"l2"` ((c_t − z_t)², a squared form for comparison).
        catto_sequences (`str`, *optional*, defaults to `"both"`):
            Whose response tokens enter the term: `"both"` (chosen and rejected) or `"chosen"`.
        catto_exclude_eos (`bool`, *optional*, defaults to `False`):
            Leave the EOS token (the tokenizer's `eos_token_id`, which TRL appends to every string completion) out of
            the term and the `catto/*` metrics, so the term calibrates the answer's own tokens; the DPO loss is
            unchanged.
        prefix_sharing (`bool`, *optional*, defaults to `False`):
            Run each preference pair as one sequence, `prompt + chosen + rejected`, with a mask in which rejected tokens
            never see chosen ones and position ids that continue from the prompt for both (the prompt is computed once,
            in the policy and in the reference pass), and score only response positions through the LM head in
            every pass. Same per-token values as without it, up to float rounding. Needs sdpa or eager attention and
            `truncation_mode="keep_start"`; off by default, so that `catto_alpha=0` stays bit-identical to
            [`~trl.DPOTrainer`].
        catto_chunk_size (`int`, *optional*, defaults to `1024`):
            Response tokens per tile of the fused LM-head pass. Smaller tiles use less memory (a tile holds
            `catto_chunk_size × 32768` float32 logits), larger ones fewer matrix multiplies.
        catto_log_metrics (`bool` or `None`, *optional*, defaults to `None`):
            Whether to log the `catto/*` metrics. `None` logs them when they are free: with the term on
            (`catto_alpha > 0`), or with `prefix_sharing` (the statistics come from the policy's one LM-head pass). A
            `catto_alpha=0` run without prefix sharing would need an extra no-grad LM-head pass over the response
            tokens for them (its training stays that of `DPOTrainer`): set `True` to pay it, `False` to never log.
        catto_ece_bins (`int`, *optional*, defaults to `15`):
            Equal-width bins of the logged `catto/token_ece` (15, as `catto eval` and every other ECE in catto).
    """

    catto_alpha: float = field(
        default=0.1,
        metadata={"help": "Weight lambda of the CATTO calibration term; 0.0 disables it (plain DPO)."},
    )
    catto_confidence: str = field(
        default="max",
        metadata={"help": "Token confidence: 'max' (max next-token probability) or 'label' (probability of the "
                  "sequence token).", "choices": list(CONFIDENCE_CHOICES)},
    )
    catto_margin: str = field(
        default="logit",
        metadata={"help": "Surrogate margin: 'logit' (log p_y - log p_best_wrong) or 'prob' (p_y - p_best_wrong).",
                  "choices": list(MARGIN_CHOICES)},
    )
    catto_target_scale: float = field(
        default=1.0,
        metadata={"help": "Scale s of the correctness surrogate z = sigmoid(s * margin); must be > 0."},
    )
    catto_detach_target: bool = field(
        default=True,
        metadata={"help": "Whether the surrogate z is a fixed target (no gradient through it)."},
    )
    catto_loss_form: str = field(
        default="l1",
        metadata={"help": "Per-token loss: 'l1' (|c - z|, CATTO), 'bce' (the DPO+BCE baseline) or 'l2' ((c - z)^2).",
                  "choices": list(LOSS_FORM_CHOICES)},
    )
    catto_sequences: str = field(
        default="both",
        metadata={"help": "Response tokens in the term: 'both' (chosen and rejected) or 'chosen'.",
                  "choices": list(SEQUENCES_CHOICES)},
    )
    catto_exclude_eos: bool = field(
        default=False,
        metadata={"help": "Leave the EOS token TRL appends to completions out of the term and the catto/* metrics "
                          "(the term then calibrates the answer's own tokens); the DPO loss is unchanged."},
    )
    prefix_sharing: bool = field(
        default=False,
        metadata={"help": "Run each pair as one prompt + chosen + rejected sequence (the prompt computed once, rejected "
                          "never seeing chosen) and score only response positions through the LM head; same values up "
                          "to float rounding. Needs sdpa or eager attention and truncation_mode keep_start."},
    )
    catto_chunk_size: int = field(
        default=1024,
        metadata={"help": "Response tokens per tile of the fused LM-head pass (memory vs. number of matmuls)."},
    )
    catto_log_metrics: bool | None = field(
        default=None,
        metadata={"help": "Whether to log catto/* metrics. Default (None): when free, i.e. with the term on or with "
                          "prefix_sharing; with catto_alpha=0 and no prefix sharing they cost an extra no-grad LM-head "
                          "pass (True: log anyway)."},
    )
    catto_ece_bins: int = field(
        default=15,
        metadata={"help": "Number of equal-width bins of the logged catto/token_ece (15, as catto eval's --n_bins)."},
    )

    def __post_init__(self):
        super().__post_init__()
        errors = []
        if not self.catto_alpha >= 0:  # also rejects NaN
            errors.append(f"`catto_alpha` must be >= 0 (0 disables the term), got {self.catto_alpha}.")
        for name, allowed in (
            ("catto_confidence", CONFIDENCE_CHOICES),
            ("catto_margin", MARGIN_CHOICES),
            ("catto_loss_form", LOSS_FORM_CHOICES),
            ("catto_sequences", SEQUENCES_CHOICES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                errors.append(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
        if not self.catto_target_scale > 0:
            errors.append(f"`catto_target_scale` must be > 0, got {self.catto_target_scale}.")
        if not (isinstance(self.catto_chunk_size, int) and self.catto_chunk_size >= 1):
            errors.append(f"`catto_chunk_size` must be an integer >= 1, got {self.catto_chunk_size!r}.")
        if not (isinstance(self.catto_ece_bins, int) and self.catto_ece_bins >= 1):
            errors.append(f"`catto_ece_bins` must be an integer >= 1, got {self.catto_ece_bins!r}.")
        if errors:
            raise ConfigError("Invalid CATTOConfig: " + " ".join(errors))
        if self.catto_log_metrics is None:  # log when it costs no extra LM-head pass
            self.catto_log_metrics = self.catto_enabled or self.prefix_sharing
        # DPOConfig options the term cannot follow (docs/training.md, "Which DPOConfig options work"): refused here,
        # before any model is loaded, one line each.
        if self.padding_free:
            raise ConfigError("padding_free=True: TRL 1.16 ignores it (it warns and pads anyway), and the CATTO term "
                              "reads padded (chosen; rejected) rows, which a padding-free batch would not have. Fix: "
                              "padding_free=False.")
        check_sequence_sharding(self.parallelism_config, self)

    @classmethod
    def from_dpo_config(cls, config: DPOConfig, **catto_kwargs) -> CATTOConfig:
        """A `CATTOConfig` with every setting of an existing `DPOConfig` (secrets included) plus `catto_kwargs`; fields
        that a `DPOConfig` subclass adds and `CATTOConfig` lacks are left out (`CATTODPOTrainer` names them in its log
        line when it converts a config).

        Example:
            >>> from trl import DPOConfig
            >>> cfg = CATTOConfig.from_dpo_config(DPOConfig("out", beta=0.3, bf16=False), catto_alpha=0.2)
            >>> cfg.beta, cfg.catto_alpha
            (0.3, 0.2)
        """
        own = {f.name for f in dataclasses.fields(cls) if f.init}
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init and f.name in own}
        return cls(**{**values, **catto_kwargs})

    @property
    def catto_enabled(self) -> bool:
        """Whether the calibration term is added to the loss."""
        return self.catto_alpha > 0


def check_sequence_sharding(parallelism_config, args: CATTOConfig) -> None:
    """Refuse context or sequence parallelism (a `ParallelismConfig` with `cp_size` or `sp_size` > 1) while the CATTO
    term or its metrics are on: each process would then hold a slice of every sequence, while the term (like TRL's
    per-sequence log-probabilities) is computed from whole rows with their completion mask."""
    if parallelism_config is None or not (args.catto_alpha > 0 or args.catto_log_metrics):
        return
    sizes = {name: getattr(parallelism_config, name, 1) or 1 for name in ("cp_size", "sp_size")}
    sharded = {name: size for name, size in sizes.items() if size > 1}
    if sharded:
        shown = ", ".join(f"{name}={size}" for name, size in sharded.items())
        raise ConfigError(f"parallelism_config with {shown}: context/sequence parallelism splits every sequence "
                          "across processes, and the CATTO term needs whole sequences. Fix: cp_size=1 and sp_size=1 "
                          "(use data parallelism, ZeRO or FSDP), or catto_alpha=0 with catto_log_metrics=False (plain "
                          "DPO).")
