"""Mamba-2 (SSD) mixer (Dao & Gu 2024; recurrent_mixers.md §4), pattern name `mamba2`.

in_proj -> (z, xBC, dt); xBC -> short causal conv -> silu -> (x [H heads of P], B, C [G groups of N]);
dt = softplus(dt + dt_bias) clamped to `mamba2_dt_limit`; the scalar-decay-per-head scan
h_t = exp(dt A) h_{t-1} + dt x B^T, y = h C + D x (`ops/ssd`, chunked for training); y -> gated
RMSNorm with z (gate first, per group; Falcon-H1 may norm first or drop the norm) -> out_proj. Parameter names follow transformers'
Mamba2Mixer (`in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `norm`, `out_proj`).

Padding, packing and the cache as the Mamba-1 mixer: pads write and decay nothing, the conv
history keeps each row's last real inputs, packed sequences restart. Decode state per layer: the
conv history [B, D_inner + 2GN, K-1] and the SSM state [B, H, P, N] fp32.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from ..modules.norms import GatedRMSNorm
from ..ops.ssd import ssd_scan
from .registry import check_positive_ints, fill_config_defaults
from .ssm_common import DT_FIELDS, at_least_fp32, cached_short_conv, check_dt_range, dt_init_range, inverse_softplus_dt
from .state import read_recurrent_state, write_recurrent_state

# Fields this mixer owns (defaults: state-spaces/mamba Mamba2, transformers Mamba2Config).
CONFIG_FIELDS = {
    "mamba2_d_state": 128,
    "mamba2_d_conv": 4,
    "mamba2_expand": 2,
    "mamba2_head_dim": 64,
    "mamba2_n_groups": 1,
    "mamba2_chunk_size": 64,
    "mamba2_conv_bias": True,
    "mamba2_proj_bias": False,
    "mamba2_dt_limit": [0.0, math.inf],
    # Falcon-H1's variants: an inner width not tied to expand (None = mamba2_expand * hidden_size), the
    # output gate without its norm (y * silu(z)), the norm before the gate, and muP multipliers on the
    # in_proj sections [z, x, B, C, dt] (None = all 1).
    "mamba2_d_inner": None,
    "mamba2_gate_norm": True,
    "mamba2_norm_before_gate": False,
    "mamba2_proj_multipliers": None,
    "mamba2_mode": "auto",  # SSD path: auto, chunk, naive, cuda (env LLMARCH_SSD_MODE)
    **DT_FIELDS,
}
SSD_MODES = ("auto", "chunk", "naive", "cuda")


class LlmArchSSD(nn.Module):
    block_attr = "mamba"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.inner = mamba2_inner(config)
        self.head_dim, self.groups, self.state_size = config.mamba2_head_dim, config.mamba2_n_groups, config.mamba2_d_state
        self.num_heads = self.inner // self.head_dim
        self.conv_width, self.chunk_size, self.mode = config.mamba2_d_conv, config.mamba2_chunk_size, config.mamba2_mode
        self.dt_limit = tuple(config.mamba2_dt_limit)
        self.dt_range = dt_init_range(config)
        self.conv_dim = self.inner + 2 * self.groups * self.state_size
        self.in_proj = nn.Linear(config.hidden_size, self.inner + self.conv_dim + self.num_heads, bias=config.mamba2_proj_bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.conv_width, groups=self.conv_dim, padding=self.conv_width - 1,
            bias=config.mamba2_conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        if config.mamba2_gate_norm:
            self.norm = GatedRMSNorm(
                self.inner, groups=self.groups, eps=config.norm_eps, norm_before_gate=config.mamba2_norm_before_gate
            )
        self.gate_norm = config.mamba2_gate_norm
        multipliers = config.mamba2_proj_multipliers
        self.proj_multipliers = None if multipliers is None or all(m == 1.0 for m in multipliers) else list(multipliers)
        self.out_proj = nn.Linear(self.inner, config.hidden_size, bias=config.mamba2_proj_bias)

    @staticmethod
    def validate(config) -> None:
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "mamba2_d_state", "mamba2_head_dim", "mamba2_n_groups", "mamba2_chunk_size")
        if not isinstance(config.mamba2_d_conv, int) or config.mamba2_d_conv < 2:
            raise ValueError(f"mamba2_d_conv={config.mamba2_d_conv!r} must be an integer >= 2 (the short conv's width)")
        if config.mamba2_d_inner is not None:
            check_positive_ints(config, "mamba2_d_inner")
        inner = mamba2_inner(config, exact=False)
        source = (
            f"mamba2_d_inner={config.mamba2_d_inner}" if config.mamba2_d_inner is not None
            else f"mamba2_expand={config.mamba2_expand} * hidden_size={config.hidden_size} = {inner}"
        )
        if inner != int(inner) or int(inner) % config.mamba2_head_dim:
            raise ValueError(
                f"{source} does not divide into heads of mamba2_head_dim={config.mamba2_head_dim}: "
                "pick an inner width or head dim that divides it"
            )
        heads = int(inner) // config.mamba2_head_dim
        if heads % config.mamba2_n_groups:
            raise ValueError(
                f"mamba2_n_groups={config.mamba2_n_groups} does not divide the {heads} heads (inner {int(inner)} / "
                f"mamba2_head_dim {config.mamba2_head_dim}): each group of B/C serves a whole number of heads"
            )
        low, high = config.mamba2_dt_limit
        if not 0 <= low < high:
            raise ValueError(f"mamba2_dt_limit={list(config.mamba2_dt_limit)} must be [low, high] with 0 <= low < high")
        multipliers = config.mamba2_proj_multipliers
        if multipliers is not None and (len(multipliers) != 5 or not all(m > 0 for m in multipliers)):
            raise ValueError(
                f"mamba2_proj_multipliers={multipliers!r} must be 5 positive floats, one per in_proj section "
                "[z, x, B, C, dt], or None"
            )
        if config.mamba2_mode not in SSD_MODES:
            raise ValueError(f"mamba2_mode={config.mamba2_mode!r} is unknown; valid: {list(SSD_MODES)}")
        check_dt_range(config)

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """A = 1..H per head (transformers' Mamba2 init), D = 1, dt_bias = softplus^-1 of a
        log-uniform dt in [ssm_dt_min, ssm_dt_max]."""
        init.copy_(self.A_log, torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
        init.ones_(self.D)
        init.copy_(self.dt_bias, inverse_softplus_dt(self.num_heads, *self.dt_range))

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        z, xbc, dt = self._project(hidden_states)
        mask = None if attention_mask is None else attention_mask[..., None].to(xbc.dtype)  # [B, T, 1]
        if mask is not None:
            xbc = xbc * mask  # pads enter the conv as zeros
        xbc = F.silu(cached_short_conv(self.conv1d, xbc, attention_mask, cache, self.layer_idx, sequence_starts))
        x, B, C = xbc.split([self.inner, self.groups * self.state_size, self.groups * self.state_size], dim=-1)
        dt = F.softplus(at_least_fp32(dt) + at_least_fp32(self.dt_bias)).clamp(*self.dt_limit)  # [B, T, H]
        if mask is not None:
            dt = dt * mask  # dt = 0: a pad neither decays nor writes the state
        y, state = ssd_scan(
            x.view(batch, seq_len, self.num_heads, self.head_dim),
            dt,
            -torch.exp(at_least_fp32(self.A_log)),
            B.view(batch, seq_len, self.groups, self.state_size),
            C.view(batch, seq_len, self.groups, self.state_size),
            at_least_fp32(self.D),
            initial_state=read_recurrent_state(cache, self.layer_idx),
            reset=sequence_starts,
            mode=self.mode,
            chunk_size=self.chunk_size,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        y = y.reshape(batch, seq_len, self.inner)
        y = self.norm(y, z) if self.gate_norm else (y * F.silu(z)).to(hidden_states.dtype)
        return self.out_proj(y), None

    def _project(self, hidden_states):
        """in_proj split into z [B, T, inner], x B C [B, T, conv_dim] and dt [B, T, H], each section
        scaled by its muP multiplier when the config sets them."""
        z, xbc, dt = self.in_proj(hidden_states).split([self.inner, self.conv_dim, self.num_heads], dim=-1)
        if self.proj_multipliers is None:
            return z, xbc, dt
        m_z, _, _, _, m_dt = self.proj_multipliers
        return z * m_z, xbc * self._xbc_scale(xbc), dt * m_dt

    def _xbc_scale(self, xbc) -> torch.Tensor:
        """[conv_dim] multipliers of the x, B and C channels, built once per device and dtype (a plain
        attribute, not a buffer: a buffer made in __init__ would stay empty after a meta-device load)."""
        key = (xbc.device, xbc.dtype)
        if getattr(self, "_xbc_scale_cache", (None,))[0] != key:
            _, m_x, m_b, m_c, _ = self.proj_multipliers
            group_state = self.groups * self.state_size
            sizes = torch.tensor([self.inner, group_state, group_state], device=xbc.device)
            scale = torch.tensor([m_x, m_b, m_c], device=xbc.device, dtype=xbc.dtype).repeat_interleave(sizes)
            self._xbc_scale_cache = (key, scale)
        return self._xbc_scale_cache[1]


def mamba2_inner(config, exact: bool = True) -> int | float:
    """The SSD's inner width: mamba2_d_inner, or mamba2_expand * hidden_size."""
    if config.mamba2_d_inner is not None:
        return config.mamba2_d_inner
    inner = config.mamba2_expand * config.hidden_size
    return int(inner) if exact else inner

