import copy

import pytest
import torch
from peft import LoraConfig
from reference import reference_term
from tiny import make_model, preference_dataset
from trl import DPOConfig, DPOTrainer

from catto import CATTOConfig, CATTODPOTrainer

COMMON = dict(
    per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=3, learning_rate=1e-2, bf16=False,
    report_to=[], save_strategy="no", gradient_checkpointing=False, logging_steps=1, seed=0, disable_tqdm=True,
)


def build(trainer_cls, tmp_path, tokenizer, *, peft=False, dataset=None, eval_dataset=None, arch="llama", **overrides):
    """A trainer on a fresh tiny model (same seed => same weights) with an explicit reference copy."""
    model = make_model(arch, seed=0)
    config_cls = CATTOConfig if trainer_cls is CATTODPOTrainer else DPOConfig
    args = config_cls(output_dir=str(tmp_path / trainer_cls.__name__), **{**COMMON, **overrides})
    kwargs = {}
    if peft:
        kwargs["peft_config"] = peft if isinstance(peft, LoraConfig) else LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    else:
        kwargs["ref_model"] = copy.deepcopy(model)
    return trainer_cls(model=model, args=args, train_dataset=dataset or preference_dataset(16),
                       eval_dataset=eval_dataset, processing_class=tokenizer, **kwargs)


def first_rows(trainer, dataset=None, n=4):
    """The tokenized dataset rows (prompt_ids, chosen_ids, rejected_ids) that `first_batch` collates."""
    dataset = trainer.train_dataset if dataset is None else dataset
    return [dataset[i] for i in range(n)]


def first_batch(trainer):
    batch = trainer.data_collator(first_rows(trainer))
    return trainer._prepare_inputs(batch)


def full_logits_term(model, rows, sequences="both", **kw):
    """The CATTO term from the model's own full logits and the reference implementation, built from the dataset
    rows themselves: each (prompt + chosen) and, unless `sequences="chosen"`, each (prompt + rejected) runs through
    the model on its own, unpadded, and the term covers that completion's tokens. Nothing here depends on how the
    trainer's collator lays chosen and rejected out in a batch."""
    device = next(model.parameters()).device
    roles = ("chosen",) if sequences == "chosen" else ("chosen", "rejected")
    logits, labels = [], []
    for row in rows:
        for role in roles:
            prompt, completion = list(row["prompt_ids"]), list(row[f"{role}_ids"])
            ids = torch.tensor([prompt + completion], device=device)
            out = model(input_ids=ids).logits[0]
            logits.append(out[len(prompt) - 1: len(prompt) + len(completion) - 1])  # position t predicts token t + 1
            labels.append(ids[0, len(prompt):])
    logits, labels = torch.cat(logits), torch.cat(labels)
    everything = torch.ones(labels.numel(), dtype=torch.bool, device=device)
    loss, *_ = reference_term(logits, labels, everything, **kw)
    return loss


@pytest.mark.parametrize(
    "loss_type,loss_weights", [("sigmoid", None), ("ipo", None), (["sigmoid", "sft"], [1.0, 0.5])]
)
@pytest.mark.parametrize("log_metrics", [True, False])
def test_alpha_zero_is_exactly_dpo(tmp_path, tokenizer, loss_type, loss_weights, log_metrics):
    dpo = build(DPOTrainer, tmp_path, tokenizer, loss_type=loss_type, loss_weights=loss_weights)
    catto = build(CATTODPOTrainer, tmp_path, tokenizer, loss_type=loss_type, loss_weights=loss_weights,
                  catto_alpha=0.0, catto_log_metrics=log_metrics)
    dpo.train()
    catto.train()
    dpo_losses = [h["loss"] for h in dpo.state.log_history if "loss" in h]
    catto_logs = [h for h in catto.state.log_history if "loss" in h]
    assert len(dpo_losses) == 3 and [h["loss"] for h in catto_logs] == dpo_losses
    for (name, p), q in zip(dpo.model.named_parameters(), catto.model.parameters()):
        assert torch.equal(p, q), name
    # The baseline still reports its calibration when asked to, for DPO-vs-CATTO comparisons.
    assert all(("catto/token_ece" in h) == log_metrics for h in catto_logs)


