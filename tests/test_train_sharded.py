"""`catto train` rehearses a ZeRO-3 and an FSDP2 launch on CPU: 2 processes from a recipe, equal to 1 process with
gradient accumulation 2; and a launch that cannot work fails before anything starts, with one line naming the field
and the fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from catto import train as catto_train
from catto.train import distributed
from catto.data.synthetic import make_model, make_tokenizer, preference_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "",
       "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
needs_deepspeed = pytest.mark.skipif(
    not distributed._deepspeed_installed(),
    reason="DeepSpeed is not installed: pip install 'catto[deepspeed]' (CI installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-sharded")
    make_model("llama", seed=0).save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    preference_dataset(16).to_json(str(root / "pairs.jsonl"))
    recipe = {
        "model_name_or_path": str(root / "model"), "dataset_name": str(root / "pairs.jsonl"),
        "per_device_train_batch_size": 2, "max_steps": 2, "learning_rate": 0.05, "optim": "sgd",
        "lr_scheduler_type": "constant", "max_grad_norm": 1.0e6, "logging_steps": 1, "bf16": False, "use_cpu": True,
        "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
        "catto_alpha": 0.5, "seed": 0,
    }
    (root / "recipe.yaml").write_text("# catto train --config recipe.yaml\n" + yaml.safe_dump(recipe))
    return root


def _run(args, cwd):
    proc = subprocess.run(args, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _result(output_dir):
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        logs = [h for h in json.load(f)["log_history"] if "loss" in h]
    return logs, load_file(os.path.join(output_dir, "model.safetensors"))


@pytest.fixture(scope="module")
def one_process(workspace):
    out = workspace / "one"
    _run([sys.executable, "-m", "catto.train", "--config", "recipe.yaml", "--output_dir", str(out),
          "--gradient_accumulation_steps", "2"], workspace)
    return _result(out)


@pytest.mark.distributed
@pytest.mark.sharded
@pytest.mark.parametrize("config,flags,engine", [
    pytest.param("zero3_cpu", ["--use_cpu", "false"], "DeepSpeed ZeRO-3", marks=needs_deepspeed),
    ("fsdp2_cpu", [], "FSDP2"),
])
def test_catto_train_rehearses_a_sharded_launch(workspace, one_process, config, flags, engine):
    out = workspace / config
    proc = _run([sys.executable, "-m", "catto.cli", "train", "--config", "recipe.yaml", "--accelerate_config", config,
                 "--num_processes", "2", "--main_process_port", str(_free_port()), "--output_dir", str(out), *flags],
                workspace)
    assert f"[catto train] {engine}, 2 process(es), cpu" in proc.stdout  # not a silent DDP fallback
    logs, weights = _result(out)
    ref_logs, ref_weights = one_process
    assert len(logs) == len(ref_logs) == 2
    for a, b in zip(logs, ref_logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert weights.keys() == ref_weights.keys()
    start = load_file(workspace / "model" / "model.safetensors")
    assert (ref_weights["lm_head.weight"] - start["lm_head.weight"]).abs().max() > 1e-4
    for key in ref_weights:
        torch.testing.assert_close(weights[key], ref_weights[key], rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------------------------------------------
# Launches that cannot work: one line, before anything is launched.


def _fails(workspace, capsys, *args, match):
    from catto.cli import main

    code = main(["train", "--config", str(workspace / "recipe.yaml"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    for needle in match:
        assert needle in err, err


def test_zero3_without_deepspeed(workspace, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "_deepspeed_installed", lambda: False)
    _fails(workspace, capsys, "--accelerate_config", "zero3", "--use_cpu", "false",
           match=["DeepSpeed", "pip install 'catto[deepspeed]'"])


@needs_deepspeed
def test_deepspeed_with_use_cpu(workspace, capsys):
    _fails(workspace, capsys, "--accelerate_config", "zero3_cpu", match=["use_cpu: true", "set use_cpu: false"])


def test_fsdp2_rehearsal_without_use_cpu(workspace, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "_has_gpu", lambda: False)
    _fails(workspace, capsys, "--accelerate_config", "fsdp2_cpu", "--use_cpu", "false",
           match=["use_cpu: false with an FSDP accelerate config", "set use_cpu: true"])


def test_fsdp1_on_cpu(workspace, capsys, tmp_path):
    config = yaml.safe_load(open(os.path.join(ROOT, "accelerate_configs", "fsdp2_cpu.yaml")))
    config["fsdp_config"]["fsdp_version"] = 1
    (tmp_path / "fsdp1.yaml").write_text(yaml.safe_dump(config))
    _fails(workspace, capsys, "--accelerate_config", str(tmp_path / "fsdp1.yaml"), match=["fsdp_version: 2"])


def test_zero3_cpu_finds_its_deepspeed_json(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config names ds_zero3_cpu.json relative to itself, not to the working folder
    command = catto_train.build_launch_command(
        ["--config", str(workspace / "recipe.yaml"), "--accelerate_config", "zero3_cpu", "--use_cpu", "false"])
    ds_json = command[command.index("--deepspeed_config_file") + 1]
    assert os.path.isabs(ds_json) and ds_json.endswith(os.path.join("accelerate_configs", "ds_zero3_cpu.json"))
    assert os.path.isfile(ds_json)


def test_engine_check_catches_a_silent_fallback():
    class Accelerator:  # what accelerate 1.16 sets up for an FSDP config under use_cpu without enable_cpu_fsdp
        distributed_type, num_processes, device = "DistributedType.MULTI_CPU", 2, torch.device("cpu")

    with pytest.raises(distributed.LaunchError, match="asks for FSDP but accelerate set up MULTI_CPU"):
        distributed.check_engine(Accelerator(), env={"ACCELERATE_USE_FSDP": "true"})
    assert distributed.check_engine(Accelerator(), env={}) == "MULTI_CPU, 2 process(es), cpu"


def test_qlora_that_cannot_run_here_fails_before_launch(workspace, capsys, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    version = importlib.metadata.version  # bitsandbytes >= 0.50 runs QLoRA on CPU (tests/test_qlora.py); older not
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.49.0" if name == "bitsandbytes" else version(name))
    _fails(workspace, capsys, "--accelerate_config", "single_process", "--load_in_4bit", "true", "--use_peft", "true",
           match=["load_in_4bit"])
