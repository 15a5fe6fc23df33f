"""hybrid suite: a retention/attention hybrid vs a dense model vs a retention-only model of the
same width and depth (all ours, so no parity to check): forward+backward tokens/s and per-token
decode time at several contexts, and how flat retention's decode time stays as context grows."""

import torch

from .. import compat
from .harness import decode_step_times, interleave, log, median, train_step
from .report import metric
from .settings import DTYPES, pick

HYBRID_DECODE_GOAL = ("<=", 1.0)  # hybrid no slower than dense at the longest context
FLAT_DECODE_GOAL = ("<", 1.10)  # retention decode at the longest vs the shortest context
HYBRID_SETUP = (
    *("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "experts", "top_k"),
    *("contexts", "decode_steps", "decode_batch", "hybrid_pattern"),
)


def _hybrid_models(s, device, dtype) -> dict:
    """hybrid / dense / retention-only of one width and depth; MoE experts sized so the active
    FFN parameters per token match the dense MLP (top_k experts of intermediate/top_k)."""
    from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM

    patterns = {
        "hybrid": s.hybrid_pattern,
        "dense": f"(attn/mlp)x{s.layers}",
        "retention": f"(retention/mlp)x{s.layers}",
    }
    common = dict(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        moe_intermediate_size=max(1, s.intermediate // s.top_k),
        num_experts=s.experts,
        num_experts_per_tok=s.top_k,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=max(4096, max(s.contexts) + s.decode_steps * (s.repeats + 1)),
        attn_implementation=s.attn,
    )
    models = {}
    for i, (name, pattern) in enumerate(patterns.items()):
        torch.manual_seed(i)
        cfg = LlmArchHybridConfig(**common, layer_pattern=pattern)
        models[name] = LlmArchHybridForCausalLM(cfg).to(device=device, dtype=dtype)
    return models


@torch.no_grad()
def _prefill(model, s, context: int, device) -> dict:
    model.eval()
    ids = torch.randint(3, s.vocab, (s.decode_batch, context), device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return {"cache": compat.output_cache(out), "token": out.logits[:, -1:].argmax(-1), "cache_arg": compat.CACHE_ARG}


def _hybrid_decode(s, models: dict, context: int, device) -> dict[str, float]:
    """Median seconds per decode step at `context`, steps interleaved model by model."""
    states = {name: _prefill(m, s, context, device) for name, m in models.items()}
    for name, m in models.items():
        decode_step_times(m, states[name], 1, device)  # warm-up
    times = {name: [] for name in models}
    for r in range(s.repeats):
        for name, m in models.items():
            steps = decode_step_times(m, states[name], s.decode_steps, device)
            times[name] += steps
            what = f"decode @{context}"
            log.info(f"[hybrid] {what:<24} {name:<18} {r + 1}/{s.repeats} {median(steps) * 1e3:10.3f} ms/token")
    return {name: median(t) for name, t in times.items()}


def _hybrid_context(s, models: dict, context: int, device, raw: dict) -> dict:
    """Train and decode rows at one context; fills raw['train_s'] and raw['decode_s_per_token']."""
    ids = torch.randint(3, s.vocab, (1, context), device=device)
    fns = {name: (lambda m=m: train_step(m, ids)) for name, m in models.items()}
    train = raw["train_s"][context] = interleave(
        "hybrid", f"train fwd+bwd @{context}", fns, s.repeats, device, lambda t: f"{context / t:,.0f} tok/s"
    )
    decode = raw["decode_s_per_token"][context] = _hybrid_decode(s, models, context, device)
    decode_goal = HYBRID_DECODE_GOAL if context == max(s.contexts) else None
    pair = ("hybrid", "dense")
    return {
        f"train tokens/s @{context}": metric("tok/s", {n: context / median(t) for n, t in train.items()}, pair),
        f"decode ms/token @{context}": metric("ms", {n: t * 1e3 for n, t in decode.items()}, pair, decode_goal),
    }


def bench_hybrid(s) -> dict:
    from ..mixers import MIXER_CLASSES

    res = {"title": "hybrid vs dense vs retention-only (same width and depth)"}
    res["columns"] = ["hybrid", "dense", "retention"]
    if "retention" not in MIXER_CLASSES:
        return {**res, "status": "skipped", "reason": "mixer 'retention' is not in hf_llmarch.mixers.MIXER_CLASSES yet"}
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res["setup"] = pick(s, HYBRID_SETUP)
    res["setup_text"] = (
        f"hybrid `{s.hybrid_pattern}` vs `(attn/mlp)x{s.layers}` vs `(retention/mlp)x{s.layers}`; hidden {s.hidden}, "
        f"{s.heads} heads / {s.kv_heads} kv heads, vocab {s.vocab}, intermediate {s.intermediate}, MoE {s.experts} "
        f"experts top-{s.top_k} of {s.intermediate // s.top_k}; train batch 1 x context; decode batch {s.decode_batch}, "
        f"{s.decode_steps} steps x {s.repeats} repeats after a prefill; {s.device}, {s.dtype}"
    )
    models = _hybrid_models(s, device, dtype)
    metrics, raw = {}, {"train_s": {}, "decode_s_per_token": {}}
    for context in s.contexts:
        metrics.update(_hybrid_context(s, models, context, device, raw))
    lo, hi = min(s.contexts), max(s.contexts)
    flat = raw["decode_s_per_token"][hi]["retention"] / raw["decode_s_per_token"][lo]["retention"]
    metrics[f"retention decode @{hi} / @{lo}"] = metric("x", {}, f"retention@{hi}/@{lo}", FLAT_DECODE_GOAL, flat)
    return {**res, "metrics": metrics, "raw": raw, "status": "ok"}
