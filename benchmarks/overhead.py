"""Overhead of `CATTODPOTrainer` (catto_alpha=0.1, fused LM-head path) against plain `trl.DPOTrainer`.

What it measures, on CPU in float32 (bf16=False, no activation checkpointing, explicit deep-copied reference model):

- **Step time.** Both trainers are built once in this process on the same tiny random Llama (same seed, so the same
  initial weights) and the same random-token preference data. Their training steps then run alternately (DPO,
  CATTO, DPO, CATTO, ...), warm-up steps first, so drifts of the machine (thermal, other load) hit both alike. One
  step is what `Trainer`'s inner loop does for one micro-batch without gradient accumulation:
  `trainer.training_step` (policy forward, reference forward, loss, backward), gradient clipping to `max_grad_norm`,
  `optimizer.step()` and `optimizer.zero_grad()`. No scheduler, no logging callbacks, no data loading (the batches
  are collated beforehand by each trainer's own collator and checked to be identical). Reported: the median wall time
  of each and the ratio of medians (CATTO / DPO); also the CPU time of the process per step (`time.process_time`:
  on a CPU shared with other jobs it leaves out the time a step waited for a core) and the median of the per-round
  ratios (step i of each method ran back to back on the same batch).
- **Peak memory.** Each method runs again in its own subprocess (`--measure-memory METHOD`) so the
  peaks do not mix: it builds the trainer, the optimizer and the batches, resets the kernel's RSS high-water mark
  (writes "5" to `/proc/self/clear_refs`), takes `VmRSS` as the baseline and after `--mem-steps` steps reads
  `VmHWM`. Reported: the peak RSS increase over that baseline (it includes the gradients and AdamW states allocated
  by the first step, the same for both methods), the same over the later steps only ("steady", baseline taken after
  the first step), and their ratios. RSS is coarse (the allocator may keep freed pages), so read small differences
  with care; `--mem-repeats R` runs R subprocesses per method (alternated) and reports the medians.
- **Profile** (`--profile N`, instead of the timing and memory): N alternated steps per method, each under
  `torch.profiler`; per step, CPU time in TRL's LM-head kernel (`ChunkedLogProbFunction`, forward = policy and
  reference passes, and its backward), in catto's (`ChunkedCalibrationStats` and its backward), in gradient clipping
  and the optimizer, and the top operators by self CPU time.

Model: `LlamaForCausalLM`, hidden 256, 4 layers, intermediate 4 x hidden = 1024 (not Llama's 2.6875 ratio), head dim
64 (4 query heads, 2 key/value heads), vocab 32000, untied LM head, SDPA attention. Data: prompt 128 random tokens,
chosen and rejected 127 random tokens each plus the EOS that TRL appends, so every sequence is 256 tokens; batch 4
pairs = 8 sequences per step. The tokenizer is a word-level one built in code ("t0", "t1", ... plus 4 specials =
32000 entries); TRL 1.16's `_prepare_dataset` always tokenizes text, so the data go in as text.

Note on what is compared: on devices without Triton (CPU), TRL's fused LM head scores *every* position of the
sequence (`8 x 255` here), while the CATTO fused path scores only the response tokens (`8 x 128`). The LM head
(32000 x 256) dominates this tiny model, so the CATTO step can come out *faster* than the DPO step on CPU; on CUDA
TRL also scores only the response tokens. The reference forward goes through TRL's path in both trainers.
`--with-dpo-compact` adds a third method to the rotation, `dpo_compact`: the same `DPOTrainer`, its fused LM head
made to score only the response tokens as it does on CUDA (during its steps `trl.trainer.utils._use_triton`, which
only picks that layout, answers True; TRL's torch kernel still runs, and its losses must match `dpo`'s). It separates
"fewer positions scored" from "a different kernel". `--with-catto-compact` adds its counterpart, `catto_compact`:
`CATTODPOTrainer` with TRL's reference pass made compact the same way, so that both passes of both trainers score the
same positions and `catto_compact / dpo_compact` is the cost of the CATTO kernel and term alone.

**The demo set-up** (`--model PATH [--lora]`): instead of the tiny random Llama, a real model folder in float32 (e.g.
SmolLM2-135M-Instruct, the CPU demo's model) with, under `--lora`, PEFT LoRA as in `recipes/demo/catto.yaml` (r 16,
alpha 32, dropout 0, all-linear; no `ref_model`, so TRL's reference pass is the policy with its adapters disabled;
the adapter is drawn after `torch.manual_seed(seed)` and checked identical across methods). Data: the first
batch x (warmup + steps) valid CommonsenseQA train items (`--data`, a `catto.data.load_mcqa` spec; by default the
file under `catto.pipeline.assets.shared_data_dir()`) as cloze pairs
(`catto.data.mcqa_to_preference`, one random wrong option per item, as `catto train` builds them), batch 8,
`max_length` 256, `beta` 0.1, learning rate 5e-4, and for CATTO the demo's `catto_alpha` 0.3, confidence max, margin
logit, loss l1, sequences both (`DEMO_*` below mirror the recipe). The sequences are short (about 30 tokens, 2-3
response tokens), so TRL's CPU layout scores about 12x more LM-head positions than the response tokens.

Rerun (about 2 minutes on 2 CPU cores at the defaults, about 3 with `--with-dpo-compact`; with catto installed,
`pip install -e .`; `$M` is the demo's SmolLM2, `catto.pipeline.assets.default_model_dir()`, made by `catto demo`):

    python benchmarks/overhead.py [--steps 8] [--warmup 2] [--out benchmarks/results/overhead.json]
                                  [--hidden 256 --layers 4 --vocab 32000 --seq 256 --batch 4] [--with-dpo-compact]
    M=$(python -c "from catto.pipeline.assets import default_model_dir; print(default_model_dir())")
    OMP_NUM_THREADS=1 python benchmarks/overhead.py --model $M --lora \
        --steps 8 --warmup 2 --mem-repeats 2 --with-dpo-compact --out benchmarks/results/overhead_smollm2_lora_cpu.json

Prints a small table and writes (atomically) a JSON report with the configuration, per-step times and losses,
medians, ratios, memory numbers, versions and machine information.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
import trl.trainer.utils as trl_utils  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.profiler import record_function  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

import catto  # noqa: E402
from catto import CATTOConfig, CATTODPOTrainer  # noqa: E402
from catto.data import synthetic  # noqa: E402
from catto.data import load_mcqa  # noqa: E402
from catto.data.pairs import mcqa_to_preference  # noqa: E402
from catto.core.modeling import load_model_and_tokenizer  # noqa: E402
from catto.io import write_json_atomic  # noqa: E402
from catto.data.synthetic import SPECIAL, make_model  # noqa: E402
from catto.pipeline.assets import default_model_dir, shared_data_dir  # noqa: E402

# dpo_compact and catto_compact: opt-in controls (--with-dpo-compact, --with-catto-compact); catto_shared: CATTO with
# prefix sharing (--with-catto-shared)
METHODS = ("dpo", "catto", "dpo_compact", "catto_compact", "catto_shared")
EOS = "<eos>"

# The CPU demo (recipes/demo/catto.yaml and its twin dpo.yaml), used with --model: its data, LoRA and catto settings.
DEMO_DATA = f"commonsense_qa:{shared_data_dir() / 'commonsense_qa' / 'train_rand_split.jsonl'}"
DEMO_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
DEMO_TRAINING = {"beta": 0.1, "learning_rate": 5.0e-4}
DEMO_CATTO = {"catto_alpha": 0.3, "catto_confidence": "max", "catto_margin": "logit", "catto_loss_form": "l1",
              "catto_sequences": "both"}


@dataclass
class BenchConfig:
    """Everything that defines one benchmark run (also recorded in the JSON report)."""

    hidden: int = 256
    layers: int = 4
    intermediate: int | None = None  # None: 4 x hidden
    vocab: int = 32000
    seq: int = 256
    prompt: int | None = None  # None: seq // 2
    batch: int | None = None  # None: 4 (tiny Llama), 8 with `model` (the demo recipe)
    steps: int = 8
    warmup: int = 2
    mem_steps: int = 3
    seed: int = 0
    attn: str = "sdpa"
    catto_alpha: float | None = None  # None: 0.1 (tiny Llama), 0.3 with `model` (the demo recipe)
    device: str = "cpu"  # "cuda": TRL's Triton kernels vs catto's torch kernel; memory from the CUDA allocator
    bf16: bool = False  # mixed precision (fp32 weights, bf16 autocast), as TRL's default on GPU
    # Real model (replaces the tiny random Llama; hidden/layers/intermediate/vocab/seq/prompt are then unused).
    model: str | None = None  # an HF model folder (or hub id), loaded in float32
    lora: bool = False  # PEFT LoRA as in recipes/demo/catto.yaml; the reference is the adapter-disabled policy
    data: str = DEMO_DATA  # `catto.data.load_mcqa` spec of the MCQA items turned into preference pairs
    prompt_format: str = "cloze"  # `mcqa_to_preference` prompt format (the demo's)
    max_length: int = 256  # DPOConfig.max_length with `model` (the demo's)

    def __post_init__(self) -> None:
        if self.batch is None:
            self.batch = 8 if self.model else 4
        if self.catto_alpha is None:
            self.catto_alpha = DEMO_CATTO["catto_alpha"] if self.model else 0.1
        if self.lora and not self.model:
            raise ValueError("--lora needs --model PATH (the tiny random Llama is always trained in full).")
        if self.prompt_format not in ("cloze", "letter"):
            raise ValueError(f"--prompt-format must be 'cloze' or 'letter', got {self.prompt_format!r}.")
        if self.batch < 1 or self.max_length < 2:
            raise ValueError(f"Need --batch >= 1 and --max-length >= 2, got {self.batch} and {self.max_length}.")
        if self.intermediate is None:
            self.intermediate = 4 * self.hidden
        if self.prompt is None:
            self.prompt = self.seq // 2
        if self.hidden % 64:
            raise ValueError(f"--hidden must be a multiple of 64 (head dim 64), got {self.hidden}.")
        if self.vocab <= len(SPECIAL) + 1:
            raise ValueError(f"--vocab must exceed {len(SPECIAL) + 1}, got {self.vocab}.")
        if not 1 <= self.prompt <= self.seq - 2:
            raise ValueError(f"Need 1 <= prompt <= seq - 2, got prompt={self.prompt}, seq={self.seq}.")
        if self.steps < 1 or self.warmup < 0 or self.mem_steps < 2:
            raise ValueError("Need --steps >= 1, --warmup >= 0 and --mem-steps >= 2.")

    @property
    def completion(self) -> int:
        """Response tokens per sequence, the EOS that TRL appends included."""
        return self.seq - self.prompt

    @property
    def heads(self) -> int:
        return self.hidden // 64

    @property
    def kv_heads(self) -> int:
        return self.heads // 2 if self.heads % 2 == 0 else self.heads


# ----------------------------------------------------------------------------------------------------------- setup


def make_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer with exactly `vocab` entries: the specials of `catto.data.synthetic`, then "t0", "t1", ..."""
    return synthetic.make_tokenizer(SPECIAL + [f"t{i}" for i in range(vocab - len(SPECIAL))])


