"""The decode half of the ssm suite: per-token latency (one greedy token step on a filled cache,
median over steps) of our mamba and mamba2 and a dense `llmarch_dense` model of the same width and
depth at several contexts; how flat the recurrent ones stay; where Mamba overtakes the dense model;
our mamba against transformers' MambaForCausalLM (same weights) at the shortest context.

Caches are filled by a chunked prefill (not timed): the dense model's attention scores and ours'
chunked scan states grow with the chunk, not the context. transformers' Mamba-1 prefills in one
call, since it drops the cached state on a multi-token continuation."""

import time

import torch

from .. import compat
from .harness import decode_step_times, log, median
from .report import metric, plot_decode_latency

FLAT_DECODE_GOAL = ("<=", 1.10)  # recurrent decode at the longest vs the shortest context
NATIVE_DECODE_GOAL = (">=", 1.0)  # our mamba's decode tokens/s over MambaForCausalLM's
NATIVE = "MambaForCausalLM"
# Prefill chunk per model kind: our Mamba-1 scan keeps per-token states of the chunk, so short chunks
# are faster on CPU (4k context: 5.7 s in chunks of 256, 15.8 s in one call); attention takes longer ones.
PREFILL_CHUNK = {"mamba": 256, "mamba2": 256, "dense": 2048}
RECURRENT = ("mamba", "mamba2")


def dense_like(s, mamba, device, dtype):
    """`(attn/mlp)x{layers}` of the suite's width, its MLP sized so a layer holds as many parameters
    as one of our mamba's layers."""
    from ..models.dense import LlmArchDenseConfig, LlmArchDenseForCausalLM

    head_dim = s.hidden // s.heads
    attn = 2 * s.hidden * s.heads * head_dim + 2 * s.hidden * s.kv_heads * head_dim  # q, o; k, v
    layer = sum(p.numel() for p in mamba.model.layers[0].parameters())
    intermediate = max(1, round((layer - attn - 2 * s.hidden) / (3 * s.hidden)))  # 2 norms; gate, up, down
    cfg = LlmArchDenseConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=intermediate, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, layer_pattern=f"(attn/mlp)x{s.layers}", tie_word_embeddings=False,
        max_position_embeddings=max(s.ssm_contexts) + s.decode_steps * (s.repeats + 1) + 1,
        attn_implementation=s.attn,
    )
    torch.manual_seed(0)
    return LlmArchDenseForCausalLM(cfg).to(device=device, dtype=dtype)


@torch.no_grad()
def _prefill(model, ids: torch.Tensor, chunk: int, cache_arg: str) -> dict:
    """The cache after `ids` [1, context], fed `chunk` tokens per call, and the next greedy token."""
    model.eval()
    cache = None
    for start in range(0, ids.shape[1], chunk):
        kwargs = {} if cache is None else {cache_arg: cache}
        out = model(input_ids=ids[:, start : start + chunk], use_cache=True, logits_to_keep=1, **kwargs)
        cache = compat.output_cache(out)
    return {"cache": cache, "token": out.logits[:, -1:].argmax(-1), "cache_arg": cache_arg}


def decode_at(suite: str, s, models: dict, context: int, device, plan: dict) -> tuple[dict, dict]:
    """({model: seconds per step}, {model: prefill seconds}) at `context`, steps interleaved by model;
    `plan` gives each model's (prefill chunk or None for the whole context, cache argument name)."""
    ids = torch.randint(3, s.vocab, (1, context), generator=torch.Generator().manual_seed(context)).to(device)
    states, prefill_s = {}, {}
    for name, m in models.items():
        chunk, arg = plan[name]
        start = time.perf_counter()
        states[name] = _prefill(m, ids, chunk or context, arg)
        prefill_s[name] = time.perf_counter() - start
        decode_step_times(m, states[name], 1, device)  # warm-up
        log.info(f"[{suite}] prefill @{context:<18} {name:<18} {prefill_s[name]:10.1f} s")
    times = {name: [] for name in models}
    for r in range(s.repeats):
        for name, m in models.items():
            steps = decode_step_times(m, states[name], s.decode_steps, device)
            times[name] += steps
            what = f"decode @{context}"
            log.info(f"[{suite}] {what:<24} {name:<18} {r + 1}/{s.repeats} {median(steps) * 1e3:10.3f} ms/token")
    return times, prefill_s


def _overtakes(per_token: dict, name: str):
    """The shortest context at which `name` decodes faster than the dense model, or None."""
    return next((c for c, t in per_token.items() if t[name] < t["dense"]), None)


def bench_ssm_decode(s, models: dict, native, device) -> tuple[dict, dict, dict]:
    """(metrics, raw, parameter counts) of the decode half; `native` joins at the shortest context."""
    lo, hi = s.ssm_contexts[0], s.ssm_contexts[-1]
    raw = {"decode_s": {}, "prefill_s": {}}
    for context in s.ssm_contexts:
        at = models | ({NATIVE: native} if context == lo else {})
        plan = {name: (PREFILL_CHUNK[name], compat.CACHE_ARG) for name in models} | {NATIVE: (None, compat.NATIVE_SSM_CACHE_ARG)}
        raw["decode_s"][context], raw["prefill_s"][context] = decode_at("ssm", s, at, context, device, plan)
    per_token = {c: {n: median(t) for n, t in times.items()} for c, times in raw["decode_s"].items()}
    metrics = {}
    for c, t in per_token.items():
        metrics[f"decode ms/token @{c}"] = metric("ms", {n: t[n] * 1e3 for n in models}, ("mamba", "dense"))
        metrics[f"decode tokens/s @{c}"] = metric("tok/s", {n: 1 / t[n] for n in models}, ("mamba", "dense"))
    vs_native = {"ours": 1 / per_token[lo]["mamba"], "transformers": 1 / per_token[lo][NATIVE]}
    metrics[f"decode tokens/s @{lo} vs {NATIVE}"] = metric("tok/s", vs_native, ("ours", "transformers"), NATIVE_DECODE_GOAL)
    for name in RECURRENT:
        flat = per_token[hi][name] / per_token[lo][name]
        metrics[f"{name} decode @{hi} / @{lo}"] = metric("x", {}, f"{name}@{hi}/@{lo}", FLAT_DECODE_GOAL, flat)
    metrics["faster than dense from context"] = metric("tokens", {n: _overtakes(per_token, n) for n in RECURRENT})
    if s.plot:
        plot_decode_latency("ssm", s.plot, {c: {n: t * 1e3 for n, t in times.items()} for c, times in per_token.items()})
        log.info(f"[ssm] decode plot written to {s.plot}")
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    return metrics, raw, counts

