"""The option table of docs/training.md ("Which DPOConfig options work with the term"), one test behind every row.

Every `DPOConfig` field that changes the forward or the loss either works with the CATTO term or is refused in one
line before training. "Works" means, on tiny random models: the loss of `CATTODPOTrainer` minus the loss of TRL's own
`DPOTrainer` with the same option, on the same batch and weights, is `catto_alpha` times the term computed from the
model's full logits by the independent reference (`tests/reference.py`), and so are the gradients; where the option
makes the pass random (dropout, NEFTune) the term is checked against full logits of that very pass. "Refused" means a
`catto.errors.ConfigError` whose message names the option and the fix.

QLoRA has its own file (tests/test_qlora.py); LoRA and the `catto_*` switches are in tests/test_trainer.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings

import pytest
import torch
from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType
from reference import reference_term
from test_trainer import COMMON, first_batch, first_rows
from tiny import VOCAB, make_model, preference_dataset
from trl import DPOConfig, DPOTrainer

from catto import CATTOConfig, CATTODPOTrainer
from catto.errors import ConfigError

ALPHA = 0.7
# TRL 1.16's loss types (DPOConfig.loss_type); `label_smoothing` > 0 is required by exo_pair and used by robust.
LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


# ---------------------------------------------------------------------------------------------------------------
# Helpers: a CATTO trainer and TRL's DPOTrainer with the same option, and the term from full logits


def pair(tmp_path, tokenizer, *, model_fn=make_model, dataset=None, alpha=ALPHA, peft_config=None, **options):
    """`(CATTODPOTrainer, DPOTrainer)` with the same options on the same initial weights (`model_fn()` is
    deterministic); each gets an explicit reference model unless a PEFT config makes the policy its own reference."""
    trainers = []
    for trainer_cls, config_cls, extra in ((CATTODPOTrainer, CATTOConfig, {"catto_alpha": alpha}),
                                           (DPOTrainer, DPOConfig, {})):
        args = config_cls(output_dir=str(tmp_path / trainer_cls.__name__), **{**COMMON, **options, **extra})
        kwargs = {"peft_config": peft_config} if peft_config is not None else {"ref_model": model_fn()}
        trainers.append(trainer_cls(model=model_fn(), args=args, train_dataset=dataset or preference_dataset(16),
                                    processing_class=tokenizer, **kwargs))
    return trainers


def sequences(rows, roles=("chosen", "rejected"), max_length=None, truncation_mode="keep_start"):
    """Each (prompt + completion) of the dataset rows as `(ids, completion_mask)`, truncated as TRL's collator does."""
    out = []
    for row in rows:
        for role in roles:
            prompt, completion = list(row["prompt_ids"]), list(row[f"{role}_ids"])
            ids, mask = prompt + completion, [0] * len(prompt) + [1] * len(completion)
            if max_length is not None:
                cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
                ids, mask = ids[cut], mask[cut]
            out.append((ids, mask))
    return out


def full_logits_term(model, seqs, **kw):
    """The reference term over the completion tokens of `seqs`, each run through `model` on its own (unpadded);
    position t - 1 predicts token t. Models that prepend virtual tokens (prompt learning) return longer logits: the
    last `len(ids)` positions are the real tokens'."""
    device = next(model.parameters()).device
    logits, labels = [], []
    for ids, mask in seqs:
        x = torch.tensor([ids], device=device)
        out = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -len(ids):]
        keep = torch.tensor(mask[1:], dtype=torch.bool, device=device)
        logits.append(out[:-1][keep])
        labels.append(x[0, 1:][keep])
    logits, labels = torch.cat(logits).float(), torch.cat(labels)
    loss, *_ = reference_term(logits, labels, torch.ones_like(labels, dtype=torch.bool), **kw)
    return loss


