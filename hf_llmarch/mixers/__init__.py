"""Token mixers. `build_mixer(config, layer_idx)` picks the class named by `config.mixer_types`."""

from .registry import ATTENTION_LAYER_TYPES, FFN_KINDS, MIXER_LAYER_TYPES
from .attention import LlmArchAttention
from .retention import LlmArchRetention

MIXER_CLASSES = {
    "attn": LlmArchAttention,
    "swa": LlmArchAttention,
    "retention": LlmArchRetention,
}


def register_mixer(name: str, cls, layer_type: str):
    MIXER_CLASSES[name] = cls
    MIXER_LAYER_TYPES[name] = layer_type


def build_mixer(config, layer_idx: int):
    return MIXER_CLASSES[config.mixer_types[layer_idx]](config, layer_idx)


__all__ = [
    "LlmArchAttention",
    "LlmArchRetention","ATTENTION_LAYER_TYPES", "FFN_KINDS", "MIXER_CLASSES", "MIXER_LAYER_TYPES", "build_mixer", "register_mixer"]
