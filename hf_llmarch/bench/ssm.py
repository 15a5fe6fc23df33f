"""ssm suite: our models converted with `from_hf` from random `MambaForCausalLM`,
`Mamba2ForCausalLM`, `JambaForCausalLM` and `FalconH1ForCausalLM` models, against those very
models (transformers' torch path, which is what runs without mamba_ssm). Parity of every pair first
(fp32 logits within SSM_PARITY_TOL and equal greedy tokens); only then forward+backward tokens/s and
peak memory of each pair, and the decode half (`ssm_decode`): per-token latency at several
contexts of our mamba and mamba2 next to a dense model of the same width, depth and about the same
parameter count, and our mamba's decode against MambaForCausalLM's at the shortest context."""

import torch

from .harness import log, parity_gate
from .pairs import build_pairs, pairs_parity, register_references, train_metrics
from .settings import DTYPES, pick
from .ssm_decode import bench_ssm_decode, dense_like

SSM_SPEED_GOAL = (">=", 1.0)
# Our scans sum in another order than transformers' sequential loop (chunks); at logit magnitudes
# of ~10 fp32 rounding reaches ~1e-4 (measured 1.4e-4 at hidden 512, 8 layers), so the gate is 1e-3.
SSM_PARITY_TOL = 1e-3
MAMBA2_HEAD_DIM = 64
SSM_PRELOAD = (
    "transformers.models.mamba.modeling_mamba",
    "transformers.models.mamba2.modeling_mamba2",
    "transformers.models.jamba.modeling_jamba",
    "transformers.models.falcon_h1.modeling_falcon_h1",
)
SSM_SETUP = (
    *("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "experts", "top_k", "attn"),
    *("ssm_seq", "ssm_contexts", "decode_steps", "prompt", "new_tokens", "repeats"),
)


def _mamba(s):
    from transformers import MambaConfig, MambaForCausalLM

    return MambaForCausalLM(
        MambaConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, tie_word_embeddings=False)
    )


def _mamba2(s):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    head_dim = min(MAMBA2_HEAD_DIM, 2 * s.hidden)  # expand 2: heads x head_dim = 2 x hidden
    cfg = Mamba2Config(
        vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, head_dim=head_dim,
        num_heads=2 * s.hidden // head_dim, n_groups=1, tie_word_embeddings=False,
    )
    return Mamba2ForCausalLM(cfg)


def _jamba(s):
    """One attention layer in the middle, MoE on every other layer (Jamba's own periods, fit to depth)."""
    from transformers import AutoModelForCausalLM, JambaConfig

    cfg = JambaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, num_experts=s.experts,
        num_experts_per_tok=s.top_k, attn_layer_period=s.layers, attn_layer_offset=s.layers // 2,
        use_mamba_kernels=False, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


def _falcon_h1(s):
    """Attention beside Mamba-2 in every layer (our par(attn,mamba2)), with Falcon-H1-0.5B's muP multipliers."""
    from transformers import AutoModelForCausalLM, FalconH1Config

    head_dim = min(MAMBA2_HEAD_DIM, 2 * s.hidden)
    cfg = FalconH1Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, mamba_d_ssm=2 * s.hidden,
        mamba_n_heads=2 * s.hidden // head_dim, mamba_d_head=head_dim, tie_word_embeddings=False, **FALCON_H1_MUP,
    )
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


# Falcon-H1-0.5B's multipliers (tiiuae/Falcon-H1-0.5B-Base config.json), so the muP path is what is timed.
FALCON_H1_MUP = dict(
    embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625, key_multiplier=0.39062499999999994,
    attention_out_multiplier=0.9375, ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
    mlp_multipliers=[0.8838834764831844, 0.5859375],
    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
)

# The training comparisons: (reference name, builder of a random native model of the suite's shape).
REFERENCES = (
    ("MambaForCausalLM", _mamba), ("Mamba2ForCausalLM", _mamba2), ("JambaForCausalLM", _jamba),
    ("FalconH1ForCausalLM", _falcon_h1),
)


register_references("ssm", REFERENCES)


def bench_ssm(s) -> dict:
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": "state-space models vs transformers Mamba / Mamba-2 / Jamba / Falcon-H1 (same weights); decode vs a dense model"}
    res.update(columns=["ours", "transformers", "mamba", "mamba2", "dense"], setup=pick(s, SSM_SETUP))
    pairs, skipped = build_pairs(s, "ssm", device)
    res["parity"], failures = pairs_parity(pairs, s, device, SSM_PARITY_TOL)
    if failed := parity_gate("ssm", res, failures):
        return failed
    for ref, why in skipped.items():
        log.info(f"[ssm] {ref} skipped: {why}")
    pairs = {ref: {n: m.to(dtype) for n, m in pair.items()} for ref, pair in pairs.items()}
    metrics, raw = train_metrics("ssm", s, pairs, skipped, device, SSM_SPEED_GOAL, SSM_PRELOAD)
    decode_models = {"mamba": pairs["MambaForCausalLM"]["ours"], "mamba2": pairs["Mamba2ForCausalLM"]["ours"]}
    decode_models["dense"] = dense_like(s, decode_models["mamba"], device, dtype)
    decode_metrics, decode_raw, counts = bench_ssm_decode(s, decode_models, pairs["MambaForCausalLM"]["transformers"], device)
    res["setup_text"] = _setup_text(s, pairs, skipped, counts, decode_models["dense"].config.intermediate_size)
    return {**res, "metrics": metrics | decode_metrics, "raw": raw | decode_raw, "skipped": skipped, "status": "ok"}


def _setup_text(s, pairs: dict, skipped: dict, counts: dict, dense_intermediate: int) -> str:
    m1, m2 = (pairs[ref]["transformers"].config for ref in ("MambaForCausalLM", "Mamba2ForCausalLM"))
    params = ", ".join(f"{n} {c / 1e6:.2f}M" for n, c in counts.items())
    skips = "".join(f" {ref}: skipped ({why})." for ref, why in skipped.items())
    jamba = "" if "JambaForCausalLM" in skipped else (
        f" Jamba: one attention layer ({s.heads} heads / {s.kv_heads} kv heads) in the middle, {s.experts} experts "
        f"of {s.intermediate} top-{s.top_k} on every other layer."
    )
    falcon = "" if "FalconH1ForCausalLM" in skipped else (
        f" Falcon-H1: every layer attention ({s.heads} heads / {s.kv_heads} kv heads) beside Mamba-2 (d_ssm "
        f"{2 * s.hidden}), MLP {s.intermediate}, Falcon-H1-0.5B's muP multipliers."
    )
    return (
        f"hidden {s.hidden}, {s.layers} layers, vocab {s.vocab}, untied head; Mamba-1 state {m1.state_size}, expand "
        f"{m1.expand}; Mamba-2 "
        f"{m2.num_heads} heads of {m2.head_dim}, state {m2.state_size}, 1 group, chunk {m2.chunk_size}; ours from "
        f"`from_hf` of each. Train: batch 1 x seq {s.ssm_seq}, forward + backward of the LM loss, median of "
        f"{s.repeats}. Decode: batch 1, {s.decode_steps} one-token steps x {s.repeats} repeats after a prefill of each "
        f"context, median per token; dense = `(attn/mlp)x{s.layers}`, {s.heads} heads / {s.kv_heads} kv heads, "
        f"intermediate {dense_intermediate} (so its parameters match our mamba's); parameters: {params}. "
        f"{s.device}, {s.dtype}.{jamba}{falcon}{skips}"
    )