def assert_adds_alpha_times_term(catto, dpo, reference_model, seqs, *, grads=True, alpha=ALPHA, abs_tol=1e-5):
    """CATTO loss - DPO loss (same batch, same weights) == alpha * term of the reference model's full logits; the
    logged term equals it; with `grads`, the gradient difference is alpha * the term's gradient on every parameter."""
    batch = first_batch(catto)
    catto.model.train()
    dpo.model.train()
    total = catto.compute_loss(catto.model, batch)
    dpo_only = dpo.compute_loss(dpo.model, batch)
    term = full_logits_term(reference_model, seqs)
    assert abs(alpha * term.item()) > 1e-2  # the term is visible in the loss
    assert (total - dpo_only).item() == pytest.approx(alpha * term.item(), abs=abs_tol)
    catto.log({})
    assert catto.state.log_history[-1]["catto/calibration_loss"] == pytest.approx(term.item(), abs=abs_tol)
    if grads:
        total.backward()
        dpo_only.backward()
        term.backward()
        named = [(n, p) for n, p in catto.model.named_parameters() if p.requires_grad]
        for (name, p), q, r in zip(named, [p for p in dpo.model.parameters() if p.requires_grad],
                                   [p for p in reference_model.parameters() if p.requires_grad]):
            diff = p.grad - q.grad
            assert torch.allclose(diff, alpha * r.grad, atol=1e-5, rtol=1e-3), name
    return total


# ---------------------------------------------------------------------------------------------------------------
# Loss options: loss_type (every one, and weighted lists), beta, label_smoothing, ld_alpha, use_weighting,
# f_divergence_type, discopop_tau: the term is added to whatever TRL computes


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_adds_exactly_the_term(tmp_path, tokenizer, loss_type):
    catto, dpo = pair(tmp_path, tokenizer, loss_type=loss_type, label_smoothing=1e-3)
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), sequences(first_rows(catto)), grads=False)


def test_a_weighted_list_of_every_loss_type(tmp_path, tokenizer):
    weights = [0.1 * (i + 1) for i in range(len(LOSS_TYPES))]
    catto, dpo = pair(tmp_path, tokenizer, loss_type=LOSS_TYPES, loss_weights=weights, label_smoothing=1e-3,
                      beta=0.3)
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), sequences(first_rows(catto)))


def test_rpo_is_a_weighted_list_in_trl_1_16():
    """TRL 1.16 has no `rpo_alpha`: RPO is `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, rpo_alpha]` (the list
    test above covers it); the old keyword fails in the dataclass, naming it."""
    assert "rpo_alpha" not in {f.name for f in dataclasses.fields(CATTOConfig)}
    with pytest.raises(TypeError, match="rpo_alpha"):
        CATTOConfig(output_dir="unused", rpo_alpha=0.5)


@pytest.mark.parametrize("options", [
    dict(ld_alpha=0.5),
    dict(ld_alpha=0.0),
    dict(use_weighting=True),  # WPO weights read `log_sum_sq_probs` from catto's fused pass: equal to TRL's
    dict(f_divergence_type="forward_kl"),
    dict(f_divergence_type="js_divergence"),
    dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3),
    dict(loss_type="discopop", discopop_tau=0.2),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_loss_options_add_exactly_the_term(tmp_path, tokenizer, options):
    # completions of different lengths, so that ld_alpha's shared/tail split is not trivial
    dataset = preference_dataset(8, answer_len=2).map(lambda r, i: {"rejected": r["rejected"] * (1 + i % 2)},
                                                      with_indices=True)
    catto, dpo = pair(tmp_path, tokenizer, dataset=dataset, **options)
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), sequences(first_rows(catto)))


# ---------------------------------------------------------------------------------------------------------------
# Data and batch options: max_length + truncation_mode, pad_to_multiple_of, precompute_ref_log_probs