def load_tokenizer(cfg: BenchConfig) -> PreTrainedTokenizerFast:
    """The tokenizer of `cfg.model` (a pad token set as `catto.core.modeling` does), or the tiny word-level one."""
    if not cfg.model:
        return make_tokenizer(cfg.vocab)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def make_dataset(cfg: BenchConfig, n_rows: int) -> Dataset:
    """`n_rows` preference pairs: the demo's MCQA pairs with `cfg.model`, else random-token pairs of fixed length."""
    if cfg.model:
        return make_mcqa_dataset(cfg, n_rows)
    rng = random.Random(cfg.seed)
    n_words = cfg.vocab - len(SPECIAL)

    def text(n: int) -> str:
        return " ".join(f"t{rng.randrange(n_words)}" for _ in range(n))

    n_answer = cfg.completion - 1  # TRL appends the EOS
    rows = [
        {"prompt": text(cfg.prompt), "chosen": " " + text(n_answer), "rejected": " " + text(n_answer)}
        for _ in range(n_rows)
    ]
    return Dataset.from_list(rows)


def make_mcqa_dataset(cfg: BenchConfig, n_rows: int) -> Dataset:
    """The first `n_rows` valid items of `cfg.data` as pairs, the way `catto train` builds them for the demo
    (`mcqa_rejected: random`, `mcqa_on_invalid: skip`, `mcqa_seed` = `cfg.seed`)."""
    items = load_mcqa(cfg.data, limit=2 * n_rows, seed=cfg.seed, on_invalid="skip")
    if len(items) < n_rows:
        raise ValueError(f"--data {cfg.data!r} gave {len(items)} valid items; {n_rows} are needed "
                         "(batch x (warmup + steps)). Fix: use a larger data set or fewer --steps.")
    pairs = mcqa_to_preference(items[:n_rows], prompt_format=cfg.prompt_format, rejected="random", seed=cfg.seed)
    return pairs.select_columns(["prompt", "chosen", "rejected"])


