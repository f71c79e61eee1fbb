"""Sharded training on CPU processes: FSDP2 and DeepSpeed ZeRO-2/3 rehearsals of a multi-GPU launch.

Both engines run on CPU over gloo, so a laptop or CI can run the same `accelerate launch` as a GPU node, with the same
sharding, on a small model (`accelerate_configs/{zero2,zero3,fsdp2}_cpu.yaml`). Two accelerate 1.16 behaviours stand
in the way, and this module handles them:

- **FSDP on CPU.** `AcceleratorState` only honours an FSDP plugin when the processes are `MULTI_GPU` (or another
  accelerator); with `use_cpu` they are `MULTI_CPU` and accelerate silently drops the plugin and wraps the model in
  plain DDP. `enable_cpu_fsdp()` lets the FSDP branch run for `MULTI_CPU` processes too; everything after it
  (`fully_shard` with accelerate's wrap policy, state-dict gathering, `clip_grad_norm_`) is accelerate's own code.
- **DeepSpeed on CPU.** DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`) runs ZeRO-2/3 over gloo, but accelerate
  must not be told `use_cpu` (that drops the DeepSpeed plugin too), and the process group must be named (`gloo`):
  with no backend accelerate counts one process while DeepSpeed runs two, and the batch sizes disagree across ranks.

`check_launch` turns every combination that would fail late, or silently train something else, into one line that
names the field and the fix; `catto train` runs it before launching (from the accelerate config) and again in each
launched process.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["LaunchError", "accelerate_config_env", "check_engine", "check_launch", "enable_cpu_fsdp",
           "prepare_cpu_rehearsal", "requested_engine"]


class LaunchError(ConfigError):
    """A launch that cannot work as configured; the message names the field and the fix."""


def _true(env: Mapping[str, str], name: str) -> bool:
    return str(env.get(name, "false")).strip().lower() in ("1", "true", "yes")


def _deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def requested_engine(env: Mapping[str, str] | None = None) -> str | None:
    """`"deepspeed"`, `"fsdp"` or None: the engine `accelerate launch` asked this process for (from its environment)."""
    env = os.environ if env is None else env
    if _true(env, "ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _true(env, "ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def accelerate_config_env(config: Mapping) -> dict[str, str]:
    """The part of the environment `accelerate launch --config_file` would export that `check_launch` reads."""
    kind = str(config.get("distributed_type", "NO")).split(".")[-1].upper()
    if kind == "DEEPSPEED":
        return {"ACCELERATE_USE_DEEPSPEED": "true"}
    if kind == "FSDP":
        version = (config.get("fsdp_config") or {}).get("fsdp_version", 1)
        return {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": str(version)}
    return {}


def enable_cpu_fsdp() -> None:
    """Keep accelerate's FSDP plugin when the processes run on CPU (`use_cpu`, gloo); idempotent.

    accelerate 1.16 decides in `AcceleratorState.__init__` whether the FSDP plugin applies, and only does so for
    accelerator-backed process groups. This wraps that one decision: for `MULTI_CPU` processes that asked for FSDP
    (an FSDP accelerate config, or an `fsdp_plugin`), the state is built as if they were `MULTI_GPU` (the device stays
    the CPU the processes already chose), so accelerate switches them to `DistributedType.FSDP` and from then on runs
    its own FSDP code. Other processes are untouched. Call it before the trainer (or `Accelerator`) is created.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_catto_cpu_fsdp", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind_partial(self, *args, **kwargs).arguments
        wants_fsdp = bound.get("fsdp_plugin") is not None or _true(os.environ, "ACCELERATE_USE_FSDP")
        partial = PartialState._shared_state
        flip = wants_fsdp and partial.get("distributed_type") == DistributedType.MULTI_CPU
        if flip:
            partial["distributed_type"] = DistributedType.MULTI_GPU
        try:
            original(self, *args, **kwargs)
        finally:
            if flip and partial.get("distributed_type") == DistributedType.MULTI_GPU:
                partial["distributed_type"] = DistributedType.MULTI_CPU  # the FSDP branch was not taken

    __init__._catto_cpu_fsdp = True
    AcceleratorState.__init__ = __init__


