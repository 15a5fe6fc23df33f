"""Task heads over the encoder: masked LM, pre-training (MLM + NSP/SOP), ELECTRA's replaced-token
detection, sequence and token classification, extractive QA and multiple choice. Each keeps
transformers' input and label names, so Trainer, pipelines and collators work unchanged."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    MaskedLMOutput,
    ModelOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils.generic import can_return_tuple

from ..data.masking import IGNORE_INDEX
from .encoder import LlmArchEncoderConfig, LlmArchEncoderModel
from .modeling import LlmArchPreTrainedModel



@dataclass
class LlmArchPreTrainingOutput(ModelOutput):
    """`seq_relationship_logits` [B, 2]: NSP (is-next = 0) or SOP (in-order = 0) logits."""

    loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    seq_relationship_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LlmArchReplacedTokenOutput(ModelOutput):
    """`logits` [B, T]: > 0 where the discriminator thinks the token was replaced."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class LlmArchEncoderPreTrainedModel(LlmArchPreTrainedModel):
    config_class = LlmArchEncoderConfig
    uses_pooler = False  # heads that read the pooled first token build the encoder with its pooler

    def _build_encoder(self, config):
        self.model = LlmArchEncoderModel(config, add_pooling_layer=self.uses_pooler)

    def _encode(self, input_ids, attention_mask, token_type_ids, kwargs):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)


class LlmArchMLMHead(nn.Module):
    """dense -> activation -> norm, from hidden_size to the embedding width; the vocabulary
    projection is the head's `lm_head` (tied to the input embeddings, with its own bias)."""

    def __init__(self, config):
        super().__init__()
        embed_dim = config.embedding_size or config.hidden_size
        self.dense = nn.Linear(config.hidden_size, embed_dim)
        self.act_fn = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(embed_dim, eps=config.norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act_fn(self.dense(hidden_states)))


class _MaskedLMBase(LlmArchEncoderPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self._build_encoder(config)
        self.mlm_head = LlmArchMLMHead(config)
        self.lm_head = nn.Linear(config.embedding_size or config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, embeddings):
        self.lm_head = embeddings

    def _mlm(self, hidden_states, labels):
        logits = self.lm_head(self.mlm_head(hidden_states))  # [B, T, V]
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss


class LlmArchEncoderForMaskedLM(_MaskedLMBase):
    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> MaskedLMOutput:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, kwargs)
        logits, loss = self._mlm(outputs.last_hidden_state, labels)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class LlmArchEncoderForPreTraining(_MaskedLMBase):
    """MLM plus the config's `pair_task` on the pooled first token: NSP (`next_sentence_label`,
    BERT) or SOP (`sentence_order_label`, ALBERT); MLM alone when it is None (RoBERTa)."""

    @property
    def uses_pooler(self):
        return self.config.pair_task is not None

    def __init__(self, config):
        super().__init__(config)
        if config.pair_task is not None:
            self.pair_classifier = nn.Linear(config.hidden_size, 2)
            self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, next_sentence_label=None,
        sentence_order_label=None, **kwargs,
    ) -> LlmArchPreTrainingOutput:
        pair_label = self._pair_label(next_sentence_label, sentence_order_label)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, kwargs)
        logits, loss = self._mlm(outputs.last_hidden_state, labels)
        pair_logits = self.pair_classifier(outputs.pooler_output) if hasattr(self, "pair_classifier") else None
        if pair_label is not None:
            pair_loss = F.cross_entropy(pair_logits.float(), pair_label.view(-1))
            loss = pair_loss if loss is None else loss + pair_loss
        return LlmArchPreTrainingOutput(
            loss=loss, prediction_logits=logits, seq_relationship_logits=pair_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )

    def _pair_label(self, next_sentence_label, sentence_order_label):
        given = {"next_sentence_label": next_sentence_label, "sentence_order_label": sentence_order_label}
        expected = {"nsp": "next_sentence_label", "sop": "sentence_order_label"}.get(self.config.pair_task)
        for name, value in given.items():
            if value is not None and name != expected:
                raise ValueError(
                    f"{name} was passed but pair_task={self.config.pair_task!r} "
                    f"({'takes ' + expected if expected else 'trains MLM only'})"
                )
        return given.get(expected)