def build_model(cfg: BenchConfig) -> transformers.PreTrainedModel:
    """`cfg.model` in float32 (train mode), or the tiny random Llama (float32), deterministic from `cfg.seed`."""
    if cfg.model:
        model, _ = load_model_and_tokenizer(cfg.model, dtype="float32", device=cfg.device)
        model.train()
    else:
        model = make_model(
            "llama", hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed, vocab_size=cfg.vocab,
            intermediate_size=cfg.intermediate, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.seq,
        )
    model.set_attn_implementation(cfg.attn)
    return model


def build_trainer(method: str, cfg: BenchConfig, tokenizer: PreTrainedTokenizerFast, dataset: Dataset,
                  output_dir: str) -> DPOTrainer:
    """A trainer on a fresh model, its optimizer created for manual steps.

    The reference is an explicit deep copy of the model, or with `cfg.lora` none: TRL then runs the reference pass
    through the policy with its adapters disabled. The LoRA weights are drawn after `torch.manual_seed(cfg.seed)`,
    so every method starts from the same adapter.
    """
    common: dict[str, Any] = dict(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch, max_length=cfg.max_length if cfg.model else
        cfg.seq, bf16=cfg.bf16, use_cpu=cfg.device == "cpu",
        activation_checkpointing=False, report_to=[], save_strategy="no", seed=cfg.seed, disable_tqdm=True,
        logging_steps=1,
    )
    if cfg.model:
        common |= DEMO_TRAINING
    catto_settings = {**DEMO_CATTO, "catto_alpha": cfg.catto_alpha} if cfg.model else {"catto_alpha": cfg.catto_alpha}
    if method in ("dpo", "dpo_compact"):
        trainer_cls, args = DPOTrainer, DPOConfig(**common)
    elif method in ("catto", "catto_compact"):
        trainer_cls, args = CATTODPOTrainer, CATTOConfig(**common, **catto_settings)
    elif method == "catto_shared":
        trainer_cls, args = CATTODPOTrainer, CATTOConfig(**common, **catto_settings, prefix_sharing=True)
    else:
        raise ValueError(method)
    model = build_model(cfg)
    if cfg.lora:
        from peft import LoraConfig

        torch.manual_seed(cfg.seed)
        trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=LoraConfig(task_type="CAUSAL_LM", **DEMO_LORA))
    else:
        trainer = trainer_cls(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset,
                              processing_class=tokenizer)
    # What `Trainer.train` sets up before its inner loop, and `training_step` relies on.
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def trainable_state(trainer: DPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}


