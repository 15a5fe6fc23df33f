"""Granite 4.0-H (transformers `granitemoehybrid`) <-> llmarch_hybrid.

Mamba-2 layers and attention (RoPE or none) in the order `layer_types` gives; every layer's FFN is
routed experts plus an ungated shared MLP (our `moe` with a shared expert), or, with
`num_local_experts=0`, the shared MLP alone (our dense `mlp`). The router takes a softmax over the
top-k logits, which is our softmax top-k with renormalised weights. The muP scalings
(`embedding_multiplier`, `residual_multiplier`, `attention_multiplier`, `logits_scaling`) are our
backbone fields of the same names.

Names: `block_sparse_moe.router` is our `mlp.gate`, `block_sparse_moe.experts` our `mlp.experts`
(on disk `block_sparse_moe.router.layer`, `.input_linear` and `.output_linear`, the same tensors),
and `shared_mlp.input_linear` [2S, H] holds the shared MLP's gate over its up projection
(`output_linear` its down), split into our `gate_proj` / `up_proj`.
"""

import re

import torch
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM
from .checkpoint import (
    refuse_split_attention_bias,
    refuse_unless_fixed,
    rename_key,
    shared_fields_from_hf,
    take_under_native_names,
)

OURS = (LlmArchHybridConfig, LlmArchHybridForCausalLM)
FFN_KINDS = ("mlp", "moe")
NATIVE_CLASSES = {"granitemoehybrid": (GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM)}
MIXER_KINDS = {"granitemoehybrid": ("attn", "mamba2")}
IGNORED_KEYS = ()
EMBED_KEY = "model.embed_tokens.weight"

_RENAMES = (  # (ours, native in memory)
    (r"(model\.layers\.\d+)\.mlp\.gate\.", r"\1.block_sparse_moe.router."),
    (r"(model\.layers\.\d+)\.mlp\.experts\.", r"\1.block_sparse_moe.experts."),
)
_ON_DISK = {  # in-memory native name -> the name in Granite's checkpoints
    "block_sparse_moe.router.weight": "block_sparse_moe.router.layer.weight",
    "block_sparse_moe.experts.gate_up_proj": "block_sparse_moe.input_linear.weight",
    "block_sparse_moe.experts.down_proj": "block_sparse_moe.output_linear.weight",
}
# Our shared or dense MLP projection -> (native tensor, which half of it: 0 gate, 1 up, None whole).
_SHARED_MLP = re.compile(r"(model\.layers\.\d+)\.mlp\.(?:shared_expert\.)?(gate|up|down)_proj\.weight")
_FIXED = {"norm_type": "rmsnorm", "mlp_gated": True, "mlp_bias": False, "qk_norm": False, "sliding_window": None}
_FIXED_ROUTED = {"router_type": "softmax_topk", "norm_topk_prob": True, "shared_expert_gate": False}


def native_key(ours: str) -> str:
    return rename_key(ours, _RENAMES)


def config_from_hf(cfg) -> dict:
    inner = int(cfg.mamba_expand * cfg.hidden_size)
    head_dim = inner // cfg.mamba_n_heads if cfg.mamba_d_head == "auto" else cfg.mamba_d_head
    if cfg.mamba_n_heads * head_dim != inner:
        raise ValueError(
            f"granitemoehybrid mamba_n_heads={cfg.mamba_n_heads} * mamba_d_head={cfg.mamba_d_head} must equal "
            f"mamba_expand * hidden_size = {inner}"
        )
    routed = cfg.num_local_experts > 0
    n = cfg.num_hidden_layers
    rope = cfg.position_embedding_type == "rope"
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.shared_intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        mixer_types=["attn" if t == "full_attention" else "mamba2" for t in cfg.layer_types],
        ffn_types=["moe" if routed else "mlp"] * n,
        hidden_act=cfg.hidden_act, norm_type="rmsnorm", norm_eps=cfg.rms_norm_eps,
        position_embedding_type="rope" if rope else "none",
        rope_parameters=dict(cfg.rope_parameters) if rope else None,
        max_position_embeddings=cfg.max_position_embeddings,
        attention_bias=cfg.attention_bias, attention_out_bias=cfg.attention_bias,
        attention_dropout=float(cfg.attention_dropout or 0.0),
        embedding_multiplier=cfg.embedding_multiplier, residual_multiplier=cfg.residual_multiplier,
        attention_multiplier=cfg.attention_multiplier, logits_scaling=cfg.logits_scaling,
        **(_experts(cfg) if routed else {}),
        mamba2_d_state=cfg.mamba_d_state, mamba2_d_conv=cfg.mamba_d_conv, mamba2_expand=cfg.mamba_expand,
        mamba2_head_dim=head_dim, mamba2_n_groups=cfg.mamba_n_groups, mamba2_chunk_size=cfg.mamba_chunk_size,
        mamba2_conv_bias=cfg.mamba_conv_bias, mamba2_proj_bias=cfg.mamba_proj_bias,
        mamba2_dt_limit=[float(v) for v in cfg.time_step_limit],
        **shared_fields_from_hf(cfg),
    )


