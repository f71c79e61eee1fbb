import glob
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
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
