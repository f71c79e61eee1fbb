"""`catto eval --method NAME` for registered evaluators: options from the config, the three fit sources."""

from __future__ import annotations

import json

import pytest
from test_evaluator_base import _ShiftEvaluator  # noqa: F401  (registers "_test_shift")

from catto.cli import main
from catto.cli.eval import build_parser


@pytest.fixture(scope="module")
def model_dir(mcqa_model_dir):
    return mcqa_model_dir


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    paths = []
    for name, offset in (("a", 0), ("b", 1)):
        rows = [{"question": f"w{i} w{i + 1}", "choices": [f"w{i}", f"w{i + 2}", f"w{i + 3}", f"w{i + 4}"],
                 "answer": (i + offset) % 4 if i % 3 else 1, "subject": "toy"} for i in range(12)]
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(f"mmlu:{path}")
    return paths


def _base(model_dir, data_files, out):
    return ["eval", "--method", "_test_shift", "--model", model_dir, "--data", data_files[0], "--data", data_files[1],
            "--out", str(out), "--bootstrap", "20", "--no-progress", "--no-plots"]


def test_config_fields_become_options():
    help_text = build_parser("_test_shift").format_help()
    assert "--shift" in help_text and "added to the first option's logit" in help_text and "--fit-first" in help_text
    args, config = build_parser("_test_shift").parse(["--method", "_test_shift", "--model", "m", "--data", "d",
                                                      "--out", "o", "--shift", "2.5"])
    assert config.shift == 2.5 and args.model == "m" and args.data == ["d"]
    # underscores and dashes both work; a shared field (seed) is one flag that fills the run and the method
    args, config = build_parser("_test_shift").parse(["--model", "m", "--data", "d", "--out", "o", "--n_bins", "7",
                                                      "--n-bins", "9"])
    assert args.n_bins == 9


def test_fit_first_fits_per_dataset_and_load_reproduces(tmp_path, model_dir, data_files):
    out = tmp_path / "fit_first"
    assert main(_base(model_dir, data_files, out) + ["--fit-first", "6", "--shift", "0.25"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "_test_shift" and metrics["fit"]["first"] == 6
    names = list(metrics["datasets"])
    first = metrics["datasets"][names[0]]
    assert first["n_items"] == 6 and len(first["fit_ids"]) == 6 and first["evaluator"]["config"]["shift"] == 0.25
    assert first["evaluator"]["n_fit"] == 6
    lines = (out / names[0] / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {json.loads(x)["id"] for x in lines}.isdisjoint(first["fit_ids"])
    # The saved per-dataset evaluator, loaded, gives the same numbers on the same items.
    again = tmp_path / "loaded"
    argv = ["eval", "--method", "_test_shift", "--model", model_dir, "--data", data_files[0], "--out", str(again),
            "--bootstrap", "20", "--no-progress", "--no-plots", "--load-evaluator", str(out / names[0] / "evaluator")]
    assert main(argv) == 0
    loaded = json.loads((again / "metrics.json").read_text())["datasets"][names[0]]
    assert loaded["n_items"] == 12  # nothing held out for fitting
    assert json.loads((again / names[0] / "results.jsonl").read_text().splitlines()[-1])["option_probs"] == \
        json.loads(lines[-1])["option_probs"]


def test_fit_data_fits_once_for_all(tmp_path, model_dir, data_files):
    out = tmp_path / "transfer"
    assert main(_base(model_dir, data_files, out) + ["--fit-data", data_files[1], "--fit-limit", "9"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "evaluator" / "evaluator.json").exists()
    assert all(d["evaluator"]["n_fit"] == 9 and d["n_items"] == 12 for d in metrics["datasets"].values())


def test_labelled_method_without_fit_source_says_how(tmp_path, model_dir, data_files, capsys):
    assert main(_base(model_dir, data_files, tmp_path / "x")) == 2
    assert "--fit-first N" in capsys.readouterr().err
    assert main(_base(model_dir, data_files, tmp_path / "x") + ["--fit-first", "2", "--fit-data", data_files[0]]) == 2
    assert "at most one" in capsys.readouterr().err


def test_unknown_method_lists_the_known_ones(tmp_path, capsys):
    assert main(["eval", "--method", "nope", "--model", "m", "--data", "d", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown method 'nope'" in err and "confidence_at_k" in err and "token" in err


def test_stream_joins_the_data_in_order(tmp_path, model_dir, data_files):
    out = tmp_path / "stream"
    assert main(_base(model_dir, data_files, out) + ["--fit-data", data_files[0], "--stream"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["datasets"]) == ["stream"] and metrics["datasets"]["stream"]["n_items"] == 24
    ids = [json.loads(x)["id"] for x in (out / "stream" / "results.jsonl").read_text().splitlines()]
    names = list(json.loads((out / "metrics.json").read_text())["datasets"]["stream"]["spec"].split(" -> "))
    assert len(names) == 2 and len(set(ids)) == 24  # ids made unique across the joined datasets
    assert all(i.startswith("mmlu-a:") for i in ids[:12]) and all(i.startswith("mmlu-b:") for i in ids[12:])
