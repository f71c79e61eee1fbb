"""CUDA-only checks (marker `cuda`, deselected by default): `pytest -m cuda tests/test_cuda.py` on a GPU machine,
which `benchmarks/gpu_check.sh` runs. Without a GPU they fail, naming what they need: they are never skipped into
green, they are simply not selected.

- the fused statistics and their gradients on the GPU, fp32 and bf16 autocast, across vocabulary tiles, against
  autograd through full logits;
- the model's fused pass on CUDA against TRL's own fused head (its Triton kernel) and the model's full logits;
- `_addmm_fp32`'s direct fp32-output GEMM for bf16 inputs;
- `CATTODPOTrainer` with `bf16=True` on CUDA: finite, metrics logged, and `catto_alpha=0` equal to `trl.DPOTrainer`;
- the rows of docs/training.md's option table that TRL 1.16 runs only on a GPU: `activation_offloading` and
  `use_liger_kernel` (needs `pip install liger-kernel`, which `benchmarks/gpu_check.sh` installs).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_trainer import first_batch, first_rows
from tiny import make_model, make_tokenizer, preference_dataset
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import add_fused_lm_head

from catto import CATTOConfig, CATTODPOTrainer
from catto.core.fused_head import _addmm_fp32, chunked_calibration_stats
from catto.train.fused_forward import add_catto_head

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run `pytest -m cuda tests/test_cuda.py` on a GPU machine "
                    "(benchmarks/gpu_check.sh does)")
    return torch.device("cuda")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_stats_and_gradients_match_full_logits(cuda, dtype):
    torch.manual_seed(0)
    n, hidden, vocab = 1500, 256, 40_000  # two vocabulary tiles of 32768
    h = (torch.randn(n, hidden, device=cuda) / hidden**0.5).requires_grad_()
    w = torch.randn(vocab, hidden, device=cuda).requires_grad_()
    t = torch.randint(0, vocab, (n,), device=cuda)
    g_lp, g_ent, g_top = torch.randn(n, device=cuda), torch.randn(n, device=cuda), torch.randn(n, 2, device=cuda)
    autocast = dtype == "bf16"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        lp, ent, _, _, _, top_lp, top_ids = chunked_calibration_stats(h, w, None, t, token_chunk_size=512,
                                                                      outputs=("entropy",))
    grads = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum() + (top_lp * g_top).sum(), (h, w))
    # The reference sees what the kernel sees: under autocast, bf16-rounded inputs and a bf16-rounded product.
    hr, wr = (h.bfloat16().float(), w.bfloat16().float()) if autocast else (h, w)
    logits = hr @ wr.T
    ls = (logits.bfloat16().float() if autocast else logits).log_softmax(-1)
    assert (top_ids[:, 0] == ls.argmax(-1)).float().mean() > 0.99
    ref = ((ls.gather(1, t[:, None])[:, 0] * g_lp).sum() - ((ls.exp() * ls).sum(-1) * g_ent).sum()
           + (ls.gather(1, top_ids) * g_top).sum())
    ref_grads = torch.autograd.grad(ref, (h, w))
    tol = {"fp32": (1e-4, 1e-4), "bf16": (1e-2, 2e-2)}[dtype]  # (log-prob abs, gradient relative)
    assert (lp - ls.gather(1, t[:, None])[:, 0]).abs().max() < tol[0]
    assert (top_lp - ls.gather(1, top_ids)).abs().max() < tol[0]
    for g, r in zip(grads, ref_grads):
        assert ((g - r).norm() / r.norm()).item() < tol[1]


def test_model_fused_pass_matches_trl_kernel_and_full_logits(cuda):
    base = make_model("llama", hidden=64).to(cuda)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, base.config.vocab_size, (4, 12), generator=g).to(cuda)
    labels = input_ids.clone()
    labels[:, :5] = -100
    trl_model = copy.deepcopy(base)
    add_fused_lm_head(trl_model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    model = copy.deepcopy(base)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_catto_head(model)
    trl_out = trl_model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="fused")
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(out, field), getattr(trl_out, field), atol=1e-4, rtol=1e-4)
    assert torch.equal(out.is_top1, trl_out.is_top1)
    with torch.no_grad():
        ls = base(input_ids=input_ids).logits[:, :-1].float().log_softmax(-1)
    mask = labels[:, 1:] != -100
    top = ls.topk(2, -1)
    assert torch.equal(out.top_ids[mask], top.indices[mask])
    torch.testing.assert_close(out.top_log_probs[mask], top.values[mask], atol=1e-4, rtol=1e-4)
    # Gradients through the fused pass equal TRL's for the log-probabilities.
    g_model = torch.autograd.grad(out.log_probs.sum(), list(model.parameters()))
    g_trl = torch.autograd.grad(trl_out.log_probs.sum(), list(trl_model.parameters()))
    for a, b in zip(g_model, g_trl):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_addmm_fp32_accumulates_bf16_products_in_fp32(cuda):
    torch.manual_seed(0)
    a, b = torch.randn(64, 300, device=cuda).bfloat16(), torch.randn(300, 48, device=cuda).bfloat16()
    acc = torch.ones(64, 48, device=cuda)
    _addmm_fp32(acc, a, b)
    ref = 1 + a.double() @ b.double()
    assert acc.dtype == torch.float32
    assert ((acc.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5  # a bf16-rounded product: ~4e-3


def _trainer(cls, alpha, tmp_path):
    model = make_model("llama", hidden=64, seed=0)
    kwargs = dict(output_dir=str(tmp_path / f"{cls.__name__}-{alpha}"), per_device_train_batch_size=8, max_steps=3,
                  learning_rate=5e-3, bf16=True, report_to=[], save_strategy="no", logging_steps=1, seed=0,
                  disable_tqdm=True, gradient_checkpointing=False)
    args = CATTOConfig(catto_alpha=alpha, **kwargs) if cls is CATTODPOTrainer else DPOConfig(**kwargs)
    return cls(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=preference_dataset(32),
               processing_class=make_tokenizer())


def test_bf16_training_on_cuda(cuda, tmp_path):
    catto = _trainer(CATTODPOTrainer, 0.3, tmp_path)
    catto.train()
    assert catto.accelerator.device.type == "cuda" and catto.args.bf16
    logs = [h for h in catto.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor([h["loss"], h["grad_norm"]])).all() for h in logs)
    assert all(0 <= h["catto/token_ece"] <= 1 for h in logs)
    baseline, dpo = _trainer(CATTODPOTrainer, 0.0, tmp_path), _trainer(DPOTrainer, None, tmp_path)
    baseline.train()
    dpo.train()
    a = [h["loss"] for h in baseline.state.log_history if "loss" in h]
    b = [h["loss"] for h in dpo.state.log_history if "loss" in h]
    assert a == pytest.approx(b, rel=1e-5)
    assert [h["loss"] for h in logs] != pytest.approx(b, rel=1e-5)  # the term changed the training


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_sharing_on_cuda_matches_two_rows(cuda, tmp_path, arch):
    """The shared rows on the GPU (sdpa, fp32): the same loss, gradients and metrics as TRL's two rows."""
    from test_prefix_sharing import assert_same, mixed_dataset, trainer_pair

    plain, shared = trainer_pair(tmp_path, make_tokenizer(), arch=arch, attention="sdpa", dataset=mixed_dataset(),
                                 catto_alpha=0.5)
    assert shared.accelerator.device.type == "cuda"
    assert_same(plain, shared, atol=1e-4)


