"""The one block every family uses: norm -> mixer -> residual -> norm -> FFN -> residual (pre-norm),
or mixer -> residual -> norm -> FFN -> residual -> norm (post-norm: BERT, the original Transformer;
`input_layernorm` then follows the mixer's residual and `post_attention_layernorm` the FFN's)."""

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..mixers import build_mixer
from ..mixers.attention import LlmArchCrossAttention
from ..mixers.registry import MASK_OF_LAYER_TYPE, STATEFUL_LAYER_TYPES
from ..modules.channel_mix import build_channel_mix
from ..modules.mlp import build_layer_mlp
from ..modules.moe import MoEFeedForward
from ..modules.norms import build_norm


class LlmArchBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.ffn_type = config.ffn_types[layer_idx]
        self.mask_type = MASK_OF_LAYER_TYPE[self.layer_type]  # which of the backbone's masks the mixer reads
        self.holds_state = self.layer_type in STATEFUL_LAYER_TYPES
        mixer = build_mixer(config, layer_idx)
        self.mixer_attr = mixer.block_attr
        self.input_layernorm = build_norm(config)
        setattr(self, self.mixer_attr, mixer)
        if config.cross_attention:  # an encoder-decoder's decoder block: attend to the encoder's output
            self.cross_attn = LlmArchCrossAttention(config, layer_idx)
            self.cross_attn_layernorm = build_norm(config)
        if self.ffn_type != "none":
            self.post_attention_layernorm = build_norm(config)
            self.mlp = _build_ffn(config, self.ffn_type, layer_idx)
        # No module at p=0: an identity Dropout still costs a module call per use, which shows in decode.
        self.dropout = nn.Dropout(config.hidden_dropout) if config.hidden_dropout > 0 else None
        self.residual_multiplier = config.residual_multiplier
        self.residual_in_fp32 = config.residual_in_fp32
        self.post_norm = config.norm_placement == "post"
        # Most stacks neither scale a branch nor drop out of it in eval: then no call per residual (host time in decode).
        self.unscaled_branches = self.residual_multiplier == 1.0

    @property
    def mixer(self) -> nn.Module:
        return getattr(self, self.mixer_attr)

    def forward(self, hidden_states, attention_mask=None, token_mask=None, sequence_starts=None, cross_inputs=None, **kwargs):
        """Returns (hidden_states, aux_loss); aux_loss is None unless the FFN routes tokens.

        `cross_inputs` (decoder blocks of an encoder-decoder): the cross-attention's keyword arguments
        (encoder_hidden_states, its mask, rotaries and the EncoderDecoderCache); its sub-layer sits
        between the mixer and the FFN, as in the original Transformer.

        `attention_mask` is the mask for this layer's type (4D for attention, 2D for recurrent
        mixers); `token_mask` [B, T] marks real tokens for the MoE router statistics and for the
        recurrent part of a par() layer; `sequence_starts` [B, T] marks packed-sequence starts for
        recurrent mixers and sequence-wise router losses (attention gets the same boundaries inside
        its mask)."""
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        plain = self.unscaled_branches and (self.dropout is None or not self.training)  # a branch joins as it is
        if self.holds_state:
            kwargs["sequence_starts"] = sequence_starts
            if self.mask_type != "linear_attention":  # a par() layer: the 4D mask is its attention's
                kwargs["token_mask"] = token_mask
        mixer_input = hidden_states if self.post_norm else self._pre_norm(hidden_states, self.input_layernorm)
        hidden_states, _ = self.mixer(mixer_input, attention_mask=attention_mask, **kwargs)
        hidden_states = residual + (hidden_states if plain else self._branch(hidden_states))
        if self.post_norm:
            hidden_states = self.input_layernorm(hidden_states)
        if cross_inputs is not None:
            hidden_states = self._cross_attend(hidden_states, cross_inputs, plain)
        aux_loss = None
        if self.ffn_type == "none":
            return hidden_states, aux_loss
        residual = hidden_states
        if not self.post_norm:
            hidden_states = self._pre_norm(hidden_states, self.post_attention_layernorm)
        if self.ffn_type == "moe":
            hidden_states, aux_loss = self.mlp(hidden_states, token_mask, sequence_starts)
        elif self.ffn_type == "rwkv_cmix":  # token-shifted: its state sits in the layer's cache
            hidden_states = self.mlp(hidden_states, kwargs.get("cache"), token_mask, sequence_starts)
        else:
            hidden_states = self.mlp(hidden_states)
        hidden_states = residual + (hidden_states if plain else self._branch(hidden_states))
        return (self.post_attention_layernorm(hidden_states) if self.post_norm else hidden_states), aux_loss

    def _cross_attend(self, hidden_states, cross_inputs: dict, plain: bool):
        norm = self.cross_attn_layernorm
        attended, _ = self.cross_attn(hidden_states if self.post_norm else self._pre_norm(hidden_states, norm), **cross_inputs)
        hidden_states = hidden_states + (attended if plain else self._branch(attended))
        return norm(hidden_states) if self.post_norm else hidden_states

    def _pre_norm(self, hidden_states, norm):
        """A branch's normed input; an fp32 residual stream (residual_in_fp32) enters the norm in the
        norm's dtype, as Mamba's does."""
        return norm(hidden_states.to(norm.weight.dtype) if self.residual_in_fp32 else hidden_states)

    def _branch(self, hidden_states):
        """A branch's output before it joins the residual: scaled (muP) and dropped out."""
        if self.residual_multiplier != 1.0:
            hidden_states = hidden_states * self.residual_multiplier
        return hidden_states if self.dropout is None else self.dropout(hidden_states)


def _build_ffn(config, ffn_type: str, layer_idx: int) -> nn.Module:
    if ffn_type == "moe":
        return MoEFeedForward(config)
    if ffn_type == "rwkv_cmix":
        return build_channel_mix(config, layer_idx)
    return build_layer_mlp(config)
