"""QLoRA on CPU: `CATTODPOTrainer` on a bitsandbytes-quantized base (4-bit NF4 and FP4, with and without double
quantization; 8-bit) with a LoRA adapter, the shipped `*-qlora` recipes through `catto train`, `catto eval` on a saved
4-bit model, and bitsandbytes' hub-kernel warnings.

bitsandbytes >= 0.50 (the `quantization` and `test` extras) quantizes and runs 4-bit and 8-bit layers on CPU. The
models here have hidden size 64: bitsandbytes' CPU inference kernel for 4-bit layers needs input features that are a
multiple of its 64-wide quantization block (hidden 32 fails in `catto eval` with a reshape error).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from peft import LoraConfig
from test_dpo_options import ALPHA, full_logits_term, sequences
from test_trainer import COMMON, first_batch, first_rows
from tiny import make_model, make_tokenizer, preference_dataset
from trl import DPOConfig, DPOTrainer

from catto import CATTOConfig, CATTODPOTrainer

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="needs bitsandbytes >= 0.50 (pip install 'catto[test]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = 64
QUANTIZATIONS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "fp4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "int8": dict(load_in_8bit=True),
}
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny random Llama and Qwen2 (hidden 64) saved with the test tokenizer, to be loaded quantized by path."""
    root = tmp_path_factory.mktemp("qlora-models")
    dirs = {}
    for arch in ("llama", "qwen2"):
        make_model(arch, hidden=HIDDEN, seed=0).save_pretrained(root / arch)
        make_tokenizer().save_pretrained(root / arch)
        dirs[arch] = str(root / arch)
    return dirs


def quantized_trainer(trainer_cls, path, tokenizer, out, quantization, eval_dataset=None, **options):
    """A trainer that loads `path` quantized (TRL's `quantization_config` argument, as `catto train` does) and puts a
    LoRA adapter on it; the reference is the same module with the adapter disabled."""
    from transformers import BitsAndBytesConfig

    config_cls = CATTOConfig if trainer_cls is CATTODPOTrainer else DPOConfig
    extra = {"catto_alpha": ALPHA} if trainer_cls is CATTODPOTrainer else {}
    args = config_cls(output_dir=str(out), **{**COMMON, **options, **extra}, model_init_kwargs={"dtype": torch.float32})
    return trainer_cls(model=path, args=args, train_dataset=preference_dataset(16), eval_dataset=eval_dataset,
                       processing_class=tokenizer, peft_config=LoraConfig(**LORA),
                       quantization_config=BitsAndBytesConfig(**QUANTIZATIONS[quantization]))


def quantized_layers(model):
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


def give_the_adapter_an_effect(model, seed=0):
    """LoRA starts as a no-op (B = 0); the same seeded B on every model makes the policy differ from its reference."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("quantization", list(QUANTIZATIONS))
def test_term_equals_full_logits_on_the_quantized_model(model_dirs, tokenizer, tmp_path, quantization):
    """The loss of CATTO minus TRL's DPO loss, both on the same quantized base with the same LoRA weights, is alpha
    times the term computed from the full logits of that quantized policy; the term's gradient reaches the adapter."""
    catto = quantized_trainer(CATTODPOTrainer, model_dirs["llama"], tokenizer, tmp_path / "catto", quantization)
    dpo = quantized_trainer(DPOTrainer, model_dirs["llama"], tokenizer, tmp_path / "dpo", quantization)
    layers = quantized_layers(catto.model)
    assert len(layers) == 14  # q, k, v, o, gate, up, down of both layers; the LM head stays unquantized
    assert catto.model.get_output_embeddings().weight.dtype == torch.float32
    for trainer in (catto, dpo):
        give_the_adapter_an_effect(trainer.model)
        trainer.model.train()
    batch, seqs = first_batch(catto), sequences(first_rows(catto))
    total = catto.compute_loss(catto.model, batch)
    dpo_only = dpo.compute_loss(dpo.model, batch)
    catto.log({})
    with torch.no_grad():  # train mode: bitsandbytes' training kernels, as in the trainer's pass
        term = full_logits_term(catto.model, seqs)
        with catto.model.disable_adapter():
            reference_model_term = full_logits_term(catto.model, seqs)
    assert abs(term - reference_model_term) > 1e-3  # the term is the adapted policy's, not the reference's
    assert (total - dpo_only).item() == pytest.approx(ALPHA * term.item(), abs=1e-5)
    assert catto.state.log_history[-1]["catto/calibration_loss"] == pytest.approx(term.item(), abs=1e-5)
    catto.model.zero_grad()
    full_logits_term(catto.model, seqs).backward()
    lora = [(n, p) for n, p in catto.model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora)


