from .deepseek import (
    LlmArchDeepseekConfig,
    LlmArchDeepseekForCausalLM,
    LlmArchDeepseekForSequenceClassification,
    LlmArchDeepseekModel,
)
from .dense import LlmArchDenseConfig, LlmArchDenseForCausalLM, LlmArchDenseForSequenceClassification, LlmArchDenseModel
from .hybrid import (
    LlmArchHybridConfig,
    LlmArchHybridForCausalLM,
    LlmArchHybridForSequenceClassification,
    LlmArchHybridModel,
)
from .moe import LlmArchMoeConfig, LlmArchMoeForCausalLM, LlmArchMoeForSequenceClassification, LlmArchMoeModel
from .causal_lm import LlmArchForCausalLM
from .modeling import LlmArchModel, LlmArchPreTrainedModel
from .ssm import LlmArchSsmConfig, LlmArchSsmForCausalLM, LlmArchSsmForSequenceClassification, LlmArchSsmModel

# One row per family: (config, base model, causal LM, sequence classification).
FAMILIES = {
    "dense": (LlmArchDenseConfig, LlmArchDenseModel, LlmArchDenseForCausalLM, LlmArchDenseForSequenceClassification),
    "hybrid": (LlmArchHybridConfig, LlmArchHybridModel, LlmArchHybridForCausalLM, LlmArchHybridForSequenceClassification),
    "moe": (LlmArchMoeConfig, LlmArchMoeModel, LlmArchMoeForCausalLM, LlmArchMoeForSequenceClassification),
    "ssm": (LlmArchSsmConfig, LlmArchSsmModel, LlmArchSsmForCausalLM, LlmArchSsmForSequenceClassification),
    "deepseek": (
        LlmArchDeepseekConfig, LlmArchDeepseekModel, LlmArchDeepseekForCausalLM, LlmArchDeepseekForSequenceClassification
    ),
}

CONFIG_CLASSES = {row[0].model_type: row[0] for row in FAMILIES.values()}
