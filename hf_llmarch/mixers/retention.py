"""RetNet multi-scale retention (arXiv 2307.08621) as a token mixer.

Per head h a fixed decay gamma_h = 1 - 2^(-5-h); rotary on q and k; the three equivalent forms
(parallel, chunkwise, recurrent) live in `ops/retention`. The output is normalised per head
(a group norm with one group per head, RMSNorm-style) and gated by swish(g_proj(x)).

Padding: a padded token neither writes (k = 0) nor decays (log-decay 0) the state, so left-
and right-padded rows match their unpadded versions and a cached state is never corrupted.
Packing (padding-free batches, position_ids restarting inside a row): the state restarts at each
sequence start, so every sequence sees only itself.
The decode state is one float32 [B, H, Dk, Dv] tensor per layer, whatever the model dtype.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ..modules.norms import LlmArchRMSNorm
from ..modules.rotary import apply_rotary, rotary_cos_sin
from ..ops.retention import retention, retention_log_decay
from .state import read_recurrent_state, write_recurrent_state

ROTARY_THETA = 10000.0


class LlmArchRetention(nn.Module):
    block_attr = "retention"

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.retention_num_heads
        self.key_dim = config.hidden_size // self.num_heads
        self.value_dim = config.retention_value_factor * self.key_dim
        self.mode = config.retention_mode
        self.chunk_size = config.retention_chunk_size
        inner_k, inner_v = self.num_heads * self.key_dim, self.num_heads * self.value_dim
        self.q_proj = nn.Linear(config.hidden_size, inner_k, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, inner_k, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, inner_v, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, inner_v, bias=False)
        self.o_proj = nn.Linear(inner_v, config.hidden_size, bias=False)
        self.g_norm = LlmArchRMSNorm(self.value_dim, eps=config.norm_eps)

    def _local_heads(self, local: int) -> slice:
        """The heads this process computes: all, or its rank's slice of a column-sharded q_proj
        (each head keeps its own decay gamma_h, so the slice must be the right one)."""
        if local == self.num_heads:
            return slice(None)
        rank = self.q_proj.weight.device_mesh.get_local_rank()
        return slice(rank * local, (rank + 1) * local)

    def forward(
        self, hidden_states, attention_mask=None, position_ids=None, cache=None, sequence_starts=None, **kwargs
    ):
        """`attention_mask`: the [B, T] bool token mask of this chunk, or None when nothing is padded.
        `sequence_starts`: [B, T] bool, True where a packed sequence begins; the state restarts there."""
        batch, seq_len, _ = hidden_states.shape
        # -1 heads: under tensor parallelism each process holds a slice of the heads.
        q = self.q_proj(hidden_states).view(batch, seq_len, -1, self.key_dim)  # [B, T, H, Dk]
        k = self.k_proj(hidden_states).view(batch, seq_len, -1, self.key_dim)
        v = self.v_proj(hidden_states).view(batch, seq_len, -1, self.value_dim)  # [B, T, H, Dv]
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=hidden_states.device)[None]
        cos, sin = rotary_cos_sin(position_ids, self.key_dim, ROTARY_THETA, q.dtype)  # [B|1, T, Dk]
        q, k = apply_rotary(q, k, cos, sin, head_dim_axis=2)
        if attention_mask is not None:
            k = k * attention_mask[:, :, None, None].to(k.dtype)  # pads write nothing
        log_decay = retention_log_decay(
            self.num_heads, batch, seq_len, attention_mask, hidden_states.device, heads=self._local_heads(q.shape[2])
        )

        out, state = retention(
            q,
            k,
            v,
            log_decay,
            scale=self.key_dim**-0.5,
            initial_state=read_recurrent_state(cache, self.layer_idx),
            mode=self.mode,
            chunk_size=self.chunk_size,
            reset=sequence_starts,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        out = self.g_norm(out).reshape(batch, seq_len, -1)  # [B, T, H * Dv]
        out = out * F.silu(self.g_proj(hidden_states))
        return self.o_proj(out), None