def make_batches(trainer: DPOTrainer, cfg: BenchConfig, n_batches: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive, unshuffled micro-batches of the trainer's own (TRL-tokenized) dataset, collated by its collator."""
    ds = trainer.train_dataset
    batches = []
    for b in range(n_batches):
        rows = [ds[i] for i in range(b * cfg.batch, (b + 1) * cfg.batch)]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        expected = (2 * cfg.batch, cfg.seq)
        if cfg.model:  # real text: lengths vary; only the row count is fixed
            if batch["input_ids"].size(0) != 2 * cfg.batch:
                raise RuntimeError(f"Unexpected batch of {batch['input_ids'].size(0)} rows (want {2 * cfg.batch}).")
        elif tuple(batch["input_ids"].shape) != expected or int(batch["completion_mask"][0].sum()) != cfg.completion:
            raise RuntimeError(
                f"Unexpected tokenization: input_ids {tuple(batch['input_ids'].shape)} (want {expected}), "
                f"{int(batch['completion_mask'][0].sum())} response tokens (want {cfg.completion})."
            )
        batches.append(batch)
    return batches


@contextlib.contextmanager
def trl_scores_response_tokens_only(enabled: bool = True) -> Iterator[None]:
    """Make TRL's fused LM head score only the response positions, as it does on CUDA/XPU.

    `trl.trainer.utils.add_fused_lm_head` asks `_use_triton` only to choose between scoring the valid positions
    (Triton devices) and every position (elsewhere); the kernel itself reads its own module's `_use_triton`, so it
    keeps running its torch code on CPU.
    """
    if not enabled:
        yield
        return
    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


def train_step(trainer: DPOTrainer, batch: dict[str, torch.Tensor], compact: bool = False) -> float:
    """One optimizer step on one micro-batch, as `Trainer`'s inner loop does it; returns the loss."""
    model = trainer.model
    with trl_scores_response_tokens_only(compact and model.device.type == "cpu"):
        with record_function("bench/training_step"):
            loss = trainer.training_step(model, batch)
    if trainer.args.max_grad_norm:
        with record_function("bench/clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    with record_function("bench/optimizer_step"):
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss)  # a host sync on CUDA, so the step's kernels are finished when the timer stops


# ---------------------------------------------------------------------------------------------------------- timing


def time_alternating(trainers: dict[str, DPOTrainer], batches: dict[str, list[dict[str, torch.Tensor]]],
                     cfg: BenchConfig) -> dict[str, dict[str, list[float]]]:
    """Warm-up then measured steps, the methods in turn (DPO, CATTO[, DPO compact]); batch `i` is the same data.

    Records the wall time of each step and the CPU time of this process (`time.process_time`, all its threads): on a
    CPU shared with other jobs the wall time also counts the time the step waited for a core, the CPU time does not.
    """
    keys = ("times_s", "cpu_times_s", "losses", "warmup_times_s")
    out: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in trainers}
    for i in range(cfg.warmup + cfg.steps):
        for method, trainer in trainers.items():
            c0, t0 = time.process_time(), time.perf_counter()
            loss = train_step(trainer, batches[method][i], compact=method.endswith("_compact"))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            out[method]["warmup_times_s" if i < cfg.warmup else "times_s"].append(elapsed)
            if i >= cfg.warmup:
                out[method]["cpu_times_s"].append(cpu)
            out[method]["losses"].append(loss)
    return out


def mean_count(counts: Iterator[int]) -> int | float:
    """Mean of per-step counts; an int when every step has the same count (fixed-length data)."""
    counts = list(counts)
    return counts[0] if len(set(counts)) == 1 else statistics.fmean(counts)


def summarize_times(times: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
    }