def prepare_cpu_rehearsal(env: dict | None = None) -> str | None:
    """In a process started by `accelerate launch`, before any training argument is built: ready a CPU rehearsal.

    DeepSpeed without a GPU: sets `DS_ACCELERATOR=cpu` when unset (DeepSpeed reads it once, on import); the training
    arguments must then say `use_cpu: false` and `ddp_backend: gloo` (`catto train` adds the latter). FSDP:
    `enable_cpu_fsdp()` (it only acts on `use_cpu` processes). Returns the engine rehearsed on CPU (`"deepspeed"`,
    `"fsdp"`) or None.
    """
    env = os.environ if env is None else env
    engine = requested_engine(env)
    if engine == "deepspeed" and not _has_gpu():
        env.setdefault("DS_ACCELERATOR", "cpu")
        return engine
    if engine == "fsdp":
        enable_cpu_fsdp()
        return engine if not _has_gpu() else None
    return None


def check_launch(training_args, env: Mapping[str, str] | None = None, gpu: bool | None = None) -> None:
    """Check training arguments against the engine `accelerate launch` asks for (`env`: its environment, or
    `accelerate_config_env(config)` before launching). Raises `LaunchError` with one line naming the field and the
    fix when the run would fail later or, worse, silently train with plain DDP or as unconnected processes."""
    env = os.environ if env is None else env
    gpu = _has_gpu() if gpu is None else gpu
    engine = requested_engine(env)
    if engine == "deepspeed":
        if not _deepspeed_installed():
            raise LaunchError("the accelerate config uses DeepSpeed (distributed_type: DEEPSPEED), which is not "
                              "installed. Fix: pip install 'catto[deepspeed]', or pick another --accelerate_config.")
        if training_args.use_cpu:
            raise LaunchError("use_cpu: true makes accelerate drop DeepSpeed and train with plain DDP. Fix: set "
                              "use_cpu: false (without a GPU, DeepSpeed's CPU accelerator runs the processes).")
        if not gpu:
            if env.get("DS_ACCELERATOR", "cpu") != "cpu":
                raise LaunchError(f"DS_ACCELERATOR={env['DS_ACCELERATOR']!r} on a machine without a GPU. Fix: unset "
                                  "it or set DS_ACCELERATOR=cpu.")
            if training_args.ddp_backend not in (None, "gloo"):
                raise LaunchError(f"ddp_backend: {training_args.ddp_backend!r} cannot connect DeepSpeed's CPU "
                                  "processes. Fix: set ddp_backend: gloo (catto train sets it when it is unset).")
            if training_args.bf16 or training_args.fp16:
                raise LaunchError("bf16/fp16: true with DeepSpeed on CPU. Fix: set bf16: false and fp16: false for "
                                  "the CPU rehearsal (mixed precision is for the GPU run).")
    elif engine == "fsdp":
        if not gpu and not training_args.use_cpu:
            raise LaunchError("use_cpu: false with an FSDP accelerate config on a machine without a GPU: the processes "
                              "would not be connected. Fix: set use_cpu: true to rehearse FSDP2 on CPU processes.")
        if training_args.use_cpu and str(env.get("FSDP_VERSION", "1")) != "2":
            raise LaunchError("FSDP on CPU processes runs FSDP2 only. Fix: set fsdp_version: 2 in the accelerate "
                              "config (accelerate_configs/fsdp2_cpu.yaml).")


def check_engine(accelerator, env: Mapping[str, str] | None = None) -> str:
    """After the trainer is built: fail if accelerate set up another engine than the launch asked for (the silent
    fallbacks to DDP above); returns a one-line description of the engine, e.g. `DeepSpeed ZeRO-3, 2 processes, cpu`.
    """
    env = os.environ if env is None else env
    kind = str(accelerator.distributed_type).split(".")[-1]
    engine = requested_engine(env)
    expected = {"deepspeed": "DEEPSPEED", "fsdp": "FSDP"}.get(engine)
    if expected is not None and kind != expected:
        example = {"deepspeed": "zero3_cpu.yaml", "fsdp": "fsdp2_cpu.yaml"}[engine]
        raise LaunchError(f"the accelerate config asks for {expected} but accelerate set up {kind} instead. Fix: see "
                          f"accelerate_configs/{example} for the settings a CPU rehearsal needs.")
    if kind == "DEEPSPEED":
        kind = f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    elif kind == "FSDP":
        kind = f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    return f"{kind}, {accelerator.num_processes} process(es), {accelerator.device.type}"
