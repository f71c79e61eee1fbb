"""`benchmarks/posthoc_evaluators.py` dry run on a tiny model: every stage goes through the evaluation runner, the JSON
keeps its keys, and a second invocation reuses the per-item scoring results instead of scoring again."""

from __future__ import annotations

import json

import pytest

from posthoc_common import load_benchmark, write_dataset


@pytest.fixture
def scored(monkeypatch):
    """Items scored by resumable (results-file) cloze scoring calls, i.e. not read back from a results file."""
    import catto.eval.scoring as scoring

    counted, real = [], scoring.score_cloze

    def counting(model, tokenizer, items, **kwargs):
        if kwargs.get("on_batch") is not None:
            counted.append(len(items))
        return real(model, tokenizer, items, **kwargs)

    monkeypatch.setattr(scoring, "score_cloze", counting)
    return counted


def test_posthoc_dry_run_writes_every_key_and_resumes(tmp_path, mcqa_model_dir, scored):
    script = load_benchmark("posthoc_evaluators")
    out = tmp_path / "posthoc.json"
    argv = ["--model", mcqa_model_dir, "--fit-data", f"toy={write_dataset(tmp_path / 'fit.jsonl', 36)}",
            "--transfer", f"a={write_dataset(tmp_path / 'a.jsonl', 24, 1)}",
            "--transfer", f"b={write_dataset(tmp_path / 'b.jsonl', 24, 2)}",
            "--n-fit", "12", "--n-eval", "24", "--n-generate", "22", "--bootstrap", "10", "--epochs", "2",
            "--cache-dir", str(tmp_path / "acts"), "--out", str(out), "--no-progress"]
    assert script.main(argv) == 0
    payload = json.loads(out.read_text())
    assert {"command", "model", "fit", "transfer", "seed", "bootstrap", "ece", "scoring", "machine", "wall_times_s",
            "datasets", "calibration", "temperature", "coral", "msp", "letter_accuracy_check"} <= set(payload)
    names = ["toy (held-out)", "a", "b"]
    assert list(payload["datasets"]) == names and payload["datasets"]["toy (held-out)"] == 24
    assert payload["fit"] == {"spec": f"mmlu:{tmp_path / 'fit.jsonl'}", "split": None, "n": 12}
    for name in names:
        rows = payload["calibration"][name]
        assert set(rows) == {"scoring (cloze)", "temperature", "coral"}
        assert all(r["n"] == 24 and {"value", "ci"} <= set(r["ece"]) for r in rows.values())
        letters = payload["msp"][name]["letters"]  # fitted on the first 20 items, scored on the other 4
        assert letters["n"] == 4 and letters["abstention"]["balanced"]["n_fit"] == 20
        assert {"accuracy", "option_mass_mean", "auroc"} <= set(letters)
    generate = payload["msp"]["toy (held-out)"]["generate"]
    assert generate["n"] == 2 and {"accuracy", "unparseable", "examples"} <= set(generate)
    assert payload["temperature"]["temperature"] > 0 and payload["temperature"]["fit_nll"]["n"] == 12
    assert "grid" not in payload["coral"]["selection"] and "val_r2" in payload["coral"]["selection"]
    assert set(payload["coral"]["grid_best_per_layer"]) == {str(x) for x in payload["coral"]["candidate_layers"]}
    assert {"calibration_s", "msp_letters_s", "msp_generate_s", "total_s"} <= set(payload["wall_times_s"])
    assert scored == [24, 24, 24]  # cloze scoring of the three sets, once each
    results = tmp_path / "posthoc" / "calibration" / "scoring" / "a" / "results.jsonl"
    before = results.read_text()

    scored.clear()
    assert script.main(argv) == 0  # the same settings: the runner resumes
    again = json.loads(out.read_text())
    assert scored == [0, 0, 0] and results.read_text() == before
    assert again["calibration"] == payload["calibration"] and again["msp"] == payload["msp"]
