"""The configurable backbone every family shares (its heads are in `causal_lm.py` and `encoder.py`).

A family only subclasses these with its own config class (see `dense.py`, `hybrid.py`); the
stack itself is whatever `config.mixer_types` / `config.ffn_types` say, and the topology (mask
kind, norm placement, embedding extras) whatever the fields in `hf_llmarch/topology.py` say.
"""

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .. import compat
from ..configuration import LlmArchConfig
from ..mixers import LlmArchAttention, LlmArchMLA
from ..mixers.registry import MASK_OF_LAYER_TYPE, STATEFUL_LAYER_TYPES
from ..modules.moe import MoEExperts
from ..modules.norms import build_norm
from ..modules.positions import LlmArchRelativePositionBias, sinusoidal_embeddings
from ..modules.rotary import LlmArchRotaryEmbedding
from ..topology import check_attention_implementation, shared_block_of_layer
from .block import LlmArchBlock
from .masks import build_attention_masks, layer_mask_types, real_token_positions

logger = logging.getLogger("hf_llmarch")
_logged_attention = set()

@dataclass
class LlmArchModelOutput(BaseModelOutputWithPast):
    """`aux_loss`: the weighted sum of the routers' load-balancing and z-losses (None without MoE)."""

    aux_loss: torch.FloatTensor | None = None


class LlmArchPreTrainedModel(PreTrainedModel):
    config_class = LlmArchConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlmArchBlock"]
    _skip_keys_device_placement = compat.CACHE_NAMES
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # tests/workflows: static-cache decode compiles with fullgraph=True
    _can_record_outputs = {"hidden_states": LlmArchBlock, "attentions": [LlmArchAttention, LlmArchMLA]}

    @classmethod
    def from_pretrained(cls, *args, output_loading_info: bool = False, **kwargs):
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing_mtp = sorted(key for key in info["missing_keys"] if key.startswith("mtp."))
        if missing_mtp:  # random MTP modules would draft and add a loss as if trained
            raise ValueError(
                f"num_nextn_predict_layers={model.config.num_nextn_predict_layers} but the checkpoint holds no weights for "
                f"{missing_mtp[:3]}{' ...' if len(missing_mtp) > 3 else ''}: load with num_nextn_predict_layers=0, or a checkpoint that has them"
            )
        for module in model.modules():
            if isinstance(module, MoEExperts):
                module.realign_()
        return (model, info) if output_loading_info else model

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MoEExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.down_proj, mean=0.0, std=self.config.initializer_range)
        if hasattr(module, "init_ssm_parameters"):  # state-space mixers: A, D and dt have their own inits
            module.init_ssm_parameters()
        if getattr(module, "unit_offset", False):  # a zero-centred norm scales by 1 + weight
            init.zeros_(module.weight)
        if getattr(module, "e_score_correction_bias", None) is not None:  # DeepSeek selection bias starts neutral
            init.zeros_(module.e_score_correction_bias)


