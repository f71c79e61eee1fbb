"""Loading as users expect, and a model card that says what was trained (issue 26).

One two-step LoRA `catto train` run on a tiny model (`python -m catto.train`, as `catto train` launches it) is shared
by the tests: `catto eval --model RUN` equals `--model BASE --adapter RUN` item for item; the run's README.md holds
every catto_* setting and the last logged calibration metrics; every checkpoint carries the run's settings, so a
checkpoint copied away is still compared on resume. `--device_map` and `--trust_remote_code` reach
`from_pretrained`; matplotlib is a dependency, and `catto demo` names only what it wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from posthoc_common import write_arc_mcqa

from catto.cli import main
from catto.data.synthetic import synthetic_mcqa

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _train(root, mcqa_model_dir, **overrides):
    """`python -m catto.train` (what `catto train` launches): a two-step LoRA run with the calibration callback on."""
    train = write_arc_mcqa(root / "train.jsonl", synthetic_mcqa(16, seed=0))
    heldout = write_arc_mcqa(root / "heldout.jsonl", synthetic_mcqa(8, seed=1))
    recipe = {"model_name_or_path": mcqa_model_dir, "mcqa_data": train, "mcqa_prompt_format": "letter",
              "calibration_eval_data": heldout, "calibration_eval_steps": 1, "per_device_train_batch_size": 4,
              "learning_rate": 0.05, "logging_steps": 1, "max_steps": 2, "bf16": False, "use_cpu": True,
              "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no",
              "disable_tqdm": True, "catto_alpha": 0.3, "seed": 0, "use_peft": True, "lora_r": 4, "lora_alpha": 8,
              "lora_target_modules": ["q_proj", "v_proj"], **overrides}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = root / "run"
    proc = subprocess.run([sys.executable, "-m", "catto.train", "--config", str(root / "recipe.yaml"),
                           "--output_dir", str(out)], env=ENV, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "run": out, "base": mcqa_model_dir, "train": train, "heldout": heldout,
            "recipe": root / "recipe.yaml"}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, mcqa_model_dir):
    """A finished run saving no checkpoint (as the demo recipes): its card is written by the final save alone."""
    return _train(tmp_path_factory.mktemp("lora-run"), mcqa_model_dir)


@pytest.fixture(scope="module")
def lora_checkpoints(tmp_path_factory, mcqa_model_dir):
    """The same run saving a checkpoint after each step."""
    return _train(tmp_path_factory.mktemp("lora-checkpoints"), mcqa_model_dir, save_strategy="steps", save_steps=1)


def _eval(out, *model_flags, data, extra=()):
    assert main(["eval", *model_flags, "--data", data, "--out", str(out), "--bootstrap", "0", "--no-plots",
                 "--no-progress", *extra]) == 0
    folder = next(p for p in out.iterdir() if p.is_dir())
    records = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    return records, json.loads((out / "metrics.json").read_text()), json.loads((folder / "settings.json").read_text())


# ----------------------------------------------------------------------------------------------------------------
# Loading


def test_eval_of_a_lora_run_folder_equals_base_plus_adapter(lora_run, tmp_path):
    run, base, data = str(lora_run["run"]), lora_run["base"], lora_run["heldout"]
    assert not (lora_run["run"] / "config.json").exists()  # what used to fail with "no config.json"
    by_run, metrics, settings = _eval(tmp_path / "a", "--model", run, data=data)
    by_adapter, _, _ = _eval(tmp_path / "b", "--model", base, "--adapter", run, data=data)
    by_base, _, _ = _eval(tmp_path / "c", "--model", base, data=data)
    assert len(by_run) == 8
    assert by_run == by_adapter  # per item: option probabilities, prediction, confidence, correctness
    assert any(a["option_probs"] != b["option_probs"] for a, b in zip(by_run, by_base))  # the adapter is on
    # the run record and the resume settings say which base model the folder resolved to
    assert metrics["model"] == run and metrics["base_model"] == base and metrics["adapter"] is None
    assert settings["base_model"] == base and "trust_remote_code" not in settings


def test_a_checkpoint_of_a_run_loads_too(lora_checkpoints, tmp_path):
    """A checkpoint folder is an adapter folder too (its base from its adapter config); the last one is the run."""
    run = lora_checkpoints["run"]
    by_checkpoint, metrics, _ = _eval(tmp_path / "a", "--model", str(run / "checkpoint-2"),
                                      data=lora_checkpoints["heldout"])
    by_run, _, _ = _eval(tmp_path / "b", "--model", str(run), data=lora_checkpoints["heldout"])
    assert by_checkpoint == by_run and metrics["base_model"] == lora_checkpoints["base"]


def test_the_runs_recorded_model_is_the_fallback_base(lora_run, tmp_path):
    """A run folder whose adapter config names a base that is gone (moved machines) loads the base its run recorded."""
    from catto.core.modeling import adapter_base_model, resolve_model

    moved = tmp_path / "moved-run"
    shutil.copytree(lora_run["run"], moved, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-longer-here")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_base_model(str(moved)) == lora_run["base"]  # from catto_train_settings.json
    assert resolve_model(str(moved)) == (lora_run["base"], str(moved))
    assert resolve_model(lora_run["base"]) == (lora_run["base"], None)


def _spy_from_pretrained(monkeypatch):
    """Record the keyword arguments of every AutoModelForCausalLM / AutoTokenizer `from_pretrained` call."""
    import transformers

    calls = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls


def test_device_map_reaches_from_pretrained_and_gives_the_same_results(lora_run, tmp_path, monkeypatch):
    import catto.core.modeling as modeling

    data = lora_run["heldout"]
    default, _, _ = _eval(tmp_path / "default", "--model", lora_run["base"], data=data)
    calls = _spy_from_pretrained(monkeypatch)
    moved = []
    real_resolve = modeling.resolve_device
    monkeypatch.setattr(modeling, "resolve_device", lambda *a: moved.append(a) or real_resolve(*a))
    mapped, metrics, settings = _eval(tmp_path / "mapped", "--model", lora_run["base"], data=data,
                                      extra=("--device_map", "auto"))
    model_calls = [kw for name, kw in calls if name == "AutoModelForCausalLM"]
    assert model_calls and all(kw["device_map"] == "auto" for kw in model_calls)
    assert not moved  # with a device map the model stays where transformers put it
    assert mapped == default
    assert metrics["device_map"] == "auto" and settings["device_map"] == "auto"
    # the run folder path too (base model + adapter under a device map)
    calls.clear()
    by_run, _, _ = _eval(tmp_path / "run-mapped", "--model", str(lora_run["run"]), data=data,
                         extra=("--device_map", "auto"))
    assert [kw["device_map"] for name, kw in calls if name == "AutoModelForCausalLM"] == ["auto"]
    assert by_run == _eval(tmp_path / "run-default", "--model", str(lora_run["run"]), data=data)[0]


def test_trust_remote_code_reaches_from_pretrained_and_is_recorded(lora_run, tmp_path, monkeypatch, capsys):
    data = lora_run["heldout"]
    default, _, _ = _eval(tmp_path / "default", "--model", lora_run["base"], data=data)
    calls = _spy_from_pretrained(monkeypatch)
    out = tmp_path / "trusted"
    trusted, metrics, settings = _eval(out, "--model", lora_run["base"], data=data, extra=("--trust_remote_code",))
    assert {name for name, _ in calls} == {"AutoModelForCausalLM", "AutoTokenizer"}
    assert all(kw["trust_remote_code"] is True for _, kw in calls)
    assert trusted == default
    assert metrics["trust_remote_code"] is True and settings["trust_remote_code"] is True
    # resuming that folder without the flag is another setting: refused in one line
    assert main(["eval", "--model", lora_run["base"], "--data", data, "--out", str(out), "--bootstrap", "0",
                 "--no-plots", "--no-progress"]) == 2
    assert "trust_remote_code (true there, null now)" in capsys.readouterr().err.strip().splitlines()[-1]


def test_dtype_is_auto_by_default():
    from catto.pipeline.runner import EvalArguments

    assert EvalArguments(model="m", data=["d"], out="o").dtype == "auto"


# ----------------------------------------------------------------------------------------------------------------
# The model card


def _table(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under `heading`: first cell (backticks stripped) -> the other cells."""
    part = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-"} and cells[0] not in ("setting", "metric"):
            rows[cells[0].strip("`")] = [c.strip("`") for c in cells[1:]]
    return rows


