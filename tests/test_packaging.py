"""The installed package finds its own accelerate configs and recipes (importlib.resources), from a wheel installed
into a fresh virtual environment and run from another folder: no checkout, no `sys.prefix/share` guesswork."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_in_a_fresh_venv_ships_configs_and_recipes(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("catto-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # torch, trl, ... from the system
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site,
                    str(wheel)], check=True, capture_output=True, text=True)
    code = ("import catto, catto.train.launcher as L, catto.train.recipes as R; "
            "print(catto.__file__); print(L.resolve_accelerate_config('zero3')); print(R.recipe_path('demo/catto')); "
            "print(','.join(L.accelerate_config_names()))")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout.splitlines()
    package, zero3, recipe, names = out
    assert package.startswith(site) and zero3.startswith(site) and recipe.startswith(site)
    assert zero3.endswith(os.path.join("catto", "accelerate_configs", "zero3.yaml"))
    assert recipe.endswith(os.path.join("catto", "recipes", "demo", "catto.yaml"))
    assert {"single_process", "ddp", "zero2", "zero3", "fsdp2", "multi_cpu"} <= set(names.split(","))
