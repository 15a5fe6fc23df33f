"""Launched by test_expert_parallel.py with `torchrun --nproc_per_node 2`: a tiny MoE checkpoint loaded with
`DistributedConfig(tp_size=2, ep_size=2, ep_implementation=IMPL)` on CPU (gloo) next to the unsharded model;
each rank writes OUT/rank{r}.json."""

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig

import hf_llmarch


def save_tiny_moe(path: str):
    torch.manual_seed(0)
    config = hf_llmarch.load_preset(
        "mixtral-tiny", hidden_size=32, moe_intermediate_size=32, layer_pattern="(attn/moe)x2", num_attention_heads=2,
        num_key_value_heads=2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(path)


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A TP-sharded tensor gathered from every rank (a collective: all ranks call it in the same order)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def expert_diffs(full, sharded, rank: int) -> dict:
    """Each rank's expert weights and grads against its block of rows of the unsharded ones."""
    full_params, weight_diff, grad_diff, local_counts = dict(full.named_parameters()), 0.0, 0.0, []
    for name, param in sharded.named_parameters():
        if ".experts." in name:
            n = local(param).shape[0]
            rows = slice(rank * n, (rank + 1) * n)
            local_counts.append(n)
            weight_diff = max(weight_diff, (local(param) - full_params[name][rows]).abs().max().item())
            grad_diff = max(grad_diff, (local(param.grad) - full_params[name].grad[rows]).abs().max().item())
    return {"local_experts": local_counts, "max_expert_weight_diff": weight_diff, "max_expert_grad_diff": grad_diff}


def dense_grad_diff(full, sharded) -> float:
    full_params = dict(full.named_parameters())
    return max(
        (whole(p.grad) - full_params[n].grad).abs().max().item()
        for n, p in sharded.named_parameters()
        if ".experts." not in n
    )


def check(path: str, rank: int, implementation: str) -> dict:
    full = AutoModelForCausalLM.from_pretrained(path).eval()
    # ep_size must divide fsdp_size * tp_size, and tp_size=2 needs a non-empty tp_plan (transformers
    # refuses tp_plan={}): the dense modules follow the config's TP plan, the experts its EP plan.
    config = DistributedConfig(tp_size=2, ep_size=2, ep_implementation=implementation)
    sharded = AutoModelForCausalLM.from_pretrained(path, distributed_config=config).eval()
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logit_diff = (sharded(ids).logits - full(ids).logits).abs().max().item()
    same_tokens = torch.equal(
        sharded.generate(ids, max_new_tokens=6, do_sample=False), full.generate(ids, max_new_tokens=6, do_sample=False)
    )
    losses = [model(ids, labels=ids).loss for model in (full, sharded)]
    for loss in losses:
        loss.backward()
    return {
        "max_logit_diff": logit_diff,
        "same_greedy_tokens": same_tokens,
        "loss_diff": abs(losses[0].item() - losses[1].item()),
        "max_dense_grad_diff": dense_grad_diff(full, sharded),
        "tp_sharded_dense": sum(hasattr(p, "to_local") for n, p in sharded.named_parameters() if ".experts." not in n),
        "num_experts": full.config.num_experts,
    } | expert_diffs(full, sharded, rank)


def main(out_dir: str, implementation: str):
    dist.init_process_group("gloo")
    rank, path = dist.get_rank(), os.path.join(out_dir, "moe")
    if rank == 0:
        save_tiny_moe(path)
    dist.barrier()
    result = check(path, rank, implementation)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
