"""Hybrid decoders: any per-layer mix of attention and recurrent mixers (RetNet retention, ...)
with dense or MoE FFNs, e.g. `(retention/moe attn/mlp)x2`."""

from ..configuration import LlmArchConfig
from .causal_lm import LlmArchForCausalLM, LlmArchForSequenceClassification
from .modeling import LlmArchModel


class LlmArchHybridConfig(LlmArchConfig):
    model_type = "llmarch_hybrid"
    default_pattern = "retention/moe attn/mlp"


class LlmArchHybridModel(LlmArchModel):
    config_class = LlmArchHybridConfig


class LlmArchHybridForCausalLM(LlmArchForCausalLM):
    config_class = LlmArchHybridConfig
    base_model_class = LlmArchHybridModel


class LlmArchHybridForSequenceClassification(LlmArchForSequenceClassification):
    config_class = LlmArchHybridConfig
