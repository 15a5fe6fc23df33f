"""Bidirectional encoders (BERT, RoBERTa, ALBERT, ELECTRA) on the one backbone: a topology, not a
second block. The config defaults are BERT's (post-norm, learned positions, token types, GELU MLP
with biases); RoBERTa, ALBERT and ELECTRA are presets that change fields. The task heads are in
`encoder_heads.py`."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.utils.generic import can_return_tuple

from ..configuration import LlmArchConfig
from .modeling import LlmArchModel, LlmArchModelOutput

CLASSIFIER_HEADS = ("pooler", "mlp")
PAIR_TASKS = ("nsp", "sop")


class LlmArchEncoderConfig(LlmArchConfig):
    """Encoder fields beside the backbone's:

    * `has_pooler`: BERT's pooler (tanh dense on the first token) exists; ELECTRA has none.
    * `classifier_head`: how sequence classification reads the sequence. `pooler` (BERT, ALBERT):
      a linear classifier on the pooled first token. `mlp` (RoBERTa, ELECTRA): dense, activation,
      out_proj on the first token's state.
    * `classifier_activation`: that MLP's activation (RoBERTa tanh, ELECTRA gelu).
    * `classifier_dropout`: before the classifiers; None = `hidden_dropout`.
    * `pair_task`: the pre-training head's sentence-pair objective: `nsp` (BERT), `sop` (ALBERT) or
      None (RoBERTa: MLM only).
    """

    model_type = "llmarch_encoder"
    default_pattern = "attn/mlp"

    attention_mask_kind: str = "bidirectional"
    norm_placement: str = "post"
    norm_type: str = "layernorm"
    norm_eps: float = 1e-12
    position_embedding_type: str = "learned"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    embedding_norm: bool = True
    hidden_act: str = "gelu"
    mlp_gated: bool = False
    mlp_bias: bool = True
    attention_bias: bool = True
    attention_out_bias: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    has_pooler: bool = True
    classifier_head: str = "pooler"
    classifier_activation: str = "tanh"
    classifier_dropout: float | None = None
    pair_task: str | None = "nsp"

    def validate_llmarch(self):
        super().validate_llmarch()
        if self.attention_mask_kind != "bidirectional":
            raise ValueError(
                f"attention_mask_kind={self.attention_mask_kind!r}: an encoder config is bidirectional; use a decoder "
                "family (e.g. llmarch_dense) for causal or prefix LMs"
            )
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(f"classifier_head={self.classifier_head!r} is unknown; valid: {list(CLASSIFIER_HEADS)}")
        if self.classifier_head == "pooler" and not self.has_pooler:
            raise ValueError("classifier_head='pooler' reads the pooler, but has_pooler=False: use classifier_head='mlp'")
        if self.pair_task not in (*PAIR_TASKS, None):
            raise ValueError(f"pair_task={self.pair_task!r} is unknown; valid: {list(PAIR_TASKS)} or None")
        if self.pair_task is not None and not self.has_pooler:
            raise ValueError(f"pair_task={self.pair_task!r} classifies the pooled first token, but has_pooler=False")
        if self.classifier_activation not in ACT2FN:
            raise ValueError(f"classifier_activation={self.classifier_activation!r} is not one of transformers' ACT2FN names")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout={self.classifier_dropout!r} must lie in [0, 1), or be None")

    @property
    def head_dropout(self) -> float:
        return self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout


@dataclass
class LlmArchEncoderOutput(LlmArchModelOutput):
    """`pooler_output` [B, H]: tanh(dense(first token)), when the model has a pooler."""

    pooler_output: torch.FloatTensor | None = None


class LlmArchPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))  # [B, H] from the first ([CLS]) token


class LlmArchEncoderModel(LlmArchModel):
    """The backbone plus BERT's pooler; heads that do not read the pooler build it without one, as
    transformers' BERT heads do (`add_pooling_layer=False`)."""

    config_class = LlmArchEncoderConfig

    def __init__(self, config: LlmArchEncoderConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        if add_pooling_layer and config.has_pooler:
            self.pooler = LlmArchPooler(config)
            self.post_init()  # initialises only the pooler: the rest is marked initialised

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> LlmArchEncoderOutput:
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        pooled = self.pooler(outputs.last_hidden_state) if hasattr(self, "pooler") else None
        return LlmArchEncoderOutput(**dict(outputs.items()), pooler_output=pooled)