def test_the_model_card_holds_the_settings_and_the_final_metrics(lora_run):
    import torch

    run = lora_run["run"]
    card = (run / "README.md").read_text()
    assert "More Information Needed" not in card  # not PEFT's empty template
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["base_model"] == lora_run["base"]  # PEFT's metadata kept
    assert {"catto", "dpo", "trl", "lora"} <= set(meta["tags"])
    assert f"Training data: `{lora_run['train']}`." in card  # the mcqa_data spec catto train passed

    args = torch.load(run / "training_args.bin", weights_only=False)  # our own test file: safe to unpickle here
    settings = _table(card, "### Calibration settings")
    expected = {name: getattr(args, name) for name in vars(args) if name.startswith("catto_")}
    assert set(settings) == set(expected) and len(expected) >= 10
    assert settings["catto_alpha"] == ["0.3"] and settings["catto_confidence"] == ["max"]
    assert settings["catto_margin"] == ["logit"] and settings["catto_detach_target"] == ["True"]
    for name, value in expected.items():
        shown = settings[name][0]
        if isinstance(value, float):
            assert float(shown) == pytest.approx(value, rel=1e-5), name
        else:
            assert shown == str(value), name

    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    last = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith(("catto/", "eval_calibration/")):
                last[key] = (value, entry["step"])
    metrics = _table(card, "### Final calibration metrics")
    assert {"catto/token_ece", "catto/calibration_loss", "eval_calibration/ece", "eval_calibration/accuracy"} <= \
        set(metrics)
    assert set(metrics) == set(last)
    for key, (value, step) in last.items():
        assert float(metrics[key][0]) == pytest.approx(value, rel=1e-5, abs=1e-9), key
        assert int(metrics[key][1]) == step == 2, key
    assert 0 < float(metrics["catto/calibration_loss"][0])


