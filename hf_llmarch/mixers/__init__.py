"""Token mixers. `build_mixer(config, layer_idx)` picks the class named by `config.mixer_types`.

A mixer class takes `(config, layer_idx)`, names its attribute in the block with `block_attr`,
and returns `(output, attention_weights_or_None)` from `forward(hidden_states, attention_mask=...,
position_ids=..., position_embeddings=..., cache=..., **kwargs)`. `register_mixer` adds
one under a pattern name with the transformers layer type its cache needs.
"""

from .attention import LlmArchAttention
from .mamba import LlmArchSelectiveSSM
from .mamba2 import LlmArchSSD
from .registry import FFN_KINDS, MIXER_LAYER_TYPES, MIXER_TP_PLANS
from .retention import LlmArchRetention
from .s4d import LlmArchS4D

MIXER_CLASSES = {
    "attn": LlmArchAttention,
    "swa": LlmArchAttention,
    "retention": LlmArchRetention,
    "mamba": LlmArchSelectiveSSM,
    "mamba2": LlmArchSSD,
    "s4d": LlmArchS4D,
}


def register_mixer(name: str, cls, layer_type: str, tp_plan: dict[str, str] | None = None):
    """Make `name` usable in layer patterns; layer_type is e.g. "full_attention" or "linear_attention".
    `tp_plan` maps the mixer's projections (relative to the block, e.g. "my_mixer.q_proj") to
    tensor-parallel styles; without one the mixer stays replicated under tensor parallelism."""
    MIXER_CLASSES[name] = cls
    MIXER_LAYER_TYPES[name] = layer_type
    MIXER_TP_PLANS[name] = dict(tp_plan or {})


def validate_mixer_fields(config) -> None:
    """Run the `validate(config)` hook of every mixer kind in the stack: it fills that mixer's own
    config fields with their defaults and raises a ValueError naming a bad one."""
    for name in dict.fromkeys(config.mixer_types):
        hook = getattr(MIXER_CLASSES[name], "validate", None)
        if hook is not None:
            hook(config)


def mixer_config_fields() -> set[str]:
    """Every config field a registered mixer owns (its `config_fields`), for checking override names."""
    return {name for cls in MIXER_CLASSES.values() for name in getattr(cls, "config_fields", {})}


def build_mixer(config, layer_idx: int):
    return MIXER_CLASSES[config.mixer_types[layer_idx]](config, layer_idx)


__all__ = [
    "FFN_KINDS",
    "MIXER_CLASSES",
    "MIXER_LAYER_TYPES",
    "LlmArchAttention",
    "LlmArchRetention",
    "LlmArchS4D",
    "LlmArchSSD",
    "LlmArchSelectiveSSM",
    "build_mixer",
    "mixer_config_fields",
    "register_mixer",
    "validate_mixer_fields",
]
