"""Prefix sharing (`CATTOConfig(prefix_sharing=True)`): one `prompt + chosen + rejected` row per pair gives the same
per-token values, losses and gradients as TRL's two rows (fp32, ~1e-5), on tiny Llama, Qwen2 and Gemma 3 (a sliding
window shorter than the sequence), tied and untied heads, sdpa and eager; every loss type; `ref_model`, precompute
and the PEFT reference; LoRA; gradient checkpointing; prompts of 5 and 300 tokens in one batch, one-token
completions, a truncated chosen side. And what it cannot run is refused in one line before training."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tiny import make_model, preference_dataset

from catto import CATTOConfig, CATTODPOTrainer
from catto.data.synthetic import VOCAB, WORDS
from catto.errors import ConfigError

COMMON = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=2, learning_rate=1e-2,
              bf16=False, report_to=[], save_strategy="no", gradient_checkpointing=False, logging_steps=1, seed=0,
              disable_tqdm=True)


def mixed_dataset() -> Dataset:
    """Prompts of 5 and 300 tokens in the same batches, one-token and longer completions of unequal lengths."""
    rows = []
    for i in range(8):
        n_prompt = 300 if i % 2 else 5
        prompt = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n_prompt))
        chosen = " " + " ".join(WORDS[(i + j) % 7] for j in range(1 + i % 3))
        rejected = " " + " ".join(WORDS[(i + 3 * j + 1) % 11] for j in range(1 + (i + 1) % 4))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return Dataset.from_list(rows)


def gemma3(seed: int = 0, tied: bool = True):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                              sliding_window=4, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                              eos_token_id=1, bos_token_id=2, tie_word_embeddings=tied)
    return Gemma3ForCausalLM(config)


def model_for(arch: str, attention: str, tied: bool = False, seed: int = 0):
    if arch == "gemma3":
        model = gemma3(seed, tied)
    else:
        model = make_model(arch, seed=seed, max_position_embeddings=512, tie_word_embeddings=tied)
    model.config._attn_implementation = attention
    return model


def trainer_pair(tmp_path, tokenizer, *, arch="llama", attention="eager", tied=False, peft=False,
                 dataset=None, eval_dataset=None, ref=True, **overrides):
    """Two trainers on identical fresh models and data, prefix sharing off and on."""
    out = []
    for sharing in (False, True):
        model = model_for(arch, attention, tied)
        kwargs = {}
        if peft:
            kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               lora_dropout=0.0)
        elif ref:
            kwargs["ref_model"] = copy.deepcopy(model)
        args = CATTOConfig(output_dir=str(tmp_path / f"s{int(sharing)}"), prefix_sharing=sharing,
                           **{**COMMON, **overrides})
        out.append(CATTODPOTrainer(model=model, args=args, train_dataset=dataset or preference_dataset(8),
                                   eval_dataset=eval_dataset, processing_class=tokenizer, **kwargs))
    return out


def loss_and_grads(trainer):
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.log({})
    return loss.detach(), grads, dict(trainer.state.log_history[-1]), batch


def assert_same(plain, shared, atol=1e-5):
    loss_a, grads_a, logs_a, _ = loss_and_grads(plain)
    loss_b, grads_b, logs_b, batch = loss_and_grads(shared)
    assert "catto_shared_mask" in batch and "catto_shared_mask" not in plain.data_collator(
        [plain.train_dataset[0]])
    assert loss_b.item() == pytest.approx(loss_a.item(), abs=atol)
    for name, g in grads_a.items():
        assert torch.allclose(grads_b[name], g, atol=atol, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in grads_a.values())
    for key, value in logs_a.items():  # every logged metric: TRL's rewards/logps/logits and catto/*
        if isinstance(value, float) and key not in ("epoch", "grad_norm", "learning_rate"):
            assert logs_b[key] == pytest.approx(value, abs=1e-4, rel=1e-4), key
    return logs_a


@pytest.mark.parametrize("arch,attention,tied", [
    ("llama", "eager", False), ("llama", "sdpa", True), ("qwen2", "sdpa", False), ("qwen2", "eager", True),
    ("gemma3", "eager", True), ("gemma3", "sdpa", False),
])
def test_same_loss_gradients_and_metrics_as_two_rows(tmp_path, tokenizer, arch, attention, tied):
    plain, shared = trainer_pair(tmp_path, tokenizer, arch=arch, attention=attention, tied=tied,
                                 dataset=mixed_dataset(), catto_alpha=0.5)
    logs = assert_same(plain, shared)
    assert "catto/token_ece" in logs and "logps/chosen" in logs


def test_the_sliding_window_is_kept(tmp_path, tokenizer):
    """Gemma 3's sliding layers need a mask of their own: a window shorter than the shared row changes the values,
    and the shared path still equals two rows (above); here: without the window the values would differ."""
    from catto.core.prefix_sharing import backend_mask, shared_layout

    model = gemma3()
    model.config._attn_implementation = "eager"  # additive float masks: 0 where a key is seen
    examples = [{"prompt_ids": list(range(3, 13)), "chosen_ids": [20, 1], "rejected_ids": [21, 22, 1]}]
    layout = shared_layout(examples, 13, pad_token_id=0)
    masks = backend_mask(layout["catto_shared_mask"], layout["catto_shared_position_ids"], model.config,
                         torch.float32)
    assert set(masks) == {"full_attention", "sliding_attention"}
    full, sliding = (masks[k][0, 0] == 0 for k in ("full_attention", "sliding_attention"))
    assert full.sum() > sliding.sum()
    # the first rejected token (row 12: position 10 after a 10-token prompt and 2 chosen tokens) sees, within the
    # window of 4 positions, the prompt tokens at positions 7, 8, 9 and itself; never the chosen ones (rows 10, 11)
    assert sliding[12].nonzero().flatten().tolist() == [7, 8, 9, 12]
    assert full[12].nonzero().flatten().tolist() == list(range(10)) + [12]


@pytest.mark.parametrize("loss_type,label_smoothing", [
    ("sigmoid", None), ("ipo", None), ("hinge", None), ("robust", None), ("exo_pair", 1e-3), ("nca_pair", None),
    ("bco_pair", None), ("sppo_hard", None), ("aot", None), ("aot_unpaired", None), ("apo_zero", None),
    ("apo_down", None), ("discopop", None), ("sft", None), ("sigmoid_norm", None), (["sigmoid", "sft"], None),
    (["sigmoid", "ipo"], None),
])
def test_every_loss_type(tmp_path, tokenizer, loss_type, label_smoothing):
    extra = {"label_smoothing": label_smoothing} if label_smoothing else {}
    if isinstance(loss_type, list):
        extra["loss_weights"] = [1.0, 0.5]
    plain, shared = trainer_pair(tmp_path, tokenizer, loss_type=loss_type, catto_alpha=0.3, **extra)
    assert_same(plain, shared)


@pytest.mark.parametrize("options", [
    {"ld_alpha": 0.5}, {"use_weighting": True}, {"catto_alpha": 0.0},
    {"catto_alpha": 0.0, "catto_log_metrics": False}, {"catto_sequences": "chosen", "catto_loss_form": "bce"},
    {"max_length": 8}, {"gradient_checkpointing": True},
    {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}},
])
def test_options(tmp_path, tokenizer, options):
    plain, shared = trainer_pair(tmp_path, tokenizer, dataset=mixed_dataset() if "max_length" in options else None,
                                 **{"catto_alpha": 0.3, **options})
    assert_same(plain, shared)


def test_truncated_chosen_side(tmp_path, tokenizer):
    """max_length cuts prompt + chosen inside the chosen answer of some pairs: the shared row cuts the same."""
    rows = [{"prompt": "w1 w2 w3", "chosen": " w4 w5 w6 w7 w8", "rejected": " w9"} for _ in range(4)]
    plain, shared = trainer_pair(tmp_path, tokenizer, dataset=Dataset.from_list(rows), max_length=6,
                                 catto_alpha=0.3)
    assert_same(plain, shared)


@pytest.mark.parametrize("reference", ["peft", "precompute", "precompute_peft"])
def test_reference_passes(tmp_path, tokenizer, reference):
    plain, shared = trainer_pair(tmp_path, tokenizer, peft=reference != "precompute",
                                 precompute_ref_log_probs=reference.startswith("precompute"), catto_alpha=0.3)
    if reference.startswith("precompute"):
        for i in range(len(plain.train_dataset)):
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                assert shared.train_dataset[i][key] == pytest.approx(plain.train_dataset[i][key], abs=1e-5)
    assert_same(plain, shared)


def test_training_and_eval_loop_match(tmp_path, tokenizer):
    plain, shared = trainer_pair(tmp_path, tokenizer, catto_alpha=0.3, eval_strategy="steps", eval_steps=2,
                                 eval_dataset=preference_dataset(8, seed=1))
    for t in (plain, shared):
        t.train()
    for a, b in zip(plain.model.parameters(), shared.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    eval_a = [h for h in plain.state.log_history if "eval_loss" in h][-1]
    eval_b = [h for h in shared.state.log_history if "eval_loss" in h][-1]
    assert eval_b["eval_loss"] == pytest.approx(eval_a["eval_loss"], abs=1e-5)


def test_off_by_default_and_then_untouched(tmp_path, tokenizer):
    trainer = trainer_pair(tmp_path, tokenizer)[0]
    assert trainer.args.prefix_sharing is False
    assert not getattr(trainer.model.base_model.forward, "_catto_shared", False)
    assert "catto_shared_mask" not in trainer.data_collator([trainer.train_dataset[0]])


@pytest.mark.parametrize("overrides,match", [
    ({"truncation_mode": "keep_end"}, "truncation_mode='keep_start'"),
])
def test_refusals(tmp_path, tokenizer, overrides, match):
    model = make_model(seed=0)
    with pytest.raises(ConfigError, match=match) as err:
        CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), train_dataset=preference_dataset(4),
                        processing_class=tokenizer,
                        args=CATTOConfig(output_dir=str(tmp_path), prefix_sharing=True, **{**COMMON, **overrides}))
    assert "\n" not in str(err.value) and "prefix_sharing=False" in str(err.value)


@pytest.mark.parametrize("attention,match", [("flash_attention_2", "cannot express"),
                                             ("flex_attention", "block masks yet")])
def test_attention_backends_that_cannot_take_the_mask_are_refused(tmp_path, attention, match):
    from catto.train.prefix_sharing import check_prefix_sharing

    model = make_model(seed=0)
    model.config._attn_implementation = attention
    with pytest.raises(ConfigError, match=match) as err:
        check_prefix_sharing(CATTOConfig(output_dir=str(tmp_path), prefix_sharing=True, **COMMON), model)
    assert "attn_implementation='sdpa'" in str(err.value) and "prefix_sharing=False" in str(err.value)
