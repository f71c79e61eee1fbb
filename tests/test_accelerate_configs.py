import glob
import json
import os

import pytest
from accelerate.commands.config.config_args import load_config_from_file

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "accelerate_configs")
EXPECTED = {
    "single_process": ("NO", 1),
    "ddp": ("MULTI_GPU", 8),
    "zero2": ("DEEPSPEED", 8),
    "zero3": ("DEEPSPEED", 8),
    "fsdp2": ("FSDP", 8),
    "multi_cpu": ("MULTI_GPU", 2),  # torchrun launcher; the processes run on CPU (see the file's comment)
    # CPU rehearsals of the sharded launches (tests/test_sharded.py, tests/test_train_sharded.py)
    "zero2_cpu": ("DEEPSPEED", 2),
    "zero3_cpu": ("DEEPSPEED", 2),
    "fsdp2_cpu": ("FSDP", 2),
}


def test_every_expected_config_exists():
    found = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_config_loads_with_accelerates_own_loader(name):
    config = load_config_from_file(os.path.join(CONFIG_DIR, f"{name}.yaml"))
    distributed_type, processes = EXPECTED[name]
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    assert config.num_processes == processes and config.num_machines == 1
    if name.startswith("zero"):
        stage = int(name[4])
        if "deepspeed_config_file" in config.deepspeed_config:  # zero3_cpu: the JSON next to it
            with open(os.path.join(CONFIG_DIR, config.deepspeed_config["deepspeed_config_file"])) as f:
                ds = json.load(f)
            assert ds["zero_optimization"]["stage"] == stage
            # Small models must be partitioned too: HF fills "auto" with 10 x hidden_size (DeepSpeed's default: 1e5).
            assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == "auto"
        else:
            assert config.deepspeed_config["zero_stage"] == stage
    if name.startswith("fsdp2"):
        assert config.fsdp_config["fsdp_version"] == 2
    if name.endswith("_cpu"):
        # torchrun starts the processes (use_cpu in the accelerate config would mean one process or mpirun); no
        # mixed precision on CPU.
        assert not config.use_cpu and config.mixed_precision in ("no", None)  # None: the DeepSpeed JSON decides
