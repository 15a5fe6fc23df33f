"""Parameter counts by component (matmul weights apart from the rest), from a config alone."""

import copy

import torch

from ..pattern import parallel_parts

from .basics import Params, add, linear
from .recurrent import FIRST_LAYER_WITHOUT, HISTORY_ELEMENTS_PER_TOKEN, RECURRENT_MIXER_PARAMS


def _norm_params(config, dim: int | None = None) -> int:
    dim = dim or config.hidden_size
    return 2 * dim if config.norm_type == "layernorm" else dim


def _attention_params(config, gated: bool = False) -> Params:
    """Softmax attention; `gated` (gated_attn): q_proj also projects the per-channel output gate."""
    h, hd = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * hd, config.num_key_value_heads * hd
    qk_norm = (0, 2 * hd) if config.qk_norm else (0, 0)  # always RMSNorm, whatever norm_type
    return add(
        linear(h, q_out * (2 if gated else 1), config.attention_bias),
        linear(h, kv_out, config.attention_bias),
        linear(h, kv_out, config.attention_bias),
        linear(q_out, h, config.attention_out_bias),
        qk_norm,
    )


def _mla_params(config) -> Params:
    """Low-rank (q_a, norm, q_b) or full query, the shared kv_a down-projection and its norm, the
    per-head kv_b up-projection and o_proj."""
    h, heads, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
    qk = config.qk_nope_head_dim + config.qk_rope_head_dim
    if config.q_lora_rank is None:
        query = linear(h, heads * qk)
    else:
        query = add(linear(h, config.q_lora_rank, bias), (0, config.q_lora_rank), linear(config.q_lora_rank, heads * qk))
    return add(
        query,
        linear(h, config.kv_lora_rank + config.qk_rope_head_dim, bias),  # kv_a_proj_with_mqa
        (0, config.kv_lora_rank if config.mla_latent_norm else 0),  # kv_a_layernorm
        linear(config.kv_lora_rank, heads * (config.qk_nope_head_dim + config.v_head_dim)),  # kv_b_proj
        linear(heads * config.v_head_dim, h, bias),  # o_proj
    )


def _dsa_params(config) -> Params:
    """MLA and the lightning indexer: wq_b from the query latent, wk, its LayerNorm and the head weights."""
    heads, dim = config.index_n_heads, config.index_head_dim
    indexer = add(linear(config.q_lora_rank, heads * dim), linear(config.hidden_size, dim), (0, 2 * dim))
    return add(_mla_params(config), indexer, linear(config.hidden_size, heads))


_MIXER_PARAMS = {
    "attn": _attention_params,
    "swa": _attention_params,
    "gated_attn": lambda c: _attention_params(c, gated=True),
    **RECURRENT_MIXER_PARAMS,
    "mla": _mla_params,
    "dsa": _dsa_params,
}
# Mixers with a per-token cache: the values each holds per token per layer. MLA caches its latent and
# the shared RoPE key only (layers.md §2a).
KV_ELEMENTS_PER_TOKEN = {
    "attn": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "swa": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "gated_attn": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "mla": lambda c: c.kv_lora_rank + c.qk_rope_head_dim,
    "dsa": lambda c: c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim,  # and the indexer's key
    **HISTORY_ELEMENTS_PER_TOKEN,
}
# Attention FLOPs per attended key per query: 2 per q.k multiply-add and 2 per weights.v one, per head.
# MLA counts its per-head (expanded) form, the one training runs.
ATTENTION_FLOPS_PER_KEY = {
    "attn": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "swa": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "gated_attn": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "mla": lambda c: 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim),
    "dsa": lambda c: 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim),
    "hyena": lambda c: 2 * (c.hyena_order - 1) * c.hidden_size,  # a multiply-add per past input per channel
}
# Per key of the whole context, on top of the attended ones: DSA's indexer scores every cached key.
INDEXER_FLOPS_PER_KEY = {"dsa": lambda c: 2 * c.index_n_heads * c.index_head_dim}
STATE_DTYPE = torch.float32  # recurrent states are kept in fp32 whatever the model dtype (conv histories: the model's)