def test_activation_offloading_gives_the_same_step(cuda, tmp_path):
    """activation_offloading=True (TRL moves saved activations to the CPU and back around the training step): the
    same loss and gradients as without it, the CATTO term included (its exact value: tests/test_dpo_options.py)."""
    from test_dpo_options import pair

    results = []
    for offload in (False, True):
        catto, _ = pair(tmp_path / str(offload), make_tokenizer(), activation_offloading=offload)
        catto.model.train()
        catto.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
        loss = catto.training_step(catto.model, first_batch(catto))
        results.append((loss.item(), [p.grad.clone() for p in catto.model.parameters()]))
    (plain_loss, plain_grads), (offload_loss, offload_grads) = results
    assert offload_loss == pytest.approx(plain_loss, rel=1e-6)
    for a, b in zip(plain_grads, offload_grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_liger_layer_kernels_add_exactly_the_term(cuda, tmp_path):
    """use_liger_kernel=True (TRL 1.16 applies Liger's layer kernels only, never its fused cross-entropy): CATTO minus
    TRL's DPO loss with the same kernels is alpha times the term of the patched model's own full logits."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        pytest.fail("needs liger-kernel: pip install liger-kernel (benchmarks/gpu_check.sh installs it)")
    from test_dpo_options import assert_adds_alpha_times_term, pair, sequences

    catto, dpo = pair(tmp_path, make_tokenizer(), use_liger_kernel=True)
    # Liger binds its kernels' forward onto the model's own modules: the final norm's is Liger's RMSNorm
    assert catto.model.model.norm.forward.__func__.__module__.startswith("liger_kernel")
    catto.model.train()
    assert_adds_alpha_times_term(catto, dpo, catto.model, sequences(first_rows(catto)), grads=False, abs_tol=1e-4)
