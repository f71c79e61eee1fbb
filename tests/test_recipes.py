"""Every recipe parses with the real `catto train` parser, says how to launch itself, and has a DPO twin one flag
apart."""

from __future__ import annotations

import glob
import os
import shlex

import pytest
import yaml

from catto import train as catto_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"),
                                                             recursive=True))


@pytest.fixture
def bf16_gpu(monkeypatch):
    """GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a bf16 GPU (CI): parse them as
    on one. Nothing else of the parser is replaced."""
    from transformers import training_args

    monkeypatch.setattr(training_args, "is_torch_bf16_gpu_available", lambda: True)


def test_there_are_recipes_for_every_model_and_setup():
    expected = {f"recipes/{m}/{method}-{setup}.yaml" for m in ("qwen3-4b", "qwen2.5-7b-instruct",
                                                               "llama-3.1-8b-instruct")
                for method in ("catto", "dpo") for setup in ("zero3", "qlora")}
    expected |= {"recipes/demo/catto.yaml", "recipes/demo/dpo.yaml"}
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_parses(recipe, bf16_gpu, monkeypatch):
    monkeypatch.chdir(ROOT)
    script_args, training_args, model_args = catto_train.parse_args(["--config", recipe])
    assert model_args.model_name_or_path
    assert (script_args.mcqa_data is None) != (script_args.dataset_name is None)
    if "qlora" in recipe:
        assert model_args.load_in_4bit and model_args.use_peft
    if "zero3" in recipe:
        assert not model_args.load_in_4bit and not model_args.use_peft  # full fine-tune
    assert (training_args.catto_alpha == 0) == os.path.basename(recipe).startswith("dpo")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_starts_with_its_launch_command(recipe):
    with open(os.path.join(ROOT, recipe)) as f:
        first = f.readline()
    assert first.startswith("# catto train "), first
    argv = shlex.split(first[2:])[2:]
    launch, script = catto_train.split_launch_args(argv)
    assert script[:2] == ["--config", recipe]
    if "--accelerate_config" in launch:
        config = catto_train.resolve_accelerate_config(launch[launch.index("--accelerate_config") + 1])
        assert os.path.isfile(config)
        if "zero3" in recipe:
            assert os.path.basename(config) == "zero3.yaml"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if os.path.basename(r).startswith("catto")])
def test_dpo_twin_is_one_flag_apart(recipe):
    twin = os.path.join(os.path.dirname(recipe), os.path.basename(recipe).replace("catto", "dpo", 1))
    with open(os.path.join(ROOT, recipe)) as f:
        a = yaml.safe_load(f)
    with open(os.path.join(ROOT, twin)) as f:
        b = yaml.safe_load(f)
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing == {"catto_alpha", "output_dir"}
    assert a["catto_alpha"] > 0 and b["catto_alpha"] == 0
