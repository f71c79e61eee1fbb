"""A few plain-SGD steps of `CATTODPOTrainer` (or `trl.DPOTrainer`) on a tiny model, under any launcher.

Launched by `tests/test_sharded.py`: once as one process with gradient accumulation, once per sharded layout with 2
processes (DeepSpeed ZeRO-2/3 over gloo with `DS_ACCELERATOR=cpu`, FSDP2 over gloo, plain DDP), on the same data
and seed. Rank 0 writes `OUT.json` (the log history and what the layout really was: wrapper types, the LM head's
local shard) and `OUT.safetensors` (every final weight, gathered to full tensors).

    python tests/sharded_step.py OUT --batch 2 --ga 2                       # the one-process reference
    accelerate launch --config_file accelerate_configs/zero3_cpu.yaml --num_processes 2 \\
        tests/sharded_step.py OUT --batch 2 --ga 1 --layout zero3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny import make_model, make_tokenizer, preference_dataset  # noqa: E402

LAYOUTS = ("single", "ddp", "zero2", "zero3", "fsdp2", "fsdp2_head")


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("out", help="output prefix: OUT.json and OUT.safetensors")
    p.add_argument("--layout", choices=LAYOUTS, default="single")
    p.add_argument("--trainer", choices=("catto", "trl"), default="catto")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--no-catto-metrics", action="store_true",
                   help="catto_log_metrics=False (with --alpha 0: TRL's own pass)")
    p.add_argument("--tied", action="store_true")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--gc", action="store_true", help="gradient checkpointing")
    p.add_argument("--prefix-sharing", action="store_true", help="CATTOConfig(prefix_sharing=True)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ga", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    return p.parse_args()


def lm_head_facts(trainer) -> dict:
    """What the sharded engine did to the LM head (read outside any forward, i.e. in its resting state)."""
    model = trainer.model_wrapped
    facts = {"wrapper": type(model).__module__ + "." + type(model).__name__}
    inner = trainer.accelerator.unwrap_model(model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    weight = head.weight
    facts["head_full_shape"] = [inner.config.vocab_size, inner.config.hidden_size]
    facts["head_is_embedding"] = weight is inner.get_input_embeddings().weight
    if hasattr(weight, "ds_numel"):  # DeepSpeed ZeRO-3
        facts["zero3_numel"] = int(weight.ds_numel)
        facts["zero3_local_numel"] = int(weight.ds_tensor.numel())
        facts["zero3_visible_numel"] = int(weight.numel())
    from torch.distributed.tensor import DTensor

    if isinstance(weight, DTensor):  # FSDP2
        facts["dtensor_local_shape"] = list(weight.to_local().shape)
        facts["dtensor_placements"] = [str(p) for p in weight.placements]
    from torch.distributed.fsdp import FSDPModule

    facts["model_is_fsdp"] = isinstance(inner, FSDPModule)
    facts["head_is_fsdp_unit"] = isinstance(head, FSDPModule)
    norm = inner.model.norm
    facts["head_unit_has_final_norm"] = (isinstance(head, FSDPModule) and isinstance(norm, FSDPModule)
                                         and head._get_fsdp_state() is norm._get_fsdp_state())
    facts["gradient_checkpointing"] = bool(inner.is_activation_checkpointing)
    facts["ds_stage"] = (trainer.accelerator.state.deepspeed_plugin.zero_stage
                         if trainer.is_deepspeed_enabled else None)
    facts["distributed_type"] = str(trainer.accelerator.distributed_type)
    return facts


def shard_head_alone(model) -> None:
    """`fsdp2_head`: the LM head (with the input embedding when tied) as an FSDP unit of its own, before accelerate
    wraps the rest (accelerate's default puts it in one unit with the final norm)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    fully_shard([embed, head] if head.weight is embed.weight else head, mesh=mesh)


def main():
    args = parse()
    if args.layout == "fsdp2_head":
        # The head is sharded here, before accelerate; its rank-0 broadcast of full weights expects unsharded ones.
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    from catto.train.distributed import check_launch, prepare_cpu_rehearsal

    rehearsal = prepare_cpu_rehearsal()  # before any training argument: DS_ACCELERATOR, FSDP on CPU
    expected = {"single": None, "ddp": None, "zero2": "deepspeed", "zero3": "deepspeed"}.get(args.layout, "fsdp")
    assert rehearsal == expected, (args.layout, rehearsal)
    from catto import CATTOConfig, CATTODPOTrainer

    model = make_model("llama", seed=0, tie_word_embeddings=args.tied)
    ref_model = None if args.lora else copy.deepcopy(model)
    config_cls = CATTOConfig
    kwargs = dict(catto_alpha=args.alpha, catto_log_metrics=not args.no_catto_metrics,
                  prefix_sharing=args.prefix_sharing)
    if args.trainer == "trl":
        from trl import DPOConfig, DPOTrainer

        config_cls, kwargs = DPOConfig, {}
    deepspeed = args.layout.startswith("zero")
    config = config_cls(
        output_dir=args.out + ".run", per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.ga,
        max_steps=args.steps, learning_rate=args.lr, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=1e6, logging_steps=1, bf16=False, report_to=[], save_strategy="no",
        gradient_checkpointing=args.gc, seed=0, disable_tqdm=True, dataloader_drop_last=True,
        # DeepSpeed on CPU: accelerate must not be told `use_cpu` (it would drop the DeepSpeed plugin), and the
        # process group must be gloo, or accelerate counts one process and the batch sizes disagree across ranks.
        use_cpu=not deepspeed, ddp_backend="gloo" if deepspeed else None,
        **kwargs,
    )
    check_launch(config)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM")
    if args.layout == "fsdp2_head":
        config.device  # noqa: B018 - sets up the gloo process group
        shard_head_alone(model)
    trainer_cls = CATTODPOTrainer if args.trainer == "catto" else DPOTrainer
    trainer = trainer_cls(model=model, ref_model=ref_model, args=config, train_dataset=preference_dataset(16),
                          processing_class=make_tokenizer(), peft_config=peft_config)
    trainer.train()
    facts = lm_head_facts(trainer)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        weights = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
        if args.tied:
            weights.pop("lm_head.weight", None)
            weights.pop("base_model.model.lm_head.weight", None)
        save_file(weights, args.out + ".safetensors")
        with open(args.out + ".json", "w") as f:
            json.dump({"world_size": trainer.accelerator.num_processes, "facts": facts, "args": vars(args),
                       "log_history": trainer.state.log_history}, f, indent=1)
    trainer.accelerator.wait_for_everyone()
    distributed = trainer.accelerator.num_processes > 1
    trainer.end()
    if distributed:
        # As in tests/ddp_step.py: leave before the trainer is freed (gloo teardown can deadlock at random).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
