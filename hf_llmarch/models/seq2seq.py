"""Encoder-decoders (the original Transformer, T5, BART, RedLLM) as two stacks of the one backbone:
a bidirectional encoder and a causal decoder whose blocks cross-attend to it. Nothing here is a
second block: the decoder is `LlmArchModel` with `cross_attention=True`, the encoder the same
class with `attention_mask_kind='bidirectional'`; both read views of one config.

The config's layer fields describe the decoder (transformers' generate() sizes its cache from
`num_hidden_layers`); `encoder_layer_pattern` the encoder (default: the decoder's pattern). Both
stacks share the token embedding (T5's and BART's `shared`), the width, norms and positions.
`continuous_positions` (RedLLM) numbers the decoder's tokens after the encoder's: target token t of a
row whose input has n real tokens is at position n + t, so RoPE in cross-attention sees one axis.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils.generic import can_return_tuple

from .. import compat
from ..configuration import LlmArchConfig
from ..data.masking import IGNORE_INDEX
from .masks import real_token_positions
from .modeling import LlmArchModel, LlmArchPreTrainedModel



@dataclass
class LlmArchSeq2SeqModelOutput(Seq2SeqModelOutput):
    """`aux_loss`: the routers' weighted losses of both stacks (None without MoE layers)."""

    aux_loss: torch.FloatTensor | None = None


@dataclass
class LlmArchSeq2SeqLMOutput(Seq2SeqLMOutput):
    """`loss` already includes `aux_loss` when labels are given."""

    aux_loss: torch.FloatTensor | None = None


class LlmArchSeq2SeqConfig(LlmArchConfig):
    """Encoder-decoder fields beside the backbone's (which describe the decoder):

    * `encoder_layer_pattern`: the encoder's stack (None: the decoder's pattern);
    * `decoder_start_token_id`: the decoder's first input (labels shift right behind it);
    * `continuous_positions`: RedLLM's decoder positions continuing from the encoder's length;
    * `lm_head_bias`: a bias on the output layer (BART's `final_logits_bias`).
    """

    model_type = "llmarch_seq2seq"
    default_pattern = "attn/mlp"
    is_encoder_decoder: bool = True
    cross_attention: bool = True
    encoder_layer_pattern: str | None = None
    decoder_start_token_id: int | None = 0
    continuous_positions: bool = False
    lm_head_bias: bool = False

    def validate_llmarch(self):
        super().validate_llmarch()
        if not self.cross_attention or self.attention_mask_kind != "causal":
            raise ValueError(
                f"cross_attention={self.cross_attention}, attention_mask_kind={self.attention_mask_kind!r}: an "
                "encoder-decoder's decoder is causal with cross-attention (the encoder's view is derived)"
            )
        if self.decoder_start_token_id is None or not 0 <= self.decoder_start_token_id < self.vocab_size:
            raise ValueError(f"decoder_start_token_id={self.decoder_start_token_id!r} must be a token id below vocab_size={self.vocab_size}")
        if self.continuous_positions and self.position_embedding_type != "rope":
            raise ValueError(
                f"continuous_positions=True numbers decoder tokens after the encoder's for RoPE, but "
                f"position_embedding_type={self.position_embedding_type!r}"
            )
        self.stack_config(encoder=True)  # the encoder's view must validate too (e.g. no causal-only mixer)

    def stack_config(self, encoder: bool) -> LlmArchConfig:
        """The config one stack is built from: the encoder's (bidirectional, its own pattern, no
        cross-attention) or the decoder's (this config)."""
        if not encoder:
            return self
        view = copy.deepcopy(self)
        pattern = self.encoder_layer_pattern or self.layer_pattern
        view.layer_pattern, view.mixer_types, view.ffn_types, view.layer_types, view.num_hidden_layers = pattern, None, None, None, None
        view.attention_mask_kind, view.cross_attention, view.num_nextn_predict_layers = "bidirectional", False, 0
        try:
            view._expand_layers()
            LlmArchConfig.validate_llmarch(view)
        except ValueError as err:
            raise ValueError(f"encoder_layer_pattern={pattern!r}: {err}") from None
        return view


