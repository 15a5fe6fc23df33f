"""LLaMA / Mistral / Qwen2 / Qwen3 <-> llmarch_dense.

Their module names are ours one to one, so the state dict only keeps or drops the `model.`
prefix; the work is mapping the configs, and refusing what the other side cannot express.
"""

from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ..models.dense import LlmArchDenseConfig, LlmArchDenseForCausalLM
from .checkpoint import refuse_split_attention_bias, refuse_unless_fixed, shared_fields_from_hf

# Our family these checkpoints convert to, and the FFN kinds its native layers express.
OURS = (LlmArchDenseConfig, LlmArchDenseForCausalLM)
FFN_KINDS = ("mlp",)
NATIVE_CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
MIXER_KINDS = dict.fromkeys(NATIVE_CLASSES, ("attn", "swa"))
# Families whose attention_bias covers q, k, v and o together.
ONE_ATTENTION_BIAS = ("llama", "qwen3")
# Families that set sliding layers per layer through `layer_types`.
PER_LAYER_WINDOWS = ("qwen2", "qwen3")
# Rotary inverse frequencies: derived from the config; older checkpoints saved them as buffers.
IGNORED_KEYS = (r"(model\.)?rotary_emb\.inv_freq", r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
EMBED_KEY = "model.embed_tokens.weight"

# What each target hard-codes, as our config fields must read to match it.
_FIXED = {
    "llama": {"qk_norm": False},
    "mistral": {"qk_norm": False, "attention_bias": False, "attention_out_bias": False, "mlp_bias": False},
    "qwen2": {"qk_norm": False, "attention_bias": True, "attention_out_bias": False, "mlp_bias": False},
    "qwen3": {"qk_norm": True, "mlp_bias": False},
    "qwen2_moe": {"qk_norm": False, "attention_out_bias": False, "mlp_bias": False},  # q/k/v bias: `qkv_bias`
}
_COMMON = {"norm_type": "rmsnorm", "position_embedding_type": "rope", "mlp_gated": True}


def config_from_hf(cfg, model_type: str | None = None, mixers: list[str] | None = None) -> dict:
    """Our config kwargs for a native llama / mistral / qwen2 / qwen3 config. MoE adapters reuse it
    for their attention, naming the dense family whose conventions apply and their own mixers.

    Ignored on purpose: llama `pretraining_tp` (transformers 5 never reads it; the sliced
    matmuls it selected were numerically the same product) and a mistral `layer_types`
    (MistralModel ignores it and windows every layer by `sliding_window`)."""
    model_type = model_type or cfg.model_type
    mixers = mixers or _mixers_from_hf(cfg)
    if model_type in ONE_ATTENTION_BIAS:
        # Their attention_bias puts a bias on q, k, v *and* o; qwen3 has no MLP bias field.
        bias, out_bias, mlp_bias = cfg.attention_bias, cfg.attention_bias, getattr(cfg, "mlp_bias", False)
    else:
        bias, out_bias, mlp_bias = model_type == "qwen2", False, False
    return dict(
        **shared_fields_from_hf(cfg),
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        mixer_types=mixers,
        ffn_types=["mlp"] * len(mixers),
        hidden_act=cfg.hidden_act,
        mlp_gated=True,
        mlp_bias=mlp_bias,
        norm_type="rmsnorm",
        norm_eps=cfg.rms_norm_eps,
        position_embedding_type="rope",
        qk_norm=model_type == "qwen3",
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=dict(cfg.rope_parameters),
        attention_bias=bias,
        attention_out_bias=out_bias,
        sliding_window=cfg.sliding_window if "swa" in mixers else None,
        attention_dropout=float(cfg.attention_dropout or 0.0),
    )


def _mixers_from_hf(cfg) -> list[str]:
    n = cfg.num_hidden_layers
    if cfg.model_type == "llama":
        return ["attn"] * n
    if cfg.model_type == "mistral":
        return ["attn" if cfg.sliding_window is None else "swa"] * n
    return mixers_from_layer_types(cfg)


def mixers_from_layer_types(cfg) -> list[str]:
    """Our mixers from a native `layer_types` (Qwen2/3 and Qwen2-MoE derive it from use_sliding_window /
    max_window_layers when not given)."""
    layer_types = list(cfg.layer_types)
    if "sliding_attention" in layer_types and cfg.sliding_window is None:
        raise ValueError(
            f"{cfg.model_type} layer_types={layer_types} has sliding layers but sliding_window is None "
            f"(use_sliding_window={cfg.use_sliding_window}): the native model cannot run this config either"
        )
    unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ValueError(f"{cfg.model_type} layer_types contains {unknown}; only full_attention and sliding_attention convert")
    return ["swa" if t == "sliding_attention" else "attn" for t in layer_types]


def check_expressible(config, target: str):
    """Raise a ValueError naming the first field of ours that `target` cannot reproduce."""
    refuse_unless_fixed(config, target, {**_COMMON, **_FIXED[target]})
    if target in ONE_ATTENTION_BIAS:
        refuse_split_attention_bias(config, target)
    swa = [m == "swa" for m in config.mixer_types]
    if target == "llama" and any(swa):
        raise ValueError(f"mixer_types={config.mixer_types}: llama has no sliding-window layers; use mistral, qwen2 or qwen3")
    if target == "mistral" and any(swa) and not all(swa):
        raise ValueError(f"mixer_types={config.mixer_types}: mistral windows all layers or none; use qwen2 or qwen3 for a per-layer mix")


def config_to_hf(config, target: str):
    kwargs = common_config_kwargs(config)
    swa = [m == "swa" for m in config.mixer_types]
    if target == "llama":
        kwargs.update(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)
    elif target == "mistral":
        kwargs.update(sliding_window=config.sliding_window if any(swa) else None)
    if target in PER_LAYER_WINDOWS:
        kwargs.update(per_layer_windows(config))
    if target == "qwen3":
        kwargs.update(attention_bias=config.attention_bias)
    return NATIVE_CLASSES[target][0](**kwargs)


def per_layer_windows(config) -> dict:
    """Qwen2-style window fields for our mixers. Explicit layer_types win over max_window_layers; the
    latter is set only to agree with them."""
    swa = [m == "swa" for m in config.mixer_types]
    return dict(
        use_sliding_window=any(swa),
        sliding_window=config.sliding_window if any(swa) else None,
        max_window_layers=swa.index(True) if any(swa) else config.num_hidden_layers,
        layer_types=["sliding_attention" if s else "full_attention" for s in swa],
    )


def common_config_kwargs(config) -> dict:
    """Native config kwargs every llama-like family (dense or MoE) shares."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.norm_eps,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters=dict(config.rope_parameters),
        attention_dropout=config.attention_dropout,
    )


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    """Ours from native: the same names, the `model.` prefix optional (a saved bare LlamaModel lacks it)."""
    prefix = "model." if any(k.startswith("model.") for k in src.keys()) else ""
    return {key: src.take(prefix + key.removeprefix("model."), shape) for key, shape in expected.items()}


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    return {key: src.take(key, shape) for key, shape in expected.items()}
