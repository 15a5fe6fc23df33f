"""Mamba / Mamba-2 <-> llmarch_ssm.

The mixers' parameter names are transformers' (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `dt_bias`,
`A_log`, `D`, `norm`, `out_proj`), so only the module paths change: `backbone.embeddings` ->
`model.embed_tokens`, `backbone.layers.N.norm` -> `model.layers.N.input_layernorm`,
`backbone.layers.N.mixer` -> `model.layers.N.mamba`, `backbone.norm_f` -> `model.norm`.

`residual_in_fp32` is our backbone field of the same name (an fp32 residual stream under bf16 weights).
Not carried, on purpose: `use_mambapy` / `use_associative_scan` (transformers' own path choices; ours is
`mamba_mode`), and the init-only `time_step_scale`, `time_step_init_scheme` and
`rescale_prenorm_residual`.
"""

import logging

from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from ..models.ssm import LlmArchSsmConfig, LlmArchSsmForCausalLM
from .checkpoint import rename_key, shared_fields_from_hf, take_under_native_names

logger = logging.getLogger(__name__)

OURS = (LlmArchSsmConfig, LlmArchSsmForCausalLM)
FFN_KINDS = ("none",)
NATIVE_CLASSES = {"mamba": (MambaConfig, MambaForCausalLM), "mamba2": (Mamba2Config, Mamba2ForCausalLM)}
MIXER_KINDS = {"mamba": ("mamba",), "mamba2": ("mamba2",)}
IGNORED_KEYS = ()
EMBED_KEY = "backbone.embeddings.weight"

_RENAMES = (  # (ours, native) module paths
    (r"model\.embed_tokens\.", "backbone.embeddings."),
    (r"model\.norm\.", "backbone.norm_f."),
    (r"model\.layers\.(\d+)\.input_layernorm\.", r"backbone.layers.\1.norm."),
    (r"model\.layers\.(\d+)\.mamba\.", r"backbone.layers.\1.mixer."),
)


def native_key(ours: str) -> str:
    return rename_key(ours, _RENAMES)


def config_from_hf(cfg) -> dict:
    if cfg.hidden_act != "silu":
        raise ValueError(f"{cfg.model_type} hidden_act={cfg.hidden_act!r} cannot be converted: our mixers gate with silu")
    n = cfg.num_hidden_layers
    fields = dict(
        **shared_fields_from_hf(cfg),
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_attention_heads=1,  # no attention layer; a valid value for the shared fields
        mixer_types=[cfg.model_type] * n,
        ffn_types=["none"] * n,
        norm_type="rmsnorm",
        norm_eps=cfg.layer_norm_epsilon,
        position_embedding_type="none",
        ssm_dt_min=cfg.time_step_min,
        ssm_dt_max=cfg.time_step_max,
        ssm_dt_init_floor=cfg.time_step_floor,
        residual_in_fp32=cfg.residual_in_fp32,
    )
    return fields | (_mamba_fields(cfg) if cfg.model_type == "mamba" else _mamba2_fields(cfg))


def _mamba_fields(cfg) -> dict:
    return dict(
        mamba_d_state=cfg.state_size,
        mamba_d_conv=cfg.conv_kernel,
        mamba_expand=cfg.expand,
        mamba_dt_rank=int(cfg.time_step_rank),
        mamba_conv_bias=cfg.use_conv_bias,
        mamba_proj_bias=cfg.use_bias,
    )


def _mamba2_fields(cfg) -> dict:
    if cfg.num_heads * cfg.head_dim != cfg.expand * cfg.hidden_size:
        raise ValueError(
            f"mamba2 num_heads={cfg.num_heads} * head_dim={cfg.head_dim} must equal expand={cfg.expand} * "
            f"hidden_size={cfg.hidden_size}: the native model cannot run this config either"
        )
    return dict(
        mamba2_d_state=cfg.state_size,
        mamba2_d_conv=cfg.conv_kernel,
        mamba2_expand=cfg.expand,
        mamba2_head_dim=cfg.head_dim,
        mamba2_n_groups=cfg.n_groups,
        mamba2_chunk_size=cfg.chunk_size,
        mamba2_conv_bias=cfg.use_conv_bias,
        mamba2_proj_bias=cfg.use_bias,
        mamba2_dt_limit=[float(v) for v in cfg.time_step_limit],
    )


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    return {key: src.take(native_key(key), shape) for key, shape in expected.items()}


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    return take_under_native_names(src, expected, native_key)


def check_expressible(config, target: str):
    if config.norm_type != "rmsnorm":
        raise ValueError(f"norm_type={config.norm_type!r} cannot be expressed in {target}, which uses RMSNorm")
    if config.position_embedding_type != "none":
        raise ValueError(
            f"position_embedding_type={config.position_embedding_type!r} cannot be expressed in {target}, which has no positions"
        )
    if config.hidden_dropout:
        logger.warning("hidden_dropout=%s has no counterpart in %s and is dropped", config.hidden_dropout, target)


def config_to_hf(config, target: str):
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        layer_norm_epsilon=config.norm_eps,
        hidden_act="silu",
        tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        time_step_min=config.ssm_dt_min,
        time_step_max=config.ssm_dt_max,
        time_step_floor=config.ssm_dt_init_floor,
        residual_in_fp32=config.residual_in_fp32,
    )
    if target == "mamba":
        from ..mixers.mamba import dt_rank

        return MambaConfig(
            **common, state_size=config.mamba_d_state, conv_kernel=config.mamba_d_conv, expand=config.mamba_expand,
            time_step_rank=dt_rank(config), use_conv_bias=config.mamba_conv_bias, use_bias=config.mamba_proj_bias,
        )
    inner = int(config.mamba2_expand * config.hidden_size)
    return Mamba2Config(
        **common, state_size=config.mamba2_d_state, conv_kernel=config.mamba2_d_conv, expand=config.mamba2_expand,
        num_heads=inner // config.mamba2_head_dim, head_dim=config.mamba2_head_dim, n_groups=config.mamba2_n_groups,
        chunk_size=config.mamba2_chunk_size, use_conv_bias=config.mamba2_conv_bias, use_bias=config.mamba2_proj_bias,
        time_step_limit=tuple(config.mamba2_dt_limit),
    )