def test_the_card_of_a_trainer_built_in_python(tmp_path):
    """Without catto train: the card says so before training, and `trainer.save_model()` writes the full card of a
    LoRA run (not PEFT's template) with the dataset the trainer was told."""
    from peft import LoraConfig

    from catto import CATTOConfig, CATTODPOTrainer
    from catto.data.synthetic import make_model, make_tokenizer, preference_dataset

    out = tmp_path / "out"
    config = CATTOConfig(output_dir=str(out), catto_alpha=0.2, bf16=False, report_to=[], use_cpu=True, max_steps=1,
                         logging_steps=1, save_strategy="no", gradient_checkpointing=False, disable_tqdm=True)
    trainer = CATTODPOTrainer(model=make_model("llama", seed=0), args=config,
                              train_dataset=preference_dataset(8, seed=0), processing_class=make_tokenizer(),
                              peft_config=LoraConfig(r=2, target_modules=["q_proj"]))
    trainer.create_model_card(model_name="toy", dataset_name="org/pairs")
    card = (out / "README.md").read_text()
    assert _table(card, "### Calibration settings")["catto_alpha"] == ["0.2"]
    assert "No calibration metric has been logged yet." in card
    assert "datasets/org/pairs" in card and "Training data: `org/pairs`." in card  # a hub id is linked
    trainer.model_card_dataset_name = "pairs.jsonl"
    trainer.train()
    trainer.save_model()
    card = (out / "README.md").read_text()
    assert "More Information Needed" not in card and yaml.safe_load(card.split("---")[1])["library_name"] == "peft"
    assert "Training data: `pairs.jsonl`." in card and "datasets/pairs.jsonl" not in card  # a file is not linked
    logged = [h for h in trainer.state.log_history if "catto/token_ece" in h][-1]
    assert float(_table(card, "### Final calibration metrics")["catto/token_ece"][0]) == pytest.approx(
        logged["catto/token_ece"], rel=1e-5, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Every checkpoint carries the run's settings


def test_every_checkpoint_carries_the_settings_and_a_copy_is_compared(lora_checkpoints, tmp_path, monkeypatch):
    from catto.errors import ConfigError
    from catto.train.launcher import build_launch_command

    import catto.train.launcher as launcher

    monkeypatch.setattr(launcher, "run_holding_back_tracebacks", lambda *a, **k: pytest.fail("launched"))
    lora_run = lora_checkpoints
    run = lora_run["run"]
    recorded = json.loads((run / "catto_train_settings.json").read_text())
    for step in (1, 2):
        assert json.loads((run / f"checkpoint-{step}" / "catto_train_settings.json").read_text()) == recorded
    copied = tmp_path / "copied" / "checkpoint-2"
    shutil.copytree(run / "checkpoint-2", copied)
    argv = ["--config", str(lora_run["recipe"]), "--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint",
            str(copied)]
    with pytest.raises(ConfigError, match=re.escape("catto_alpha (0.3 there, 0.5 now)")):
        build_launch_command([*argv, "--catto_alpha", "0.5"])
    assert "catto.train" in build_launch_command(argv)  # the same settings resume


# ----------------------------------------------------------------------------------------------------------------
# The first run shows pictures


def test_matplotlib_is_a_dependency():
    import tomllib

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert any(re.match(r"matplotlib\b", dep) for dep in project["dependencies"])


def test_the_demo_names_only_what_it_wrote(tmp_path):
    from catto.pipeline.demo import written_summary

    (tmp_path / "catto").mkdir()
    (tmp_path / "catto" / "adapter_config.json").write_text("{}")
    text = written_summary(str(tmp_path), {"skipped": "matplotlib not installed (pip install matplotlib)"},
                           ("dpo", "catto"))
    assert "the reliability diagrams" not in text and ".png" not in text
    assert "No reliability diagrams: matplotlib not installed" in text
    assert str(tmp_path / "catto") in text and str(tmp_path / "dpo") not in text  # dpo saved nothing
    png = tmp_path / "reliability_arc.png"
    png.write_bytes(b"png")
    text = written_summary(str(tmp_path), {"arc/mcqa": str(png), "arc/token": str(tmp_path / "missing.png")},
                           ("dpo", "catto"))
    assert "the reliability diagrams reliability_arc.png" in text and "missing.png" not in text
