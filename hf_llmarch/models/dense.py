"""Dense decoders: GPT-2 style (learned positions, LayerNorm, GELU MLP, biases) and
LLaMA / Mistral / Qwen style (RoPE, SwiGLU, RMSNorm, GQA, sliding window, QK-norm).
Which one is a matter of config fields; see the presets in configs/."""

from ..configuration import LlmArchConfig
from .causal_lm import LlmArchForCausalLM, LlmArchForSequenceClassification
from .modeling import LlmArchModel


class LlmArchDenseConfig(LlmArchConfig):
    model_type = "llmarch_dense"
    default_pattern = "attn/mlp"


class LlmArchDenseModel(LlmArchModel):
    config_class = LlmArchDenseConfig


class LlmArchDenseForCausalLM(LlmArchForCausalLM):
    config_class = LlmArchDenseConfig
    base_model_class = LlmArchDenseModel


class LlmArchDenseForSequenceClassification(LlmArchForSequenceClassification):
    config_class = LlmArchDenseConfig
