"""Jamba <-> llmarch_hybrid.

Jamba interleaves Mamba-1 layers (with RMSNorms on dt, B and C: our `mamba_inner_norms`) and
attention without positional encoding, `attn_layer_period` / `attn_layer_offset` apart, and puts a
routed FFN (softmax top-k, weights not renormalised) every `expert_layer_period` layers from
`expert_layer_offset`, a SwiGLU MLP elsewhere. Names: its `feed_forward` is our `mlp` (router
`feed_forward.router` is our `mlp.gate`), `pre_ff_layernorm` our `post_attention_layernorm`,
`final_layernorm` our `norm`. On disk each expert is separate (`feed_forward.experts.E.gate_proj`...).

Not carried, on purpose: `use_mamba_kernels`, `use_mambapy`, `use_associative_scan` (path choices;
ours are `mamba_mode` and LLMARCH_SELECTIVE_SCAN_MODE) and `output_router_logits`.
"""

import logging

from transformers import JambaConfig, JambaForCausalLM

from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM
from .checkpoint import rename_key, shared_fields_from_hf, take_under_native_names
from .moe import fused_experts

logger = logging.getLogger(__name__)

OURS = (LlmArchHybridConfig, LlmArchHybridForCausalLM)
FFN_KINDS = ("mlp", "moe")
NATIVE_CLASSES = {"jamba": (JambaConfig, JambaForCausalLM)}
MIXER_KINDS = {"jamba": ("attn", "mamba")}
IGNORED_KEYS = ()
EMBED_KEY = "model.embed_tokens.weight"
EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")

_RENAMES = (  # (ours, native), applied in order
    (r"(model\.layers\.\d+)\.mlp\.gate\.", r"\1.feed_forward.router."),
    (r"(model\.layers\.\d+)\.mlp\.", r"\1.feed_forward."),
    (r"(model\.layers\.\d+)\.post_attention_layernorm\.", r"\1.pre_ff_layernorm."),
    (r"model\.norm\.", "model.final_layernorm."),
)
# What Jamba hard-codes, as our fields must read to match it.
_FIXED = {
    "norm_type": "rmsnorm", "position_embedding_type": "none", "mlp_gated": True, "mlp_bias": False, "qk_norm": False,
    "attention_bias": False, "attention_out_bias": False, "sliding_window": None, "mamba_inner_norms": True,
    "norm_topk_prob": False, "router_type": "softmax_topk", "shared_expert_intermediate_size": None,
}


def native_key(ours: str) -> str:
    return rename_key(ours, _RENAMES)


def config_from_hf(cfg) -> dict:
    if cfg.hidden_act != "silu":
        raise ValueError(f"jamba hidden_act={cfg.hidden_act!r} cannot be converted: our Mamba mixer gates with silu")
    return dict(
        **shared_fields_from_hf(cfg),
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        mixer_types=["attn" if kind == "attention" else "mamba" for kind in cfg.layers_block_type],
        ffn_types=["moe" if experts > 1 else "mlp" for experts in cfg.layers_num_experts],
        hidden_act="silu",
        norm_type="rmsnorm",
        norm_eps=cfg.rms_norm_eps,
        position_embedding_type="none",
        max_position_embeddings=cfg.max_position_embeddings,
        attention_dropout=float(cfg.attention_dropout or 0.0),
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.intermediate_size,
        norm_topk_prob=False,
        router_aux_loss_coef=cfg.router_aux_loss_coef,
        router_z_loss_coef=0.0,
        mamba_d_state=cfg.mamba_d_state,
        mamba_d_conv=cfg.mamba_d_conv,
        mamba_expand=cfg.mamba_expand,
        mamba_dt_rank=int(cfg.mamba_dt_rank),
        mamba_conv_bias=cfg.mamba_conv_bias,
        mamba_proj_bias=cfg.mamba_proj_bias,
        mamba_inner_norms=True,
    )


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    state_dict = {}
    for key, shape in expected.items():
        native = native_key(key)
        if native in src or ".experts." not in native:
            state_dict[key] = src.take(native, shape)
        else:  # the on-disk layout: one tensor per expert
            experts, fused = native.rsplit(".", 1)
            state_dict[key] = fused_experts(src, experts, EXPERT_NAMES, fused, shape)
    return state_dict


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    return take_under_native_names(src, expected, native_key)


def check_expressible(config, target: str):
    for field, value in _FIXED.items():
        if getattr(config, field, None) != value:
            raise ValueError(f"{field}={getattr(config, field, None)!r} cannot be expressed in jamba (which needs {value!r})")
    if "moe" in config.ffn_types and config.moe_intermediate_size != config.intermediate_size:
        raise ValueError(
            f"moe_intermediate_size={config.moe_intermediate_size} cannot be expressed in jamba, whose experts are "
            f"intermediate_size={config.intermediate_size} wide like its dense MLPs"
        )
    _period(config.mixer_types, "attn", "mixer_types")
    _period(config.ffn_types, "moe", "ffn_types")
    if config.router_z_loss_coef:
        logger.warning("router_z_loss_coef=%s has no counterpart in jamba and is dropped", config.router_z_loss_coef)


def _period(kinds: list[str], kind: str, field: str) -> tuple[int, int]:
    """(period, offset) such that layer i is `kind` exactly when i % period == offset, as Jamba places
    its attention and expert layers; a ValueError naming `field` if no such pair exists."""
    n = len(kinds)
    for period in range(1, n + 1):
        for offset in range(period):
            if all((kinds[i] == kind) == (i % period == offset) for i in range(n)):
                return period, offset
    raise ValueError(f"{field}={kinds} cannot be expressed in jamba: its {kind} layers are not every k-th layer from an offset")


def config_to_hf(config, target: str):
    attn_period, attn_offset = _period(config.mixer_types, "attn", "mixer_types")
    experts_period, experts_offset = _period(config.ffn_types, "moe", "ffn_types")
    from ..mixers.mamba import dt_rank

    return JambaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, hidden_act="silu", rms_norm_eps=config.norm_eps,
        max_position_embeddings=config.max_position_embeddings, attention_dropout=config.attention_dropout,
        num_experts=config.num_experts, num_experts_per_tok=config.num_experts_per_tok,
        router_aux_loss_coef=config.router_aux_loss_coef, attn_layer_period=attn_period, attn_layer_offset=attn_offset,
        expert_layer_period=experts_period, expert_layer_offset=experts_offset, mamba_d_state=config.mamba_d_state,
        mamba_d_conv=config.mamba_d_conv, mamba_expand=config.mamba_expand, mamba_dt_rank=dt_rank(config),
        mamba_conv_bias=config.mamba_conv_bias, mamba_proj_bias=config.mamba_proj_bias,
        tie_word_embeddings=config.tie_word_embeddings, initializer_range=config.initializer_range,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )
