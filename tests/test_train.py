"""`catto train` end to end on a tiny random model: 2 CPU processes vs 1 with accumulation, resume, the calibration
callback against `catto eval`, and every bad input failing before training with a message that names it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from posthoc_common import write_arc_mcqa
from safetensors.torch import load_file

from catto import train as catto_train
from catto.cli import main as cli_main
from catto.data.synthetic import synthetic_mcqa
from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "",
       "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = make_model("llama", vocab_size=len(MCQA_VOCAB))
    model.save_pretrained(root / "model")
    make_tokenizer(MCQA_VOCAB).save_pretrained(root / "model")
    write_arc_mcqa(root / "train.jsonl", synthetic_mcqa(32, seed=0))
    write_arc_mcqa(root / "heldout.jsonl", synthetic_mcqa(12, seed=1))
    recipe = {
        "model_name_or_path": str(root / "model"),
        "mcqa_data": f"arc_easy:{root / 'train.jsonl'}",
        "mcqa_prompt_format": "letter",
        "calibration_eval_data": f"arc_easy:{root / 'heldout.jsonl'}",
        "calibration_eval_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "logging_steps": 1,
        "max_steps": 4,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "catto_alpha": 0.3,
        "seed": 0,
    }
    with open(root / "recipe.yaml", "w") as f:
        f.write("# catto train --config recipe.yaml\n" + yaml.safe_dump(recipe))
    return root


def _run(args, cwd):
    proc = subprocess.run(args, check=False, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _history(output_dir):
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return json.load(f)["log_history"]


def _train_logs(history):
    return [h for h in history if "loss" in h]


@pytest.mark.distributed
def test_two_cpu_processes_equal_one_process_with_accumulation(workspace):
    """`catto train` under accelerate (multi_cpu, gloo) == `python -m catto.train` with gradient accumulation 2."""
    two = workspace / "two"
    _run([sys.executable, "-m", "catto.cli", "train", "--config", "recipe.yaml", "--accelerate_config", "multi_cpu",
          "--num_processes", "2", "--main_process_port", str(_free_port()), "--output_dir", str(two),
          "--max_steps", "2", "--calibration_eval_data", "none"], workspace)
    one = workspace / "one"
    _run([sys.executable, "-m", "catto.train", "--config", "recipe.yaml", "--output_dir", str(one), "--max_steps", "2",
          "--gradient_accumulation_steps", "2", "--calibration_eval_data", "none"], workspace)
    a, b = _train_logs(_history(two)), _train_logs(_history(one))
    assert len(a) == len(b) == 2
    assert a[0]["step"] == b[0]["step"] == 1
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-5, abs=1e-6)
    assert a[0]["grad_norm"] == pytest.approx(b[0]["grad_norm"], rel=1e-4)
    assert a[0]["catto/token_ece"] == pytest.approx(b[0]["catto/token_ece"], rel=1e-5, abs=1e-6)
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], rel=1e-4, abs=1e-5)  # the second step starts from equal weights


def test_resume_callback_and_catto_eval(workspace):
    """One uninterrupted run saves a mid-run checkpoint; resuming from it reaches the same final weights. The
    callback's ECE at the last step equals `catto eval` on the saved final model."""
    full = workspace / "full"
    _run([sys.executable, "-m", "catto.train", "--config", "recipe.yaml", "--output_dir", str(full),
          "--save_strategy", "steps", "--save_steps", "2"], workspace)
    assert (full / "checkpoint-2").is_dir()
    resumed = workspace / "resumed"
    _run([sys.executable, "-m", "catto.train", "--config", "recipe.yaml", "--output_dir", str(resumed),
          "--resume_from_checkpoint", str(full / "checkpoint-2")], workspace)
    w_full, w_resumed = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    w_start = load_file(workspace / "model" / "model.safetensors")
    assert w_full.keys() == w_resumed.keys()
    moved = max((w_full[k] - w_start[k]).abs().max().item() for k in w_full)
    assert moved > 1e-3  # training changed the weights, so equality below means something
    for key in w_full:
        torch.testing.assert_close(w_resumed[key], w_full[key], rtol=1e-5, atol=1e-6)
    assert [h["loss"] for h in _train_logs(_history(resumed)) if h["step"] > 2] == pytest.approx(
        [h["loss"] for h in _train_logs(_history(full)) if h["step"] > 2], rel=1e-5)

    history = _history(full)
    calib = [h for h in history if "eval_calibration/ece" in h]
    assert [h["step"] for h in calib] == [0, 2, 4]
    for key in ("accuracy", "ece", "brier", "nll", "auroc", "confidence"):
        assert all(0.0 <= h[f"eval_calibration/{key}"] < 10 for h in calib)
    assert len(_train_logs(history)) == 4  # the callback's log lines do not swallow the training logs
    payload = cli_main(["eval", "--model", str(full), "--data", f"arc_easy:{workspace / 'heldout.jsonl'}",
                        "--out", str(workspace / "eval"), "--bootstrap", "0", "--no-plots", "--no-progress"]) or 0
    assert payload == 0
    with open(workspace / "eval" / "metrics.json") as f:
        metrics = next(iter(json.load(f)["datasets"].values()))["metrics"]
    assert calib[-1]["eval_calibration/ece"] == pytest.approx(metrics["ece"]["value"], abs=1e-6)
    assert calib[-1]["eval_calibration/accuracy"] == pytest.approx(metrics["accuracy"]["value"], abs=1e-9)
    assert calib[-1]["eval_calibration/brier"] == pytest.approx(metrics["brier"]["value"], abs=1e-6)


class _Interrupted(RuntimeError):
    pass


def test_interrupted_run_resumes_from_its_latest_checkpoint_to_the_uninterrupted_result(workspace, monkeypatch):
    """A 4-step run saving every step, killed at the start of step 3 (after checkpoint-1 and -2 were written,
    before the final model), is picked up by `train_run` from its latest checkpoint and trains only steps 3 and 4;
    the final weights, every logged training loss and the calibration-eval curve equal an uninterrupted 4-step run
    with the same arguments (fp32, CPU)."""
    import catto.train.trainer as trainer_module
    from transformers import TrainerCallback

    from catto.train.runs import finished_run, latest_checkpoint, train_run

    def argv(out):
        return ["--config", str(workspace / "recipe.yaml"), "--output_dir", str(out), "--save_strategy", "steps",
                "--save_steps", "1"]

    straight = workspace / "straight"
    train_run(argv(straight), str(straight))

    class KillAtStepThree(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Interrupted("killed at the start of step 3")

    class StepsRun(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    real = trainer_module.CATTODPOTrainer

    def with_callbacks(*callbacks):
        class Patched(real):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                for callback in callbacks:
                    self.add_callback(callback)
        return Patched

    interrupted = workspace / "interrupted"
    first = StepsRun()
    monkeypatch.setattr(trainer_module, "CATTODPOTrainer", with_callbacks(first, KillAtStepThree()))
    with pytest.raises(_Interrupted):
        train_run(argv(interrupted), str(interrupted))
    assert first.steps == [1, 2]
    assert not finished_run(str(interrupted)) and (interrupted / "checkpoint-1").is_dir()
    assert latest_checkpoint(str(interrupted)) == str(interrupted / "checkpoint-2")
    assert not (interrupted / "checkpoint-3").exists()

    second = StepsRun()
    monkeypatch.setattr(trainer_module, "CATTODPOTrainer", with_callbacks(second))
    summary = train_run(argv(interrupted), str(interrupted))  # the same call again: resumes checkpoint-2
    assert second.steps == [3, 4]  # it continued; it did not train the first two steps again
    record = json.loads((interrupted / "catto_run.json").read_text())
    assert record["resumed"] is True and summary["steps"] == 4 and finished_run(str(interrupted))
    assert json.loads((straight / "catto_run.json").read_text())["resumed"] is False

    w_straight = load_file(straight / "model.safetensors")
    w_resumed = load_file(interrupted / "model.safetensors")
    w_start = load_file(workspace / "model" / "model.safetensors")
    assert w_straight.keys() == w_resumed.keys()
    assert max((w_straight[k] - w_start[k]).abs().max().item() for k in w_straight) > 1e-3  # training moved them
    for key in w_straight:
        torch.testing.assert_close(w_resumed[key], w_straight[key], rtol=1e-5, atol=1e-6)
    a, b = _train_logs(_history(straight)), _train_logs(_history(interrupted))
    assert [h["step"] for h in a] == [h["step"] for h in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for key in ("loss", "catto/calibration_loss", "catto/token_ece", "learning_rate"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["step"], key)
    # the calibration-eval callback's curve survives the interruption too (steps 0 and 2 before it, 4 after)
    ca = [h for h in _history(straight) if "eval_calibration/ece" in h]
    cb = [h for h in _history(interrupted) if "eval_calibration/ece" in h]
    assert [h["step"] for h in ca] == [h["step"] for h in cb] == [0, 2, 4]
    for x, y in zip(ca, cb):
        assert y == pytest.approx(x, rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: each fails before training, naming the problem and the fix.


def _fails(workspace, capsys, *overrides, match):
    code = catto_train.run(["--config", str(workspace / "recipe.yaml"), "--output_dir",
                            str(workspace / "bad"), *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in ([match] if isinstance(match, str) else match):
        assert needle in err, err
    assert not (workspace / "bad" / "trainer_state.json").exists()


def test_unknown_recipe_key_is_named_with_a_suggestion(workspace, tmp_path, capsys):
    recipe = yaml.safe_load((workspace / "recipe.yaml").read_text())
    recipe["catto_alpah"] = 0.1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert catto_train.run(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'catto_alpah' is not a catto train option" in err and "Did you mean 'catto_alpha'" in err


def test_unknown_flag_and_missing_recipe(workspace, capsys):
    _fails(workspace, capsys, "--catto_alfa", "0.2", match=["'catto_alfa'", "catto_alpha"])
    assert catto_train.run(["--config", str(workspace / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_negative_alpha(workspace, capsys):
    _fails(workspace, capsys, "--catto_alpha", "-0.1", match="catto_alpha")


def test_model_that_cannot_load(workspace, tmp_path, capsys):
    _fails(workspace, capsys, "--model_name_or_path", str(tmp_path / "missing-model"),
           match=["model_name_or_path: cannot load", "missing-model"])
    (tmp_path / "empty").mkdir()
    _fails(workspace, capsys, "--model_name_or_path", str(tmp_path / "empty"), match="holds no loadable config.json")


def test_missing_preference_column(workspace, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "w1 w2", "chosen": " w1", "loser": " w3"}) + "\n")
    _fails(workspace, capsys, "--mcqa_data", "null", "--dataset_name", str(path),
           match=["no 'rejected' column", "loser", "mcqa_data"])


def test_data_source_must_be_exactly_one(workspace, capsys):
    _fails(workspace, capsys, "--dataset_name", "x.jsonl", match="exactly one of `dataset_name`")


def test_quantization_prerequisites(workspace, capsys, monkeypatch):
    """Without a GPU, QLoRA needs bitsandbytes >= 0.50 (its CPU backend; tests/test_qlora.py trains with it); a 4-bit
    model is never fully fine-tuned."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:  # the test extra installs it
        _fails(workspace, capsys, "--load_in_4bit", "true", "--use_peft", "true", match="catto[quantization]")
        return
    _fails(workspace, capsys, "--load_in_4bit", "true", match=["use_peft: true"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.49.0" if name == "bitsandbytes" else version(name))
    _fails(workspace, capsys, "--load_in_4bit", "true", "--use_peft", "true",
           match=["load_in_4bit", "bitsandbytes >= 0.50", "found 0.49.0"])


def test_eval_strategy_needs_an_eval_set(workspace, capsys):
    _fails(workspace, capsys, "--eval_strategy", "steps", "--eval_steps", "2", match="no DPO eval set")


def test_mcqa_row_without_gold_is_named(workspace, tmp_path, capsys):
    path = tmp_path / "nogold.jsonl"
    path.write_text(json.dumps({"id": "q-without-gold", "question": "w1 ?", "answerKey": "",
                                "choices": {"text": ["w1", "w2"], "label": ["A", "B"]}}) + "\n")
    _fails(workspace, capsys, "--mcqa_data", f"arc_easy:{path}", match="q-without-gold")


# ---------------------------------------------------------------------------------------------------------------
# The launcher


def test_launch_line(workspace):
    command = catto_train.build_launch_command(  # use_cpu: false, or accelerate would drop DeepSpeed (checked)
        ["--config", str(workspace / "recipe.yaml"), "--accelerate_config", "zero3", "--num_processes", "4",
         "--max_steps", "3", "--use_cpu", "false"])
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    config = command[command.index("--config_file") + 1]
    assert config.endswith(os.path.join("accelerate_configs", "zero3.yaml")) and os.path.isfile(config)
    assert command[command.index("--num_processes") + 1] == "4"
    tail = command[command.index("-m", 3):]
    assert tail == ["-m", "catto.train", "--config", str(workspace / "recipe.yaml"), "--max_steps", "3", "--use_cpu",
                    "false"]
    with pytest.raises(catto_train.RecipeError, match="neither a file nor one of catto's configs"):
        catto_train.build_launch_command(["--config", str(workspace / "recipe.yaml"), "--accelerate_config", "zero9"])
    with pytest.raises(catto_train.RecipeError, match="'max_stepz'"):  # checked before anything is launched
        catto_train.build_launch_command(["--config", str(workspace / "recipe.yaml"), "--max_stepz", "3"])


def test_lora_from_model_config(workspace):
    """ModelConfig's LoRA flags reach the trainer: only the adapter is trained and saved."""
    out = workspace / "lora"
    _run([sys.executable, "-m", "catto.train", "--config", "recipe.yaml", "--output_dir", str(out), "--max_steps", "2",
          "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
          "--learning_rate", "0.05", "--calibration_eval_data", "none"], workspace)
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert {k.split(".")[-2] for k in adapter} == {"lora_A", "lora_B"}
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it was trained
    assert not (out / "model.safetensors").exists()
    assert "catto/calibration_loss" in _train_logs(_history(out))[0]


def test_a_finished_run_is_reused_after_its_paths_moved_and_refused_when_a_flag_differs(workspace, monkeypatch):
    """`train_run` compares the recorded arguments with paths cut to their last two components (`portable_argv`):
    the same run named through another checkout's copy of its recipe, or by a relative output folder, is the finished
    run (nothing trained); a changed flag is not."""
    import shutil

    from catto.errors import ResumeMismatchError
    from catto.train.runs import train_run

    out = workspace / "runs" / "a"
    train_run(["--config", str(workspace / "recipe.yaml"), "--output_dir", str(out)], str(out))
    weights = (out / "model.safetensors").stat().st_mtime_ns
    moved = workspace / "elsewhere" / workspace.name
    moved.mkdir(parents=True)
    shutil.copy(workspace / "recipe.yaml", moved / "recipe.yaml")
    monkeypatch.chdir(workspace)
    summary = train_run(["--config", str(moved / "recipe.yaml"), "--output_dir", "runs/a"], "runs/a")
    assert (out / "model.safetensors").stat().st_mtime_ns == weights and summary["steps"] > 0
    with pytest.raises(ResumeMismatchError, match="trained with other arguments"):
        train_run(["--config", str(moved / "recipe.yaml"), "--output_dir", "runs/a", "--beta", "0.5"], "runs/a")
