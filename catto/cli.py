"""`catto` console entry point.

`catto eval` scores MCQA datasets with a model (letter or cloze scoring) and writes per-item results, metrics and
plots (`--method` picks a post-hoc method). `catto demo` trains SmolLM2-135M-Instruct twice from the same seed, once
as plain DPO (`catto_alpha=0`) and once with the CATTO term, and compares the calibration of base, DPO and CATTO on
held-out and out-of-domain MCQA items (see `catto.demo`); `catto demo --synthetic` is a one-minute toy on a tiny random
model. `catto train` trains from a recipe; `catto report` compares several calibration methods on the same items.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import os
import sys

from .results import write_json_atomic


def _demo_entry(args: argparse.Namespace) -> int:
    if args.synthetic:
        run_synthetic_demo(args)
        return 0
    from .demo import run_demo

    return run_demo(args)


def run_synthetic_demo(args: argparse.Namespace) -> dict:
    """`catto demo --synthetic`: DPO vs CATTO on the built-in noisy task; returns (and writes) the held-out metrics
    of both runs."""
    if args.alpha is None:
        args.alpha = 0.3
    os.environ.setdefault("TQDM_DISABLE", "1")
    from . import CATTOConfig, CATTODPOTrainer, __version__
    from .synthetic import make_model, make_tokenizer, preference_dataset

    tokenizer = make_tokenizer()
    train = preference_dataset(128, seed=args.seed, noise=args.noise, answer_len=1)
    held_out = preference_dataset(64, seed=args.seed + 1, noise=args.noise, answer_len=1)
    runs = {}
    for name, alpha in (("dpo", 0.0), ("catto", args.alpha)):
        model = make_model("llama", seed=args.seed)
        config = CATTOConfig(
            output_dir=os.path.join(args.out, name), per_device_train_batch_size=16, num_train_epochs=args.epochs,
            learning_rate=5e-3, beta=0.1, bf16=False, report_to=[], save_strategy="no", logging_steps=10,
            gradient_checkpointing=False, seed=args.seed, catto_alpha=alpha, disable_tqdm=True, use_cpu=True,
        )
        trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config, train_dataset=train,
                                  eval_dataset=held_out, processing_class=tokenizer)
        print(f"[catto demo] training {name} (catto_alpha={alpha}) ...", flush=True)
        trainer.train()
        metrics = trainer.evaluate()
        runs[name] = {k.removeprefix("eval_"): v for k, v in metrics.items()
                      if k.startswith("eval_catto/") or k in ("eval_loss", "eval_rewards/accuracies")}
        runs[name]["catto_alpha"] = alpha
    result = {
        "catto_version": __version__,
        "task": f"synthetic preference task, answer = first prompt word except {args.noise:.0%} random answers",
        "model": "tiny random Llama (hidden 32, 2 layers, 44-token vocabulary)",
        "metrics_scope": "response tokens of chosen and rejected held-out sequences; token_ece: 10 equal-width bins "
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


def _dataset_name(spec: str) -> str:
    """A folder-safe name for a data spec (`arc_easy`; `mmlu:/data/csvs` -> `mmlu-csvs`; `race:/data/race` -> `race`).

    >>> _dataset_name("mmlu:/data/csvs"), _dataset_name("race:/data/race"), _dataset_name("arc_easy")
    ('mmlu-csvs', 'race', 'arc_easy')
    """
    name, _, path = spec.partition(":")
    tail = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] if path else ""
    raw = f"{name}-{tail}" if tail and tail != name else name
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)
    return safe.strip("-") or "data"


@dataclasses.dataclass
class EvalDataset:
    """One `--data` spec of `catto eval`, loaded and validated before the model is."""

    name: str
    spec: str
    items: list
    fewshot: list
    skipped: list[dict]


def load_eval_datasets(args: argparse.Namespace) -> dict[str, EvalDataset]:
    """Load (and validate) every `--data` spec, with its few-shot demonstrations, before time goes into the model."""
    from .data import load_mcqa

    datasets = {}
    num_fewshot = getattr(args, "num_fewshot", 0)
    for spec in args.data:
        if getattr(args, "fewshot_split", None):
            fewshot = list(load_mcqa(spec, split=args.fewshot_split, seed=args.seed, on_invalid=args.on_invalid,
                                     limit=num_fewshot or None))[: num_fewshot]
            items = load_mcqa(spec, split=args.split, limit=args.limit, seed=args.seed, on_invalid=args.on_invalid)
        else:  # demonstrations from the start of the evaluated split, which are then not evaluated
            n = args.limit + num_fewshot if args.limit else None
            items = load_mcqa(spec, split=args.split, limit=n, seed=args.seed, on_invalid=args.on_invalid)
            fewshot = list(items[: num_fewshot])
        skipped = [{"row": s.row, "id": s.id, "reason": s.reason} for s in getattr(items, "skipped", [])]
        if skipped:
            print(f"[catto eval] {spec}: skipped {len(skipped)} invalid row(s), e.g. {skipped[0]['reason']}",
                  file=sys.stderr)
        if len(fewshot) < num_fewshot:
            raise SystemExit(f"catto eval: {spec} has only {len(fewshot)} items for {num_fewshot} demonstrations.")
        eval_items = list(items) if getattr(args, "fewshot_split", None) else list(items[num_fewshot:])
        name = _dataset_name(spec)
        datasets[name] = EvalDataset(name, spec, eval_items, fewshot, skipped)
    return datasets


def load_eval_model(args: argparse.Namespace):
    """(model, tokenizer) from `--model` / `--gguf-file` / `--dtype` / `--device`."""
    from .modeling import load_model_and_tokenizer

    return load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device, gguf_file=args.gguf_file)


def write_eval_plots(args: argparse.Namespace, folder: str, curves: dict[str, tuple[list, list]], title: str) -> dict:
    """Reliability diagram(s) and a risk-coverage plot of `{label: (confidences, correct)}` into `folder`; a record
    of what was written (or why nothing was)."""
    if args.no_plots:
        return {}
    if importlib.util.find_spec("matplotlib") is None:
        print("[catto eval] matplotlib is not installed (pip install 'catto[plots]'): no plots written.",
              file=sys.stderr)
        return {"skipped": "matplotlib not installed"}
    from .plots import reliability_diagram, risk_coverage_plot

    plots = {}
    for label, (conf, correct) in curves.items():
        key = "reliability" if len(curves) == 1 else f"reliability_{label}"
        plots[key] = reliability_diagram(conf, correct, os.path.join(folder, f"{key}.png"), n_bins=args.n_bins,
                                         binning=args.binning, title=f"{title} · {label}")
    plots["risk_coverage"] = risk_coverage_plot(curves, os.path.join(folder, "risk_coverage.png"), title=title)
    return plots


def eval_run_record(args: argparse.Namespace) -> dict:
    """The run-level choices every `catto eval` metrics.json records, whatever the method."""
    from . import __version__

    return {
        "catto_version": __version__,
        "method": args.method,
        "model": args.model,
        "gguf_file": args.gguf_file,
        "dtype": args.dtype,
        "binning": {"n_bins": args.n_bins, "scheme": args.binning},
        "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed, "interval": "percentile, 95 %"},
        "seed": args.seed,
        "limit": args.limit,
        "split": args.split,
    }


def scoring_config_from_args(args: argparse.Namespace):
    from .scoring import ScoringConfig

    return ScoringConfig(args.scoring, cloze_normalization=args.cloze_normalization,
                         chat_template=args.chat_template, num_fewshot=getattr(args, "num_fewshot", 0))


def run_eval(args: argparse.Namespace) -> dict:
    """`--method scoring`: score each `--data` spec with the model; write results.jsonl (resumable), metrics.json
    and plots."""
    from .evaluation import format_table, summarize_results
    from .scoring import score_items

    config = scoring_config_from_args(args)
    datasets = load_eval_datasets(args)
    model, tokenizer = load_eval_model(args)
    summaries, report = {}, {}
    for name, ds in datasets.items():
        folder = os.path.join(args.out, name)
        results = score_items(model, tokenizer, ds.items, config=config, fewshot=ds.fewshot,
                              batch_size=args.batch_size, results_path=os.path.join(folder, "results.jsonl"),
                              progress=not args.no_progress)
        summary = summarize_results(results, n_bins=args.n_bins, binning=args.binning,
                                    n_resamples=args.bootstrap, seed=args.seed)
        curves = {args.scoring: ([r.confidence for r in results], [bool(r.correct) for r in results])}
        plots = write_eval_plots(args, folder, curves, name)
        summaries[name] = summary
        report[name] = {"spec": ds.spec, "n_items": len(ds.items), "fewshot_ids": [f.id for f in ds.fewshot],
                        "skipped_rows": ds.skipped,
                        "results": os.path.join(folder, "results.jsonl"), "plots": plots, "metrics": summary}
    payload = {**eval_run_record(args), "scoring": config.to_dict(), "datasets": report}
    write_json_atomic(os.path.join(args.out, "metrics.json"), payload)
    print(format_table(summaries))
    print(f"\nWrote {os.path.join(args.out, 'metrics.json')}")
    return payload


# `catto eval --method NAME`. "scoring" is `run_eval` above. Other methods live in their own modules, which define
# `add_eval_arguments(parser, method)` (their own options) and `run_eval_method(args) -> dict`; every registered
# post-hoc evaluator (catto.evaluators) goes through the generic `catto.evaluators.cli`.
EVAL_METHOD_MODULES: dict[str, str] = {"confidence_at_k": "catto.confidence_at_k"}


def eval_methods() -> list[str]:
    from .evaluators import EVALUATORS, _import_all

    _import_all()
    return ["scoring", *EVAL_METHOD_MODULES, *sorted(EVALUATORS)]


def _eval_method_module(method: str):
    import importlib

    if method == "scoring":
        return None
    if method in EVAL_METHOD_MODULES:
        return importlib.import_module(EVAL_METHOD_MODULES[method])
    from .evaluators import get_evaluator_class

    get_evaluator_class(method)  # a clear error naming the known methods
    return importlib.import_module("catto.evaluators.cli")


def add_common_eval_arguments(ev: argparse.ArgumentParser) -> None:
    """Options every `catto eval` method shares: model, data, scoring layer, metrics, output."""
    ev.add_argument("--model", required=True, help="Hub id or local folder of a causal LM.")
    ev.add_argument("--gguf-file", default=None, help="GGUF file inside --model's folder to load the weights from.")
    ev.add_argument("--data", action="append", required=True,
                    help="Dataset spec, repeatable (e.g. arc_easy, mmlu:/path/to/csvs; see catto.data.load_mcqa).")
    ev.add_argument("--split", default=None, help="Dataset split (default: each dataset's evaluation split).")
    ev.add_argument("--scoring", choices=["letter", "cloze"], default="letter")
    ev.add_argument("--cloze-normalization", choices=["sum", "token", "char"], default="char",
                    help="Which cloze log-likelihood the option probabilities use (default char = acc_norm).")
    ev.add_argument("--on-invalid", choices=["skip", "raise"], default="skip",
                    help="Rows the item validation rejects (duplicate or empty options, ...): skip them and record "
                         "each with its reason in metrics.json (default), or stop with the error.")
    ev.add_argument("--chat-template", action="store_true", help="Wrap letter prompts in the chat template.")
    ev.add_argument("--limit", type=int, default=None, help="Score only the first N items of each dataset.")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ev.add_argument("--n-bins", type=int, default=15, help="Calibration bins (default 15).")
    ev.add_argument("--binning", choices=["equal_width", "equal_mass"], default="equal_width")
    ev.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the intervals (0: none).")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True, help="Output folder (re-running resumes the per-item results).")
    ev.add_argument("--no-plots", action="store_true")
    ev.add_argument("--no-progress", action="store_true")


def build_parser(method: str = "scoring") -> argparse.ArgumentParser:
    """The `catto` parser; `method` picks which `catto eval --method` options it holds."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="catto", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"catto {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="DPO vs CATTO on SmolLM2-135M-Instruct and real MCQA data, on CPU (about 15 "
                                       "minutes; model and data from PyPI). --synthetic: a 1-minute toy, no download.")
    from .demo import add_demo_arguments

    add_demo_arguments(demo)
    demo.add_argument("--synthetic", action="store_true",
                      help="Run the toy instead: a tiny random model on a built-in noisy preference task (no download).")
    demo.add_argument("--epochs", type=float, default=20.0, help="--synthetic only: training epochs (default 20).")
    demo.add_argument("--noise", type=float, default=0.3,
                      help="--synthetic only: share of random preferred answers (default 0.3).")
    demo.set_defaults(func=_demo_entry)

    ev = sub.add_parser("eval", help="Accuracy and calibration of a model on MCQA datasets (catto eval --method "
                                     "NAME --help for a method's own options).")
    ev.add_argument("--method", default="scoring", metavar="NAME",
                    help="scoring (default: the model's own option probabilities), confidence_at_k, or a post-hoc "
                         "evaluator: " + ", ".join(m for m in eval_methods() if m != "scoring") + ".")
    add_common_eval_arguments(ev)
    module = _eval_method_module(method)
    if module is None:
        ev.add_argument("--num-fewshot", type=int, default=0,
                        help="k-shot demonstrations: the first k items of --fewshot-split, or of the evaluated split "
                             "(then not evaluated).")
        ev.add_argument("--fewshot-split", default=None, help="Split to take demonstrations from (e.g. dev).")
        ev.set_defaults(func=run_eval)
    else:
        module.add_eval_arguments(ev.add_argument_group(f"--method {method}"), method)
        ev.set_defaults(func=module.run_eval_method)

    sub.add_parser("report", add_help=False,
                   help="Several calibration methods on the same items: one Markdown/HTML page + JSON "
                        "(catto report --help).")
    # `catto train` forwards its arguments untouched to catto.train.launch (see main); this entry is for --help.
    sub.add_parser("train", add_help=False,
                   help="DPO/CATTO training from a recipe YAML under accelerate launch (catto train --help).")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # recipe keys and launcher flags are parsed by catto.train, not argparse here
        from .train import launch

        return launch(argv[1:])
    if argv[:1] == ["report"]:  # its own parser, in catto.report
        from .report import main as report_main

        return report_main(argv[1:])
    method = "scoring"
    if argv[:1] == ["eval"]:  # two-phase: --method first, then that method's own options
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--method", default="scoring")
        method = pre.parse_known_args(argv[1:])[0].method
    args = build_parser(method).parse_args(argv)
    if args.command == "demo" and args.alpha is not None and args.alpha <= 0:
        print("catto demo: --alpha must be > 0 (the DPO baseline run uses 0).", file=sys.stderr)
        return 2
    status = args.func(args)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
