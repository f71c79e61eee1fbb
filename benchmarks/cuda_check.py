"""CUDA checks of the paths a CPU cannot show: the fused statistics in fp32 and under bf16 autocast on a GPU, and
`CATTODPOTrainer` training with `bf16=True`.

    python benchmarks/cuda_check.py [--out benchmarks/results/cuda_check.json]

Prints and writes (atomically) a JSON report; exits non-zero if a check fails. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile

import torch

from catto import CATTOConfig, CATTODPOTrainer, chunked_calibration_stats
from catto.io import write_json_atomic
from catto.data.synthetic import make_model, make_tokenizer, preference_dataset


def fused_vs_full(dtype_name: str, n: int = 3000, hidden: int = 512, vocab: int = 50_000) -> dict:
    """Fused statistics and their gradients vs autograd through full fp32 logits, across two vocabulary tiles."""
    torch.manual_seed(0)
    dev = "cuda"
    h = (torch.randn(n, hidden, device=dev) / hidden**0.5).requires_grad_()
    w = torch.randn(vocab, hidden, device=dev).requires_grad_()
    t = torch.randint(0, vocab, (n,), device=dev)
    autocast = dtype_name == "bf16"
    g_lp, g_top = torch.randn(n, device=dev), torch.randn(n, 2, device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        lp, ent, _, _, _, top_lp, top_ids = chunked_calibration_stats(
            h, w, None, t, token_chunk_size=1024, outputs=("entropy",)
        )
    grads = torch.autograd.grad((lp * g_lp).sum() + (top_lp * g_top).sum(), (h, w))
    # Reference: full logits as the kernel sees them; under autocast the product is rounded to bf16 (like TRL's
    # bf16 tile buffer), so near-ties in the top-2 resolve the same way only on the rounded logits.
    hr, wr = (h.bfloat16().float(), w.bfloat16().float()) if autocast else (h, w)
    logits = hr @ wr.T
    ls = (logits.bfloat16().float() if autocast else logits).log_softmax(-1)
    ref_top = ls.gather(1, top_ids)
    ref = (ls.gather(1, t[:, None])[:, 0] * g_lp).sum() + (ref_top * g_top).sum()
    ref_grads = torch.autograd.grad(ref, (h, w))
    top1_agree = (top_ids[:, 0] == ls.argmax(-1)).float().mean().item()
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(grads, ref_grads)]
    return {
        "dtype": dtype_name,
        "max_abs_err_log_probs": (lp - ls.gather(1, t[:, None])[:, 0]).abs().max().item(),
        "max_abs_err_top_log_probs": (top_lp - ref_top).abs().max().item(),
        "max_abs_err_entropy": (ent + (ls.exp() * ls).sum(-1)).abs().max().item(),
        "top1_id_agreement": top1_agree,
        "rel_err_grad_hidden": rel[0],
        "rel_err_grad_weight": rel[1],
    }


def train_bf16(steps: int = 5) -> dict:
    tokenizer = make_tokenizer()
    out = {}
    for alpha in (0.0, 0.3):
        model = make_model("llama", hidden=64, seed=0)
        config = CATTOConfig(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_steps=steps, learning_rate=5e-3,
            bf16=True, report_to=[], save_strategy="no", logging_steps=1, seed=0, catto_alpha=alpha,
            disable_tqdm=True,
        )
        trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config,
                                  train_dataset=preference_dataset(64), processing_class=tokenizer)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        out[f"alpha={alpha}"] = {
            "device": str(trainer.accelerator.device),
            "losses": [h["loss"] for h in logs],
            "grad_norms": [h["grad_norm"] for h in logs],
            "token_ece": [h["catto/token_ece"] for h in logs],
            "all_finite": all(
                all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in h.values())
                for h in logs
            ),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/cuda_check.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device", file=sys.stderr)
        return 2
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "fused_vs_full": [fused_vs_full("fp32"), fused_vs_full("bf16")],
        "train_bf16": train_bf16(),
    }
    ok = all(r["top1_id_agreement"] > 0.99 and r["rel_err_grad_weight"] < 2e-2 for r in report["fused_vs_full"])
    ok &= all(r["all_finite"] for r in report["train_bf16"].values())
    report["ok"] = ok
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
