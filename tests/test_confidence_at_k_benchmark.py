"""`benchmarks/confidence_at_k.py` dry run on a tiny model: the candidates come from the registered method through the
evaluation runner, the JSON keeps its keys, and a second invocation generates nothing (it resumes)."""

from __future__ import annotations

import json

from posthoc_common import load_benchmark, write_dataset


def test_confidence_at_k_dry_run_writes_every_key_and_resumes(tmp_path, mcqa_model_dir):
    script = load_benchmark("confidence_at_k")
    out = tmp_path / "cak.json"
    argv = ["--model", mcqa_model_dir, "--data", write_dataset(tmp_path / "data.jsonl", 8), "--limit", "8",
            "--k", "3", "--max-new-tokens", "3", "--batch-size", "4", "--no-chat-template", "--out", str(out)]
    assert script.main(argv) == 0
    payload = json.loads(out.read_text())
    assert {"catto_version", "torch", "python", "machine", "command", "model", "data", "n_items", "config", "notes",
            "parse", "temperature_2fold", "oracle_any_of_k_correct", "accuracy_vs_k", "timing",
            "per_item"} <= set(payload)
    assert payload["n_items"] == 8 and payload["config"]["ks"] == [1, 2, 3]
    assert set(payload["accuracy_vs_k"]) == {"letter", "full_vocab", "letter_temperature_scaled_2fold"}
    curves = payload["accuracy_vs_k"]
    assert all(set(c) == {"greedy", "majority", "best_logprob", "confidence"} for c in curves.values())
    assert len(payload["temperature_2fold"]) == 2 and all(t > 0 for t in payload["temperature_2fold"])
    timing = payload["timing"]
    assert timing["items_timed"] == 8 and timing["sample_generate_calls"] == 2 and timing["greedy_calls"] == 2
    per_item = tmp_path / payload["per_item"]
    assert per_item == tmp_path / "cak" / "mmlu-data" / "results.jsonl"
    assert len(per_item.read_text().splitlines()) == 8
    before = per_item.read_text()

    assert script.main(argv) == 0  # the same settings: every item is read back, nothing is generated
    again = json.loads(out.read_text())
    assert again["timing"]["sample_generate_calls"] == 0 and again["timing"]["greedy_calls"] == 0
    assert again["timing"]["items_timed"] == 8 and again["timing"]["total_s"] == timing["total_s"]
    assert again["accuracy_vs_k"] == payload["accuracy_vs_k"] and per_item.read_text() == before