@pytest.mark.parametrize("truncation_mode,max_length", [("keep_start", 6), ("keep_end", 5)])
def test_truncation_the_term_covers_the_kept_tokens(tmp_path, tokenizer, truncation_mode, max_length):
    # prompt 4 tokens + completion 3 (2 words and EOS): keep_start 6 cuts the EOS, keep_end 5 cuts the prompt's start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL deprecates keep_end (still supported in 1.16)
        catto, dpo = pair(tmp_path, tokenizer, max_length=max_length, truncation_mode=truncation_mode)
    seqs = sequences(first_rows(catto), max_length=max_length, truncation_mode=truncation_mode)
    assert all(len(ids) == max_length for ids, _ in seqs)
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), seqs)


def test_pad_to_multiple_of(tmp_path, tokenizer):
    catto, dpo = pair(tmp_path, tokenizer, pad_to_multiple_of=16)
    assert first_batch(catto)["input_ids"].shape[1] == 16
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), sequences(first_rows(catto)))


def test_precompute_ref_log_probs(tmp_path, tokenizer):
    catto, dpo = pair(tmp_path, tokenizer, precompute_ref_log_probs=True, precompute_ref_batch_size=8)
    assert "ref_chosen_logps" in first_batch(catto)
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), sequences(first_rows(catto)))


# ---------------------------------------------------------------------------------------------------------------
# The forward: gradient checkpointing, bf16, dropout (disable_dropout=False), NEFTune


def test_gradient_checkpointing(tmp_path, tokenizer):
    catto, dpo = pair(tmp_path, tokenizer, gradient_checkpointing=True)
    for trainer in (catto, dpo):  # what Trainer.train does before the first step
        trainer.model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)
    assert catto.model.model.gradient_checkpointing
    assert_adds_alpha_times_term(catto, dpo, make_model(seed=0), sequences(first_rows(catto)))


def test_bf16_autocast_on_cpu(tmp_path, tokenizer):
    """bf16=True (CPU autocast here; tests/test_cuda.py runs it on a GPU): the term against full logits computed
    under the same autocast, within bf16's rounding."""
    catto, dpo = pair(tmp_path, tokenizer, bf16=True, use_cpu=True)
    batch = first_batch(catto)
    catto.model.train()
    dpo.model.train()
    with catto.accelerator.autocast():
        total = catto.compute_loss(catto.model, batch)
    with dpo.accelerator.autocast():
        dpo_only = dpo.compute_loss(dpo.model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        term = full_logits_term(make_model(seed=0), sequences(first_rows(catto)))
    assert (total - dpo_only).item() == pytest.approx(ALPHA * term.item(), rel=2e-2)


def _capture_policy_pass(trainer):
    """Record the first policy pass of training: its batch and its final hidden states (with whatever noise the pass
    had), plus the LM head's weights before the update."""
    captured = {"head": trainer.model.get_output_embeddings().weight.detach().clone()}
    def keep(module, args, output):  # returns None: the output goes on unchanged
        captured.setdefault("hidden", output.last_hidden_state.detach())

    handle = trainer.model.base_model.register_forward_hook(keep)
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        captured.setdefault("inputs", {k: v.detach() for k, v in inputs.items()})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    return captured, handle


@pytest.mark.parametrize("options,model_overrides", [
    (dict(disable_dropout=False), dict(attention_dropout=0.5)),
    (dict(neftune_noise_alpha=50.0), {}),
], ids=["dropout", "neftune"])
def test_random_forwards_the_term_is_that_of_the_same_pass(tmp_path, tokenizer, options, model_overrides):
    """Dropout (disable_dropout=False) and NEFTune make every pass random, so no second forward reproduces it: the
    logged term must equal the reference term of full logits built from the training pass's own hidden states (the
    same states TRL's log-probabilities come from), and those states must really differ from a clean pass."""
    model = make_model(seed=0, **model_overrides)
    args = CATTOConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 1, **options}, catto_alpha=ALPHA)
    trainer = CATTODPOTrainer(model=model, ref_model=make_model(seed=0, **model_overrides), args=args,
                              train_dataset=preference_dataset(16), processing_class=tokenizer)
    captured, handle = _capture_policy_pass(trainer)
    trainer.train()
    handle.remove()
    inputs, hidden = captured["inputs"], captured["hidden"]
    logits = (hidden @ captured["head"].T)[:, :-1]
    mask = inputs["completion_mask"][:, 1:].bool()
    term, *_ = reference_term(logits[mask], inputs["input_ids"][:, 1:][mask], torch.ones(int(mask.sum()), dtype=bool))
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert logged["catto/calibration_loss"] == pytest.approx(term.item(), abs=1e-5)
    clean = make_model(seed=0, **model_overrides).eval()
    with torch.no_grad():
        clean_hidden = clean.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert (clean_hidden.last_hidden_state - hidden).abs().max() > 1e-2  # the pass really was noisy


