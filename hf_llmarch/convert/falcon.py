"""Falcon-H1 (transformers `falcon_h1`) <-> llmarch_hybrid.

Every Falcon-H1 layer runs attention and Mamba-2 side by side on the same normed input and adds
their outputs: our `par(attn,mamba2)` mixer, with a gated MLP after it. Falcon-H1's muP
multipliers map onto fields of the same meaning:
- `ssm_in_multiplier` / `attention_in_multiplier` and `ssm_out_multiplier` / `attention_out_multiplier`
  -> `parallel_in_multipliers` / `parallel_out_multipliers` keyed by "mamba2" and "attn";
- `ssm_multipliers` (the in_proj "mup vector" over z, x, B, C, dt) -> `mamba2_proj_multipliers`;
- `mlp_multipliers` (gate, down) -> `mlp_multipliers`; `embedding_multiplier` -> ours;
- `lm_head_multiplier` m -> `logits_scaling` 1 / m;
- `key_multiplier` k scales every key, so the scores by k: `attention_multiplier` = k / sqrt(head_dim).
`mamba_d_ssm` is `mamba2_d_inner`, `mamba_rms_norm=False` (the gate without a norm) is
`mamba2_gate_norm=False`, and `mamba_norm_before_gate` keeps its name.

Names: Falcon's `self_attn` and `mamba` sit under our `parallel`, `feed_forward` is our `mlp`,
`pre_ff_layernorm` our `post_attention_layernorm`, `final_layernorm` our `norm`. The mup vector is
a buffer Falcon rebuilds from the config, never a checkpoint tensor.
"""

from transformers import FalconH1Config, FalconH1ForCausalLM

from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM
from .checkpoint import (
    refuse_split_attention_bias,
    refuse_unless_fixed,
    rename_key,
    shared_fields_from_hf,
    take_under_native_names,
)

OURS = (LlmArchHybridConfig, LlmArchHybridForCausalLM)
FFN_KINDS = ("mlp",)
PARALLEL = "par(attn,mamba2)"
NATIVE_CLASSES = {"falcon_h1": (FalconH1Config, FalconH1ForCausalLM)}
MIXER_KINDS = {"falcon_h1": (PARALLEL, "par(mamba2,attn)")}
IGNORED_KEYS = ()
EMBED_KEY = "model.embed_tokens.weight"

_RENAMES = (  # (ours, native)
    (r"(model\.layers\.\d+)\.parallel\.", r"\1."),
    (r"(model\.layers\.\d+)\.mlp\.", r"\1.feed_forward."),
    (r"(model\.layers\.\d+)\.post_attention_layernorm\.", r"\1.pre_ff_layernorm."),
    (r"model\.norm\.", "model.final_layernorm."),
)
_FIXED = {
    "norm_type": "rmsnorm", "mlp_gated": True, "qk_norm": False, "sliding_window": None, "position_embedding_type": "rope",
    "residual_multiplier": 1.0, "hidden_act": "silu",
}


def native_key(ours: str) -> str:
    return rename_key(ours, _RENAMES)