def layer_parts(mixer: str) -> list[str]:
    """The mixers a layer runs: a par() layer's parts, or the one mixer."""
    return parallel_parts(mixer) or [mixer]


def _mixer_params(config, mixer: str) -> Params:
    if parallel_parts(mixer):
        return add(*(_mixer_params(config, part) for part in parallel_parts(mixer)))
    if mixer not in _MIXER_PARAMS:
        raise NotImplementedError(f"accounting does not know mixer {mixer!r} yet; known: {sorted(_MIXER_PARAMS)}")
    return _MIXER_PARAMS[mixer](config)


def _dense_ffn_params(config, inner: int | None = None) -> Params:
    """A dense MLP `inner` wide (default config.intermediate_size)."""
    h, inner, bias = config.hidden_size, inner or config.intermediate_size, config.mlp_bias
    up = [linear(h, inner, bias)] * (2 if config.mlp_gated else 1)  # gate_proj + up_proj, or up_proj
    return add(*up, linear(inner, h, bias))


def _router_params(config) -> Params:
    """The gate [E, H], plus the noise gate [E, H] of noisy top-k or the group gate [G, H] of the
    hierarchical router (DeepSeek's selection bias is a buffer, not a parameter)."""
    h, e = config.hidden_size, config.num_experts
    router_type = getattr(config, "router_type", None) or "softmax_topk"
    extra = {"noisy_topk": linear(h, e), "hierarchical": linear(h, config.n_group or 1)}.get(router_type, (0, 0))
    return add(linear(h, e), extra)


def _shared_expert_params(config) -> Params:
    """The shared expert MLP and its [1, H] gate; every token uses them, so they count as active."""
    if not config.shared_expert_intermediate_size:
        return (0, 0)
    gate = linear(config.hidden_size, 1) if config.shared_expert_gate else (0, 0)
    return add(_dense_ffn_params(config, config.shared_expert_intermediate_size), gate)


def _channel_mix_params(config, mixer: str) -> Params:
    """RWKV's channel mix: key and value (and RWKV-4's receptance), and its token-shift mixes."""
    h, inner = config.hidden_size, config.intermediate_size
    if mixer == "rwkv7":
        return add(linear(h, inner), linear(inner, h), (0, h))
    return add(linear(h, inner), linear(h, h), linear(inner, h), (0, 2 * h))


def layer_counts(config) -> dict:
    """Parameter counts of the decoder stack, split by component, with matmul/other kept apart."""
    h, e, k = config.hidden_size, config.num_experts, config.num_experts_per_tok
    per_expert = 3 * h * config.moe_intermediate_size  # gate_up [2I, H] + down [H, I]
    mixers: dict[str, Params] = {}
    dense = experts = experts_active = router = shared_experts = (0, 0)
    norms = _norm_params(config) * (2 if config.embedding_norm else 1)  # final norm, embedding norm
    for mixer, ffn in zip(config.mixer_types, config.ffn_types):
        mixers[mixer] = add(mixers.get(mixer, (0, 0)), _mixer_params(config, mixer))
        norms += _norm_params(config)  # input_layernorm
        if ffn == "none":
            continue
        norms += _norm_params(config)  # post_attention_layernorm
        if ffn == "moe":
            router = add(router, _router_params(config))
            shared_experts = add(shared_experts, _shared_expert_params(config))
            experts = add(experts, (e * per_expert, 0))
            experts_active = add(experts_active, (k * per_expert, 0))
        elif ffn == "rwkv_cmix":
            dense = add(dense, _channel_mix_params(config, mixer))
        else:
            dense = add(dense, _dense_ffn_params(config))
    for mixer, missing in FIRST_LAYER_WITHOUT.items():
        if mixer in mixers:
            mixers[mixer] = tuple(total - part for total, part in zip(mixers[mixer], missing(config)))
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