# ---------------------------------------------------------------------------------------------------------------
# Training-loop options: gradient accumulation, sync_ref_model, torch_compile


def _step_logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, tokenizer):
    """GA=2 x 2 pairs == 1 x 4 pairs on the first step (equal-length rows: per-micro-batch means average to the
    4-pair means), for the loss, the gradient norm and every catto/* metric."""
    logs = {}
    for ga, bs in ((1, 4), (2, 2)):
        args = CATTOConfig(output_dir=str(tmp_path / str(ga)), **{**COMMON, "max_steps": 1,
                                                                  "per_device_train_batch_size": bs,
                                                                  "gradient_accumulation_steps": ga}, catto_alpha=ALPHA)
        trainer = CATTODPOTrainer(model=make_model(seed=0), ref_model=make_model(seed=0), args=args,
                                  train_dataset=preference_dataset(16), processing_class=tokenizer)
        trainer.train()
        (logs[ga],) = _step_logs(trainer)
    for key in ("loss", "grad_norm", "catto/calibration_loss", "catto/confidence", "catto/token_ece"):
        assert logs[2][key] == pytest.approx(logs[1][key], rel=1e-5, abs=1e-6), key


def test_sync_ref_model(tmp_path, tokenizer):
    """TR-DPO: the reference is mixed into the policy every step; the term still comes from the policy only."""
    catto, _ = pair(tmp_path, tokenizer, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5,
                    max_steps=2)
    initial_ref = [p.detach().clone() for p in catto.ref_model.parameters()]
    catto.train()
    assert any(not torch.equal(a, b) for a, b in zip(initial_ref, catto.ref_model.parameters()))  # it was synced
    # A DPOTrainer holding the same (trained) policy and (synced) reference: the loss differs by alpha x term.
    _, dpo = pair(tmp_path / "dpo", tokenizer)
    dpo.model.load_state_dict(catto.model.state_dict())
    dpo.ref_model.load_state_dict(catto.ref_model.state_dict())
    policy = make_model(seed=0)
    policy.load_state_dict(catto.model.state_dict())
    assert_adds_alpha_times_term(catto, dpo, policy, sequences(first_rows(catto)), grads=False)


