import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


LAUNCHERS = {
    "torchrun": lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", str(port)],
    "accelerate": lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                os.path.join(HERE, "..", "accelerate_configs", "multi_cpu.yaml"),
                                "--num_processes", "2", "--main_process_port", str(port)],
}


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_process_ddp_equals_one_process_with_accumulation(tmp_path, launcher):
    script = os.path.join(HERE, "ddp_step.py")
    ddp = _run([*LAUNCHERS[launcher](_free_port()), script, str(tmp_path / "ddp.json"), "--batch", "2", "--ga", "1"],
               tmp_path / "ddp.json")
    single = _run([sys.executable, script, str(tmp_path / "ga.json"), "--batch", "2", "--ga", "2"],
                  tmp_path / "ga.json")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    ddp_steps = [h for h in ddp["log_history"] if "loss" in h]
    ga_steps = [h for h in single["log_history"] if "loss" in h]
    assert len(ddp_steps) == len(ga_steps) == 2
    for a, b in zip(ddp_steps, ga_steps):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert "catto/token_ece" in a
