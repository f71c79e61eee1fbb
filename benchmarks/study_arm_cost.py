"""What one study arm and seed costs, today's code against a baseline commit (issue 25: prefix sharing).

One arm and seed at the study's sizes (`benchmarks/calibration_study.py`: 800 CommonsenseQA training pairs, 50
steps, batch 8; then 500 items on each of the six evaluation sets, cloze MCQA scoring and held-out token
calibration) is run twice, by this checkout and by `--baseline-rev` (checked out as a git worktree), **at the same
time, one torch thread each**, so both see the same machine. Each side's wall time, CPU time (`os.wait4`: the study
process and the training it launches) and peak RSS are recorded, with the study's own split into training and
evaluation, and the two sides' numbers are compared (the same arm and seed must give the same metrics up to float
rounding, or the difference is a change of code to explain).

    python benchmarks/study_arm_cost.py --arm catto_a0.3 --seed 0

Writes `benchmarks/results/study_arm_cost.json` (`--out`); the two studies' folders go to `--work-dir` (resumed: a
side whose study.json exists is not rerun; delete it to time again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The last commit before prefix sharing (8613d3c): the code the "today" refers to.
DEFAULT_BASELINE = "d250439"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", default="catto_a0.3", help="An arm of benchmarks/calibration_study.py.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE, help="The commit to compare against.")
    parser.add_argument("--eval-items", type=int, default=500, help="Items per evaluation set (the study's 500).")
    parser.add_argument("--steps", type=int, default=50, help="Training steps (the study's 50).")
    parser.add_argument("--work-dir", default="/tmp/catto-study-arm-cost")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "study_arm_cost.json"))
    args = parser.parse_args(argv)
    if args.eval_items < 1 or args.steps < 1:
        parser.error("--eval-items and --steps must be at least 1")
    return args


def baseline_tree(rev: str, work: Path) -> Path:
    """A worktree of `rev` (made once), with the data packages linked where the installed layout puts them."""
    tree = work / f"tree-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True)
        for name in ("recipes", "accelerate_configs"):
            os.symlink(f"../{name}", tree / "catto" / name)
    return tree


def _head() -> str:
    """This checkout's commit, with `+dirty` when tracked files differ from it."""
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "catto", "benchmarks"]).returncode
    return rev + ("+dirty" if dirty else "")


def launch(tree: Path, out: Path, args) -> subprocess.Popen:
    from catto.pipeline.assets import shared_data_dir

    # Both sides read this checkout's data (the baseline worktree has no ../shared beside it).
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", CATTO_SHARED_DATA=str(shared_data_dir()))
    cmd = [sys.executable, "benchmarks/calibration_study.py", "--arms", args.arm, "--seeds", str(args.seed),
           "--eval-items", str(args.eval_items), "--steps", str(args.steps), "--threads", "1",
           "--out", str(out)]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: dict[str, subprocess.Popen], started: float) -> dict[str, dict]:
    """Reap each side with `os.wait4`: its own CPU time and that of the processes it waited for (the training)."""
    costs = {}
    pids = {p.pid: name for name, p in procs.items()}
    while pids:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in pids:
            continue
        name = pids.pop(pid)
        procs[name].returncode = os.waitstatus_to_exitcode(status)
        costs[name] = {"wall_s": time.perf_counter() - started, "cpu_s": usage.ru_utime + usage.ru_stime,
                       "peak_rss_mib_of_largest_process": usage.ru_maxrss / 1024, "returncode": procs[name].returncode}
    return costs


def metrics_of(study_json: Path) -> tuple[dict, dict]:
    payload = json.loads(study_json.read_text())
    (run,) = payload["runs"].values()
    return run, run["metrics"]


def flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", float(v)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": baseline_tree(args.baseline_rev, work), "current": REPO}
    outs = {name: work / f"study-{name}" for name in trees}
    todo = {name: tree for name, tree in trees.items() if not (outs[name] / "study.json").exists()}
    cost_file = work / "costs.json"
    costs = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    if todo:
        # the commit each side runs, read at launch (the checkout may move on while the runs last)
        revs = {"baseline": args.baseline_rev, "current": _head()}
        started = time.perf_counter()
        procs = {name: launch(tree, outs[name], args) for name, tree in todo.items()}
        fresh = wait_all(procs, started)
        failed = [n for n, c in fresh.items() if c["returncode"] != 0]
        if failed:
            print(f"study_arm_cost: side(s) {failed} failed; see {work}/study-<side>.log", file=sys.stderr)
            return 1
        costs.update({n: dict(c, concurrent_with=sorted(set(todo) - {n}), rev=revs[n]) for n, c in fresh.items()})
        cost_file.write_text(json.dumps(costs, indent=2))
    sides = {}
    for name in trees:
        run, metrics = metrics_of(outs[name] / "study.json")
        train = run["train"] or {}
        sides[name] = dict(costs[name], train_wall_s=train.get("train_seconds"), eval_wall_s=run["eval_seconds"],
                           eval_cpu_s=run["eval_cpu_seconds"])
    base_m, cur_m = (dict(flat(metrics_of(outs[n] / "study.json")[1])) for n in ("baseline", "current"))
    # intervals and noise floors are bootstrap / simulation outputs: a 1e-6 change of a confidence can move them
    keys = [k for k in base_m if k in cur_m and "/ci/" not in k and "noise_floor" not in k]
    diffs = {k: abs(base_m[k] - cur_m[k]) for k in keys}
    worst = sorted(diffs, key=diffs.get, reverse=True)[:10]
    result = {
        "command": "python benchmarks/study_arm_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "arm": args.arm, "seed": args.seed, "steps": args.steps, "eval_items_per_set": args.eval_items,
        "baseline_rev": args.baseline_rev, "current_rev": costs["current"].get("rev"),
        "protocol": "both sides at the same time, one torch thread each, on the same 2-core machine; cpu_s is the "
                    "study process and its waited-for children (training); peak RSS is the largest single process",
        "sides": sides,
        "ratio_current_over_baseline": {k: sides["current"][k] / sides["baseline"][k]
                                        for k in ("cpu_s", "wall_s", "train_wall_s", "eval_cpu_s")
                                        if sides["current"].get(k) and sides["baseline"].get(k)},
        "metrics_compared": len(keys),
        "max_abs_metric_difference": {k: diffs[k] for k in worst},
        # the point estimates alone (the debiased ECE is a bootstrap estimate: its resamples amplify rounding)
        "max_abs_point_estimate_difference": {k: diffs[k] for k in sorted(
            (k for k in keys if k.endswith("/value")), key=diffs.get, reverse=True)[:5]},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("sides", "ratio_current_over_baseline", "max_abs_metric_difference")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
