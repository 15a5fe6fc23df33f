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
from .encoder import LlmArchEncoderConfig, LlmArchEncoderModel
from .encoder_heads import (
    LlmArchEncoderForMaskedLM,
    LlmArchEncoderForMultipleChoice,
    LlmArchEncoderForPreTraining,
    LlmArchEncoderForQuestionAnswering,
    LlmArchEncoderForReplacedTokenDetection,
    LlmArchEncoderForSequenceClassification,
    LlmArchEncoderForTokenClassification,
)
from .seq2seq import LlmArchForConditionalGeneration, LlmArchSeq2SeqConfig, LlmArchSeq2SeqModel
from .moe import LlmArchMoeConfig, LlmArchMoeForCausalLM, LlmArchMoeForSequenceClassification, LlmArchMoeModel
from .causal_lm import LlmArchForCausalLM
from .modeling import LlmArchModel, LlmArchPreTrainedModel
from .ssm import LlmArchSsmConfig, LlmArchSsmForCausalLM, LlmArchSsmForSequenceClassification, LlmArchSsmModel

# One row per decoder family: (config, base model, causal LM, sequence classification).
FAMILIES = {
    "dense": (LlmArchDenseConfig, LlmArchDenseModel, LlmArchDenseForCausalLM, LlmArchDenseForSequenceClassification),
    "hybrid": (LlmArchHybridConfig, LlmArchHybridModel, LlmArchHybridForCausalLM, LlmArchHybridForSequenceClassification),
    "moe": (LlmArchMoeConfig, LlmArchMoeModel, LlmArchMoeForCausalLM, LlmArchMoeForSequenceClassification),
    "ssm": (LlmArchSsmConfig, LlmArchSsmModel, LlmArchSsmForCausalLM, LlmArchSsmForSequenceClassification),
    "deepseek": (
        LlmArchDeepseekConfig, LlmArchDeepseekModel, LlmArchDeepseekForCausalLM, LlmArchDeepseekForSequenceClassification
    ),
}

# Encoder and encoder-decoder families: config and the model class each transformers Auto class maps it to. ELECTRA's
# discriminator, LlmArchEncoderForReplacedTokenDetection, has no Auto class: AutoModelForPreTraining
# gives every encoder config the MLM (+ NSP/SOP) model; converting ElectraForPreTraining gives the
# discriminator, and a saved one reloads by the class its config.json names.
HEAD_FAMILIES = {
    "encoder": (
        LlmArchEncoderConfig,
        {
            "AutoModel": LlmArchEncoderModel,
            "AutoModelForMaskedLM": LlmArchEncoderForMaskedLM,
            "AutoModelForPreTraining": LlmArchEncoderForPreTraining,
            "AutoModelForSequenceClassification": LlmArchEncoderForSequenceClassification,
            "AutoModelForTokenClassification": LlmArchEncoderForTokenClassification,
            "AutoModelForQuestionAnswering": LlmArchEncoderForQuestionAnswering,
            "AutoModelForMultipleChoice": LlmArchEncoderForMultipleChoice,
        },
    ),
    "seq2seq": (
        LlmArchSeq2SeqConfig,
        {"AutoModel": LlmArchSeq2SeqModel, "AutoModelForSeq2SeqLM": LlmArchForConditionalGeneration},
    ),
}

CONFIG_CLASSES = {row[0].model_type: row[0] for row in (*FAMILIES.values(), *HEAD_FAMILIES.values())}
__all__ = [
    "CONFIG_CLASSES",
    "HEAD_FAMILIES",
    "FAMILIES",
    "LlmArchEncoderForReplacedTokenDetection",
    "LlmArchForCausalLM",
    "LlmArchModel",
    "LlmArchPreTrainedModel",
]