def test_the_fused_head_under_torch_compile_keeps_every_gradient():
    """Regression: torch 2.13's dynamo dropped the gradient of `top_log_probs` when a `None` output of the kernel's
    autograd.Function came before its non-differentiable outputs (any backend); the kernel returns no `None`."""
    from catto.core.fused_head import chunked_calibration_stats

    torch.manual_seed(0)
    h, w = torch.randn(30, 16, requires_grad=True), torch.randn(44, 16, requires_grad=True)
    t, g_lp, g_top = torch.randint(0, 44, (30,)), torch.randn(30), torch.randn(30, 2)

    def loss(h, w):
        lp, _, _, _, _, top_lp, _ = chunked_calibration_stats(h, w, None, t, outputs=("entropy", "mean_logits",
                                                                                      "is_top1"))
        return (lp * g_lp).sum() + (top_lp * g_top).sum()

    torch._dynamo.reset()
    try:
        eager = torch.autograd.grad(loss(h, w), (h, w))
        compiled = torch.autograd.grad(torch.compile(loss, backend="eager")(h, w), (h, w))
    finally:
        torch._dynamo.reset()
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def _train_compiled(tmp_path, tokenizer, **options):
    args = CATTOConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 2, **options}, catto_alpha=ALPHA)
    trainer = CATTODPOTrainer(model=make_model(seed=0), ref_model=make_model(seed=0), args=args,
                              train_dataset=preference_dataset(16), processing_class=tokenizer)
    torch._dynamo.reset()
    try:
        trainer.train()
    finally:
        torch._dynamo.reset()
    return trainer


def _assert_same_training(a, b):
    for x, y in zip(_step_logs(a), _step_logs(b), strict=True):
        for key in ("loss", "grad_norm", "catto/calibration_loss", "catto/token_ece"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)


def test_torch_compile(tmp_path, tokenizer):
    """torch_compile=True (the aot_eager backend: dynamo + AOT autograd without code generation, seconds on CPU):
    the same losses, gradient norms and catto/* metrics as the eager run for two steps."""
    from torch._dynamo.eval_frame import OptimizedModule

    compiled = _train_compiled(tmp_path / "compiled", tokenizer, torch_compile=True, torch_compile_backend="aot_eager")
    assert isinstance(compiled.model_wrapped, OptimizedModule)
    _assert_same_training(_train_compiled(tmp_path / "eager", tokenizer), compiled)


@pytest.mark.slow  # reason: inductor compiles C++ kernels on CPU: about 80 s cold (15 s with its /tmp cache warm)
def test_torch_compile_inductor(tmp_path, tokenizer):
    compiled = _train_compiled(tmp_path / "compiled", tokenizer, torch_compile=True)
    _assert_same_training(_train_compiled(tmp_path / "eager", tokenizer), compiled)


# ---------------------------------------------------------------------------------------------------------------
# MoE: the router's load-balancing loss (router_aux_loss_coef)


def make_moe(arch, seed=0):
    """A tiny MoE causal LM over the test vocabulary (4 experts, top-2, aux loss on with coefficient 0.3)."""
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2, tie_word_embeddings=False, num_experts_per_tok=2,
                  output_router_logits=True, router_aux_loss_coef=0.3)
    if arch == "qwen2_moe":
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**common, num_experts=4, moe_intermediate_size=16,
                                                   shared_expert_intermediate_size=32))
    else:
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=4))
    model.config._attn_implementation = "eager"
    return model


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
def test_moe_aux_loss_is_the_models_own(tmp_path, tokenizer, arch, monkeypatch):
    import importlib

    catto, dpo = pair(tmp_path, tokenizer, model_fn=lambda: make_moe(arch))
    assert catto.aux_loss_enabled and catto.router_aux_loss_coef == 0.3
    # The fused pass's auxiliary loss is the unfused model's own `aux_loss`, computed with the family's function.
    family = importlib.import_module(type(catto.model).__module__)
    calls = []
    own = family.load_balancing_loss_func
    monkeypatch.setattr(family, "load_balancing_loss_func",
                        functools.wraps(own)(lambda *a, **k: calls.append(1) or own(*a, **k)))
    batch = first_batch(catto)
    catto.model.train()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    fused = catto.model(**inputs, labels=batch["input_ids"], fused_lm_head=True, catto_stats="fused",
                        output_router_logits=True, use_cache=False)
    assert calls, "the fused pass did not use the family's load_balancing_loss_func"
    with torch.no_grad():
        unfused = make_moe(arch)(**inputs, output_router_logits=True)
    assert fused.aux_loss.item() == pytest.approx(unfused.aux_loss.item(), abs=1e-6)
    # And the total: TRL's DPO loss (with its own aux term) + alpha x the term of the MoE model's full logits.
    assert_adds_alpha_times_term(catto, dpo, make_moe(arch), sequences(first_rows(catto)))
    # Three steps train, with the aux loss logged.
    catto.args.max_steps = 3
    catto.train()
    assert all("aux_loss" in h and "catto/calibration_loss" in h for h in _step_logs(catto))