@pytest.mark.parametrize("arch,quantization", [("llama", "nf4-double"), ("qwen2", "nf4-double"), ("llama", "fp4"),
                                               ("qwen2", "int8")])
def test_three_training_steps_with_an_eval_in_between(model_dirs, tokenizer, tmp_path, arch, quantization):
    """Three steps, with TRL's eval loop after the first: only the adapter moves, the quantized base stays, and the
    steps after the eval still train (bitsandbytes repacks 4-bit weights for inference on an eval pass without
    gradient; the trainer keeps them trainable, see `catto.train.trainer._keep_4bit_weights_trainable`)."""
    trainer = quantized_trainer(CATTODPOTrainer, model_dirs[arch], tokenizer, tmp_path, quantization,
                                eval_dataset=preference_dataset(4, seed=3), eval_strategy="steps", eval_steps=1)
    model = trainer.model
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2, 3]
    assert sum("eval_loss" in h for h in trainer.state.log_history) == 3
    for h in logs:
        assert h["grad_norm"] > 0 and h["catto/calibration_loss"] == h["catto/calibration_loss"]  # finite, not NaN
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert sorted(moved) == sorted(lora)


def test_a_model_repacked_by_an_earlier_eval_is_restored(model_dirs, tokenizer, tmp_path):
    """A 4-bit model that ran an eval forward without gradient before the trainer was built: on a CPU with
    AVX512-BF16 bitsandbytes has repacked its weights for inference (its training kernels can no longer reach them);
    the trainer restores them and the adapter's gradient is the one of a fresh model."""
    from bitsandbytes.functional import has_avx512bf16
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    def load():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(model_dirs["llama"], dtype=torch.float32,
                                                    quantization_config=BitsAndBytesConfig(**QUANTIZATIONS["nf4"]))
        model = get_peft_model(base, LoraConfig(**LORA))
        give_the_adapter_an_effect(model)
        return model

    used = load().eval()
    with torch.no_grad():
        used(input_ids=torch.tensor([[2, 5, 6, 7]]))
    packed = [m for m in quantized_layers(used) if getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert len(packed) == (14 if has_avx512bf16() else 0)
    args = CATTOConfig(output_dir=str(tmp_path), **COMMON, catto_alpha=ALPHA)
    grads = []
    for model in (load(), used):
        trainer = CATTODPOTrainer(model=model, args=args, train_dataset=preference_dataset(8),
                                  processing_class=tokenizer)
        assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                       for m in quantized_layers(trainer.model))
        trainer.model.train()
        trainer.compute_loss(trainer.model, first_batch(trainer)).backward()
        grads.append({n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad})
    fresh, restored = grads
    for name, g in fresh.items():
        assert restored[name] is not None, name
        # bitsandbytes' inverse re-quantizes the block scales, which it had rounded to bf16: close, not identical
        torch.testing.assert_close(restored[name], g, rtol=0.1, atol=5e-3)


# ---------------------------------------------------------------------------------------------------------------
# The shipped *-qlora recipes, on CPU, through `catto train`

QLORA_RECIPES = sorted(f"recipes/{model}/{method}-qlora.yaml" for model in ("qwen3-4b", "qwen2.5-7b-instruct",
                                                                            "llama-3.1-8b-instruct")
                       for method in ("catto", "dpo"))


