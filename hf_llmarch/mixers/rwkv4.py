"""RWKV-4 time mix (Peng et al. 2023; recurrent_mixers.md §6), pattern name `rwkv4`.

    x_* = x mu_* + x_prev (1 - mu_*)   for * in k, v, r (token shift);   k, v, r = W_* x_*
    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same with v = 1),   w = exp(time_decay)
    out = W_o (sigmoid(r) * wkv)

The WKV runs in its max-stabilised form (`ops/wkv4`: chunked for training, one step for decode;
fla-core's kernel on CUDA). Parameter names and shapes are transformers' RwkvSelfAttention's, so
`rwkv` checkpoints map one to one. Unlike transformers' model, the attention mask is honoured (pads
are identity steps and enter the token shift as zeros), and batched one-token decode keeps every
row's own state. Decode state: the token-shift input (`token_shift.py`) and (a, b, p) [B, 3, A] fp32.
"""

import math

import torch
from torch import nn
from transformers import initialization as init

from ..ops.wkv4 import wkv4
from .registry import check_positive_ints, fill_config_defaults
from .state import read_recurrent_state, write_recurrent_state
from .token_shift import shift_tokens, zero_pads

CONFIG_FIELDS = {
    "rwkv4_attention_hidden_size": None,  # None: hidden_size
    "rwkv4_chunk_size": 32,
    "rwkv4_mode": "auto",  # the WKV op's path: auto, chunk, recurrent, naive, fla
}
WKV4_MODES = ("auto", "chunk", "recurrent", "naive", "fla")


class LlmArchTimeMix4(nn.Module):
    block_attr = "time_mix"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx, self.num_layers = layer_idx, config.num_hidden_layers
        hidden, inner = config.hidden_size, config.rwkv4_attention_hidden_size
        self.chunk_size, self.mode = config.rwkv4_chunk_size, config.rwkv4_mode
        self.time_decay = nn.Parameter(torch.empty(inner))
        self.time_first = nn.Parameter(torch.empty(inner))
        self.time_mix_key = nn.Parameter(torch.empty(1, 1, hidden))
        self.time_mix_value = nn.Parameter(torch.empty(1, 1, hidden))
        self.time_mix_receptance = nn.Parameter(torch.empty(1, 1, hidden))
        self.key = nn.Linear(hidden, inner, bias=False)
        self.value = nn.Linear(hidden, inner, bias=False)
        self.receptance = nn.Linear(hidden, inner, bias=False)
        self.output = nn.Linear(inner, hidden, bias=False)

    @staticmethod
    def validate(config) -> None:
        if getattr(config, "rwkv4_attention_hidden_size", None) is None:
            config.rwkv4_attention_hidden_size = config.hidden_size
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "rwkv4_attention_hidden_size", "rwkv4_chunk_size")
        if config.rwkv4_mode not in WKV4_MODES:
            raise ValueError(f"rwkv4_mode={config.rwkv4_mode!r} is unknown; valid: {list(WKV4_MODES)}")

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """BlinkDL's init: decays spread from slow to fast over channels and deeper over layers,
        time_first log(0.3) plus a zigzag (transformers sets it to ones), mixes by depth."""
        hidden, inner = self.time_mix_key.shape[-1], self.time_decay.shape[0]
        depth = self.layer_idx / max(self.num_layers - 1, 1)  # 0 .. 1
        remaining = 1.0 - self.layer_idx / self.num_layers  # 1 .. ~0
        channel = torch.arange(hidden, dtype=torch.float32)[None, None] / hidden
        h = torch.arange(inner, dtype=torch.float32) / max(inner - 1, 1)
        init.copy_(self.time_decay, -5 + 8 * h ** (0.7 + 1.3 * depth))
        zigzag = 0.5 * (((torch.arange(inner) + 1) % 3) - 1).float()
        init.copy_(self.time_first, math.log(0.3) + zigzag)
        init.copy_(self.time_mix_key, channel**remaining)
        init.copy_(self.time_mix_value, channel**remaining + 0.3 * depth)
        init.copy_(self.time_mix_receptance, channel ** (0.5 * remaining))

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        x = zero_pads(hidden_states, attention_mask)
        shifted = shift_tokens(x, cache, self.layer_idx, 0, attention_mask, sequence_starts)
        key = self.key(_mix(x, shifted, self.time_mix_key))
        value = self.value(_mix(x, shifted, self.time_mix_value))
        receptance = torch.sigmoid(self.receptance(_mix(x, shifted, self.time_mix_receptance)))
        wkv, state = wkv4(
            self.time_decay, self.time_first, key, value, state=read_recurrent_state(cache, self.layer_idx),
            token_mask=attention_mask, reset=sequence_starts, mode=self.mode, chunk_size=self.chunk_size,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        return self.output(receptance * wkv), None


def _mix(x: torch.Tensor, shifted: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Token shift: x mu + x_prev (1 - mu), per channel."""
    return x * mu + shifted * (1 - mu)