def median_memory(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-key median of repeated memory subprocesses (the runs themselves kept under `runs`)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = [r[key] for r in runs]
            out[key] = None if None in values else statistics.median(values)
    return out | {"repeats": len(runs), "runs": runs}


# --------------------------------------------------------------------------------------------------------- profile

# Where a step's time goes, by torch.profiler event name: the LM-head kernels (TRL's and catto's autograd functions,
# forward and backward) and this script's regions around the optimizer. The rest is the backbone.
PROFILE_EVENTS = {
    "trl_lm_head_forward": "ChunkedLogProbFunction",
    "trl_lm_head_backward": "autograd::engine::evaluate_function: ChunkedLogProbFunctionBackward",
    "catto_lm_head_forward": "ChunkedCalibrationStats",
    "catto_lm_head_backward": "autograd::engine::evaluate_function: ChunkedCalibrationStatsBackward",
    "training_step": "bench/training_step",
    "clip_grad_norm": "bench/clip_grad_norm",
    "optimizer_step": "bench/optimizer_step",
}


def profile_alternating(trainers: dict[str, DPOTrainer], batches: dict[str, list[dict[str, torch.Tensor]]],
                        cfg: BenchConfig, n_steps: int, top: int = 15) -> dict[str, Any]:
    """`cfg.warmup` unprofiled steps, then `n_steps` steps per method (alternating) each under torch.profiler.

    Per method: wall seconds per step, the `PROFILE_EVENTS` totals per step (CPU time including children), and the
    `top` operators by self CPU time per step.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.device == "cuda" else [])
    events: dict[str, list[Any]] = {m: [] for m in trainers}
    walls: dict[str, list[float]] = {m: [] for m in trainers}
    for i in range(cfg.warmup + n_steps):
        for method, trainer in trainers.items():
            compact = method.endswith("_compact")
            if i < cfg.warmup:
                train_step(trainer, batches[method][i], compact)
                continue
            with profile(activities=activities) as prof:
                t0 = time.perf_counter()
                train_step(trainer, batches[method][i], compact)
                walls[method].append(time.perf_counter() - t0)
            events[method].append(prof.key_averages())
    out: dict[str, Any] = {}
    for method, per_step in events.items():
        totals: dict[str, float] = {}
        self_times: dict[str, float] = {}
        for averages in per_step:
            for ev in averages:
                totals[ev.key] = totals.get(ev.key, 0.0) + ev.cpu_time_total / 1e6
                self_times[ev.key] = self_times.get(ev.key, 0.0) + ev.self_cpu_time_total / 1e6
        n = len(per_step)
        named = {label: totals.get(key, 0.0) / n for label, key in PROFILE_EVENTS.items()}
        ranked = sorted(self_times.items(), key=lambda kv: -kv[1])[:top]
        out[method] = {
            "wall_s_per_step": statistics.median(walls[method]),
            "wall_s": walls[method],
            "regions_s_per_step": named,
            "lm_head_s_per_step": sum(v for k, v in named.items() if "lm_head" in k),
            "top_self_cpu_s_per_step": {k: v / n for k, v in ranked},
        }
    return out


# ---------------------------------------------------------------------------------------------------------- memory


def proc_status_kib() -> dict[str, int]:
    """`VmRSS` and `VmHWM` of this process, in KiB (Linux `/proc/self/status`)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def reset_hwm() -> bool:
    """Reset the RSS high-water mark (`VmHWM`) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory(method: str, cfg: BenchConfig) -> dict[str, Any]:
    """Peak RSS increase of `cfg.mem_steps` training steps of `method` over the RSS after construction (child mode)."""
    tokenizer = load_tokenizer(cfg)
    if cfg.device == "cuda":
        return measure_cuda_memory(method, cfg, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(method, cfg, tokenizer, make_dataset(cfg, cfg.batch * cfg.mem_steps), tmp)
        batches = make_batches(trainer, cfg, cfg.mem_steps)
        gc.collect()
        hwm_reset = reset_hwm()
        base = proc_status_kib()["VmRSS"]
        compact = method.endswith("_compact")
        train_step(trainer, batches[0], compact)
        gc.collect()
        after_first = proc_status_kib()
        steady_base = after_first["VmRSS"]
        if hwm_reset:
            reset_hwm()
        for batch in batches[1:]:
            train_step(trainer, batch, compact)
        end = proc_status_kib()
    peak = max(after_first["VmHWM"], end["VmHWM"])
    mib = 1024.0
    return {
        "method": method,
        "hwm_reset": hwm_reset,
        "steps": cfg.mem_steps,
        "baseline_rss_mib": base / mib,
        "peak_rss_mib": peak / mib,
        "peak_rss_delta_mib": (peak - base) / mib,
        # Steps 2..n over the RSS after step 1 (gradients freed, AdamW states allocated); needs the HWM reset.
        "steady_baseline_rss_mib": steady_base / mib,
        "steady_peak_rss_delta_mib": (end["VmHWM"] - steady_base) / mib if hwm_reset else None,
    }


def measure_cuda_memory(method: str, cfg: BenchConfig, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Peak CUDA allocator memory of `cfg.mem_steps` steps over what is allocated after construction (child mode).

    Reported under the same keys as the CPU RSS numbers (`*_rss_*`) so the ratios and the table need no branch.
    """
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(method, cfg, tokenizer, make_dataset(cfg, cfg.batch * cfg.mem_steps), tmp)
        batches = make_batches(trainer, cfg, cfg.mem_steps)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(trainer, batches[0])
        peak_first = torch.cuda.max_memory_allocated()
        steady_base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for batch in batches[1:]:
            train_step(trainer, batch)
        peak_steady = torch.cuda.max_memory_allocated()
    mib = 1024.0**2
    return {
        "method": method,
        "memory": "torch.cuda.max_memory_allocated",
        "steps": cfg.mem_steps,
        "baseline_rss_mib": base / mib,
        "peak_rss_mib": max(peak_first, peak_steady) / mib,
        "peak_rss_delta_mib": (max(peak_first, peak_steady) - base) / mib,
        "steady_baseline_rss_mib": steady_base / mib,
        "steady_peak_rss_delta_mib": (peak_steady - steady_base) / mib,
    }


def memory_in_subprocess(method: str, cli_args: list[str]) -> dict[str, Any]:
    """Run `--measure-memory method` in a fresh interpreter and parse the JSON line it prints last."""
    cmd = [sys.executable, os.path.abspath(__file__), "--measure-memory", method, *cli_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------- report


def config_record(cfg: BenchConfig, model_config, n_params: int, n_trainable: int) -> dict[str, Any]:
    """What the JSON report says about the set-up (the tiny-Llama keys unchanged)."""
    common = {"sequences_per_step": 2 * cfg.batch,
              "dtype": "float32 weights, bf16 autocast" if cfg.bf16 else "float32", "activation_checkpointing": False}
    if not cfg.model:
        tiny = {k: v for k, v in asdict(cfg).items() if k not in ("model", "lora", "data", "prompt_format",
                                                                  "max_length")}
        return {**tiny, "completion": cfg.completion, "heads": cfg.heads, "kv_heads": cfg.kv_heads, **common,
                "ref_model": "explicit deepcopy", "parameters_per_model": n_params}
    skip = ("hidden", "layers", "intermediate", "vocab", "seq", "prompt")  # tiny-Llama only
    return {
        **{k: v for k, v in asdict(cfg).items() if k not in skip}, **common,
        "model_type": model_config.model_type, "hidden_size": model_config.hidden_size,
        "num_hidden_layers": model_config.num_hidden_layers, "vocab_size": model_config.vocab_size,
        "tie_word_embeddings": bool(getattr(model_config, "tie_word_embeddings", False)),
        "ref_model": "policy with adapters disabled (PEFT, no ref_model)" if cfg.lora else "explicit deepcopy",
        "lora_config": DEMO_LORA if cfg.lora else None, "training": DEMO_TRAINING,
        "catto": {**DEMO_CATTO, "catto_alpha": cfg.catto_alpha},
        "pairs": {"rejected": "random", "on_invalid": "skip", "first_items": cfg.batch * (cfg.warmup + cfg.steps)},
        "parameters_per_model": n_params, "trainable_parameters": n_trainable,
    }


def machine_info() -> dict[str, Any]:
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "catto": catto.__version__}


def ratios(report: dict[str, Any], baseline: str, method: str = "catto") -> dict[str, float | None]:
    """`method` / `baseline`: ratio of median step times and of the peak RSS increases (when memory was measured)."""
    times, mem = report["time"], report.get("memory")
    a, b = times[method], times[baseline]
    out: dict[str, float | None] = {"time_median": a["median_s"] / b["median_s"]}
    if a.get("cpu_times_s"):
        # CPU time of the process, and the median of the per-round ratios (steps i of both methods ran back to back
        # on the same batch), which cancels drifts of the machine's load slower than one round.
        out["cpu_time_median"] = statistics.median(a["cpu_times_s"]) / statistics.median(b["cpu_times_s"])
        out["paired_time_median"] = statistics.median(x / y for x, y in zip(a["times_s"], b["times_s"]))
        out["paired_cpu_time_median"] = statistics.median(x / y for x, y in zip(a["cpu_times_s"], b["cpu_times_s"]))
    if mem:
        ma, mb = mem[method], mem[baseline]
        out["peak_rss_delta"] = ma["peak_rss_delta_mib"] / mb["peak_rss_delta_mib"]
        x, y = ma["steady_peak_rss_delta_mib"], mb["steady_peak_rss_delta_mib"]
        out["steady_peak_rss_delta"] = x / y if x is not None and y else None
    return out


def print_table(report: dict[str, Any]) -> None:
    t, mem = report["time"], report.get("memory")
    print(f"\n{'method':<12}{'median s/step':>15}{'mean':>9}{'min':>9}{'max':>9}{'CPU s':>9}"
          + (f"{'peak dRSS MiB':>15}{'steady dRSS MiB':>17}" if mem else ""))
    for m in report["methods"]:
        s = t[m]
        row = f"{m:<12}{s['median_s']:>15.3f}{s['mean_s']:>9.3f}{s['min_s']:>9.3f}{s['max_s']:>9.3f}"
        row += f"{s['cpu_median_s']:>9.3f}" if "cpu_median_s" in s else f"{'n/a':>9}"
        if mem:
            steady = mem[m]["steady_peak_rss_delta_mib"]
            row += f"{mem[m]['peak_rss_delta_mib']:>15.1f}"
            row += f"{steady:>17.1f}" if steady is not None else f"{'n/a':>17}"
        print(row)
    for key, r in report["ratios"].items():
        line = f"{key}: time {r['time_median']:.3f}"
        if "cpu_time_median" in r:
            line += (f" (CPU time {r['cpu_time_median']:.3f}; median of paired ratios: wall "
                     f"{r['paired_time_median']:.3f}, CPU {r['paired_cpu_time_median']:.3f})")
        if "peak_rss_delta" in r:
            line += f", peak memory {r['peak_rss_delta']:.3f}"
        if r.get("steady_peak_rss_delta") is not None:
            line += f", steady peak memory {r['steady_peak_rss_delta']:.3f}"
        print(line)
    pos = report["lm_head_positions_per_step"]
    print("LM-head positions scored per step: " + ", ".join(f"{k} {v}" for k, v in pos.items()))


def print_profile(report: dict[str, Any]) -> None:
    prof = report["profile"]
    labels = list(PROFILE_EVENTS)
    print(f"\n{'seconds per step':<24}" + "".join(f"{m:>13}" for m in report["methods"]))
    for label in ["wall"] + labels + ["lm_head_total"]:
        cells = []
        for m in report["methods"]:
            p = prof[m]
            value = {"wall": p["wall_s_per_step"], "lm_head_total": p["lm_head_s_per_step"]}.get(label)
            cells.append(p["regions_s_per_step"][label] if value is None else value)
        print(f"{label:<24}" + "".join(f"{v:>13.3f}" for v in cells))
    for m in report["methods"]:
        top = list(prof[m]["top_self_cpu_s_per_step"].items())[:6]
        print(f"{m} top self CPU: " + ", ".join(f"{k} {v:.2f}" for k, v in top))


# ------------------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="measured steps per method")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per method (not measured)")
    p.add_argument("--mem-steps", type=int, default=3, help="steps of each memory subprocess")
    p.add_argument("--mem-repeats", type=int, default=1,
                   help="memory subprocesses per method (alternated); the report keeps each run and their medians")
    p.add_argument("--out", default="benchmarks/results/overhead.json", help="JSON report path")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence (prompt + response incl. EOS)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default seq // 2)")
    p.add_argument("--batch", type=int, default=None,
                   help="preference pairs per step (2x sequences); default 4, with --model 8 (the demo recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--catto-alpha", type=float, default=None,
                   help="default 0.1, with --model 0.3 (the demo recipe)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (autocast; fp32 weights)")
    g = p.add_argument_group("real model (instead of the tiny random Llama; its size flags are then ignored)")
    g.add_argument("--model", default=None, help="HF model folder (or hub id), e.g. the demo's SmolLM2-135M-Instruct "
                                                 f"({default_model_dir()}, catto.pipeline.assets)")
    g.add_argument("--lora", action="store_true",
                   help="LoRA r 16, alpha 32, dropout 0, all-linear (recipes/demo); reference = adapters disabled")
    g.add_argument("--data", default=DEMO_DATA, help="catto.data.load_mcqa spec of the MCQA items for the pairs")
    g.add_argument("--prompt-format", default="cloze", choices=["cloze", "letter"], help="pair format (demo: cloze)")
    g.add_argument("--max-length", type=int, default=256, help="DPOConfig.max_length (demo: 256)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing: N torch.profiler-ed steps per method (after --warmup), breakdown to --out")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--with-dpo-compact", action="store_true",
                   help="also time DPOTrainer scoring only response tokens (TRL's CUDA layout) as a control")
    p.add_argument("--with-catto-compact", action="store_true",
                   help="also time CATTODPOTrainer with its reference pass scoring only response tokens (the control "
                        "for dpo_compact: both passes of both trainers then score the same positions)")
    p.add_argument("--with-catto-shared", action="store_true",
                   help="also time CATTODPOTrainer with prefix_sharing=True (one prompt + chosen + rejected row per "
                        "pair in the policy and reference passes, response positions only through the LM head)")
    p.add_argument("--measure-memory", choices=METHODS, help=argparse.SUPPRESS)  # child mode
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        hidden=args.hidden, layers=args.layers, intermediate=args.intermediate, vocab=args.vocab, seq=args.seq,
        prompt=args.prompt, batch=args.batch, steps=args.steps, warmup=args.warmup, mem_steps=args.mem_steps,
        seed=args.seed, attn=args.attn, catto_alpha=args.catto_alpha, device=args.device, bf16=args.bf16,
        model=args.model, lora=args.lora, data=args.data, prompt_format=args.prompt_format, max_length=args.max_length,
    )