def _experts(cfg) -> dict:
    return dict(
        num_experts=cfg.num_local_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.intermediate_size, norm_topk_prob=True,
        router_aux_loss_coef=cfg.router_aux_loss_coef, router_z_loss_coef=0.0,
        shared_expert_intermediate_size=cfg.shared_intermediate_size, shared_expert_gate=False,
    )


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    state_dict = {}
    for key, shape in expected.items():
        shared = _SHARED_MLP.fullmatch(key)
        if shared:
            state_dict[key] = _from_shared_mlp(src, *shared.groups(), shape)
            continue
        native = native_key(key)
        if native not in src:  # Granite's checkpoint names
            native = next((native.replace(mem, disk) for mem, disk in _ON_DISK.items() if native.endswith(mem)), native)
        state_dict[key] = src.take(native, shape)
    return state_dict


def _from_shared_mlp(src, layer: str, proj: str, shape: tuple) -> torch.Tensor:
    if proj == "down":
        return src.take(f"{layer}.shared_mlp.output_linear.weight", shape)
    inner, hidden = shape
    fused = src.take(f"{layer}.shared_mlp.input_linear.weight", (2 * inner, hidden))  # [gate; up]
    return fused[:inner] if proj == "gate" else fused[inner:]


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    """The shared MLP's fused input_linear from our gate and up projections; the rest by name."""
    shared_mlp = {}
    for key, shape in expected.items():
        layer, _, name = key.partition(".shared_mlp.")
        prefix = f"{layer}.mlp.shared_expert." if config.shared_expert_intermediate_size else f"{layer}.mlp."
        if name == "input_linear.weight":
            shared_mlp[key] = torch.cat([src.take(f"{prefix}gate_proj.weight"), src.take(f"{prefix}up_proj.weight")])
        elif name == "output_linear.weight":
            shared_mlp[key] = src.take(f"{prefix}down_proj.weight", shape)
    rest = {key: shape for key, shape in expected.items() if key not in shared_mlp}
    return shared_mlp | take_under_native_names(src, rest, native_key)


def check_expressible(config, target: str):
    refuse_unless_fixed(config, target, _FIXED | (_FIXED_ROUTED if "moe" in config.ffn_types else {}))
    refuse_split_attention_bias(config, target)
    kinds = set(config.ffn_types)
    if kinds == {"moe"} and not config.shared_expert_intermediate_size:
        raise ValueError(f"shared_expert_intermediate_size=None cannot be expressed in {target}: its MoE layers have a shared MLP")
    if len(kinds) > 1:
        raise ValueError(f"ffn_types={config.ffn_types}: {target} has routed experts in every layer or in none")
    if kinds == {"moe"} and config.shared_expert_intermediate_size != config.intermediate_size:
        raise ValueError(
            f"intermediate_size={config.intermediate_size} must equal shared_expert_intermediate_size="
            f"{config.shared_expert_intermediate_size} to be expressed in {target} (its one shared_intermediate_size)"
        )


def config_to_hf(config, target: str):
    routed = "moe" in config.ffn_types
    rope = config.position_embedding_type == "rope"
    return GraniteMoeHybridConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.moe_intermediate_size if routed else config.intermediate_size,
        shared_intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        hidden_act=config.hidden_act, rms_norm_eps=config.norm_eps, max_position_embeddings=config.max_position_embeddings,
        position_embedding_type="rope" if rope else None, rope_parameters=dict(config.rope_parameters) if rope else None,
        attention_bias=config.attention_bias, attention_dropout=config.attention_dropout,
        embedding_multiplier=config.embedding_multiplier, residual_multiplier=config.residual_multiplier,
        attention_multiplier=config.attention_multiplier or config.head_dim**-0.5, logits_scaling=config.logits_scaling,
        num_local_experts=config.num_experts if routed else 0, num_experts_per_tok=config.num_experts_per_tok if routed else 0,
        router_aux_loss_coef=config.router_aux_loss_coef,
        layer_types=["attention" if m == "attn" else "mamba" for m in config.mixer_types],
        mamba_n_heads=int(config.mamba2_expand * config.hidden_size) // config.mamba2_head_dim,
        mamba_n_groups=config.mamba2_n_groups, mamba_d_state=config.mamba2_d_state, mamba_d_head=config.mamba2_head_dim,
        mamba_d_conv=config.mamba2_d_conv, mamba_expand=config.mamba2_expand, mamba_chunk_size=config.mamba2_chunk_size,
        mamba_conv_bias=config.mamba2_conv_bias, mamba_proj_bias=config.mamba2_proj_bias,
        time_step_limit=tuple(config.mamba2_dt_limit), tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range, use_cache=config.use_cache, pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )
