"""MoE decoders: attention with routed-expert FFNs (Mixtral, Qwen-MoE, Switch-style), any mix of
dense and MoE layers through the layer pattern, e.g. `attn/mlp (attn/moe)x23` for first-k-dense."""

from ..configuration import LlmArchConfig
from .causal_lm import LlmArchForCausalLM, LlmArchForSequenceClassification
from .modeling import LlmArchModel


class LlmArchMoeConfig(LlmArchConfig):
    model_type = "llmarch_moe"
    default_pattern = "attn/moe"


class LlmArchMoeModel(LlmArchModel):
    config_class = LlmArchMoeConfig


class LlmArchMoeForCausalLM(LlmArchForCausalLM):
    config_class = LlmArchMoeConfig
    base_model_class = LlmArchMoeModel


class LlmArchMoeForSequenceClassification(LlmArchForSequenceClassification):
    config_class = LlmArchMoeConfig