@pytest.mark.parametrize("confidence,margin,detach,sequences,loss_form", [
    ("max", "logit", True, "both", "l1"),
    ("label", "prob", False, "chosen", "bce"),
    ("max", "prob", False, "both", "bce"),
    ("max", "logit", False, "both", "l2"),
])
def test_total_minus_dpo_is_alpha_times_term(tmp_path, tokenizer, confidence, margin, detach, sequences, loss_form):
    alpha = 0.7
    switches = dict(catto_confidence=confidence, catto_margin=margin, catto_detach_target=detach,
                    catto_sequences=sequences, catto_loss_form=loss_form)
    catto = build(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=alpha, catto_target_scale=1.5, **switches)
    dpo = build(DPOTrainer, tmp_path, tokenizer)
    batch = first_batch(catto)
    catto.model.train()
    dpo.model.train()
    total = catto.compute_loss(catto.model, batch)
    dpo_only = dpo.compute_loss(dpo.model, batch)
    # A fresh copy of the initial weights: deep copies of the trainers' models would share their patched forward.
    rows = first_rows(catto)
    term = full_logits_term(make_model(seed=0), rows, confidence=confidence, margin=margin, scale=1.5,
                            detach=detach, loss_form=loss_form, sequences=sequences)
    assert (total - dpo_only).item() == pytest.approx(alpha * term.item(), abs=1e-5)
    catto.log({})
    assert catto.state.log_history[-1]["catto/calibration_loss"] == pytest.approx(term.item(), abs=1e-5)

    # Gradients: the difference is alpha * grad(term), and it reaches every trainable parameter.
    total.backward()
    dpo_only.backward()
    ref_model = make_model(seed=0)
    term = full_logits_term(ref_model, rows, confidence=confidence, margin=margin, scale=1.5, detach=detach,
                            loss_form=loss_form, sequences=sequences)
    term.backward()
    for (name, p), q, r in zip(catto.model.named_parameters(), dpo.model.parameters(), ref_model.parameters()):
        diff = p.grad - q.grad
        assert torch.allclose(diff, alpha * r.grad.to(diff.device), atol=1e-5, rtol=1e-3), name
        assert diff.abs().sum() > 0, f"the calibration term sends no gradient to {name}"


def assert_term_is_the_policy_pass(trainer):
    """On a PEFT trainer whose adapters change the model: the logged term is the full-logits term of the adapted
    policy, not of the model with adapters disabled (the reference). Returns the loss, for a backward."""
    model, batch, rows = trainer.model, first_batch(trainer), first_rows(trainer)
    model.train()
    loss = trainer.compute_loss(model, batch)
    trainer.log({})
    logged = trainer.state.log_history[-1]["catto/calibration_loss"]
    with torch.no_grad():
        policy_term = full_logits_term(model, rows)
        with model.disable_adapter():
            reference_term_value = full_logits_term(model, rows)
    assert abs(policy_term - reference_term_value) > 1e-3
    assert logged == pytest.approx(policy_term.item(), abs=1e-5)
    return loss


def test_lora_term_comes_from_the_policy_pass(tmp_path, tokenizer):
    trainer = build(CATTODPOTrainer, tmp_path, tokenizer, peft=True, catto_alpha=0.5)
    model = trainer.model
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give the adapter an effect so policy != reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert_term_is_the_policy_pass(trainer).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)


def test_an_adapter_on_the_lm_head_is_refused(tmp_path, tokenizer):
    # The fused pass reads lm_head.weight and would skip a LoRA delta on the head; TRL 1.16 refuses it, and catto
    # relies on that (`catto train` refuses it before loading the model: tests/test_bad_input.py).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)
    with pytest.raises(ValueError, match=r"adapter to `lm_head` is not supported"):
        build(CATTODPOTrainer, tmp_path, tokenizer, peft=lora)


