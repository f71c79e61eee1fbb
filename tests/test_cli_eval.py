import json

import pytest

from catto.cli import main
from catto.eval.results import ResultsFile


@pytest.fixture(scope="module")
def model_dir(mcqa_model_dir):
    return mcqa_model_dir


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mmlu.jsonl"
    rows = [{"question": f"w{i} w{i + 1}", "choices": [f"w{i}", f"w{i + 2}", f"w{i + 3}", f"w{i + 4}"],
             "answer": i % 4, "subject": "toy"} for i in range(20)]
    rows.append({"question": "w1 w2", "choices": ["w5", "w5", "w6", "w7"], "answer": 0, "subject": "toy"})  # dup
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_catto_eval_writes_results_metrics_and_plots(tmp_path, model_dir, data_file, scoring, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--model", model_dir, "--data", f"mmlu:{data_file}", "--scoring", scoring, "--out", str(out),
            "--bootstrap", "50", "--eval-batch-size", "4", "--no-progress", "--n-bins", "10", "--num-fewshot", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| data | n |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    (name,) = metrics["datasets"]
    entry = metrics["datasets"][name]
    assert metrics["scoring"]["scoring"] == scoring and metrics["binning"] == {"n_bins": 10, "scheme": "equal_width"}
    assert "softmax" in metrics["scoring"]["confidence"] and metrics["catto_version"]
    assert entry["n_items"] == 18 and len(entry["fewshot_ids"]) == 2
    assert len(entry["skipped_rows"]) == 1 and "same text" in entry["skipped_rows"][0]["reason"]
    results = ResultsFile(out / name / "results.jsonl").results
    assert len(results) == 18
    acc = sum(r.correct for r in results.values()) / 18
    assert entry["metrics"]["accuracy"]["value"] == pytest.approx(acc)
    assert "ci" in entry["metrics"]["ece"] and entry["metrics"]["ece"]["n_bins"] == 10
    assert (out / name / "reliability.png").stat().st_size > 0 and (out / name / "risk_coverage.png").exists()
    # A second run finds every item scored and reproduces the metrics.
    assert main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())["datasets"][name]["metrics"]
    assert again["ece"]["value"] == entry["metrics"]["ece"]["value"]


def test_catto_eval_names_a_model_that_cannot_load(tmp_path, data_file, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "--data", f"mmlu:{data_file}",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such model folder" in err and str(tmp_path / "missing") in err and "Traceback" not in err


def test_catto_eval_raise_mode_names_the_bad_row(tmp_path, model_dir, data_file, capsys):
    assert main(["eval", "--model", model_dir, "--data", f"mmlu:{data_file}", "--on-invalid", "raise",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "same text" in err and "row 20" in err and len(err.strip().splitlines()) == 1


def test_eval_reads_a_yaml_config_and_flags_override_it(tmp_path, model_dir, data_file, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"model: {model_dir}\ndata: ['mmlu:{data_file}']\nscoring: cloze\nout: {tmp_path / 'out'}\n"
                      "bootstrap: 10\nn_bins: 5\nno_plots: true\nno_progress: true\n")
    assert main(["eval", "--config", str(config), "--n-bins", "7", "--limit", "6"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["scoring"]["scoring"] == "cloze" and metrics["binning"]["n_bins"] == 7 and metrics["limit"] == 6
    config.write_text(f"model: {model_dir}\nn_binz: 5\n")
    assert main(["eval", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'n_binz' is not an option" in err and "--n-bins" in err and str(config) in err


def test_eval_logs_metrics_and_diagrams_to_trackers(tmp_path, model_dir, data_file):
    """`report_to` goes through accelerate's tracking API: any tracker gets the flat metrics and the diagrams."""
    from accelerate.tracking import GeneralTracker

    from catto.pipeline.runner import EvalArguments, run_eval
    from catto.methods.scoring import ScoringMethodConfig

    class Recorder(GeneralTracker):
        name = "recorder"
        requires_logging_directory = False
        main_process_only = True

        def __init__(self):
            super().__init__()
            self.values, self.images, self.config = {}, {}, {}

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.values.update(values)

        def log_images(self, values, step=None, **kwargs):
            self.images.update(values)

    recorder = Recorder()
    args = EvalArguments(model=model_dir, data=[f"mmlu:{data_file}"], out=str(tmp_path / "out"), bootstrap=0,
                         no_progress=True, report_to=[recorder], limit=8)
    run_eval(args, "scoring", ScoringMethodConfig(scoring="cloze"))
    (name,) = json.loads((tmp_path / "out" / "metrics.json").read_text())["datasets"]
    assert 0 <= recorder.values[f"{name}/metrics/ece"] <= 1 and recorder.values[f"{name}/metrics/n"] == 8
    assert recorder.config["model"] == model_dir
    assert recorder.images[f"{name}/reliability"].ndim == 3  # the reliability diagram as an RGB array
