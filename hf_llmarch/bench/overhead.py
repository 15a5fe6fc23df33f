"""overhead suite: host-side cost per step of `llmarch_dense` vs `LlamaForCausalLM` (same weights,
parity checked first) at a width where kernels cost almost nothing: the regime of small-batch
GPU decode, which is bound by op launches and Python, not by FLOPs."""

import argparse

import torch

from .. import compat
from .dense import checked_dense_pair, dense_calls
from .harness import count_ops, interleave, median, train_step
from .report import metric
from .settings import pick

OVERHEAD_OPS_GOAL = ("<=", 1.0)  # op counts are exact: never more launches than transformers
OVERHEAD_TIME_GOAL = ("<=", 1.05)  # host time repeats only to a few % on a shared CPU
OVERHEAD_SHAPE = dict(hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, batch=1)  # kernels cost ~nothing


def _overhead_calls(model, s, device) -> dict:
    """One cached decode step after a prefill of `s.prompt` tokens, and one train step (1 x 32)."""
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, s.vocab, (1, s.prompt), generator=gen).to(device)
    train_ids = torch.randint(3, s.vocab, (1, 32), generator=gen).to(device)
    model.eval()
    with torch.no_grad():
        cache = compat.output_cache(model(input_ids=prompt, use_cache=True))
    mask = torch.ones(1, s.prompt + 1, dtype=torch.long, device=device)

    @torch.no_grad()
    def decode_step():  # counted once: the cache grows by the one token
        model.eval()
        model(input_ids=prompt[:, -1:], attention_mask=mask, use_cache=True, **compat.cache_kwargs(cache))

    return {"decode": decode_step, "train": lambda: train_step(model, train_ids)}


def bench_overhead(s) -> dict:
    t = argparse.Namespace(**{**vars(s), **OVERHEAD_SHAPE})
    device = torch.device(s.device)
    res = {"title": "host overhead per step: llmarch_dense vs LlamaForCausalLM at a tiny width"}
    res.update(columns=["ours", "transformers"], setup={**pick(t, ("layers", "prompt", "new_tokens")), **OVERHEAD_SHAPE})
    res["setup_text"] = (
        f"hidden {t.hidden}, {t.layers} layers, {t.heads} heads / {t.kv_heads} kv heads, vocab {t.vocab}: kernels are "
        f"negligible, so this measures dispatch and Python. aten ops counted with a TorchDispatchMode; generate batch 1, "
        f"prompt {t.prompt}, {t.new_tokens} new tokens, {s.attn}, {s.device}, fp32, median of {s.repeats}"
    )
    ours, ref, failed = checked_dense_pair("overhead", t, device, res)
    if failed:
        return failed
    models = {"ours": ours, "transformers": ref}
    ops = {what: {n: count_ops(_overhead_calls(m, t, device)[what]) for n, m in models.items()} for what in ("decode", "train")}
    decode_fns = {n: dense_calls(m, t, device)["decode"] for n, m in models.items()}
    decode = interleave("overhead", "generate", decode_fns, s.repeats, device)
    ms_per_token = {n: median(times) * 1e3 / (t.batch * t.new_tokens) for n, times in decode.items()}
    pair = ("ours", "transformers")
    res["metrics"] = {
        "aten ops per decode step": metric("ops", ops["decode"], pair, OVERHEAD_OPS_GOAL),
        "aten ops per train step": metric("ops", ops["train"], pair, OVERHEAD_OPS_GOAL),
        "generate host time per token": metric("ms", ms_per_token, pair, OVERHEAD_TIME_GOAL),
    }
    res["raw"] = {"decode_s": decode}
    return {**res, "status": "ok"}
