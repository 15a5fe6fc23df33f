"""Mamba-1 selective state-space mixer (Gu & Dao 2023; recurrent_mixers.md §3), pattern name `mamba`.

in_proj -> (x, z); x -> short causal conv -> silu -> x_proj -> (dt, B, C); dt -> dt_proj -> softplus;
selective scan h_t = exp(dt A) h_{t-1} + dt x B, y = C h + D x (`ops/selective_scan`); y * silu(z)
-> out_proj. Parameter names follow transformers' MambaMixer (`in_proj`, `conv1d`, `x_proj`,
`dt_proj`, `A_log`, `D`, `out_proj`), plus Jamba's `dt_layernorm`, `b_layernorm` and `c_layernorm`
when `mamba_inner_norms` is set.

Padding: a pad neither writes nor decays (x = 0 and dt = 0 there), and the conv state keeps each
row's last real inputs, so left- and right-padded rows equal their unpadded versions and a
cache is never corrupted (transformers#48256). A continuation of several tokens starts from the
cached state (transformers 5.23 drops it). Packed sequences restart the conv window and the state.
Decode state per layer: the conv history [B, D_inner, K-1] and the SSM state [B, D_inner, N] fp32.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from ..modules.norms import LlmArchRMSNorm
from ..ops.selective_scan import selective_scan
from .registry import check_positive_ints, fill_config_defaults
from .ssm_common import DT_FIELDS, at_least_fp32, cached_short_conv, check_dt_range, dt_init_range, inverse_softplus_dt
from .state import read_recurrent_state, write_recurrent_state

# Fields this mixer owns (defaults: state-spaces/mamba, transformers MambaConfig).
CONFIG_FIELDS = {
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": "auto",  # ceil(hidden_size / 16)
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "mamba_inner_norms": False,  # RMSNorm on dt, B and C after x_proj (Jamba)
    "mamba_mode": "auto",  # selective scan path: auto, chunk, naive, cuda (env LLMARCH_SELECTIVE_SCAN_MODE)
    **DT_FIELDS,
}
SCAN_MODES = ("auto", "chunk", "naive", "cuda")


def dt_rank(config) -> int:
    rank = config.mamba_dt_rank
    return math.ceil(config.hidden_size / 16) if rank == "auto" else rank


class LlmArchSelectiveSSM(nn.Module):
    block_attr = "mamba"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.inner = int(config.mamba_expand * config.hidden_size)
        self.state_size, self.conv_width, self.dt_rank = config.mamba_d_state, config.mamba_d_conv, dt_rank(config)
        self.mode = config.mamba_mode
        self.dt_range = dt_init_range(config)
        bias = config.mamba_proj_bias
        self.in_proj = nn.Linear(config.hidden_size, 2 * self.inner, bias=bias)
        # Depthwise, stored as nn.Conv1d for checkpoint compatibility; run by ops/short_conv.
        self.conv1d = nn.Conv1d(
            self.inner, self.inner, self.conv_width, groups=self.inner, padding=self.conv_width - 1, bias=config.mamba_conv_bias
        )
        self.x_proj = nn.Linear(self.inner, self.dt_rank + 2 * self.state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.inner, bias=True)
        if config.mamba_inner_norms:  # Jamba's names; they keep the SSM inputs at unit scale
            self.dt_layernorm = LlmArchRMSNorm(self.dt_rank, eps=config.norm_eps)
            self.b_layernorm = LlmArchRMSNorm(self.state_size, eps=config.norm_eps)
            self.c_layernorm = LlmArchRMSNorm(self.state_size, eps=config.norm_eps)
        self.inner_norms = config.mamba_inner_norms
        self.A_log = nn.Parameter(torch.empty(self.inner, self.state_size))
        self.D = nn.Parameter(torch.empty(self.inner))
        self.out_proj = nn.Linear(self.inner, config.hidden_size, bias=bias)

    @staticmethod
    def validate(config) -> None:
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "mamba_d_state")
        if not isinstance(config.mamba_d_conv, int) or config.mamba_d_conv < 2:
            raise ValueError(f"mamba_d_conv={config.mamba_d_conv!r} must be an integer >= 2 (the short conv's width)")
        if not config.mamba_expand > 0 or int(config.mamba_expand * config.hidden_size) < 1:
            raise ValueError(f"mamba_expand={config.mamba_expand!r} must be > 0: the inner width is expand * hidden_size")
        if config.mamba_dt_rank != "auto":
            check_positive_ints(config, "mamba_dt_rank")
        if config.mamba_mode not in SCAN_MODES:
            raise ValueError(f"mamba_mode={config.mamba_mode!r} is unknown; valid: {list(SCAN_MODES)}")
        check_dt_range(config)

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """S4D-Real A (A_log = log n), D = 1, and dt_proj so softplus gives dt log-uniform in
        [ssm_dt_min, ssm_dt_max] (mamba_ssm's init)."""
        n = torch.arange(1, self.state_size + 1, dtype=torch.float32)
        init.copy_(self.A_log, torch.log(n).expand(self.inner, -1))
        init.ones_(self.D)
        bound = self.dt_rank**-0.5
        init.uniform_(self.dt_proj.weight, -bound, bound)
        init.copy_(self.dt_proj.bias, inverse_softplus_dt(self.inner, *self.dt_range))

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        """`attention_mask`: [B, T] bool token mask of this chunk or None; `sequence_starts`: [B, T]
        bool packed-sequence starts or None."""
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # [B, T, D_inner] each
        mask = None if attention_mask is None else attention_mask[..., None].to(x.dtype)  # [B, T, 1]
        if mask is not None:
            x = x * mask  # pads enter the conv as zeros
        x = F.silu(cached_short_conv(self.conv1d, x, attention_mask, cache, self.layer_idx, sequence_starts))
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        if self.inner_norms:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        dt = F.softplus(at_least_fp32(self.dt_proj(dt)))  # [B, T, D_inner]
        if mask is not None:
            dt = dt * mask  # dt = 0: a pad neither decays nor writes the state
        y, state = selective_scan(
            x, dt, -torch.exp(at_least_fp32(self.A_log)), B, C, at_least_fp32(self.D),
            initial_state=read_recurrent_state(cache, self.layer_idx), reset=sequence_starts, mode=self.mode,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        return self.out_proj(y * F.silu(z)), None
