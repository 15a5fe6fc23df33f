"""DeepSeek decoders: multi-head latent attention (`mla`) with DeepSeekMoE FFNs (sigmoid router with
a selection bias, group-limited routing, shared experts) after `first_k_dense` dense layers, e.g.
`(mla/mlp)x3 (mla/moe)x58` for DeepSeek-V3."""

from ..configuration import LlmArchConfig
from .causal_lm import LlmArchForCausalLM, LlmArchForSequenceClassification
from .modeling import LlmArchModel


class LlmArchDeepseekConfig(LlmArchConfig):
    model_type = "llmarch_deepseek"
    default_pattern = "mla/moe"


class LlmArchDeepseekModel(LlmArchModel):
    config_class = LlmArchDeepseekConfig


class LlmArchDeepseekForCausalLM(LlmArchForCausalLM):
    config_class = LlmArchDeepseekConfig
    base_model_class = LlmArchDeepseekModel


class LlmArchDeepseekForSequenceClassification(LlmArchForSequenceClassification):
    config_class = LlmArchDeepseekConfig
