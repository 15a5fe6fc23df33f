"""Parameter counts by component (matmul weights apart from the rest), from a config alone."""

import copy

import torch

from ..pattern import parallel_parts

# (matmul weights, other parameters) of one module.
Params = tuple[int, int]


def _linear(n_in: int, n_out: int, bias: bool = False) -> Params:
    return n_in * n_out, n_out if bias else 0


def _add(*parts: Params) -> Params:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _norm_params(config, dim: int | None = None) -> int:
    dim = dim or config.hidden_size
    return 2 * dim if config.norm_type == "layernorm" else dim


def _attention_params(config) -> Params:
    h, hd = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * hd, config.num_key_value_heads * hd
    qk_norm = (0, 2 * hd) if config.qk_norm else (0, 0)  # always RMSNorm, whatever norm_type
    return _add(
        _linear(h, q_out, config.attention_bias),
        _linear(h, kv_out, config.attention_bias),
        _linear(h, kv_out, config.attention_bias),
        _linear(q_out, h, config.attention_out_bias),
        qk_norm,
    )


def _mla_params(config) -> Params:
    """Low-rank (q_a, norm, q_b) or full query, the shared kv_a down-projection and its norm, the
    per-head kv_b up-projection and o_proj."""
    h, heads, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
    qk = config.qk_nope_head_dim + config.qk_rope_head_dim
    if config.q_lora_rank is None:
        query = _linear(h, heads * qk)
    else:
        query = _add(_linear(h, config.q_lora_rank, bias), (0, config.q_lora_rank), _linear(config.q_lora_rank, heads * qk))
    return _add(
        query,
        _linear(h, config.kv_lora_rank + config.qk_rope_head_dim, bias),  # kv_a_proj_with_mqa
        (0, config.kv_lora_rank if config.mla_latent_norm else 0),  # kv_a_layernorm
        _linear(config.kv_lora_rank, heads * (config.qk_nope_head_dim + config.v_head_dim)),  # kv_b_proj
        _linear(heads * config.v_head_dim, h, bias),  # o_proj
    )


def _dsa_params(config) -> Params:
    """MLA and the lightning indexer: wq_b from the query latent, wk, its LayerNorm and the head weights."""
    heads, dim = config.index_n_heads, config.index_head_dim
    indexer = _add(_linear(config.q_lora_rank, heads * dim), _linear(config.hidden_size, dim), (0, 2 * dim))
    return _add(_mla_params(config), indexer, _linear(config.hidden_size, heads))


def _linear_attn_params(config) -> Params:
    """q, k, v, o (hidden x hidden each), and the per-head output RMSNorm of the unnormalised map."""
    h = config.hidden_size
    norm = 0 if config.linear_attn_feature_map == "elu+1" else h // config.linear_attn_num_heads
    return _add(*[_linear(h, h)] * 4, (0, norm))


def _linear_attn_state(config) -> tuple[int, int, int]:
    """S and the normaliser z share one [H, Dk, Dv + 1] fp32 state; ~4 FLOPs per element (write and read)."""
    heads = config.linear_attn_num_heads
    dim = config.hidden_size // heads
    elements = heads * dim * (dim + (config.linear_attn_feature_map == "elu+1"))
    return 4 * elements, elements, 0


def _retention_dims(config) -> tuple[int, int, int]:
    heads = config.retention_num_heads
    key_dim = config.hidden_size // heads
    return heads, key_dim, config.retention_value_factor * key_dim


def _retention_params(config) -> Params:
    h = config.hidden_size
    heads, dk, dv = _retention_dims(config)
    return _add(
        _linear(h, heads * dk),  # q_proj
        _linear(h, heads * dk),  # k_proj
        _linear(h, heads * dv),  # v_proj
        _linear(h, heads * dv),  # g_proj
        _linear(heads * dv, h),  # o_proj
        (0, dv),  # g_norm, RMSNorm shared by the heads
    )


def _retention_state(config) -> tuple[int, int, int]:
    """(state FLOPs per token, fp32 state elements, model-dtype conv elements) of one retention layer."""
    heads, dk, dv = _retention_dims(config)
    # Decay + outer-product write k^T v and the read q S: about 4 FLOPs per state element.
    return 4 * heads * dk * dv, heads * dk * dv, 0


def _mamba_dims(config) -> tuple[int, int, int, int]:
    from ..mixers.mamba import dt_rank

    return int(config.mamba_expand * config.hidden_size), config.mamba_d_state, dt_rank(config), config.mamba_d_conv


def _mamba_params(config) -> Params:
    h, bias = config.hidden_size, config.mamba_proj_bias
    inner, n, rank, width = _mamba_dims(config)
    return _add(
        _linear(h, 2 * inner, bias),  # in_proj
        (0, inner * width + (inner if config.mamba_conv_bias else 0)),  # depthwise conv1d
        _linear(inner, rank + 2 * n),  # x_proj
        _linear(rank, inner, True),  # dt_proj
        (0, inner * n + inner),  # A_log, D
        (0, rank + 2 * n if config.mamba_inner_norms else 0),  # Jamba's dt, B and C RMSNorms
        _linear(inner, h, bias),  # out_proj
    )


def _mamba_state(config) -> tuple[int, int, int]:
    inner, n, _, width = _mamba_dims(config)
    # Per state element: decay, write and read (~5 FLOPs); the conv: one multiply-add per tap.
    return 5 * inner * n + 2 * inner * width, inner * n, inner * (width - 1)


def _mamba2_dims(config) -> tuple[int, int, int, int]:
    from ..mixers.mamba2 import mamba2_inner

    inner = mamba2_inner(config)
    heads = inner // config.mamba2_head_dim
    return inner, heads, inner + 2 * config.mamba2_n_groups * config.mamba2_d_state, config.mamba2_d_conv


def _mamba2_params(config) -> Params:
    h, bias = config.hidden_size, config.mamba2_proj_bias
    inner, heads, conv_dim, width = _mamba2_dims(config)
    return _add(
        _linear(h, inner + conv_dim + heads, bias),  # in_proj: z, x B C, dt
        (0, conv_dim * width + (conv_dim if config.mamba2_conv_bias else 0)),  # depthwise conv1d
        (0, 3 * heads + (inner if config.mamba2_gate_norm else 0)),  # dt_bias, A_log, D, gated norm weight
        _linear(inner, h, bias),  # out_proj
    )


def _mamba2_state(config) -> tuple[int, int, int]:
    inner, heads, conv_dim, width = _mamba2_dims(config)
    elements = heads * config.mamba2_head_dim * config.mamba2_d_state
    return 4 * elements + 2 * conv_dim * width, elements, conv_dim * (width - 1)


def _s4d_params(config) -> Params:
    h, modes = config.hidden_size, config.s4d_d_state // 2
    # log_dt, log_A_real, A_imag, C (complex as 2 reals), D; then out_proj H -> 2H with bias (GLU).
    return _add((0, h + 4 * h * modes + h), _linear(h, 2 * h, True))


def _s4d_state(config) -> tuple[int, int, int]:
    modes = config.hidden_size * config.s4d_d_state // 2
    # A complex multiply-add per mode to step, and a complex multiply to read: ~12 real FLOPs.
    return 12 * modes, 2 * modes, 0  # complex, stored as fp32 (re, im)


_MIXER_PARAMS = {
    "attn": _attention_params,
    "swa": _attention_params,
    "retention": _retention_params,
    "linear_attn": _linear_attn_params,
    "mamba": _mamba_params,
    "mamba2": _mamba2_params,
    "s4d": _s4d_params,
    "mla": _mla_params,
    "dsa": _dsa_params,
}
MIXER_STATE = {
    "linear_attn": _linear_attn_state, "retention": _retention_state, "mamba": _mamba_state, "mamba2": _mamba2_state,
    "s4d": _s4d_state,
}
# Mixers with a per-token cache: the values each holds per token per layer. MLA caches its latent and
# the shared RoPE key only (layers.md §2a).
KV_ELEMENTS_PER_TOKEN = {
    "attn": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "swa": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "mla": lambda c: c.kv_lora_rank + c.qk_rope_head_dim,
    "dsa": lambda c: c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim,  # and the indexer's key
}
# Attention FLOPs per attended key per query: 2 per q.k multiply-add and 2 per weights.v one, per head.
# MLA counts its per-head (expanded) form, the one training runs.
ATTENTION_FLOPS_PER_KEY = {
    "attn": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "swa": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "mla": lambda c: 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim),
    "dsa": lambda c: 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim),
}
# Per key of the whole context, on top of the attended ones: DSA's indexer scores every cached key.
INDEXER_FLOPS_PER_KEY = {"dsa": lambda c: 2 * c.index_n_heads * c.index_head_dim}
STATE_DTYPE = torch.float32  # recurrent states are kept in fp32 whatever the model dtype (conv histories: the model's)


def layer_parts(mixer: str) -> list[str]:
    """The mixers a layer runs: a par() layer's parts, or the one mixer."""
    return parallel_parts(mixer) or [mixer]


def _mixer_params(config, mixer: str) -> Params:
    if parallel_parts(mixer):
        return _add(*(_mixer_params(config, part) for part in parallel_parts(mixer)))
    if mixer not in _MIXER_PARAMS:
        raise NotImplementedError(f"accounting does not know mixer {mixer!r} yet; known: {sorted(_MIXER_PARAMS)}")
    return _MIXER_PARAMS[mixer](config)


def _dense_ffn_params(config, inner: int | None = None) -> Params:
    """A dense MLP `inner` wide (default config.intermediate_size)."""
    h, inner, bias = config.hidden_size, inner or config.intermediate_size, config.mlp_bias
    up = [_linear(h, inner, bias)] * (2 if config.mlp_gated else 1)  # gate_proj + up_proj, or up_proj
    return _add(*up, _linear(inner, h, bias))