class LlmArchTokenScorer(nn.Module):
    """dense -> activation -> one logit per token (ELECTRA's discriminator head)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.out_proj = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.act_fn(self.dense(hidden_states))).squeeze(-1)  # [B, T]


class LlmArchEncoderForReplacedTokenDetection(LlmArchEncoderPreTrainedModel):
    """ELECTRA's discriminator: per token, dense -> activation -> one logit, trained with a binary
    loss against `labels` (1 = replaced, 0 = original, -100 = ignored)."""

    def __init__(self, config):
        super().__init__(config)
        self._build_encoder(config)
        self.rtd_head = LlmArchTokenScorer(config)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> LlmArchReplacedTokenOutput:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, kwargs)
        logits = self.rtd_head(outputs.last_hidden_state)  # [B, T]
        loss = None
        if labels is not None:
            counted = labels != IGNORE_INDEX
            if attention_mask is not None:
                counted = counted & attention_mask.bool()
            loss = F.binary_cross_entropy_with_logits(logits[counted].float(), labels[counted].float())
        return LlmArchReplacedTokenOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class LlmArchClassificationMLP(nn.Module):
    """RoBERTa / ELECTRA's sequence head: dropout, dense, activation, dropout, out_proj on the
    first token's state."""

    def __init__(self, config, num_outputs: int):
        super().__init__()
        self.dropout = nn.Dropout(config.head_dropout)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act_fn = ACT2FN[config.classifier_activation]
        self.out_proj = nn.Linear(config.hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first = self.dropout(hidden_states[:, 0])  # [B, H]
        return self.out_proj(self.dropout(self.act_fn(self.dense(first))))


class LlmArchEncoderForSequenceClassification(LlmArchEncoderPreTrainedModel):
    """`classifier_head='pooler'`: a linear classifier on the pooled first token (BERT, ALBERT);
    `'mlp'`: `LlmArchClassificationMLP` (RoBERTa, ELECTRA). The loss follows `problem_type` as in
    transformers (regression, single- or multi-label)."""

    @property
    def uses_pooler(self):
        return self.config.classifier_head == "pooler"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_encoder(config)
        if config.classifier_head == "pooler":
            self.dropout = nn.Dropout(config.head_dropout)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        else:
            self.classifier = LlmArchClassificationMLP(config, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, kwargs)
        if self.config.classifier_head == "pooler":
            logits = self.classifier(self.dropout(outputs.pooler_output))
        else:
            logits = self.classifier(outputs.last_hidden_state)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class LlmArchEncoderForTokenClassification(LlmArchEncoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_encoder(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> TokenClassifierOutput:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # [B, T, num_labels]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class LlmArchEncoderForQuestionAnswering(LlmArchEncoderPreTrainedModel):
    """Extractive QA: start and end logits per token; the loss averages both cross-entropies, a
    position outside the sequence being ignored (transformers' convention)."""

    def __init__(self, config):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"num_labels={config.num_labels}: extractive QA scores a span start and end, so it needs num_labels=2")
        self._build_encoder(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None, **kwargs
    ) -> QuestionAnsweringModelOutput:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, kwargs)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(-1)  # [B, T] each
        loss = None
        if start_positions is not None and end_positions is not None:
            length = start_logits.shape[1]
            losses = [
                F.cross_entropy(logits.float(), positions.view(-1).clamp(0, length), ignore_index=length)
                for logits, positions in ((start_logits, start_positions), (end_logits, end_positions))
            ]
            loss = (losses[0] + losses[1]) / 2
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class LlmArchEncoderForMultipleChoice(LlmArchEncoderPreTrainedModel):
    """Inputs [B, C, T], one score per choice from the pooled first token (BERT, RoBERTa, ALBERT) or,
    without a pooler, ELECTRA's summary (dense -> activation on the first token)."""

    @property
    def uses_pooler(self):
        return self.config.has_pooler

    def __init__(self, config):
        super().__init__(config)
        self._build_encoder(config)
        if not config.has_pooler:
            self.summary = nn.Linear(config.hidden_size, config.hidden_size)
            self.summary_act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> MultipleChoiceModelOutput:
        num_choices = input_ids.shape[1]
        flat = [None if t is None else t.flatten(0, 1) for t in (input_ids, attention_mask, token_type_ids)]  # [B*C, T]
        outputs = self._encode(*flat, kwargs)
        if self.config.has_pooler:
            pooled = outputs.pooler_output
        else:
            pooled = self.summary_act(self.summary(outputs.last_hidden_state[:, 0]))
        logits = self.classifier(self.dropout(pooled)).view(-1, num_choices)  # [B, C]
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