@pytest.fixture(scope="module")
def recipe_workspace(tmp_path_factory):
    """A tiny model per recipe family (hidden 64, the MCQA vocabulary, a chat template so the recipes' chat
    formatting stays on) and local MCQA files in ARC's layout."""
    from posthoc_common import write_arc_mcqa
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from catto.data.synthetic import MCQA_VOCAB, synthetic_mcqa

    root = tmp_path_factory.mktemp("qlora-recipes")
    tokenizer = make_tokenizer(MCQA_VOCAB)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    models = {
        "qwen3-4b": Qwen3ForCausalLM(Qwen3Config(
            vocab_size=len(MCQA_VOCAB), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128, pad_token_id=0,
            eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)),
        "qwen2.5-7b-instruct": make_model("qwen2", hidden=HIDDEN, vocab_size=len(MCQA_VOCAB)),
        "llama-3.1-8b-instruct": make_model("llama", hidden=HIDDEN, vocab_size=len(MCQA_VOCAB)),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    write_arc_mcqa(root / "train.jsonl", synthetic_mcqa(32, seed=0))
    write_arc_mcqa(root / "heldout.jsonl", synthetic_mcqa(12, seed=1))
    return root


def cpu_overrides(root, recipe, out):
    """What a CPU run of a GPU recipe overrides, and only that:

    - model_name_or_path: a local tiny model of the recipe's family (no hub here);
    - mcqa_data, calibration_eval_data: local files in ARC's layout instead of the hub's CommonsenseQA and
      ARC-Challenge (the splits, formats and chat templates of the recipe stay);
    - use_cpu: true, since TrainingArguments refuses the recipe's `bf16: true` without a GPU otherwise (bf16 and
      `dtype: bfloat16` stay: CPU autocast runs them);
    - max_steps 2 and logging_steps 1 (the recipe logs every 10 steps), report_to none (no tensorboard here), and
      output_dir.

    Everything else is the recipe's: load_in_4bit, NF4, double quantization, LoRA r=16 on all linear layers,
    batch 4 x accumulation 4, sdpa attention, gradient checkpointing, max_length, the calibration callback.
    """
    family = recipe.split("/")[1]
    return ["--model_name_or_path", str(root / family), "--mcqa_data", f"arc_easy:{root / 'train.jsonl'}",
            "--calibration_eval_data", f"arc_easy:{root / 'heldout.jsonl'}", "--use_cpu", "true",
            "--max_steps", "2", "--logging_steps", "1", "--report_to", "none", "--output_dir", str(out)]


def assert_two_qlora_steps(out, recipe):
    with open(os.path.join(ROOT, recipe)) as f:
        spec = yaml.safe_load(f)
    assert spec["load_in_4bit"] and spec["bnb_4bit_quant_type"] == "nf4" and spec["use_bnb_nested_quant"]
    with open(out / "trainer_state.json") as f:
        history = json.load(f)["log_history"]
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert h["loss"] == h["loss"] and h["grad_norm"] > 0
        assert "catto/token_ece" in h  # both twins log the calibration metrics; only catto's trains on the term
    assert [h["step"] for h in history if "eval_calibration/ece" in h] == [0, 2]
    with open(out / "adapter_config.json") as f:
        adapter = json.load(f)
    targets = {name.split(".")[-1] for name in adapter["target_modules"]}  # all-linear, expanded by peft
    assert adapter["r"] == 16 and targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert not (out / "model.safetensors").exists()  # the adapter only, never the quantized base
    with open(out / "catto_train_settings.json") as f:
        settings = json.load(f)
    assert settings["load_in_4bit"] is True and settings["catto_alpha"] == spec["catto_alpha"]


@pytest.mark.parametrize("recipe", QLORA_RECIPES)
def test_qlora_recipe_trains_two_steps_on_cpu(recipe, recipe_workspace, monkeypatch):
    """Each shipped QLoRA recipe through the `catto train` script (`catto.train.run`, what `accelerate launch -m
    catto.train` runs), in this process; the next test runs one through the `catto train` command itself."""
    from catto import train as catto_train

    monkeypatch.chdir(ROOT)
    out = recipe_workspace / "out" / recipe.replace("/", "_")
    code = catto_train.run(["--config", recipe, *cpu_overrides(recipe_workspace, recipe, out)])
    assert code == 0
    assert_two_qlora_steps(out, recipe)


# about 25 s: `catto train` launches `accelerate launch -m catto.train` (two fresh Python processes)
def test_qlora_recipe_through_the_catto_train_command(recipe_workspace):
    recipe = "recipes/qwen3-4b/catto-qlora.yaml"
    out = recipe_workspace / "out" / "command"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "catto.cli", "train", "--config", recipe, "--accelerate_config",
                           "single_process", *cpu_overrides(recipe_workspace, recipe, out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "accelerate.commands.launch" in proc.stdout + proc.stderr  # the launch line it printed
    assert_two_qlora_steps(out, recipe)
    assert "kernels-community/quantization-bitsandbytes" not in proc.stderr  # the hub-kernel warnings are filtered


# ---------------------------------------------------------------------------------------------------------------
# catto eval on a saved 4-bit model


def test_catto_eval_loads_a_saved_4bit_model(model_dirs, tmp_path):
    """A 4-bit model saved with save_pretrained keeps its quantization_config in config.json: catto's loader (and so
    `catto eval`) loads it quantized, and scores it (not a de-quantized copy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from catto.cli import main as cli_main
    from catto.core.modeling import load_model_and_tokenizer
    from catto.data import load_mcqa
    from catto.data.synthetic import MCQA_VOCAB, synthetic_mcqa
    from catto.eval.scoring import score_items
    from posthoc_common import write_arc_mcqa

    full = tmp_path / "full"
    make_model("llama", hidden=HIDDEN, vocab_size=len(MCQA_VOCAB)).save_pretrained(full)
    make_tokenizer(MCQA_VOCAB).save_pretrained(full)
    quantized = AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32,
                                                     quantization_config=BitsAndBytesConfig(**QUANTIZATIONS["nf4"]))
    quantized.save_pretrained(tmp_path / "nf4")
    AutoTokenizer.from_pretrained(full).save_pretrained(tmp_path / "nf4")
    write_arc_mcqa(tmp_path / "heldout.jsonl", synthetic_mcqa(12, seed=1))
    spec = f"arc_easy:{tmp_path / 'heldout.jsonl'}"

    model, tok = load_model_and_tokenizer(str(tmp_path / "nf4"))
    assert len(quantized_layers(model)) == 14
    items = list(load_mcqa(spec))
    direct = [r.option_probs for r in score_items(model, tok, items, progress=False)]
    full_model, full_tok = load_model_and_tokenizer(str(full))
    unquantized = [r.option_probs for r in score_items(full_model, full_tok, items, progress=False)]
    assert max(abs(a - b) for x, y in zip(direct, unquantized) for a, b in zip(x, y)) > 1e-5

    assert cli_main(["eval", "--model", str(tmp_path / "nf4"), "--data", spec, "--out", str(tmp_path / "eval"),
                     "--bootstrap", "0", "--no-plots", "--no-progress"]) in (0, None)
    with open(next((tmp_path / "eval").glob("*/results.jsonl"))) as f:
        written = [json.loads(line)["option_probs"] for line in f]
    assert len(written) == len(direct)
    for a, b in zip(written, direct):
        assert a == pytest.approx(b, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# bitsandbytes' hub-kernel warnings


def test_bitsandbytes_hub_kernel_warnings_are_filtered_once_catto_is_imported():
    """bitsandbytes (imported by peft) asks the Hub for an optional CPU kernel and, offline, warns twice on every
    import; with catto imported first, neither line appears, and other records of those loggers still do."""
    import logging

    code = ("import catto, peft, bitsandbytes.backends.cpu.ops as ops; "
            "print(getattr(ops, 'gemm_4bit_forward_kernel', 'not tried'))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # "None": bitsandbytes tried the hub kernel and failed, i.e. it logged the warnings (on a CPU with AVX512-BF16);
    # "not tried": this CPU never asks, and there is nothing to filter.
    assert proc.stdout.strip() in ("None", "not tried")
    assert "gemm_4bit_forward" not in proc.stderr and "kernels-community/quantization-bitsandbytes" not in proc.stderr

    import catto  # noqa: F401  (installs the filter in this process too)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    target = logging.getLogger("bitsandbytes.backends.cpu.ops")
    target.addHandler(handler)
    try:
        target.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline.")
        target.warning("something else bitsandbytes says")
    finally:
        target.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["something else bitsandbytes says"]