def test_a_head_trained_through_modules_to_save_is_the_one_the_fused_pass_reads(tmp_path, tokenizer):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"], lora_dropout=0.0)
    trainer = build(CATTODPOTrainer, tmp_path, tokenizer, peft=lora, catto_alpha=0.5)
    model = trainer.model
    head_copy = [p for n, p in model.named_parameters() if "modules_to_save" in n and p.requires_grad]
    assert head_copy
    with torch.no_grad():  # make the trainable head copy differ from the frozen original the reference uses
        for p in head_copy:
            p.add_(torch.randn_like(p))
    assert_term_is_the_policy_pass(trainer).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_copy)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("options", [
    dict(precompute_ref_log_probs=True),
    dict(gradient_checkpointing=True),
    dict(gradient_accumulation_steps=2),
    dict(use_weighting=True),
    dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[1.0, 0.5, 0.1]),
])
def test_trains_with_trl_options(tmp_path, tokenizer, arch, options):
    trainer = build(CATTODPOTrainer, tmp_path, tokenizer, arch=arch, catto_alpha=0.3, **options)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        for key in ("catto/calibration_loss", "catto/confidence", "catto/target", "catto/token_accuracy",
                    "catto/token_ece"):
            assert key in h and h[key] == h[key], key  # present and not NaN
        assert 0 <= h["catto/token_ece"] <= 1 and 0 <= h["catto/confidence"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_gradient_checkpointing_gives_the_same_loss(tmp_path, tokenizer):
    plain = build(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=0.3)
    ckpt = build(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=0.3, gradient_checkpointing=True)
    plain.train()
    ckpt.train()
    a = [h["loss"] for h in plain.state.log_history if "loss" in h]
    b = [h["loss"] for h in ckpt.state.log_history if "loss" in h]
    assert a == pytest.approx(b, abs=1e-5)


def test_eval_loop_logs_catto_metrics(tmp_path, tokenizer):
    alpha = 0.3
    eval_dataset = preference_dataset(8, seed=5)
    # one eval batch: eval_loss is then that batch's loss, and the logged term the same batch's token mean
    trainer = build(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=alpha, eval_dataset=eval_dataset,
                    eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=8)
    trainer.train()
    (during,) = [h for h in trainer.state.log_history if "eval_loss" in h]
    metrics = trainer.evaluate()
    for key in ("calibration_loss", "confidence", "target", "token_accuracy", "token_ece"):
        assert f"eval_catto/{key}" in metrics
    # The eval during training (after step 3, the last) saw the same weights.
    assert during["step"] == 3 and during["eval_catto/calibration_loss"] == pytest.approx(
        metrics["eval_catto/calibration_loss"], abs=1e-6)
    assert during["eval_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-6)
    # The logged term is the reference term of the trained weights on the eval rows.
    trained = make_model(seed=0)
    trained.load_state_dict(trainer.model.state_dict())
    with torch.no_grad():
        term = full_logits_term(trained, first_rows(trainer, trainer.eval_dataset, n=8)).item()
    assert metrics["eval_catto/calibration_loss"] == pytest.approx(term, abs=1e-5)
    # Eval does not train: the logged eval loss is DPO + alpha * term on the eval set, the DPO part from TRL's own
    # DPOTrainer evaluating the same weights against the same reference model.
    dpo = build(DPOTrainer, tmp_path, tokenizer, eval_dataset=eval_dataset, per_device_eval_batch_size=8)
    dpo.model.load_state_dict(trainer.model.state_dict())
    dpo_loss = dpo.evaluate()["eval_loss"]
    assert alpha * term > 1e-2 and abs(metrics["eval_loss"] - dpo_loss) > 1e-2  # the term is visible in the loss
    assert metrics["eval_loss"] == pytest.approx(dpo_loss + alpha * metrics["eval_catto/calibration_loss"], abs=1e-5)


def test_eval_metrics_do_not_depend_on_the_eval_batch_size(tmp_path, tokenizer):
    """catto/* eval values come from token sums over the whole eval set, not from means of per-batch ECEs."""
    trainer = build(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=0.3, per_device_eval_batch_size=1,
                    eval_dataset=preference_dataset(12, seed=5, noise=0.3))
    trainer.train()
    by_batch_size = {}
    for bs in (1, 5, 12):
        trainer.args.per_device_eval_batch_size = bs
        by_batch_size[bs] = trainer.evaluate()
    for key in ("eval_catto/token_ece", "eval_catto/confidence", "eval_catto/token_accuracy",
                "eval_catto/calibration_loss"):
        values = [m[key] for m in by_batch_size.values()]
        assert max(values) - min(values) < 1e-6, (key, values)


def test_two_trainers_on_the_same_model(tmp_path, tokenizer):
    """TRL re-wraps the forward for a second trainer; catto's statistics must still reach the policy pass."""
    model = make_model(seed=0)
    for alpha in (0.0, 0.5):
        args = CATTOConfig(output_dir=str(tmp_path / str(alpha)), **{**COMMON, "max_steps": 1}, catto_alpha=alpha,
                           catto_log_metrics=True)
        trainer = CATTODPOTrainer(model=model, ref_model=make_model(seed=0), args=args,
                                  train_dataset=preference_dataset(8), processing_class=tokenizer)
        trainer.train()
        assert "catto/token_ece" in trainer.state.log_history[0]


def test_from_dpo_config_keeps_every_setting(tmp_path):
    dpo = DPOConfig(output_dir=str(tmp_path), bf16=False, beta=0.3, loss_type=["sigmoid", "sft"],
                    loss_weights=[1.0, 0.2], hub_token="secret", report_to=[])
    cfg = CATTOConfig.from_dpo_config(dpo, catto_alpha=0.2)
    assert (cfg.beta, cfg.loss_type, cfg.loss_weights, cfg.hub_token) == (0.3, ["sigmoid", "sft"], [1.0, 0.2], "secret")
    assert cfg.catto_alpha == 0.2


def test_model_card_names_the_method_and_cites_the_paper(tmp_path, tokenizer):
    """The model card TRL writes for a CATTODPOTrainer run carries catto's tag, trainer name and citation."""
    trainer = build(CATTODPOTrainer, tmp_path, tokenizer)
    trainer.create_model_card(model_name="tiny-catto")
    card = (tmp_path / "CATTODPOTrainer" / "README.md").read_text()
    assert "- catto" in card and "- dpo" in card  # tags
    assert "CATTO: Balancing Preferences and Confidence in Language Models" in card
    assert "2601.23096" in card and "parikh2026catto" in card


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_calibration_effect_on_a_noisy_task(tmp_path, tokenizer, alpha):
    """On a task where 30 % of the preferred answers are random, DPO becomes sure of the rule and overconfident.

    The same seeded run with the CATTO term must end with a lower held-out token ECE. Both numbers come from the
    trainer's own eval loop; nothing is tuned to a threshold, the assertion is the plain inequality.
    """
    data = dict(dataset=preference_dataset(128, seed=0, noise=0.3, answer_len=1),
                eval_dataset=preference_dataset(64, seed=1, noise=0.3, answer_len=1))
    opts = dict(per_device_train_batch_size=16, num_train_epochs=20, max_steps=-1, learning_rate=5e-3, beta=0.1)
    results = {}
    for a in (0.0, alpha):
        trainer = build(CATTODPOTrainer, tmp_path, tokenizer, catto_alpha=a, catto_log_metrics=True, **data, **opts)
        trainer.train()
        results[a] = trainer.evaluate()
    dpo_ece, catto_ece = results[0.0]["eval_catto/token_ece"], results[alpha]["eval_catto/token_ece"]
    assert results[0.0]["eval_catto/confidence"] > results[0.0]["eval_catto/token_accuracy"]  # DPO is overconfident
    assert catto_ece < dpo_ece
