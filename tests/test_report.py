"""`catto report` end to end on a tiny saved model: several methods on the same items, one page + JSON."""

from __future__ import annotations

import json

import pytest
from posthoc_common import save_tiny_model, write_dataset

from catto.cli import main as catto_main
from catto.pipeline.report import markdown_table


def main(argv):
    return catto_main(["report", *argv])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model_dir = save_tiny_model(root / "model")
    specs = [write_dataset(root / "a.jsonl", 14), write_dataset(root / "b.jsonl", 14, offset=1)]
    fit = write_dataset(root / "fit.jsonl", 24, offset=2)
    return root, model_dir, specs, fit


def _common(model_dir, specs, out):
    args = ["--model", model_dir, "--out", str(out), "--bootstrap", "20", "--no-progress"]
    for s in specs:
        args += ["--data", s]
    return args


def test_report_runs_methods_side_by_side(setup):
    root, model_dir, specs, fit = setup
    out = root / "out"
    assert main(_common(model_dir, specs, out) + [
        "--scoring", "cloze", "--methods", "scoring,temperature,msp,coral", "--fit-data", fit,
        "--set", "coral.hidden_sizes=[8]", "--set", "coral.epochs=2", "--set", "coral.weight_decays=[0]",
        "--set", "coral.output_penalties=[0]", "--set", "coral.layers=[1]"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["scoring", "temperature", "msp", "coral"] and len(report["datasets"]) == 2
    for ds_name, ds in report["datasets"].items():
        assert list(ds["metrics"]) == ["scoring", "temperature", "msp", "coral"]
        for m, summary in ds["metrics"].items():
            assert summary["n"] == 14 and all(k in summary for k in ("accuracy", "ece", "brier", "nll", "auroc",
                                                                     "aurc"))
            assert "ci" in summary["ece"]
            lines = (out / m / ds_name / "results.jsonl").read_text().splitlines()
            assert len(lines) == 14
        # temperature never changes the scoring's accuracy on the same items
        assert ds["metrics"]["temperature"]["accuracy"]["value"] == ds["metrics"]["scoring"]["accuracy"]["value"]
        assert "abstention" in ds["methods"]["msp"]["method_metrics"]
        assert (out / ds["plots"]["reliability"]).stat().st_size > 0
        assert (out / ds["plots"]["risk_coverage"]).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert md.count("| coral |") == 2 and "reliability.png" in md
    assert "<table>" in (out / "report.html").read_text()
    assert (out / "coral" / "evaluator" / "state.safetensors").exists()


def test_report_loads_saved_evaluators_and_eval_folders(setup):
    root, model_dir, specs, fit = setup
    first = root / "out"  # from the test above (module order), else build it
    if not (first / "report.json").exists():
        test_report_runs_methods_side_by_side(setup)
    ev_out = root / "eval_out"
    assert catto_main(["eval", "--model", model_dir, "--data", specs[0], "--scoring", "cloze", "--out", str(ev_out),
                       "--bootstrap", "10", "--no-plots", "--no-progress"]) == 0
    out = root / "loaded"
    assert main(_common(model_dir, specs[:1], out) + [
        "--scoring", "cloze", "--methods", "scoring", "--no-plots",
        "--load", f"ts={first / 'temperature' / 'evaluator'}", "--load", f"eval={ev_out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    (ds,) = report["datasets"].values()
    assert list(ds["metrics"]) == ["scoring", "ts", "eval"]
    # the catto eval folder holds the same cloze scoring of the same items: identical numbers
    assert ds["metrics"]["eval"]["ece"]["value"] == pytest.approx(ds["metrics"]["scoring"]["ece"]["value"])
    before = json.loads((first / "report.json").read_text())["datasets"]
    assert ds["metrics"]["ts"]["nll"]["value"] == pytest.approx(
        before[next(iter(before))]["metrics"]["temperature"]["nll"]["value"])


def test_report_errors_name_the_fix(setup, capsys):
    root, model_dir, specs, _ = setup
    assert main(_common(model_dir, specs, root / "x") + ["--methods", "scoring,temperature"]) == 2
    err = capsys.readouterr().err
    assert "temperature learns from labelled items" in err and "--fit-first N" in err and "--load NAME=DIR" in err
    assert main(_common(model_dir, specs, root / "x") + ["--methods", "temperature", "--fit-first", "4",
                                                          "--set", "temperature.nope=1"]) == 2
    assert "no config field" in capsys.readouterr().err
    assert main(_common(model_dir, specs, root / "x") + ["--methods", "scoring", "--load", f"z={root}"]) == 2
    assert "neither a saved evaluator" in capsys.readouterr().err


def test_every_registered_method_runs_in_a_report(setup):
    """One registry: confidence_at_k and the token method sit in the same report as the scoring methods."""
    root, model_dir, specs, fit = setup
    out = root / "all_methods"
    assert main(_common(model_dir, specs[:1], out) + [
        "--scoring", "letter", "--methods", "scoring,confidence_at_k,token", "--no-plots",
        "--set", "confidence_at_k.k=[1,2]", "--set", "confidence_at_k.max_new_tokens=2"]) == 0
    report = json.loads((out / "report.json").read_text())
    (ds,) = report["datasets"].values()
    assert list(ds["metrics"]) == ["scoring", "confidence_at_k"]  # token records are not one answer per item
    assert ds["metrics"]["confidence_at_k"]["n"] == 14
    assert set(ds["methods"]["confidence_at_k"]["method_metrics"]["accuracy_vs_k"]["confidence"]) == {"1", "2"}
    token = ds["methods"]["token"]["method_metrics"]
    assert token["chosen"]["n_sequences"] == 14 and "debiased" in token["chosen"]["ece"]
    md = (out / "report.md").read_text()
    assert "| confidence_at_k | 14 |" in md and "| chosen | 14 |" in md


def test_markdown_table_cells():
    table = markdown_table({"m": {"n": 3, "ece": {"value": 0.1234, "ci": [0.1, 0.2]}, "accuracy": {"value": 0.5}}})
    assert "| m | 3 | 0.500 | 0.123 [0.100, 0.200] | - |" in table


def test_catto_report_is_dispatched(setup):
    root, model_dir, specs, _ = setup
    out = root / "dispatched"
    assert catto_main(["report"] + _common(model_dir, specs[:1], out) + ["--methods", "scoring", "--no-plots"]) == 0
    assert (out / "report.json").exists()


def test_a_new_method_is_one_class_and_its_hooks_decide_the_report(setup):
    """Hooks instead of special cases: a method registered in the test (no catto code names it) fills only the
    columns it declares and adds its own table; MSP takes letter scoring through its `report_config`."""
    import dataclasses

    from catto.methods import METHODS, register_method
    from catto.methods.msp import MSPEvaluator
    from catto.methods.scoring import ScoringMethod, ScoringMethodConfig
    from catto.pipeline.report import ReportArguments, method_config

    @dataclasses.dataclass
    class _AccuracyOnlyConfig(ScoringMethodConfig):
        pass

    @register_method
    class _AccuracyOnly(ScoringMethod):
        name = "_accuracy_only"
        config_class = _AccuracyOnlyConfig
        report_columns = ("accuracy",)

        @classmethod
        def format_summary(cls, method_metrics):
            return f"| {cls.name} own table | {method_metrics['n_seen']} |\n|---|---|"

        def summarize(self, records):
            return {"n_seen": len(records)}

    try:
        root, model_dir, specs, _ = setup
        out = root / "hooks"
        assert main(_common(model_dir, specs[:1], out) + ["--scoring", "cloze", "--methods",
                                                          "scoring,_accuracy_only"]) == 0
        md = (out / "report.md").read_text()
        row = next(line for line in md.splitlines() if line.startswith("| _accuracy_only | 14 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] != "-" and set(cells[3:]) == {"-"}  # accuracy filled, ece .. aurc left blank
        assert "| _accuracy_only own table | 14 |" in md
    finally:
        METHODS.pop("_accuracy_only", None)
    cloze = ReportArguments(scoring="cloze")
    assert method_config(MSPEvaluator, cloze, 0, {}).scoring == "letter"
    assert method_config(MSPEvaluator, cloze, 0, {"mode": "generate"}).scoring == "cloze"
    assert method_config(ScoringMethod, cloze, 0, {}).scoring == "cloze"
