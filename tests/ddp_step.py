"""Two optimizer steps of CATTODPOTrainer on a tiny model; rank 0 writes the log history as JSON.

Run once with `torchrun --nproc_per_node 2 tests/ddp_step.py OUT --batch 2 --ga 1` (DDP over gloo on CPU) and once
with `python tests/ddp_step.py OUT --batch 2 --ga 2`: both see the same 4 sequences per step.
"""

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from tiny import make_model, make_tokenizer, preference_dataset  # noqa: E402

from catto import CATTOConfig, CATTODPOTrainer  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ga", type=int, default=1)
    args = parser.parse_args()
    model = make_model("llama", seed=0)
    config = CATTOConfig(
        output_dir=os.path.join(os.path.dirname(args.out), "run"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.ga, max_steps=2, learning_rate=1e-2, logging_steps=1, bf16=False,
        report_to=[], save_strategy="no", gradient_checkpointing=False, seed=0, catto_alpha=0.5, use_cpu=True,
        disable_tqdm=True,
    )
    trainer = CATTODPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config,
                              train_dataset=preference_dataset(16), processing_class=make_tokenizer())
    trainer.train()
    if trainer.accelerator.is_main_process:
        with open(args.out, "w") as f:
            json.dump({"world_size": trainer.accelerator.num_processes, "log_history": trainer.state.log_history}, f)
    trainer.end()
    # Leave before `trainer` is freed: destroying the DDP reducer can deadlock in PyTorch's gloo backend (its worker
    # thread waits for the GIL to free a finished async allgather while the main thread, holding the GIL, joins it;
    # seen with torch 2.13 on CPU, at random). Everything the test reads was written above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
