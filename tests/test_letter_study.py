"""`benchmarks/letter_study.py` dry run on a tiny model: SFT -> feasibility -> DPO / CATTO on letter pairs -> one report
per model -> summary, and a resumed second run that retrains nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _write(path, n, offset):
    rows = [{"question": f"w{i % 30} w{(i + 1) % 30}",
             "choices": [f"w{(i + offset + j) % 30}" for j in (0, 2, 3, 4)], "answer": (i + offset) % 4,
             "subject": "toy"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"mmlu:{path}"


@pytest.fixture(scope="module")
def study(tmp_path_factory, mcqa_model_dir):
    root = tmp_path_factory.mktemp("letter")
    argv = [sys.executable, str(REPO / "benchmarks" / "letter_study.py"), "--dry-run", "--model", mcqa_model_dir,
            "--train-data", _write(root / "train.jsonl", 60, 0),
            "--eval-data", f"a={_write(root / 'a.jsonl', 12, 1)},b={_write(root / 'b.jsonl', 12, 2)}",
            "--stages", "all", "--out", str(root / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root / "out", argv, env


def test_dry_run_covers_every_stage(study):
    out, _, _ = study
    feasibility = json.loads((out / "feasibility" / "feasibility.json").read_text())
    for per_model in feasibility["sets"].values():
        assert set(per_model) == {"base", "sft"}
        assert all(0 <= r["most_predicted_share"] <= 1 and r["ci"][0] <= r["accuracy"] <= r["ci"][1]
                   for r in per_model.values())
    for key in ("dpo-s0", "catto_a0.3-s0"):
        record = json.loads((out / "runs" / key / "catto_run.json").read_text())
        argv = record["argv"]
        assert argv[argv.index("--mcqa_prompt_format") + 1] == "letter"
        assert argv[argv.index("--model_name_or_path") + 1] == str(out / "sft" / "model")  # from the SFT model
    report = json.loads((out / "eval" / "catto_a0.3-s0" / "report.json").read_text())
    for ds in report["datasets"].values():
        assert {"scoring", "temperature", "msp", "coral", "confidence_at_k"} <= set(ds["metrics"])
        token = ds["methods"]["token"]["method_metrics"]
        assert token["settings"]["pair_format"] == "letter"
        assert token["chosen"]["n_tokens"] == 2 * token["chosen"]["n_sequences"]  # " B" and the EOS TRL appends
    rows = json.loads((out / "letter_study.json").read_text())["rows"]
    assert {(r["model"], r["data"]) for r in rows} == {(m, d) for m in ("base", "sft", "dpo-s0", "catto_a0.3-s0")
                                                       for d in ("mmlu-a", "mmlu-b")}


def test_rerun_resumes_without_retraining(study):
    out, argv, env = study
    stamp = os.path.getmtime(out / "runs" / "dpo-s0" / "adapter_model.safetensors")
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert os.path.getmtime(out / "runs" / "dpo-s0" / "adapter_model.safetensors") == stamp
    assert "evaluating" not in again.stdout  # every report reused