class LlmArchModel(LlmArchPreTrainedModel):
    def __init__(self, config: LlmArchConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        embed_dim = config.embedding_size or config.hidden_size  # ALBERT/ELECTRA embed narrower than the stack
        self.embed_tokens = nn.Embedding(config.vocab_size, embed_dim, self.padding_idx)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, embed_dim)
        if config.type_vocab_size:
            self.embed_token_types = nn.Embedding(config.type_vocab_size, embed_dim)
        if config.embedding_norm:
            self.embed_norm = build_norm(config, embed_dim)
        self.embed_dropout = nn.Dropout(config.hidden_dropout) if config.hidden_dropout > 0 else None
        if embed_dim != config.hidden_size:
            self.embed_proj = nn.Linear(embed_dim, config.hidden_size)
        # Layer i runs block block_of_layer[i]: the identity, or ALBERT's shared blocks.
        self.block_of_layer = shared_block_of_layer(config)
        first_layer_of_block = sorted({b: i for i, b in reversed(list(enumerate(self.block_of_layer)))}.items())
        self.layers = nn.ModuleList(LlmArchBlock(config, i) for _, i in first_layer_of_block)
        if config.norm_placement == "pre":  # post-norm blocks end normed
            self.norm = build_norm(config)
        self.position_offset = config.position_offset
        self.is_prefix_lm = config.attention_mask_kind == "prefix"
        self.is_encoder = config.attention_mask_kind == "bidirectional"
        if config.position_embedding_type == "rope":
            self.rotary_emb = LlmArchRotaryEmbedding(config)
        if config.position_embedding_type == "relative_buckets":
            self.relative_position_bias = LlmArchRelativePositionBias(
                config.num_attention_heads, config.relative_attention_num_buckets, config.relative_attention_max_distance,
                bidirectional=config.attention_mask_kind == "bidirectional",
            )
        self.sinusoidal_positions = config.position_embedding_type == "sinusoidal"
        self.has_cross_attention = config.cross_attention
        self.gradient_checkpointing = False
        # Facts about the stack, read once: the config's __getattribute__ is slow per decode step.
        self.mask_types = layer_mask_types(config)
        self.first_attention_layer = next((i for i, t in enumerate(self.mask_types) if t != "linear_attention"), None)
        self.has_recurrent_layers = any(t in STATEFUL_LAYER_TYPES for t in config.layer_types)
        self.needs_token_mask = self.has_recurrent_layers or "moe" in config.ffn_types
        self.embedding_multiplier = config.embedding_multiplier
        self.residual_in_fp32 = config.residual_in_fp32
        self.needs_sequence_starts = self.needs_token_mask
        self.shares_across_layers = "rwkv7" in config.mixer_types  # RWKV-7's value residual
        self.post_init()
        _log_attention_path(config)
        check_attention_implementation(config)

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        token_type_ids: torch.LongTensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> LlmArchModelOutput:
        """`cache` and `past_key_values` are the same argument (transformers 5.24 renamed it).

        `token_type_ids` [B, T]: segment ids (BERT), with `type_vocab_size` > 0. `prefix_mask` [B, T]
        bool: the tokens of this chunk that form the prefix, for `attention_mask_kind='prefix'`
        (None: no prefix, the chunk is causal). `encoder_hidden_states` [B, S, H] with its padding
        mask [B, S] and positions (RoPE cross-attention): what a decoder stack with
        `cross_attention` attends to; its cache is then an EncoderDecoderCache."""
        compat.check_forward_kwargs(type(self).__name__, kwargs)
        cache = compat.resolve_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        use_cache, cache = self._usable_cache(use_cache, cache)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # Packed rows (padding-free batches) are told by position_ids restarting, as in transformers.
        sequence_starts = self._sequence_starts(position_ids, attention_mask, cache, inputs_embeds.shape[0])
        fresh_cache = use_cache and cache is None
        if fresh_cache:
            cache = DynamicCache(config=self.config)
            if self.has_cross_attention:  # the cross half keeps every encoder key in every layer
                cache = EncoderDecoderCache(cache, DynamicCache())
        # Self-attention reads the self half of an encoder-decoder cache; cross-attention its cross half.
        cross_cache, cache = (cache, cache.self_attention_cache) if isinstance(cache, EncoderDecoderCache) else (None, cache)
        seq_len = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = self._next_positions(cache, seq_len, inputs_embeds.device, attention_mask)
        if self.first_attention_layer is None:
            _advance_seen_tokens(cache, seq_len, inputs_embeds.device)

        hidden_states = self._add_embeddings(inputs_embeds, position_ids, token_type_ids)
        # A cache made in this call is empty: building masks without it keeps transformers'
        # packed-sequence detection, which it skips whenever a cache is passed.
        mask_cache = None if fresh_cache else cache
        masks = self._build_masks(attention_mask, hidden_states, mask_cache, position_ids, prefix_mask)
        token_mask = masks["linear_attention"]
        position_embeddings = self.rotary_emb(hidden_states, position_ids) if hasattr(self, "rotary_emb") else None
        if hasattr(self, "relative_position_bias"):
            masks = self._add_relative_bias(masks, position_ids, cache, seq_len, hidden_states.dtype)
        if self.has_cross_attention:
            kwargs["cross_inputs"] = self._cross_inputs(
                hidden_states, encoder_hidden_states, encoder_attention_mask, encoder_position_ids, position_embeddings, cross_cache
            )
        elif encoder_hidden_states is not None:
            raise ValueError("encoder_hidden_states were passed but cross_attention=False: this stack has no cross-attention")

        if self.shares_across_layers:
            kwargs["shared_across_layers"] = {}
        layer_kwargs = dict(
            token_mask=token_mask, sequence_starts=sequence_starts, position_embeddings=position_embeddings,
            position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs,
        )
        hidden_states, aux_loss = self._run_layers(hidden_states, masks, layer_kwargs)
        if hasattr(self, "norm"):
            hidden_states = self.norm(hidden_states)
        if self.residual_in_fp32:  # the fp32 stream leaves in the model dtype, for the heads
            hidden_states = hidden_states.to(self.embed_tokens.weight.dtype)
        out_cache = cross_cache if cross_cache is not None else cache
        return LlmArchModelOutput(last_hidden_state=hidden_states, aux_loss=aux_loss, **compat.cache_kwargs(out_cache))

    def _usable_cache(self, use_cache, cache):
        """(use_cache, cache) for this call: none while gradient checkpointing trains (a checkpointed
        layer runs twice, and a cache would take its update twice) or in an encoder."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            if cache is not None:
                logger.warning("gradient checkpointing in training: the cache passed to forward is not used")
            return False, None
        if self.is_encoder:  # every token sees every other: there is nothing to decode from a cache
            if cache is not None:
                raise ValueError("attention_mask_kind='bidirectional' (an encoder) takes no cache: call it on the whole sequence")
            return False, None
        return use_cache, cache

    def _run_layers(self, hidden_states, masks: dict, layer_kwargs: dict):
        """Every layer in order (a shared block at each of its depths); returns (hidden_states, mean aux loss or None)."""
        aux_losses = []
        for block_idx in self.block_of_layer:
            layer = self.layers[block_idx]
            hidden_states, aux = layer(hidden_states, attention_mask=masks[layer.mask_type], **layer_kwargs)
            if aux is not None:
                aux_losses.append(aux)
        return hidden_states, (torch.stack(aux_losses).mean() if aux_losses else None)

    def _cross_inputs(self, hidden_states, encoder_states, encoder_mask, encoder_positions, query_rotary, cache) -> dict:
        """The cross-attention's arguments, shared by every decoder block: the encoder's padding mask
        as a [B, 1, T, S] mask (None when nothing is padded), and with RoPE the rotary of the
        encoder's positions for its keys (the queries keep the decoder's)."""
        if encoder_states is None:
            raise ValueError("a stack with cross_attention=True needs encoder_hidden_states (the encoder's output)")
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=encoder_mask, encoder_hidden_states=encoder_states
        )
        inputs = dict(encoder_hidden_states=encoder_states, attention_mask=mask, cache=cache)
        if hasattr(self, "rotary_emb"):
            if encoder_positions is None:
                encoder_positions = torch.arange(encoder_states.shape[1], device=encoder_states.device)[None]
            inputs |= dict(query_rotary=query_rotary, key_rotary=self.rotary_emb(encoder_states, encoder_positions))
        return inputs

    def _add_relative_bias(self, masks: dict, position_ids, cache, seq_len: int, dtype) -> dict:
        """T5's learned relative-position bias, computed once per forward and added to the
        self-attention mask (as an additive float mask) of every layer."""
        mask = masks["full_attention"]
        # Keys as the mask counts them: a static cache's mask spans all its slots, not only the filled ones.
        key_length = mask.shape[-1] if mask is not None else self._past_length(cache) + seq_len
        bias = self.relative_position_bias(position_ids, key_length).to(dtype)  # [1 or B, H, T, S]
        if mask is not None:
            bias = bias + (mask if mask.is_floating_point() else torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype))
        return masks | {"full_attention": bias}

    def _add_embeddings(self, hidden_states, position_ids, token_type_ids) -> torch.Tensor:
        """Token embeddings [B, T, E] scaled (muP, the original Transformer's sqrt(d)), plus positions
        and token types, normed, dropped out and lifted to hidden_size, in BERT's order."""
        if self.embedding_multiplier != 1.0:
            hidden_states = hidden_states * self.embedding_multiplier
        if hasattr(self, "embed_positions"):
            offset = self.position_offset
            hidden_states = hidden_states + self.embed_positions(position_ids + offset if offset else position_ids)
        elif self.sinusoidal_positions:
            hidden_states = hidden_states + sinusoidal_embeddings(position_ids, hidden_states.shape[-1]).to(hidden_states.dtype)
        if hasattr(self, "embed_token_types"):
            if token_type_ids is None:  # BERT's default: every token in segment 0
                token_type_ids = torch.zeros(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
            hidden_states = hidden_states + self.embed_token_types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were passed but type_vocab_size=0: this model has no token-type embeddings")
        if hasattr(self, "embed_norm"):
            hidden_states = self.embed_norm(hidden_states)
        if self.embed_dropout is not None:
            hidden_states = self.embed_dropout(hidden_states)
        return self.embed_proj(hidden_states) if hasattr(self, "embed_proj") else hidden_states

    def _build_masks(self, attention_mask, hidden_states, cache, position_ids, prefix_mask=None) -> dict:
        """One mask per kind of attention present (keyed as MASK_OF_LAYER_TYPE names them): 4D (or
        None), and a [B, T] bool token mask (or None when nothing is padded) for recurrent mixers and
        the MoE router statistics."""
        seq_len = hidden_states.shape[1]
        if prefix_mask is not None and not self.is_prefix_lm:
            raise ValueError(
                f"prefix_mask was passed but attention_mask_kind={self.config.attention_mask_kind!r}: "
                "set attention_mask_kind='prefix' for a prefix LM"
            )
        if prefix_mask is not None:
            check_attention_implementation(self.config)
        if isinstance(attention_mask, dict):  # generate() prebuilds them per layer type for static caches
            token_mask = attention_mask.get("linear_attention")
            token_mask = self._token_mask(token_mask, seq_len) if isinstance(token_mask, torch.Tensor) else None
            return {**attention_mask, "linear_attention": token_mask}
        masks = {"linear_attention": self._token_mask(attention_mask, seq_len)}
        return masks | build_attention_masks(
            self.config, self.mask_types, hidden_states, attention_mask, position_ids, cache, prefix_mask
        )

    def _sequence_starts(self, position_ids, attention_mask, cache, batch: int) -> torch.Tensor | None:
        """[B, T] bool, True where position_ids do not continue the previous token: the starts of
        packed sequences, for recurrent mixers and sequence-wise router losses. None unless the stack
        has either and the call looks like packed training (caller's position_ids, no padding mask, no cache passed in): transformers'
        rule for its packed attention mask, which reads no cache length, so compiled decode stays whole."""
        if position_ids is None or attention_mask is not None or cache is not None or not self.needs_sequence_starts:
            return None
        position_ids = position_ids.expand(batch, -1)
        return F.pad(position_ids[:, 1:] != position_ids[:, :-1] + 1, (1, 0))

    def _token_mask(self, attention_mask, seq_len: int) -> torch.Tensor | None:
        """[B, T] bool for the current chunk, or None when no layer reads it (pure attention) or the
        chunk is one decoded token (never padding). No `.all()` shortcut: that would sync a GPU."""
        if attention_mask is None or not self.needs_token_mask or seq_len == 1:
            return None
        if attention_mask.ndim != 2:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, but recurrent mixers and MoE routing need "
                "the 2D [batch, seq] padding mask: pass the 2D mask instead of a prebuilt 4D one"
            )
        return attention_mask[:, -seq_len:].bool()  # the current chunk of a growing mask

    def _next_positions(self, cache: Cache | None, seq_len: int, device, attention_mask=None) -> torch.Tensor:
        """[1, T] positions after the cached tokens; the cached count is a tensor for static
        caches and recurrent-only stacks, kept on device so compiled decode reads no host value.

        Learned absolute positions count real tokens only ([B, T] from a 2D padding mask, as
        generate() does), so a left-padded row equals its unpadded self; native GPT-2 does not."""
        if hasattr(self, "embed_positions") and isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
            return real_token_positions(attention_mask)[:, -seq_len:]
        past = self._past_length(cache)
        if isinstance(past, torch.Tensor):
            return (torch.arange(seq_len, device=device) + past).unsqueeze(0)
        return torch.arange(past, past + seq_len, device=device).unsqueeze(0)

    def _past_length(self, cache: Cache | None) -> int | torch.Tensor:
        """Tokens already in the cache. Attention layers know it; a stack of only recurrent layers
        does not, so the backbone keeps its own count on the cache object."""
        if cache is None:
            return 0
        if self.first_attention_layer is not None:
            return cache.get_seq_length(self.first_attention_layer)
        return getattr(cache, "llmarch_seen_tokens", 0)


def _log_attention_path(config):
    impl = config._attn_implementation
    if impl not in _logged_attention and any(MASK_OF_LAYER_TYPE[t] != "linear_attention" for t in config.layer_types):
        _logged_attention.add(impl)
        logger.info("attention: using transformers' %r implementation (set attn_implementation= to change)", impl)


def _advance_seen_tokens(cache: Cache | None, seq_len: int, device: torch.device):
    """Count the tokens a recurrent-only stack has consumed, in a tensor updated in place: a
    Python int here would be a guard that recompiles a compiled decode step at every token."""
    if cache is None:
        return
    if getattr(cache, "llmarch_seen_tokens", None) is None:
        cache.llmarch_seen_tokens = torch.zeros((), dtype=torch.long, device=device)
    cache.llmarch_seen_tokens.add_(seq_len)
