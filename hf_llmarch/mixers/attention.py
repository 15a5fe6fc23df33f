"""Softmax attention (MHA / GQA / MQA, optional sliding window, QK-norm, qkv bias and output gate),
and the cross-attention of encoder-decoder blocks.

The kernel comes from transformers' attention interface (eager, sdpa, flex, flash_attention_2),
so `attn_implementation=` works exactly as for a native model. The mask arrives prebuilt for the
layer's type (full or sliding) from the backbone. RedLLM's stability norms are fields too:
`qkv_norm` (parameter-free RMSNorm of each head's q, k and v) and `attention_output_norm` (the
same on each head's output, before o_proj).
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..modules.norms import LlmArchRMSNorm
from ..modules.rotary import apply_rotary, apply_rotary_one
from .registry import MASK_OF_LAYER_TYPE


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv * n_rep, T, D] for GQA/MQA in the eager path."""
    if n_rep == 1:
        return hidden_states
    b, h_kv, t, d = hidden_states.shape
    return hidden_states[:, :, None].expand(b, h_kv, n_rep, t, d).reshape(b, h_kv * n_rep, t, d)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, Tq, Tk]
    if attention_mask is not None:
        scores = scores + attention_mask  # additive float mask from the eager mask builder
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [B, Tq, H, D]
    return out, weights


class LlmArchAttention(nn.Module):
    block_attr = "self_attn"  # attribute name inside the block: Llama's, so checkpoints and LoRA targets line up
    output_gate = False

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.attention_multiplier or self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = config.attention_mask_kind != "bidirectional"  # sdpa reads it when the mask is None
        is_sliding = MASK_OF_LAYER_TYPE[config.layer_types[layer_idx]] == "sliding_attention"  # swa, or swa in par()
        self.sliding_window = config.sliding_window if is_sliding else None
        q_out, kv_out = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        # A gated layer's q_proj yields each head's query and its output gate side by side: [q_h | g_h].
        self.q_proj = nn.Linear(config.hidden_size, q_out * (2 if self.output_gate else 1), bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_out, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_out, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_out, config.hidden_size, bias=config.attention_out_bias)
        self.use_qk_norm = config.qk_norm  # read per call; the config's __getattribute__ is slow
        if config.qk_norm:
            self.q_norm = LlmArchRMSNorm(self.head_dim, eps=config.norm_eps, unit_offset=config.norm_unit_offset)
            self.k_norm = LlmArchRMSNorm(self.head_dim, eps=config.norm_eps, unit_offset=config.norm_unit_offset)
        self.qkv_norm_eps = config.norm_eps if config.qkv_norm else None
        self.output_norm_eps = config.norm_eps if config.attention_output_norm else None

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        query, gate = self._queries(hidden_states)
        key, value = self._keys_values(hidden_states)
        if position_embeddings is not None:
            query, key = apply_rotary(query, key, *position_embeddings)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        return self._attend(query, key, value, attention_mask, gate, hidden_states.shape[:-1], kwargs)

    def _queries(self, hidden_states):
        """[B, H, T, D] queries, and the output gate [B, T, H, D] of a gated layer (else None)."""
        input_shape = hidden_states.shape[:-1]
        gate = None
        if self.output_gate:
            query, gate = self.q_proj(hidden_states).view(*input_shape, -1, 2 * self.head_dim).chunk(2, dim=-1)
        else:
            query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim)  # -1 heads: TP shards stay valid
        if self.use_qk_norm:
            query = self.q_norm(query)
        return self._free_norm(query).transpose(1, 2), gate

    def _keys_values(self, hidden_states):
        """[B, H_kv, S, D] keys and values of `hidden_states` (the layer's input, or the encoder's output)."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        key = self.k_proj(hidden_states).view(shape)
        if self.use_qk_norm:
            key = self.k_norm(key)
        value = self.v_proj(hidden_states).view(shape)
        return self._free_norm(key).transpose(1, 2), self._free_norm(value).transpose(1, 2)

    def _free_norm(self, heads: torch.Tensor) -> torch.Tensor:
        """RedLLM's parameter-free RMSNorm over each head's channels, when `qkv_norm` is on."""
        return heads if self.qkv_norm_eps is None else F.rms_norm(heads, (self.head_dim,), eps=self.qkv_norm_eps)

    def _attend(self, query, key, value, attention_mask, gate, input_shape, kwargs):
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )  # out [B, T, H, D]
        if self.output_norm_eps is not None:
            out = F.rms_norm(out, (self.head_dim,), eps=self.output_norm_eps)
        out = out.reshape(*input_shape, -1).contiguous()
        if self.output_gate:
            out = out * torch.sigmoid(gate.reshape(*input_shape, -1))
        return self.o_proj(out), weights


class LlmArchGatedAttention(LlmArchAttention):
    """Qwen3-Next's gated attention (`gated_attn`): softmax attention whose output is multiplied per
    channel by sigmoid(gate), the gate projected with the query; partial RoPE comes from
    `rope_parameters['partial_rotary_factor']`, zero-centred QK-norm from `norm_unit_offset`."""

    output_gate = True


class LlmArchCrossAttention(LlmArchAttention):
    """An encoder-decoder block's attention from the decoder's states (queries) to the encoder's output
    (keys, values). Keys and values are projected once per sequence and kept in the cross half of
    transformers' EncoderDecoderCache. With RoPE (RedLLM) the queries turn by the decoder's positions
    and the keys by the encoder's, so the two sides share one position axis."""

    block_attr = "cross_attn"

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.is_causal, self.sliding_window = False, None

    def forward(self, hidden_states, encoder_hidden_states, attention_mask=None, query_rotary=None, key_rotary=None,
                cache=None, **kwargs):
        """`cache`: the EncoderDecoderCache (its `is_updated` says the keys are already there), or None."""
        query, gate = self._queries(hidden_states)
        if query_rotary is not None:
            query = apply_rotary_one(query, *query_rotary)
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = layer.keys, layer.values
        else:
            key, value = self._keys_values(encoder_hidden_states)
            if key_rotary is not None:
                key = apply_rotary_one(key, *key_rotary)
            if cache is not None:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        return self._attend(query, key, value, attention_mask, gate, hidden_states.shape[:-1], kwargs)