def child_cli_args(cfg: BenchConfig) -> list[str]:
    """The CLI flags that make a memory subprocess build exactly `cfg`."""
    flags = {"hidden": cfg.hidden, "layers": cfg.layers, "intermediate": cfg.intermediate, "vocab": cfg.vocab,
             "seq": cfg.seq, "prompt": cfg.prompt, "batch": cfg.batch, "mem-steps": cfg.mem_steps, "seed": cfg.seed,
             "attn": cfg.attn, "catto-alpha": cfg.catto_alpha, "device": cfg.device, "data": cfg.data,
             "prompt-format": cfg.prompt_format, "max-length": cfg.max_length}
    if cfg.model:
        flags["model"] = cfg.model
    switches = [f"--{k}" for k in ("bf16", "lora") if getattr(cfg, k)]
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))] + switches


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # TRL 1.16 still calls the renamed `is_gradient_checkpointing`; nothing to act on here.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    if args.mem_repeats < 1 or args.profile < 0:
        raise SystemExit("--mem-repeats must be >= 1 and --profile >= 0.")
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, cfg)))
        return 0

    started = time.time()
    n_batches = cfg.warmup + (args.profile or cfg.steps)
    tokenizer = load_tokenizer(cfg)
    dataset = make_dataset(cfg, cfg.batch * n_batches)
    methods = ["dpo", "catto"] + [m for m in METHODS[2:] if getattr(args, f"with_{m}")]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: build_trainer(m, cfg, tokenizer, dataset, os.path.join(tmp, m)) for m in methods}
        batches = {m: make_batches(trainers[m], cfg, n_batches) for m in methods}
        for m in methods[1:]:
            for a, b in zip(batches["dpo"], batches[m]):
                if not all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "completion_mask")):
                    raise RuntimeError(f"The dpo and {m} trainers collated different batches.")
            if cfg.lora:  # same adapter initialisation (the base weights come from the same file)
                ref_state, state = trainable_state(trainers["dpo"]), trainable_state(trainers[m])
                if ref_state.keys() != state.keys() or not all(torch.equal(ref_state[k], state[k]) for k in state):
                    raise RuntimeError(f"The dpo and {m} trainers start from different LoRA weights.")
        measured = batches["dpo"][cfg.warmup:]
        all_positions = mean_count(b["input_ids"].size(0) * (b["input_ids"].size(1) - 1) for b in measured)
        response_positions = mean_count(int(b["completion_mask"][:, 1:].sum()) for b in measured)
        # TRL scores every position on CPU and only the response tokens where Triton runs (CUDA).
        trl_positions = response_positions if cfg.device == "cuda" else all_positions
        positions = {"dpo_policy": trl_positions, "dpo_reference": trl_positions,
                     "catto_policy": response_positions, "catto_reference": trl_positions}
        if "dpo_compact" in methods:
            positions |= {"dpo_compact_policy": response_positions, "dpo_compact_reference": response_positions}
        if "catto_compact" in methods:
            positions |= {"catto_compact_policy": response_positions, "catto_compact_reference": response_positions}
        if "catto_shared" in methods:
            positions |= {"catto_shared_policy": response_positions, "catto_shared_reference": response_positions}
        # tokens through the decoder per pass: TRL's 2B padded rows, or the B shared rows of prefix sharing
        backbone_tokens = {"two_rows_padded": mean_count(b["input_ids"].numel() for b in measured),
                           "two_rows_real": mean_count(int(b["attention_mask"].sum()) for b in measured)}
        if "catto_shared" in methods:
            shared = batches["catto_shared"][cfg.warmup:]
            backbone_tokens |= {"shared_rows_padded": mean_count(b["catto_shared_input_ids"].numel() for b in shared),
                                "shared_rows_real": mean_count(int(b["catto_shared_mask"].diagonal(dim1=1, dim2=2)
                                                                   .sum()) for b in shared)}
        n_params = sum(p.numel() for p in trainers["dpo"].model.parameters())
        n_trainable = sum(p.numel() for p in trainers["dpo"].model.parameters() if p.requires_grad)
        model_config = trainers["dpo"].model.config.get_text_config()
        device_name = torch.cuda.get_device_name(0) if cfg.device == "cuda" else f"{torch.get_num_threads()} threads"
        if args.profile:
            print(f"Profiling {args.profile} steps per method after {cfg.warmup} warm-up, alternating "
                  f"{'/'.join(methods)} ({n_params / 1e6:.1f}M parameters, {device_name})...", flush=True)
            profiled = profile_alternating(trainers, batches, cfg, args.profile)
            report = {
                "benchmark": "CATTODPOTrainer (fused) vs trl.DPOTrainer: torch.profiler breakdown of a step",
                "command": " ".join(["python", *sys.argv]),
                "config": config_record(cfg, model_config, n_params, n_trainable) | {"profiled_steps": args.profile},
                "methods": methods, "lm_head_positions_per_step": positions, "backbone_tokens_per_pass": backbone_tokens,
                "profile": profiled,
                "versions": versions(), "machine": machine_info(), "wall_time_s": time.time() - started,
            }
            write_json_atomic(args.out, report)
            print_profile(report)
            print(f"Wrote {args.out} ({report['wall_time_s']:.0f} s)")
            return 0
        print(f"Timing {cfg.steps} steps per method after {cfg.warmup} warm-up, alternating {'/'.join(methods)} "
              f"({n_params / 1e6:.1f}M parameters, {device_name})...", flush=True)
        steps = time_alternating(trainers, batches, cfg)
        del trainers, batches
        gc.collect()

    time_summary = {m: {**summarize_times(steps[m]["times_s"]), "cpu_median_s": statistics.median(
        steps[m]["cpu_times_s"]), **steps[m]} for m in methods}
    report: dict[str, Any] = {
        "benchmark": "CATTODPOTrainer (fused) vs trl.DPOTrainer: step time and peak RSS",
        "command": " ".join(["python", *sys.argv]),
        "config": config_record(cfg, model_config, n_params, n_trainable),
        "methods": methods,
        "lm_head_positions_per_step": positions,
        "backbone_tokens_per_pass": backbone_tokens,
        "time": time_summary,
        "versions": versions(),
        "machine": machine_info(),
    }
    if "dpo_compact" in methods:
        # Same math as `dpo`, other layout: the losses must agree up to float rounding.
        report["dpo_compact_max_abs_loss_diff_vs_dpo"] = max(
            abs(a - b) for a, b in zip(steps["dpo"]["losses"], steps["dpo_compact"]["losses"])
        )
    if "catto_compact" in methods:
        report["catto_compact_max_abs_loss_diff_vs_catto"] = max(
            abs(a - b) for a, b in zip(steps["catto"]["losses"], steps["catto_compact"]["losses"])
        )
    if "catto_shared" in methods:
        # Same math as `catto`, one row per pair: the losses must agree up to float rounding.
        report["catto_shared_max_abs_loss_diff_vs_catto"] = max(
            abs(a - b) for a, b in zip(steps["catto"]["losses"], steps["catto_shared"]["losses"])
        )
    if not args.no_memory:
        print("Measuring peak memory in one subprocess per method...", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for _ in range(args.mem_repeats):  # alternated too
            for m in methods:
                runs[m].append(memory_in_subprocess(m, child_cli_args(cfg)))
        report["memory"] = {m: median_memory(runs[m]) for m in methods}
    report["ratios"] = {f"catto/{m}": ratios(report, m) for m in methods
                        if m not in ("catto", "catto_compact", "catto_shared")}
    if "catto_shared" in methods:
        for base in [m for m in ("dpo", "dpo_compact", "catto") if m in methods]:
            report["ratios"][f"catto_shared/{base}"] = ratios(report, base, method="catto_shared")
    if "catto_compact" in methods:
        report["ratios"]["catto_compact/dpo_compact" if "dpo_compact" in methods else "catto_compact/dpo"] = ratios(
            report, "dpo_compact" if "dpo_compact" in methods else "dpo", method="catto_compact")
    report["wall_time_s"] = time.time() - started
    write_json_atomic(args.out, report)
    print_table(report)
    print(f"Wrote {args.out} ({report['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
