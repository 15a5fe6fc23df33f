"""Linear attention (Katharopoulos et al. 2020; recurrent_mixers.md §2), pattern name `linear_attn`.

    o_t = phi(q_t) S_t / (phi(q_t) z_t + eps),   S_t = sum_{s<=t} phi(k_s) v_s^T,   z_t = sum_{s<=t} phi(k_s)

It is retention with no decay (`ops/retention`: parallel, chunked, recurrent and naive forms), and
the normaliser rides along as one more value column of ones, so S and z share one fp32 state
[B, H, Dk, Dv + 1] in transformers' cache. phi is elu + 1 (strictly positive, so the denominator is
too); with `linear_attn_feature_map="identity"` the denominator can be negative, so that map is
not normalised: the output gets a per-head RMSNorm instead and q is scaled by Dk^-0.5 (fla's
layout). Pads are identity steps: phi(k) is zeroed after the map (elu(0) + 1 = 1 would write),
and packed sequences restart the state.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ..modules.norms import LlmArchRMSNorm
from ..ops.retention import retention
from .registry import check_positive_ints, fill_config_defaults
from .state import read_recurrent_state, write_recurrent_state

CONFIG_FIELDS = {
    "linear_attn_num_heads": None,  # None: num_attention_heads
    "linear_attn_feature_map": "elu+1",  # or "identity" (then unnormalised, with an output RMSNorm)
    "linear_attn_chunk_size": 64,
    "linear_attn_mode": "auto",  # the retention op's forms: auto, parallel, chunk, recurrent, naive
}
FEATURE_MAPS = {"elu+1": lambda x: F.elu(x) + 1, "identity": lambda x: x}
NORMALISER_EPS = 1e-6


class LlmArchLinearAttention(nn.Module):
    block_attr = "linear_attn"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.linear_attn_num_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.feature_map = FEATURE_MAPS[config.linear_attn_feature_map]
        self.normalised = config.linear_attn_feature_map == "elu+1"
        self.chunk_size, self.mode = config.linear_attn_chunk_size, config.linear_attn_mode
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        if not self.normalised:
            self.o_norm = LlmArchRMSNorm(self.head_dim, eps=config.norm_eps)

    @staticmethod
    def validate(config) -> None:
        if getattr(config, "linear_attn_num_heads", None) is None:
            config.linear_attn_num_heads = config.num_attention_heads
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "linear_attn_num_heads", "linear_attn_chunk_size")
        if config.hidden_size % config.linear_attn_num_heads:
            raise ValueError(
                f"linear_attn_num_heads={config.linear_attn_num_heads} does not divide hidden_size={config.hidden_size}"
            )
        if config.linear_attn_feature_map not in FEATURE_MAPS:
            raise ValueError(f"linear_attn_feature_map={config.linear_attn_feature_map!r} is unknown; valid: {list(FEATURE_MAPS)}")
        if config.linear_attn_mode not in ("auto", "parallel", "chunk", "recurrent", "naive"):
            raise ValueError(f"linear_attn_mode={config.linear_attn_mode!r} is unknown; valid: auto, parallel, chunk, recurrent, naive")

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        """`attention_mask`: the [B, T] bool token mask (None: nothing padded); `sequence_starts`
        [B, T] bool: packed sequences restart the state there."""
        batch, seq_len, _ = hidden_states.shape
        heads = (batch, seq_len, -1, self.head_dim)
        q = self.feature_map(self.q_proj(hidden_states).view(heads))  # [B, T, H, D]
        k = self.feature_map(self.k_proj(hidden_states).view(heads))
        v = self.v_proj(hidden_states).view(heads)
        if attention_mask is not None:
            k = k * attention_mask[:, :, None, None].to(k.dtype)  # after the map: a pad writes nothing
        if self.normalised:  # z accumulates as one more value column
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [B, T, H, D + 1]
        no_decay = q.new_zeros(batch, seq_len, q.shape[2])  # [B, T, H]
        out, state = retention(
            q, k, v, no_decay, scale=1.0 if self.normalised else self.head_dim**-0.5,
            initial_state=read_recurrent_state(cache, self.layer_idx), mode=self.mode,
            chunk_size=self.chunk_size, reset=sequence_starts,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        if self.normalised:
            out = out[..., :-1] / (out[..., -1:] + NORMALISER_EPS)
        else:
            out = self.o_norm(out)
        return self.o_proj(out.reshape(batch, seq_len, -1)), None