def test_moe_family_without_a_callable_balancing_function_is_refused(tmp_path, tokenizer, monkeypatch):
    from transformers.models.qwen2_moe import modeling_qwen2_moe

    monkeypatch.delattr(modeling_qwen2_moe, "load_balancing_loss_func")
    args = CATTOConfig(output_dir=str(tmp_path), **COMMON, catto_alpha=ALPHA)
    with pytest.raises(ConfigError, match=r"Qwen2MoeForCausalLM .*Fix: router_aux_loss_coef=0.0"):
        CATTODPOTrainer(model=make_moe("qwen2_moe"), ref_model=make_moe("qwen2_moe"), args=args,
                        train_dataset=preference_dataset(8), processing_class=tokenizer)
    args = CATTOConfig(output_dir=str(tmp_path), **COMMON, catto_alpha=ALPHA, router_aux_loss_coef=0.0)
    CATTODPOTrainer(model=make_moe("qwen2_moe"), ref_model=make_moe("qwen2_moe"), args=args,  # the fix works
                    train_dataset=preference_dataset(8), processing_class=tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# PEFT: prompt learning (prompt tuning, prefix tuning, p-tuning); LoRA is in tests/test_trainer.py


@pytest.mark.parametrize("peft_config", [
    PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3),
    PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3),
    PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3, encoder_hidden_size=16),
], ids=["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_prompt_learning_peft(tmp_path, tokenizer, peft_config):
    """Virtual tokens in front of every sequence: the term is the adapted policy's (not the reference's, which is the
    same module with the adapter disabled), over the real tokens only, and its gradient reaches the prompt."""
    args = CATTOConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 2}, catto_alpha=ALPHA)
    trainer = CATTODPOTrainer(model=make_model(seed=0), args=args, train_dataset=preference_dataset(16),
                              processing_class=tokenizer, peft_config=peft_config)
    model, batch, seqs = trainer.model, first_batch(trainer), sequences(first_rows(trainer))
    model.train()
    loss = trainer.compute_loss(model, batch)
    trainer.log({})
    with torch.no_grad():
        policy_term = full_logits_term(model, seqs)
        with model.disable_adapter():
            base_term = full_logits_term(model, seqs)
    assert abs(policy_term - base_term) > 1e-4
    assert trainer.state.log_history[-1]["catto/calibration_loss"] == pytest.approx(policy_term.item(), abs=1e-5)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    trainer.train()
    assert len(_step_logs(trainer)) == 2


# ---------------------------------------------------------------------------------------------------------------
# Refused before training, in one line naming the option and the fix


def test_padding_free_is_refused():
    with pytest.raises(ConfigError) as err:
        CATTOConfig(output_dir="unused", bf16=False, padding_free=True)
    message = str(err.value)
    assert "\n" not in message and "padding_free=True" in message and "Fix: padding_free=False" in message


@pytest.mark.parametrize("sizes", [dict(cp_size=2), dict(sp_size=2, sp_backend="deepspeed")])
def test_context_and_sequence_parallelism_are_refused(sizes):
    from accelerate import ParallelismConfig

    with pytest.raises(ConfigError) as err:
        CATTOConfig(output_dir="unused", bf16=False, parallelism_config=ParallelismConfig(**sizes))
    message = str(err.value)
    name, size = next(iter(sizes.items()))
    assert "\n" not in message and f"{name}={size}" in message and "Fix: cp_size=1 and sp_size=1" in message
    # plain DPO through catto (no term, no metrics) is left to TRL
    CATTOConfig(output_dir="unused", bf16=False, parallelism_config=ParallelismConfig(**sizes), catto_alpha=0.0,
                catto_log_metrics=False)


