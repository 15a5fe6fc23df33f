"""Launched by test_ddp.py with `torchrun --nproc_per_node 2`: FSDP2 (`fully_shard`) on CPU, gloo.

Every block named in `_no_split_modules` becomes its own shard unit, as accelerate does on GPUs
(the Trainer runs FSDP only on accelerators, so this drives FSDP directly). Rank r trains on
slice r of each global batch. Rank 0 then trains an unsharded copy on the whole batches: with
equal-sized slices the averaged sharded gradients equal the whole-batch ones, so both must end
with the same weights. Writes OUT/fsdp.json and the gathered checkpoint to OUT/final."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

import hf_llmarch

STEPS, BATCH, LENGTH = 8, 8, 32


def build(preset: str):
    torch.manual_seed(0)
    # Router losses are non-linear in per-batch statistics, so they would differ between a slice
    # and the whole batch; with them off the gradients must agree exactly.
    config = hf_llmarch.load_preset(
        preset, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
        router_aux_loss_coef=0.0, router_z_loss_coef=0.0,
    )
    return AutoModelForCausalLM.from_config(config)


def shard(model):
    unit_names = set(model._no_split_modules)
    for module in model.modules():
        if type(module).__name__ in unit_names:
            fully_shard(module)
    fully_shard(model)
    return model


def batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, 40, (BATCH, LENGTH), generator=gen) for _ in range(STEPS)]


def train(model, data) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def main(out_dir: str, preset: str):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = shard(build(preset))
    per_rank = BATCH // world
    losses = train(model, [ids[rank * per_rank : (rank + 1) * per_rank] for ids in batches()])
    sharded = sum(hasattr(p, "to_local") for p in model.parameters())
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        reference = build(preset)
        reference_losses = train(reference, batches())
        ref_state = reference.state_dict()
        max_diff = max((full[k] - ref_state[k]).abs().max().item() for k in full)
        reference.load_state_dict(full, strict=False)  # tied lm_head follows embed_tokens
        reference.save_pretrained(os.path.join(out_dir, "final"))
        result = {
            "world_size": world, "sharded_params": sharded, "losses": losses, "reference_losses": reference_losses,
            "max_weight_diff": max_diff, "keys": sorted(full), "reference_keys": sorted(ref_state),
        }
        with open(os.path.join(out_dir, "fsdp.json"), "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
