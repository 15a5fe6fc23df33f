"""hf_llmarch: LLM architecture families as first-class transformers models.

`import hf_llmarch` registers every family with the Auto classes and PEFT's default LoRA
targets; afterwards `AutoModelForCausalLM.from_pretrained(path)` loads our checkpoints.
"""

import logging

import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration import LlmArchConfig
from .models import HEAD_FAMILIES, FAMILIES, LlmArchForCausalLM, LlmArchModel
from .models.deepseek import LlmArchDeepseekConfig, LlmArchDeepseekForCausalLM, LlmArchDeepseekModel
from .models.dense import LlmArchDenseConfig, LlmArchDenseForCausalLM, LlmArchDenseModel
from .models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM, LlmArchHybridModel
from .models.moe import LlmArchMoeConfig, LlmArchMoeForCausalLM, LlmArchMoeModel
from .models.mtp_generate import mtp_generate
from .models.ssm import LlmArchSsmConfig, LlmArchSsmForCausalLM, LlmArchSsmModel
from .presets import list_presets, load_preset

__version__ = "0.1.0"
logger = logging.getLogger("hf_llmarch")

# LoRA on every projection a mixer (attention, retention, state-space, delta rule, RWKV), dense FFN or shared expert has. Routed experts are 3D parameters and
# stay frozen unless asked for: `LoraConfig(target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])`.
DEFAULT_LORA_TARGETS = [
    "q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "gate_proj", "up_proj", "down_proj",
    "in_proj", "x_proj", "dt_proj", "out_proj",  # state-space mixers
    "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",  # multi-head latent attention
    "key", "value", "receptance", "output", "r_proj",  # RWKV time and channel mix (transformers' and fla's names)
]


def _register_pipelines():
    from .pipelines import register

    register()


def _register():
    for config_cls, base_cls, lm_cls, cls_cls in FAMILIES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, base_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, lm_cls, exist_ok=True)
        AutoModelForSequenceClassification.register(config_cls, cls_cls, exist_ok=True)
    for config_cls, heads in HEAD_FAMILIES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for auto_name, model_cls in heads.items():
            getattr(transformers, auto_name).register(config_cls, model_cls, exist_ok=True)
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as lora_targets
    except ImportError:  # peft is optional at import time
        return
    for config_cls, *_ in (*FAMILIES.values(), *HEAD_FAMILIES.values()):
        lora_targets.setdefault(config_cls.model_type, list(DEFAULT_LORA_TARGETS))


_register()
_register_pipelines()

__all__ = [
    "mtp_generate",
    "DEFAULT_LORA_TARGETS",
    "LlmArchConfig",
    "LlmArchDeepseekConfig",
    "LlmArchDeepseekForCausalLM",
    "LlmArchDeepseekModel",
    "LlmArchDenseConfig",
    "LlmArchDenseForCausalLM",
    "LlmArchDenseModel",
    "LlmArchForCausalLM",
    "LlmArchHybridConfig",
    "LlmArchHybridForCausalLM",
    "LlmArchHybridModel",
    "LlmArchModel",
    "LlmArchMoeConfig",
    "LlmArchMoeForCausalLM",
    "LlmArchMoeModel",
    "LlmArchSsmConfig",
    "LlmArchSsmForCausalLM",
    "LlmArchSsmModel",
    "list_presets",
    "load_preset",
]