# ---------------------------------------------------------------------------------------------------------------
# A plain trl.DPOConfig, and the resume check over the DPO objective


def test_a_plain_dpo_config_is_converted_with_one_log_line(tmp_path, tokenizer, caplog):
    import logging

    dpo_args = DPOConfig(output_dir=str(tmp_path), **COMMON, beta=0.3, loss_type=["sigmoid", "sft"],
                         loss_weights=[1.0, 0.2])
    logger = logging.getLogger("catto")
    logger.addHandler(caplog.handler)
    try:
        trainer = CATTODPOTrainer(model=make_model(), ref_model=make_model(), args=dpo_args,
                                  train_dataset=preference_dataset(4), processing_class=tokenizer)
    finally:
        logger.removeHandler(caplog.handler)
    assert isinstance(trainer.args, CATTOConfig)
    assert (trainer.args.beta, trainer.args.loss_type, trainer.args.loss_weights) == (0.3, ["sigmoid", "sft"],
                                                                                        [1.0, 0.2])
    assert trainer.args.catto_alpha == CATTOConfig.catto_alpha == 0.1  # catto's default
    lines = [r.getMessage() for r in caplog.records if "from_dpo_config" in r.getMessage()]
    assert len(lines) == 1 and "DPOConfig" in lines[0] and "catto_alpha=0.1" in lines[0]
    with pytest.raises(TypeError, match="CATTOConfig"):
        CATTODPOTrainer(model=make_model(), args={"output_dir": str(tmp_path)}, train_dataset=preference_dataset(4),
                        processing_class=tokenizer)


@pytest.mark.parametrize("field,value", [("ld_alpha", 0.5), ("f_divergence_type", "js_divergence"),
                                         ("discopop_tau", 0.2), ("f_alpha_divergence_coef", 0.3),
                                         ("sync_ref_model", True), ("router_aux_loss_coef", 0.01)])
def test_resume_refuses_a_changed_dpo_objective(tmp_path, field, value):
    from types import SimpleNamespace

    from catto.train.checks import SETTINGS_FILE, RecipeError, check_resume_settings, trained_settings

    script, model = SimpleNamespace(dataset_name="d.jsonl"), SimpleNamespace(model_name_or_path="m")
    before = trained_settings(script, CATTOConfig(output_dir=str(tmp_path), bf16=False), model)
    after = trained_settings(script, CATTOConfig(output_dir=str(tmp_path), bf16=False, **{field: value}), model)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(before))
    checkpoint = str(tmp_path / "checkpoint-2")
    check_resume_settings(checkpoint, before)
    with pytest.raises(RecipeError, match=f"{field} "):
        check_resume_settings(checkpoint, after)
    # a record written before catto recorded `field` resumes: nothing to compare it with
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({k: v for k, v in before.items() if k != field}))
    check_resume_settings(checkpoint, after)


def test_every_row_of_the_option_table_names_tests_that_exist():
    """docs/training.md's option table: every row names at least one test, and each named test is defined."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "training.md")) as f:
        text = f.read()
    section = text.split("### Which `DPOConfig` options work with the term", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| option")]
    assert len(rows) >= 25
    for row in rows:
        test_cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        found = re.findall(r"(tests/[\w/]+\.py)?::(test_\w+)", test_cell) or re.findall(r"`(tests/test_\w+\.py)`",
                                                                                        test_cell)
        assert found, row
        current = "tests/test_dpo_options.py"
        for item in found:
            path, name = item if isinstance(item, tuple) else (item, None)
            current = path or current
            with open(os.path.join(root, current)) as f:
                source = f.read()
            assert name is None or re.search(rf"^def {name}\(", source, re.M), (current, name)
