"""Qwen3-Next (transformers `qwen3_next`) <-> llmarch_hybrid.

Its linear-attention layers are our `gated_deltanet`, its full-attention layers our `gated_attn`
(query and output gate side by side per head in q_proj, partial RoPE, zero-centred QK-norm), its
sparse FFNs our `moe` with a sigmoid-gated shared expert, its dense ones `mlp`; every decoder RMSNorm
scales by 1 + weight (`norm_unit_offset`).

The Gated DeltaNet's fused projections are grouped by key head: with r = value heads per key head,
row group i of `in_proj_qkvz` is [q_i (Dk) | k_i (Dk) | v of heads i*r.. (r Dv) | z of those (r Dv)]
and of `in_proj_ba` [b (r) | a (r)]. Ours are the flat q/k/v/g and b/a projections, so reading
regroups the rows and writing groups them back (a permutation: exact both ways). `norm` is our
`o_norm`, `out_proj` our `o_proj`, `linear_attn` our `delta_net`; the conv, `dt_bias` and `A_log`
keep their names. Experts on disk are one tensor per expert, as Qwen2-MoE's.
"""

import torch
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM
from . import moe
from .checkpoint import refuse_unless_fixed, shared_fields_from_hf

OURS = (LlmArchHybridConfig, LlmArchHybridForCausalLM)
FFN_KINDS = ("mlp", "moe")
NATIVE_CLASSES = {"qwen3_next": (Qwen3NextConfig, Qwen3NextForCausalLM)}
MIXER_KINDS = {"qwen3_next": ("gated_deltanet", "gated_attn")}
MIXER_OF_LAYER_TYPE = {"linear_attention": "gated_deltanet", "full_attention": "gated_attn"}
IGNORED_KEYS = ()
EMBED_KEY = "model.embed_tokens.weight"
OUR_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "g_proj")
_FIXED = {
    "norm_type": "rmsnorm", "mlp_gated": True, "qk_norm": True, "norm_unit_offset": True, "position_embedding_type": "rope",
    "sliding_window": None, "mlp_bias": False, "hidden_act": "silu", "delta_output_gate": True,
    "delta_allow_neg_eigval": False, "shared_expert_gate": True,
}


def config_from_hf(cfg) -> dict:
    if cfg.hidden_act != "silu":
        raise ValueError(f"qwen3_next hidden_act={cfg.hidden_act!r} is not supported: its Gated DeltaNet conv activation would differ from silu")
    n = cfg.num_hidden_layers
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        mixer_types=[MIXER_OF_LAYER_TYPE[t] for t in cfg.layer_types], ffn_types=[moe.qwen_moe_ffn(cfg, i) for i in range(n)],
        hidden_act=cfg.hidden_act, norm_type="rmsnorm", norm_eps=cfg.rms_norm_eps, norm_unit_offset=True, qk_norm=True,
        position_embedding_type="rope", rope_parameters=dict(cfg.rope_parameters),
        max_position_embeddings=cfg.max_position_embeddings, attention_bias=cfg.attention_bias,
        attention_out_bias=cfg.attention_bias, attention_dropout=float(cfg.attention_dropout or 0.0),
        num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
        norm_topk_prob=cfg.norm_topk_prob, router_aux_loss_coef=cfg.router_aux_loss_coef, router_z_loss_coef=0.0,
        shared_expert_intermediate_size=cfg.shared_expert_intermediate_size, shared_expert_gate=True,
        delta_num_heads=cfg.linear_num_key_heads, delta_num_value_heads=cfg.linear_num_value_heads,
        delta_head_dim=cfg.linear_key_head_dim, delta_value_head_dim=cfg.linear_value_head_dim,
        delta_conv_size=cfg.linear_conv_kernel_dim, delta_output_gate=True,
        **shared_fields_from_hf(cfg),
    )


def _group_sizes(config) -> tuple[list[int], int, int]:
    """Per key-head group: the row counts [q, k, v, z] of in_proj_qkvz, the key heads and r (value
    heads per key head)."""
    heads, ratio = config.delta_num_heads, config.delta_num_value_heads // config.delta_num_heads
    dk, dv = config.delta_head_dim, config.delta_value_head_dim
    return [dk, dk, ratio * dv, ratio * dv], heads, ratio


def _ungroup(fused: torch.Tensor, sizes: list[int], heads: int) -> list[torch.Tensor]:
    """[heads * sum(sizes), H] grouped rows -> one flat [heads * size, H] tensor per section."""
    parts = fused.view(heads, sum(sizes), -1).split(sizes, dim=1)
    return [part.reshape(-1, fused.shape[-1]) for part in parts]


