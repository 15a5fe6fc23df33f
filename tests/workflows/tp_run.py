"""Launched by test_ddp.py with `torchrun --nproc_per_node 2`: `from_pretrained(tp_plan="auto")`
on CPU (gloo) for each family; writes OUT/tp.json with what rank 0 saw."""

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

import hf_llmarch  # noqa: F401  (registers the model types)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import tiny_model  # noqa: E402


def check(family: str, out_dir: str) -> dict:
    path = os.path.join(out_dir, family)
    if dist.get_rank() == 0:
        tiny_model(family).save_pretrained(path)
    dist.barrier()
    full = AutoModelForCausalLM.from_pretrained(path).eval()
    sharded = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto").eval()
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (sharded(ids).logits - full(ids).logits).abs().max().item()
    same_tokens = torch.equal(
        sharded.generate(ids, max_new_tokens=6, do_sample=False), full.generate(ids, max_new_tokens=6, do_sample=False)
    )
    sharded_names = sorted(n for n, p in sharded.named_parameters() if hasattr(p, "to_local"))
    return {"max_logit_diff": diff, "same_greedy_tokens": same_tokens, "sharded": sharded_names}


def main(out_dir: str):
    dist.init_process_group("gloo")
    results = {family: check(family, out_dir) for family in ("llama", "gpt2", "hybrid")}
    if dist.get_rank() == 0:
        with open(os.path.join(out_dir, "tp.json"), "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
