"""Token mixers. `build_mixer(config, layer_idx)` picks the class named by `config.mixer_types`.

A mixer class takes `(config, layer_idx)`, names its attribute in the block with `block_attr`,
and returns `(output, attention_weights_or_None)` from `forward(hidden_states, attention_mask=...,
position_ids=..., position_embeddings=..., cache=..., **kwargs)`. `register_mixer` adds
one under a pattern name with the transformers layer type its cache needs. A `par(a,b)` name
builds `LlmArchParallelMixer` over the named classes (`parallel.py`).
"""

from ..pattern import parallel_parts
from .attention import LlmArchAttention, LlmArchGatedAttention
from .delta_net import LlmArchDeltaNet, LlmArchGatedDeltaNet
from .linear_attn import LlmArchLinearAttention
from .mamba import LlmArchSelectiveSSM
from .mamba2 import LlmArchSSD
from .dsa import LlmArchDSA
from .hyena import LlmArchHyena
from .mla import LlmArchMLA
from .parallel import LlmArchParallelMixer
from .registry import FFN_KINDS, MIXER_LAYER_TYPES, MIXER_TP_PLANS
from .retention import LlmArchRetention
from .rwkv4 import LlmArchTimeMix4
from .rwkv7 import LlmArchTimeMix7
from .s4d import LlmArchS4D

MIXER_CLASSES = {
    "attn": LlmArchAttention,
    "swa": LlmArchAttention,
    "gated_attn": LlmArchGatedAttention,
    "retention": LlmArchRetention,
    "linear_attn": LlmArchLinearAttention,
    "deltanet": LlmArchDeltaNet,
    "gated_deltanet": LlmArchGatedDeltaNet,
    "rwkv4": LlmArchTimeMix4,
    "rwkv7": LlmArchTimeMix7,
    "hyena": LlmArchHyena,
    "mamba": LlmArchSelectiveSSM,
    "mamba2": LlmArchSSD,
    "s4d": LlmArchS4D,
    "mla": LlmArchMLA,
    "dsa": LlmArchDSA,
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
    names = [part for mixer in config.mixer_types for part in parallel_parts(mixer) or [mixer]]
    classes = [MIXER_CLASSES[name] for name in dict.fromkeys(names)]
    if len(names) > len(config.mixer_types):  # some layer is a par(): its own fields too
        classes.append(LlmArchParallelMixer)
    for cls in classes:
        hook = getattr(cls, "validate", None)
        if hook is not None:
            hook(config)


def mixer_config_fields() -> set[str]:
    """Every config field a registered mixer owns (its `config_fields`), for checking override names."""
    classes = [*MIXER_CLASSES.values(), LlmArchParallelMixer]
    return {name for cls in classes for name in getattr(cls, "config_fields", {})}


def build_mixer(config, layer_idx: int):
    name = config.mixer_types[layer_idx]
    if parallel_parts(name) is not None:
        return LlmArchParallelMixer(config, layer_idx, MIXER_CLASSES)
    return MIXER_CLASSES[name](config, layer_idx)


__all__ = [
    "FFN_KINDS",
    "MIXER_CLASSES",
    "MIXER_LAYER_TYPES",
    "LlmArchAttention",
    "LlmArchDSA",
    "LlmArchDeltaNet",
    "LlmArchGatedDeltaNet",
    "LlmArchHyena",
    "LlmArchGatedAttention",
    "LlmArchLinearAttention",
    "LlmArchMLA",
    "LlmArchParallelMixer",
    "LlmArchRetention",
    "LlmArchS4D",
    "LlmArchSSD",
    "LlmArchSelectiveSSM",
    "LlmArchTimeMix4",
    "LlmArchTimeMix7",
    "build_mixer",
    "mixer_config_fields",
    "register_mixer",
    "validate_mixer_fields",
]
