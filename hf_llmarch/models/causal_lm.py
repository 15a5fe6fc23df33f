"""The causal-LM and sequence-classification heads over the backbone (decoders, prefix LMs)."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from .. import compat
from ..configuration import LlmArchConfig
from ..mixers.registry import STATEFUL_LAYER_TYPES
from .masks import build_attention_masks, layer_mask_types
from .modeling import LlmArchModel, LlmArchModelOutput, LlmArchPreTrainedModel
from .mtp import LlmArchMTP


@dataclass
class LlmArchCausalLMOutput(CausalLMOutputWithPast):
    """`loss` already includes `aux_loss` and `mtp_loss_weight * mtp_loss` (the multi-token-prediction
    loss, with `num_nextn_predict_layers` > 0) when labels are given."""

    aux_loss: torch.FloatTensor | None = None
    mtp_loss: torch.FloatTensor | None = None


class LlmArchForCausalLM(LlmArchPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    base_model_class = LlmArchModel

    def __init__(self, config: LlmArchConfig):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logits_scaling = config.logits_scaling
        # A recurrent state cannot be rolled back to a rejected draft token, so generate() must
        # refuse assisted and prompt-lookup decoding for stacks that hold one.
        self._is_stateful = any(t in STATEFUL_LAYER_TYPES for t in config.layer_types)
        if config.num_nextn_predict_layers:
            self.mtp = LlmArchMTP(config)
        self.post_init()

    @staticmethod
    def create_masks_for_generate(
        config, inputs_embeds, attention_mask, cache=None, past_key_values=None, position_ids=None, **kwargs
    ):
        """The masks generate() prebuilds for a static cache, as the backbone builds them. transformers'
        default builds the sliding mask of a par(swa, ...) layer (`hybrid_sliding`) with the full-causal
        builder (5.17 to 5.24), which no longer fits the layer's window once the prompt outgrows it."""
        cache = compat.resolve_cache(cache, past_key_values)
        masks = build_attention_masks(config, layer_mask_types(config), inputs_embeds, attention_mask, position_ids, cache)
        # The recurrent layers' padding mask; never in a one-token decode step, so compiled decode sees no growing mask.
        masks["linear_attention"] = attention_mask if inputs_embeds.shape[1] > 1 else None
        return masks

    def prepare_inputs_for_generation(
        self, *args, attention_mask=None, inputs_embeds=None, is_first_iteration=False, prefix_mask=None, **kwargs
    ):
        """A prefix LM's prompt is its prefix: the first step gets `prefix_mask` (the caller's, else the
        prompt's real tokens), every later token is causal and gets none. (The base's named arguments
        stay named: generate() checks its kwargs against this signature.)"""
        inputs = super().prepare_inputs_for_generation(
            *args, attention_mask=attention_mask, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if self.model.is_prefix_lm and is_first_iteration:
            padding = attention_mask
            ids = inputs.get("input_ids")
            shape = (ids if ids is not None else inputs["inputs_embeds"]).shape[:2]
            if prefix_mask is None:
                prefix_mask = padding.bool() if padding is not None else torch.ones(shape, dtype=torch.bool, device=self.device)
            inputs["prefix_mask"] = prefix_mask
            if isinstance(inputs.get("attention_mask"), dict):  # prebuilt causal masks (static cache) lack the prefix
                inputs["attention_mask"] = padding
        return inputs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        compat.prepare_generation_cache(model_kwargs, recurrent_only=self.model.first_attention_layer is None)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> LlmArchCausalLMOutput:
        """`cache` and `past_key_values` are the same argument (transformers 5.24 renamed it); the
        output carries the cache under the installed release's field (`cache` from 5.24 on)."""
        outputs: LlmArchModelOutput = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=compat.resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.logits(outputs.last_hidden_state[:, keep, :])
        loss = mtp_loss = None
        if labels is not None:
            if self.model.is_prefix_lm and kwargs.get("prefix_mask") is None:
                raise ValueError(
                    "attention_mask_kind='prefix' trains on prefix_mask [batch, seq] (True on the prefix): without it the "
                    "loss would be a plain causal LM's; pass it (hf_llmarch.data.PrefixLMCollator builds it)"
                )
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if outputs.aux_loss is not None:
                loss = loss + outputs.aux_loss.to(loss.device)
            if hasattr(self, "mtp"):
                mtp_loss, mtp_aux = self.mtp.loss(
                    self, outputs.last_hidden_state, input_ids, inputs_embeds, labels, attention_mask, position_ids
                )
                if mtp_loss is not None:
                    loss = loss + self.config.mtp_loss_weight * (mtp_loss + (0 if mtp_aux is None else mtp_aux))
        return LlmArchCausalLMOutput(
            loss=loss,
            aux_loss=outputs.aux_loss,
            mtp_loss=mtp_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **compat.cache_kwargs(compat.output_cache(outputs)),
        )


    def logits(self, hidden_states) -> torch.Tensor:
        """The LM head over [B, T, H] states, divided by `logits_scaling` (muP) when set."""
        logits = self.lm_head(hidden_states)
        return logits / self.logits_scaling if self.logits_scaling != 1.0 else logits


class LlmArchForSequenceClassification(GenericForSequenceClassification, LlmArchPreTrainedModel):
    pass