class LlmArchSeq2SeqModel(LlmArchPreTrainedModel):
    config_class = LlmArchSeq2SeqConfig
    _tied_weights_keys = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}

    def __init__(self, config: LlmArchSeq2SeqConfig):
        super().__init__(config)
        self.encoder = LlmArchModel(config.stack_config(encoder=True))
        self.decoder = LlmArchModel(config.stack_config(encoder=False))
        self.decoder.embed_tokens = self.encoder.embed_tokens  # one table for both stacks
        self.continuous_positions = config.continuous_positions
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """The decoder always reads the encoder's embedding table (whatever tie_word_embeddings says of
        the output layer), so a checkpoint stores it once."""
        return super().get_expanded_tied_weights_keys(all_submodels=all_submodels) | self._tied_weights_keys

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, embeddings):
        self.encoder.embed_tokens = self.decoder.embed_tokens = embeddings

    def get_encoder(self):
        return self.encoder

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        use_cache=None,
        past_key_values: Cache | None = None,
        decoder_position_ids=None,
        **kwargs,
    ) -> LlmArchSeq2SeqModelOutput:
        """`attention_mask` is the encoder's padding mask; `encoder_outputs` (generate() passes them)
        skip the encoder (and its router losses, which the call that ran it returned)."""
        cache = compat.resolve_cache(cache, past_key_values)
        # The input's real-token positions, also when generate() passes the encoder's outputs instead.
        encoder_positions = real_token_positions(attention_mask) if attention_mask is not None else None
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                position_ids=encoder_positions if self.continuous_positions else None, **kwargs,
            )
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        encoder_states = encoder_outputs.last_hidden_state
        if decoder_position_ids is None and self.continuous_positions:
            decoder_position_ids = self._continued_positions(attention_mask, encoder_states, decoder_input_ids, decoder_inputs_embeds, cache)
        decoded = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids, cache=cache, use_cache=use_cache, encoder_hidden_states=encoder_states,
            encoder_attention_mask=attention_mask, encoder_position_ids=encoder_positions, **kwargs,
        )
        losses = [loss for loss in (getattr(encoder_outputs, "aux_loss", None), decoded.aux_loss) if loss is not None]
        return LlmArchSeq2SeqModelOutput(
            aux_loss=sum(losses) if losses else None,
            last_hidden_state=decoded.last_hidden_state,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            encoder_last_hidden_state=encoder_states,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **compat.cache_kwargs(compat.output_cache(decoded)),
        )

    def _continued_positions(self, attention_mask, encoder_states, decoder_ids, decoder_embeds, cache) -> torch.Tensor:
        """[B, T] decoder positions n_b + past + t, n_b the real input tokens of row b (RedLLM)."""
        batch, source = encoder_states.shape[:2]
        lengths = attention_mask.sum(-1) if attention_mask is not None else torch.full((batch,), source, device=encoder_states.device)
        length = (decoder_ids if decoder_ids is not None else decoder_embeds).shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        return lengths[:, None].long() + past + torch.arange(length, device=encoder_states.device)[None]


class LlmArchForConditionalGeneration(LlmArchPreTrainedModel, GenerationMixin):
    """Seq2SeqLM: `labels` train the decoder (shifted right behind `decoder_start_token_id` when no
    decoder inputs are given); `generate()` runs the encoder once and decodes with an
    EncoderDecoderCache (greedy, sampling, beams)."""

    config_class = LlmArchSeq2SeqConfig
    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: LlmArchSeq2SeqConfig):
        super().__init__(config)
        self.model = LlmArchSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.logits_scaling = config.logits_scaling
        self.post_init()

    def get_encoder(self):
        return self.model.encoder

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """transformers builds the cross half from the config's layer types, which would give a
        recurrent or sliding decoder layer a state or a window where its cross-attention keeps every
        encoder key: the cross half is a plain per-layer key/value cache."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get(compat.CACHE_ARG)
        if isinstance(cache, EncoderDecoderCache) and type(cache.cross_attention_cache) is DynamicCache:
            model_kwargs[compat.CACHE_ARG] = EncoderDecoderCache(cache.self_attention_cache, DynamicCache())

    def get_decoder(self):
        return self.model.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels shifted right behind decoder_start_token_id, -100 replaced by the pad id."""
        shifted = F.pad(labels[:, :-1], (1, 0), value=self.config.decoder_start_token_id)
        return shifted.masked_fill(shifted == IGNORE_INDEX, self.config.pad_token_id or 0)

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> LlmArchSeq2SeqLMOutput:
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            cache=compat.resolve_cache(cache, past_key_values), inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        if self.logits_scaling != 1.0:  # T5 v1.0 scales a tied output by d_model ** -0.5
            logits = logits / self.logits_scaling
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=IGNORE_INDEX)
            if outputs.aux_loss is not None:
                loss = loss + outputs.aux_loss
        return LlmArchSeq2SeqLMOutput(
            loss=loss,
            aux_loss=outputs.aux_loss,
            logits=logits,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            **compat.cache_kwargs(compat.output_cache(outputs)),
        )
