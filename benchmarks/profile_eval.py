"""Where the evaluation of the demo and the calibration study spends its time, per phase, on a real model.

One trained-model evaluation of the study is, per set: cloze MCQA scoring of N items (`catto.eval.scoring`, the
context once through the model: all options in one masked row, or, as before, its KV cache repeated for the
options; both are timed and their numbers compared), held-out token calibration of the same
items as answer-text pairs (`catto.eval.token`), and the metrics with their bootstrap intervals
(`catto.pipeline.study_analysis`). This script times each phase on one set with the study's settings, the token
phase both ways (one row per pair with prefix sharing, and two rows per pair as before), and records wall and CPU
time (`time.process_time`: on a shared CPU it leaves out the time spent waiting for a core), plus a cProfile of the
slowest phase's top functions.

    M=$(python -c "from catto.pipeline.assets import default_model_dir; print(default_model_dir())")
    OMP_NUM_THREADS=2 python benchmarks/profile_eval.py --model $M --items 200 \
        --out benchmarks/results/profile_eval_cpu.json

The model is the demo's SmolLM2-135M-Instruct (made by `catto demo`), the set CommonsenseQA dev from
`catto.pipeline.assets.shared_data_dir()` by default; a seeded random sample as in the study.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import sys
import time

import torch

from catto.core.modeling import load_model_and_tokenizer
from catto.data import mcqa_to_preference
from catto.eval.joint import score_cloze_and_tokens
from catto.eval.scoring import ScoringConfig, resolve_context_sharing, score_items
from catto.eval.token import TokenEvalConfig, token_calibration
from catto.io import write_json_atomic
from catto.pipeline import study_analysis
from catto.pipeline.assets import default_model_dir, shared_data_dir
from catto.pipeline.study import sample_items


def timed(fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--data", default=f"commonsense_qa:{shared_data_dir() / 'commonsense_qa' / 'dev_rand_split.jsonl'}")
    ap.add_argument("--split", default=None)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=None, help="JSON report (default: print only)")
    args = ap.parse_args(argv)
    if args.items < 1 or args.bootstrap < 1:
        ap.error(f"--items and --bootstrap must be >= 1, got {args.items} and {args.bootstrap}.")

    items = sample_items(args.data, args.split, args.items, seed=0)
    pairs = list(mcqa_to_preference(items, prompt_format="cloze", rejected="random", seed=0))
    (model, tokenizer), load = timed(load_model_and_tokenizer, args.model, dtype="float32", device="cpu")
    phases = {"load_model": load}
    cloze = ScoringConfig("cloze", cloze_normalization="char")
    mcqa, phases["cloze_scoring"] = timed(score_items, model, tokenizer, items, config=cloze, batch_size=16,
                                          progress=False)
    cached, phases["cloze_scoring_kv_cache"] = timed(score_items, model, tokenizer, items, config=cloze,
                                                     batch_size=16, progress=False, share_context="cache")
    cloze_agreement = {
        "max_abs_loglik_difference": max(abs(a - b) for x, y in zip(mcqa, cached)
                                         for a, b in zip(x.extra["loglik_sum"], y.extra["loglik_sum"])),
        "same_predictions": sum(x.prediction == y.prediction for x, y in zip(mcqa, cached)) / len(mcqa)}
    for sharing in (True, False):
        tokens, phases[f"token_calibration_{'shared' if sharing else 'two_rows'}"] = timed(
            token_calibration, model, tokenizer, pairs, config=TokenEvalConfig(prefix_sharing=sharing),
            progress=False)
    # what the study's runner does when both methods evaluate the same items: one pass for both (catto.eval.joint)
    (joint_cloze, joint_tokens), phases["cloze_and_token_one_pass"] = timed(
        score_cloze_and_tokens, model, tokenizer, items, pairs, scoring=cloze, token=TokenEvalConfig(),
        batch_size=16)
    by_id = {t.id: t for t in tokens}
    joint_agreement = {
        "items_in_the_pass": len(joint_cloze) / len(items),
        "max_abs_loglik_difference": max(abs(a - b) for r in mcqa if r.id in joint_cloze
                                         for a, b in zip(r.extra["loglik_sum"], joint_cloze[r.id].extra["loglik_sum"])),
        "max_abs_token_confidence_difference": max(
            abs(a - b) for t in joint_tokens.values() for role in ("chosen", "rejected")
            for a, b in zip(t.sequence(role).confidence, by_id[t.id].sequence(role).confidence))}
    _, phases["mcqa_metrics"] = timed(study_analysis.mcqa_metrics, mcqa, args.bootstrap)
    _, phases["token_metrics"] = timed(study_analysis.token_metrics_of, tokens, args.bootstrap)
    slowest = max(("cloze_scoring", "token_calibration_shared"), key=lambda k: phases[k]["cpu_s"])
    profiler = cProfile.Profile()
    profiler.enable()
    if slowest == "cloze_scoring":
        score_items(model, tokenizer, items[:50], config=ScoringConfig("cloze", cloze_normalization="char"),
                    batch_size=16, progress=False)
    else:
        token_calibration(model, tokenizer, pairs[:50], progress=False)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(12)
    # the paths replaced: the shares are of one set's evaluation as the two methods run apart
    before = ("load_model", "token_calibration_two_rows", "cloze_scoring_kv_cache", "cloze_and_token_one_pass")
    total = sum(v["cpu_s"] for k, v in phases.items() if k not in before)
    report = {
        "command": "python benchmarks/profile_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "data": args.data, "items": len(items), "bootstrap": args.bootstrap,
        "phases": phases,
        "share_of_one_set_cpu": {k: v["cpu_s"] / total for k, v in phases.items() if k not in before},
        "token_shared_vs_two_rows_cpu": phases["token_calibration_shared"]["cpu_s"]
        / phases["token_calibration_two_rows"]["cpu_s"],
        "cloze_path": resolve_context_sharing(model, True),
        "cloze_one_row_vs_kv_cache_cpu": phases["cloze_scoring"]["cpu_s"] / phases["cloze_scoring_kv_cache"]["cpu_s"],
        "cloze_one_row_vs_kv_cache_agreement": cloze_agreement,
        "one_pass_vs_cloze_plus_token_cpu": phases["cloze_and_token_one_pass"]["cpu_s"]
        / (phases["cloze_scoring"]["cpu_s"] + phases["token_calibration_shared"]["cpu_s"]),
        "one_pass_agreement": joint_agreement,
        "profiled_phase": slowest, "profile_top_tottime": stream.getvalue().splitlines()[:40],
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": "cpu"},
    }
    for name, v in phases.items():
        print(f"{name:<28} wall {v['wall_s']:7.1f} s   CPU {v['cpu_s']:7.1f} s")
    print(f"token calibration, shared / two rows (CPU): {report['token_shared_vs_two_rows_cpu']:.3f}")
    print(f"cloze scoring ({report['cloze_path']}) / KV cache (CPU): {report['cloze_one_row_vs_kv_cache_cpu']:.3f}; "
          f"{cloze_agreement}")
    print(f"one pass / (cloze + token) (CPU): {report['one_pass_vs_cloze_plus_token_cpu']:.3f}; {joint_agreement}")
    if args.out:
        write_json_atomic(args.out, report)
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
