"""Repro for docs/upstream.md: TRL's fused LM head under FSDP2 with the LM head as an FSDP unit of its own.

    torchrun --nproc_per_node 2 docs/repro_trl_fsdp2_head.py            # TRL 1.16 as is: wrong LM-head gradient
    torchrun --nproc_per_node 2 docs/repro_trl_fsdp2_head.py --fixed    # with the fix: exact

CPU only (gloo), a 1-layer random Llama, no data: each rank scores its own 2 sequences; the one-process reference
averages the per-rank losses, which is what data-parallel training computes.
"""

import copy
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=False)
model = LlamaForCausalLM(config)
reference = copy.deepcopy(model)
add_fused_lm_head(model)
add_fused_lm_head(reference)
ids = torch.randint(0, 64, (2 * world, 8), generator=torch.Generator().manual_seed(1))
batches = ids.split(2)

# One process: the mean of the per-rank losses.
loss = sum(reference(input_ids=b, labels=b, fused_lm_head=True).loss for b in batches) / world
loss.backward()

fully_shard(model.lm_head)  # the LM head as an FSDP unit of its own (e.g. a wrap policy that lists it)
fully_shard(model)
if "--fixed" in sys.argv:
    # The fix, as it would sit in TRL's `_fused_forward` before `weight, bias = lm_head.weight, lm_head.bias`:
    # gather the head through FSDP, so that FSDP reduce-scatters (and averages) its gradient.
    fused_forward = model.forward

    def forward(*args, **kwargs):
        head = model.get_output_embeddings()
        if isinstance(head, FSDPModule):
            head.unshard()
        return fused_forward(*args, **kwargs)

    model.forward = forward
model(input_ids=batches[rank], labels=batches[rank], fused_lm_head=True).loss.backward()

for name, param in model.named_parameters():
    if name in ("lm_head.weight", "model.norm.weight"):
        error = (param.grad.full_tensor() - dict(reference.named_parameters())[name].grad).abs().max().item()
        if rank == 0:
            print(f"{name}: max |grad - one-process grad| = {error:.2e}")
dist.destroy_process_group()
