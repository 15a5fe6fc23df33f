"""Launched by test_ddp.py with `torchrun --nproc_per_node 2`: Trainer DDP on CPU (gloo).
Writes each rank's losses and a parameter checksum to OUT/rank{N}.json."""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import hf_llmarch

# Run as a script by torchrun: make the tests' shared helpers importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import CPU_TRAINING, RepeatTask, logged_losses  # noqa: E402


def main(out_dir: str, preset: str):
    torch.manual_seed(0)
    config = hf_llmarch.load_preset(preset, hidden_size=64, intermediate_size=128, moe_intermediate_size=64)
    model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "trainer"),
        max_steps=20,
        per_device_train_batch_size=4,
        ddp_backend="gloo",
        **CPU_TRAINING,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RepeatTask())
    trainer.train()
    rank = trainer.args.process_index
    result = {
        "world_size": trainer.args.world_size,
        "losses": logged_losses(trainer),
        "checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    # Both ranks have written their results; leave without tearing gloo down. Exiting with the group
    # alive can abort a rank ("terminate called without an active exception"), and destroy_process_group
    # once hung a rank at exit for the whole torchrun timeout. os._exit runs no teardown at all.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