def _router_params(config) -> Params:
    """The gate [E, H], plus the noise gate [E, H] of noisy top-k or the group gate [G, H] of the
    hierarchical router (DeepSeek's selection bias is a buffer, not a parameter)."""
    h, e = config.hidden_size, config.num_experts
    router_type = getattr(config, "router_type", None) or "softmax_topk"
    extra = {"noisy_topk": _linear(h, e), "hierarchical": _linear(h, config.n_group or 1)}.get(router_type, (0, 0))
    return _add(_linear(h, e), extra)


def _shared_expert_params(config) -> Params:
    """The shared expert MLP and its [1, H] gate; every token uses them, so they count as active."""
    if not config.shared_expert_intermediate_size:
        return (0, 0)
    gate = _linear(config.hidden_size, 1) if config.shared_expert_gate else (0, 0)
    return _add(_dense_ffn_params(config, config.shared_expert_intermediate_size), gate)


def layer_counts(config) -> dict:
    """Parameter counts of the decoder stack, split by component, with matmul/other kept apart."""
    h, e, k = config.hidden_size, config.num_experts, config.num_experts_per_tok
    per_expert = 3 * h * config.moe_intermediate_size  # gate_up [2I, H] + down [H, I]
    mixers: dict[str, Params] = {}
    dense = experts = experts_active = router = shared_experts = (0, 0)
    norms = _norm_params(config)  # final norm
    for mixer, ffn in zip(config.mixer_types, config.ffn_types):
        mixers[mixer] = _add(mixers.get(mixer, (0, 0)), _mixer_params(config, mixer))
        norms += _norm_params(config)  # input_layernorm
        if ffn == "none":
            continue
        norms += _norm_params(config)  # post_attention_layernorm
        if ffn == "moe":
            router = _add(router, _router_params(config))
            shared_experts = _add(shared_experts, _shared_expert_params(config))
            experts = _add(experts, (e * per_expert, 0))
            experts_active = _add(experts_active, (k * per_expert, 0))
        else:
            dense = _add(dense, _dense_ffn_params(config))
    return {
        "mixers": mixers,
        "dense_ffn": dense,
        "moe_experts": experts,
        "moe_experts_active": experts_active,
        "moe_shared": shared_experts,
        "router": router,
        "norms": norms,
    }


def count_parameters(config) -> dict:
    """Total and active parameters of the causal LM that `config` builds, and where they sit.

    `total` equals `sum(p.numel() for p in model.parameters())` (tied weights once).
    `active` is what one token touches: every parameter except the routed experts it is not sent
    to (num_experts_per_tok of num_experts count per MoE layer; the router and shared experts count fully). As is
    customary, the whole embedding table counts as active. Multi-token-prediction modules (`mtp`) count in
    `total` but not in `active`: decoding runs without them.
    """
    layers = layer_counts(config)
    embeddings = config.vocab_size * config.hidden_size
    if config.position_embedding_type == "learned":
        embeddings += config.max_position_embeddings * config.hidden_size
    lm_head = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    mixers = {name: sum(p) for name, p in layers["mixers"].items()}
    shared = embeddings + lm_head + sum(mixers.values()) + sum(layers["dense_ffn"]) + sum(layers["router"])
    shared += sum(layers["moe_shared"]) + layers["norms"]
    mtp = _mtp_params(config)
    return {
        "total": shared + sum(layers["moe_experts"]) + mtp,
        "active": shared + sum(layers["moe_experts_active"]),
        "embeddings": embeddings,
        "lm_head": lm_head,
        "mixers": mixers,
        "dense_ffn": sum(layers["dense_ffn"]),
        "moe_experts": sum(layers["moe_experts"]),
        "moe_experts_active": sum(layers["moe_experts_active"]),
        "moe_shared": sum(layers["moe_shared"]),
        "router": sum(layers["router"]),
        "norms": layers["norms"],
        "mtp": mtp,
    }


def _mtp_params(config) -> int:
    """The num_nextn_predict_layers MTP modules: each a layer of the stack's last kinds (all its experts),
    its head norm, enorm and hnorm, and eh_proj [H, 2H]. Not `active`: the main model decodes without them."""
    if not config.num_nextn_predict_layers:
        return 0
    last = copy.copy(config)
    last.mixer_types, last.ffn_types = config.mixer_types[-1:], config.ffn_types[-1:]
    module = layer_counts(last)  # its `norms` count the layer's norms and one more: the head norm
    per_module = sum(sum(part) for part in module["mixers"].values()) + module["norms"]
    per_module += sum(sum(module[key]) for key in ("dense_ffn", "moe_experts", "moe_shared", "router"))
    per_module += 2 * _norm_params(config) + 2 * config.hidden_size * config.hidden_size
    return config.num_nextn_predict_layers * per_module
