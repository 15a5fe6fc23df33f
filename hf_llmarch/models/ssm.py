"""State-space decoders: Mamba (`mamba`), Mamba-2 (`mamba2`) or S4D (`s4d`) mixers, each layer
without an FFN by default as in Mamba (`(mamba)x24`); any pattern may add FFNs or attention."""

from ..configuration import LlmArchConfig
from .causal_lm import LlmArchForCausalLM, LlmArchForSequenceClassification
from .modeling import LlmArchModel


class LlmArchSsmConfig(LlmArchConfig):
    model_type = "llmarch_ssm"
    default_pattern = "mamba/none"
    default_ffn = "none"


class LlmArchSsmModel(LlmArchModel):
    config_class = LlmArchSsmConfig


class LlmArchSsmForCausalLM(LlmArchForCausalLM):
    config_class = LlmArchSsmConfig
    base_model_class = LlmArchSsmModel


class LlmArchSsmForSequenceClassification(LlmArchForSequenceClassification):
    config_class = LlmArchSsmConfig