def _group(flat: list[torch.Tensor], sizes: list[int], heads: int) -> torch.Tensor:
    return torch.cat([part.view(heads, size, -1) for part, size in zip(flat, sizes, strict=True)], dim=1).flatten(0, 1)


def _layer(key: str) -> tuple[str, str]:
    """'model.layers.3.delta_net.q_proj.weight' -> ('model.layers.3', 'q_proj.weight')."""
    prefix, name = key.split(".delta_net.")
    return prefix, name


_DIRECT = {"conv1d.weight": "conv1d.weight", "dt_bias": "dt_bias", "A_log": "A_log", "o_norm.weight": "norm.weight", "o_proj.weight": "out_proj.weight"}


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    sizes, heads, ratio = _group_sizes(config)
    hidden = config.hidden_size
    delta = {key: shape for key, shape in expected.items() if ".delta_net." in key}
    rest = {key: shape for key, shape in expected.items() if key not in delta}
    state_dict = moe.state_dict_from_hf(src, rest, config)
    for prefix in dict.fromkeys(_layer(key)[0] for key in delta):
        native = f"{prefix}.linear_attn."
        qkvz = _ungroup(src.take(native + "in_proj_qkvz.weight", (heads * sum(sizes), hidden)), sizes, heads)
        b, a = _ungroup(src.take(native + "in_proj_ba.weight", (heads * 2 * ratio, hidden)), [ratio, ratio], heads)
        ours = f"{prefix}.delta_net."
        state_dict.update({ours + f"{name}.weight": t for name, t in zip(OUR_PROJECTIONS, qkvz, strict=True)})
        state_dict.update({ours + "b_proj.weight": b, ours + "a_proj.weight": a})
        for our_name, native_name in _DIRECT.items():
            state_dict[ours + our_name] = src.take(native + native_name, delta[ours + our_name])
    return state_dict


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    sizes, heads, ratio = _group_sizes(config)
    delta = {key for key in expected if ".linear_attn." in key}
    state_dict = {key: src.take(key, shape) for key, shape in expected.items() if key not in delta}
    for prefix in dict.fromkeys(key.split(".linear_attn.")[0] for key in delta):
        ours, native = f"{prefix}.delta_net.", f"{prefix}.linear_attn."
        flat = [src.take(ours + f"{name}.weight") for name in OUR_PROJECTIONS]
        state_dict[native + "in_proj_qkvz.weight"] = _group(flat, sizes, heads)
        ba = [src.take(ours + f"{name}.weight") for name in ("b_proj", "a_proj")]
        state_dict[native + "in_proj_ba.weight"] = _group(ba, [ratio, ratio], heads)
        for our_name, native_name in _DIRECT.items():
            state_dict[native + native_name] = src.take(ours + our_name, expected[native + native_name])
    return state_dict


def check_expressible(config, target: str):
    refuse_unless_fixed(config, target, _FIXED)
    if config.attention_out_bias != config.attention_bias:
        raise ValueError(
            f"attention_bias={config.attention_bias}, attention_out_bias={config.attention_out_bias}: qwen3_next has one "
            "attention_bias for q, k, v and o"
        )
    if "moe" in config.ffn_types and not config.shared_expert_intermediate_size:
        raise ValueError("shared_expert_intermediate_size=None: qwen3_next has a gated shared expert in every MoE layer; set it")
    if config.router_type not in (None, "softmax_topk"):
        raise ValueError(f"router_type={config.router_type!r} cannot be expressed in {target}, which routes with a softmax top-k")


def config_to_hf(config, target: str):
    sparse = "moe" in config.ffn_types
    return Qwen3NextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        rms_norm_eps=config.norm_eps, max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters), attention_bias=config.attention_bias,
        attention_dropout=config.attention_dropout,
        layer_types=["full_attention" if m == "gated_attn" else "linear_attention" for m in config.mixer_types],
        linear_num_key_heads=config.delta_num_heads, linear_num_value_heads=config.delta_num_value_heads,
        linear_key_head_dim=config.delta_head_dim, linear_value_head_dim=config.delta_value_head_dim,
        linear_conv_kernel_dim=config.delta_conv_size,
        num_experts=config.num_experts if sparse else 0, num_experts_per_tok=config.num_experts_per_tok,
        moe_intermediate_size=config.moe_intermediate_size, norm_topk_prob=config.norm_topk_prob,
        shared_expert_intermediate_size=config.shared_expert_intermediate_size or 0,
        router_aux_loss_coef=config.router_aux_loss_coef, decoder_sparse_step=1,
        mlp_only_layers=[i for i, f in enumerate(config.ffn_types) if f == "mlp"],
        tie_word_embeddings=config.tie_word_embeddings, initializer_range=config.initializer_range,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )
