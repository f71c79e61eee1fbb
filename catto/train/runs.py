"""Train a recipe once, and reuse the finished run: what `catto demo` and the studies in `benchmarks/` call.

A run folder is finished when it holds the saved model (an adapter or a full model) and `trainer_state.json`.
An interrupted run resumes from its newest `checkpoint-N`; after a clean finish the checkpoints are removed (the
model is in the folder itself) and `catto_run.json` records the arguments and the time it took.
"""

from __future__ import annotations

import gc
import glob
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from ..io import read_json, write_json_atomic

RUN_RECORD = "catto_run.json"
_OLD_RUN_RECORD = "demo_train_time.json"  # catto <= 0.1


def finished_run(out_dir: str) -> bool:
    """Whether `out_dir` holds a saved model and its `trainer_state.json`."""
    return os.path.exists(os.path.join(out_dir, "trainer_state.json")) and (
        os.path.exists(os.path.join(out_dir, "adapter_config.json"))
        or os.path.exists(os.path.join(out_dir, "config.json")))


def latest_checkpoint(out_dir: str) -> str | None:
    """The `checkpoint-N` folder with the largest N in `out_dir`, or None."""
    found = [p for p in glob.glob(os.path.join(out_dir, "checkpoint-*")) if p.rsplit("-", 1)[1].isdigit()]
    return max(found, key=lambda p: int(p.rsplit("-", 1)[1])) if found else None


def _pairs(argv: list[str]) -> list[str]:
    """`--key value` pairs of an argv as "key=value" strings (to say which ones differ)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i][2:]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i].lstrip("-"))
            i += 1
    return out


def portable_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with every path cut to its last two components, so a run's recorded training arguments compare equal
    on another machine whose checkout, data or model folders sit elsewhere.

    >>> portable_argv(["--config", "/a/repo/recipes/demo/catto.yaml", "--mcqa_data", "csqa:/x/data/csqa/train.jsonl"])
    ['--config', 'demo/catto.yaml', '--mcqa_data', 'csqa/train.jsonl']
    """
    return ["/".join(a.split(":")[-1].rstrip("/").split("/")[-2:]) if "/" in a else a for a in argv]


def train_run(argv: list[str], out_dir: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Train `catto train`'s arguments `argv` into `out_dir` (which `argv` must name as `--output_dir`), or reuse
    the finished run there; resumes an interrupted one. A finished run made with other arguments is not reused: it is
    an error naming what differs, or, with `overwrite`, trained again. Returns a summary: the first and last logged
    training steps, the runtime and the arguments."""
    from ..errors import ResumeMismatchError
    from .script import main, parse_args

    recorded = read_json(os.path.join(out_dir, RUN_RECORD), {}).get("argv")
    # paths compare by their last two components: a run reads back after its checkout, data or output folder moved
    retrain = finished_run(out_dir) and recorded is not None and portable_argv(recorded) != portable_argv(argv)
    if retrain and not overwrite:
        differ = sorted(set(_pairs(recorded)) ^ set(_pairs(argv)))
        raise ResumeMismatchError(f"{out_dir} holds a run trained with other arguments ({', '.join(differ[:4])}). "
                                  "Fix: use a new output folder, or overwrite it (catto demo --overwrite_output_dir).")
    if retrain or not finished_run(out_dir):
        checkpoint = None if retrain else latest_checkpoint(out_dir)
        extra = (["--resume_from_checkpoint", checkpoint] if checkpoint else []) + \
            (["--overwrite_output_dir", "true"] if retrain else [])
        script_args, training_args, model_args = parse_args(argv + extra)
        if os.path.abspath(training_args.output_dir) != os.path.abspath(out_dir):
            raise ValueError(f"train_run: argv trains into {training_args.output_dir}, not {out_dir}.")
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer = main(script_args, training_args, model_args)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        del trainer
        gc.collect()
        for path in glob.glob(os.path.join(out_dir, "checkpoint-*")):
            shutil.rmtree(path, ignore_errors=True)  # the finished model is in out_dir; checkpoints only resume
        write_json_atomic(os.path.join(out_dir, RUN_RECORD), {"argv": argv, "seconds": seconds,
                                                              "cpu_seconds": cpu_seconds,
                                                              "resumed": checkpoint is not None})
    history = read_json(os.path.join(out_dir, "trainer_state.json"), {})["log_history"]
    record = (read_json(os.path.join(out_dir, RUN_RECORD), {})
              or read_json(os.path.join(out_dir, _OLD_RUN_RECORD), {}))
    train_logs = [h for h in history if "loss" in h]
    summary = history[-1] if history and "train_runtime" in history[-1] else {}
    return {"output_dir": out_dir, "argv": argv, "train_seconds": record.get("seconds"),
            "train_cpu_seconds": record.get("cpu_seconds"),
            "first_log": train_logs[0] if train_logs else None, "last_log": train_logs[-1] if train_logs else None,
            "train_runtime": summary.get("train_runtime"),
            "steps": summary.get("step", history[-1].get("step") if history else None)}
