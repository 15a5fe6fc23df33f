"""linear suite: the linear-time mixers of the delta-rule and RWKV lines.

Training: our models converted with `from_hf` from random `RwkvForCausalLM` and `Qwen3NextForCausalLM`
models, against those very models on transformers' torch paths (what runs without its CUDA kernels
and fla); parity first (fp32 logits within LINEAR_PARITY_TOL and equal greedy tokens), then forward +
backward tokens/s and peak memory of each pair.

Decode: per-token latency on a filled cache at several contexts of a stack of each of our recurrent
mixers (rwkv4, rwkv7, deltanet, gated_deltanet, linear_attn: the state is constant, so the latency
should be flat) and of hyena (its cache is its input history, so its per-token cost grows)."""

import torch

from .. import compat
from .harness import log, median, parity_gate
from .pairs import build_pairs, pairs_parity, register_references, train_metrics
from .report import metric, plot_decode_latency
from .settings import DTYPES, pick
from .ssm_decode import decode_at

LINEAR_SPEED_GOAL = (">=", 1.0)
FLAT_DECODE_GOAL = ("<=", 1.10)  # decode at the longest context over the shortest
# Chunked scans in a different order than transformers' (RWKV's sequential WKV, Qwen3-Next's own chunks).
LINEAR_PARITY_TOL = 1e-3
LINEAR_PRELOAD = ("transformers.models.rwkv.modeling_rwkv", "transformers.models.qwen3_next.modeling_qwen3_next")
CONSTANT_STATE = ("rwkv4", "rwkv7", "deltanet", "gated_deltanet", "linear_attn")
GROWING_STATE = ("hyena",)
PREFILL_CHUNK = 512
LINEAR_SETUP = (
    *("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "moe_intermediate", "experts", "top_k"),
    *("ssm_seq", "ssm_contexts", "decode_steps", "prompt", "new_tokens", "repeats"),
)


def _rwkv(s):
    from transformers import RwkvConfig, RwkvForCausalLM

    return RwkvForCausalLM(
        RwkvConfig(
            vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, intermediate_size=s.intermediate,
            context_length=max(s.ssm_seq, 64), rescale_every=0, tie_word_embeddings=False,
        )
    )


def _qwen3_next(s):
    """Gated DeltaNet : gated attention = 3 : 1, value heads twice the key heads, MoE with a shared expert."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    head_dim = s.hidden // s.heads
    layer_types = [("full_attention" if i % 4 == 3 else "linear_attention") for i in range(s.layers)]
    layer_types[-1] = "full_attention"  # shallow stacks too: Qwen3-Next's cache needs one attention layer
    cfg = Qwen3NextConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, head_dim=head_dim,
        layer_types=layer_types,
        linear_num_key_heads=max(1, s.heads // 2), linear_num_value_heads=s.heads, linear_key_head_dim=head_dim,
        linear_value_head_dim=head_dim, num_experts=s.experts, num_experts_per_tok=s.top_k,
        moe_intermediate_size=s.moe_intermediate, shared_expert_intermediate_size=s.moe_intermediate,
        tie_word_embeddings=False,
    )
    return Qwen3NextForCausalLM(cfg)


REFERENCES = (("RwkvForCausalLM", _rwkv), ("Qwen3NextForCausalLM", _qwen3_next))
register_references("linear", REFERENCES)


def _decode_model(s, mixer: str, device, dtype):
    """`(mixer/ffn)x{layers}` of the suite's width: RWKV with its channel mix, the others an MLP."""
    from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM

    ffn = "rwkv_cmix" if mixer.startswith("rwkv") else "mlp"
    cfg = LlmArchHybridConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_attention_heads=s.heads,
        num_key_value_heads=s.heads, layer_pattern=f"({mixer}/{ffn})x{s.layers}", position_embedding_type="none",
        max_position_embeddings=max(s.ssm_contexts) + s.decode_steps * (s.repeats + 1) + 1, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlmArchHybridForCausalLM(cfg).to(device=device, dtype=dtype)


def _decode_metrics(s, device, dtype) -> tuple[dict, dict]:
    models = {m: _decode_model(s, m, device, dtype) for m in (*CONSTANT_STATE, *GROWING_STATE)}
    plan = dict.fromkeys(models, (PREFILL_CHUNK, compat.CACHE_ARG))
    raw = {"decode_s": {}, "prefill_s": {}}
    for context in s.ssm_contexts:
        raw["decode_s"][context], raw["prefill_s"][context] = decode_at("linear", s, models, context, device, plan)
    per_token = {c: {n: median(t) for n, t in times.items()} for c, times in raw["decode_s"].items()}
    lo, hi = s.ssm_contexts[0], s.ssm_contexts[-1]
    metrics = {f"decode ms/token @{c}": metric("ms", {n: t[n] * 1e3 for n in models}) for c, t in per_token.items()}
    for name in models:
        goal = FLAT_DECODE_GOAL if name in CONSTANT_STATE else None
        metrics[f"{name} decode @{hi} / @{lo}"] = metric("x", {}, f"{name}@{hi}/@{lo}", goal, per_token[hi][name] / per_token[lo][name])
    if s.plot:
        plot_decode_latency("linear", s.plot, {c: {n: t * 1e3 for n, t in times.items()} for c, times in per_token.items()})
        log.info(f"[linear] decode plot written to {s.plot}")
    return metrics, raw


def bench_linear(s) -> dict:
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": "linear-time mixers vs transformers RWKV / Qwen3-Next (same weights); decode latency vs context"}
    res.update(columns=["ours", "transformers", *CONSTANT_STATE, *GROWING_STATE], setup=pick(s, LINEAR_SETUP))
    pairs, skipped = build_pairs(s, "linear", device)
    res["parity"], failures = pairs_parity(pairs, s, device, LINEAR_PARITY_TOL)
    if failed := parity_gate("linear", res, failures):
        return failed
    pairs = {ref: {n: m.to(dtype) for n, m in pair.items()} for ref, pair in pairs.items()}
    metrics, raw = train_metrics("linear", s, pairs, skipped, device, LINEAR_SPEED_GOAL, LINEAR_PRELOAD)
    decode_metrics, decode_raw = _decode_metrics(s, device, dtype)
    res["setup_text"] = _setup_text(s)
    return {**res, "metrics": metrics | decode_metrics, "raw": raw | decode_raw, "skipped": skipped, "status": "ok"}


def _setup_text(s) -> str:
    return (
        f"hidden {s.hidden}, {s.layers} layers, vocab {s.vocab}, untied head. RWKV: RwkvConfig with intermediate "
        f"{s.intermediate}, rescale_every 0. Qwen3-Next: Gated DeltaNet : gated attention = 3 : 1, {max(1, s.heads // 2)} "
        f"key / {s.heads} value heads of {s.hidden // s.heads}, attention {s.heads} / {s.kv_heads} kv heads, "
        f"{s.experts} experts of {s.moe_intermediate} top-{s.top_k} plus a shared expert of {s.moe_intermediate}. "
        f"Train: batch 1 x seq {s.ssm_seq}, forward + backward of the LM loss, median of {s.repeats}. Decode: our "
        f"`(mixer/mlp)x{s.layers}` (RWKV with its channel mix), batch 1, {s.decode_steps} one-token steps x "
        f"{s.repeats} repeats after a prefill of each context in chunks of {PREFILL_CHUNK}, median per token. "
        f"{s.device}, {s.dtype}."
    )