def config_from_hf(cfg) -> dict:
    if cfg.hidden_act != "silu":
        # Falcon's Mamba runs its conv through hidden_act; ours (as Mamba-2) through silu.
        raise ValueError(f"falcon_h1 hidden_act={cfg.hidden_act!r} is not supported: its Mamba conv activation would differ from silu")
    if cfg.projectors_bias != cfg.mamba_proj_bias:
        raise ValueError(
            f"falcon_h1 projectors_bias={cfg.projectors_bias} (Mamba out_proj) with mamba_proj_bias={cfg.mamba_proj_bias} "
            "(in_proj) is not supported: our mamba2_proj_bias covers both projections"
        )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inner = cfg.mamba_d_ssm if cfg.mamba_d_ssm is not None else int(cfg.mamba_expand * cfg.hidden_size)
    if cfg.mamba_n_heads * cfg.mamba_d_head != inner:
        raise ValueError(f"falcon_h1 mamba_n_heads={cfg.mamba_n_heads} * mamba_d_head={cfg.mamba_d_head} must equal mamba_d_ssm={inner}")
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads, head_dim=head_dim,
        mixer_types=[PARALLEL] * cfg.num_hidden_layers, ffn_types=["mlp"] * cfg.num_hidden_layers,
        hidden_act=cfg.hidden_act, norm_type="rmsnorm", norm_eps=cfg.rms_norm_eps, position_embedding_type="rope",
        rope_parameters=dict(cfg.rope_parameters), max_position_embeddings=cfg.max_position_embeddings,
        attention_bias=cfg.attention_bias, attention_out_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
        attention_dropout=float(cfg.attention_dropout or 0.0),
        embedding_multiplier=cfg.embedding_multiplier, logits_scaling=1.0 / cfg.lm_head_multiplier,
        attention_multiplier=None if cfg.key_multiplier == 1.0 else cfg.key_multiplier * head_dim**-0.5,
        mlp_multipliers=_unless_neutral(cfg.mlp_multipliers),
        parallel_in_multipliers={"attn": cfg.attention_in_multiplier, "mamba2": cfg.ssm_in_multiplier},
        parallel_out_multipliers={"attn": cfg.attention_out_multiplier, "mamba2": cfg.ssm_out_multiplier},
        mamba2_d_state=cfg.mamba_d_state, mamba2_d_conv=cfg.mamba_d_conv, mamba2_expand=cfg.mamba_expand,
        mamba2_d_inner=None if cfg.mamba_d_ssm is None else cfg.mamba_d_ssm,
        mamba2_head_dim=cfg.mamba_d_head, mamba2_n_groups=cfg.mamba_n_groups, mamba2_chunk_size=cfg.mamba_chunk_size,
        mamba2_conv_bias=cfg.mamba_conv_bias, mamba2_proj_bias=cfg.mamba_proj_bias,
        mamba2_gate_norm=cfg.mamba_rms_norm, mamba2_norm_before_gate=cfg.mamba_norm_before_gate,
        mamba2_proj_multipliers=_unless_neutral(cfg.ssm_multipliers),
        mamba2_dt_limit=[float(v) for v in cfg.time_step_limit],
        **shared_fields_from_hf(cfg),
    )


def _unless_neutral(multipliers) -> list[float] | None:
    return None if multipliers is None or all(m == 1.0 for m in multipliers) else [float(m) for m in multipliers]


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    return {key: src.take(native_key(key), shape) for key, shape in expected.items()}


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    return take_under_native_names(src, expected, native_key)


def check_expressible(config, target: str):
    refuse_unless_fixed(config, target, _FIXED)
    refuse_split_attention_bias(config, target)


def config_to_hf(config, target: str):
    inner = config.mamba2_d_inner or int(config.mamba2_expand * config.hidden_size)
    parallel_in, parallel_out = config.parallel_in_multipliers or {}, config.parallel_out_multipliers or {}
    key_multiplier = 1.0 if config.attention_multiplier is None else config.attention_multiplier * config.head_dim**0.5
    return FalconH1Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        rms_norm_eps=config.norm_eps, max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters), attention_bias=config.attention_bias, mlp_bias=config.mlp_bias,
        attention_dropout=config.attention_dropout,
        embedding_multiplier=config.embedding_multiplier, lm_head_multiplier=1.0 / config.logits_scaling,
        key_multiplier=key_multiplier, mlp_multipliers=list(config.mlp_multipliers or [1.0, 1.0]),
        attention_in_multiplier=parallel_in.get("attn", 1.0), attention_out_multiplier=parallel_out.get("attn", 1.0),
        ssm_in_multiplier=parallel_in.get("mamba2", 1.0), ssm_out_multiplier=parallel_out.get("mamba2", 1.0),
        ssm_multipliers=list(config.mamba2_proj_multipliers or [1.0] * 5),
        mamba_d_ssm=inner, mamba_n_heads=inner // config.mamba2_head_dim, mamba_d_head=config.mamba2_head_dim,
        mamba_n_groups=config.mamba2_n_groups, mamba_d_state=config.mamba2_d_state, mamba_d_conv=config.mamba2_d_conv,
        mamba_expand=config.mamba2_expand, mamba_chunk_size=config.mamba2_chunk_size,
        mamba_conv_bias=config.mamba2_conv_bias, mamba_proj_bias=config.mamba2_proj_bias,
        projectors_bias=config.mamba2_proj_bias, mamba_rms_norm=config.mamba2_gate_norm,
        mamba_norm_before_gate=config.mamba2_norm_before_gate, time_step_limit=tuple(config.mamba2_dt_limit),
        tie_word_embeddings=config.tie_word_embeddings, initializer_range=config.initializer_range,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )
