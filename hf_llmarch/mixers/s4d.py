"""S4D: a diagonal linear time-invariant SSM per channel (Gu et al. 2022; recurrent_mixers.md §5),
pattern name `s4d`.

Each of the hidden_size channels runs M = s4d_d_state / 2 complex modes (conjugate pairs, hence
y = 2 Re(...)), discretised by ZOH; training uses the FFT convolution (`ops/s4d`, chunked when
packed), decode the recurrence. As in the S4D reference block the SSM output goes through GELU,
a width-doubling `out_proj` and a GLU.

Padding: pads enter as zeros. An LTI state decays at every step, pad or not, so a right-padded
row is shifted to end at the last column for the scan (its pads then lead, where a zero state
stays zero) and shifted back: its outputs and cached state equal the unpadded row's. Packed
sequences restart the state. Decode state per layer: [B, H, M] complex, stored as fp32 [B, H, M, 2].
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from ..ops.s4d import s4d_discretize, s4d_init, s4d_scan
from .registry import check_positive_ints, fill_config_defaults
from .ssm_common import DT_FIELDS, check_dt_range
from .state import read_recurrent_state, write_recurrent_state

CONFIG_FIELDS = {
    "s4d_d_state": 64,  # N; the state holds N / 2 complex modes per channel
    "s4d_init": "lin",  # S4D-Lin; also inv, real, legs
    "s4d_mode": "auto",  # auto (fft, chunk when packed), fft, chunk, naive (env LLMARCH_S4D_MODE)
    **DT_FIELDS,
}
S4D_INITS = ("lin", "inv", "real", "legs")
S4D_MODES = ("auto", "fft", "chunk", "naive")


class LlmArchS4D(nn.Module):
    block_attr = "s4d"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        channels, self.modes = config.hidden_size, config.s4d_d_state // 2
        self.init_name, self.mode = config.s4d_init, config.s4d_mode
        self.dt_range = (config.ssm_dt_min, config.ssm_dt_max)
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_A_real = nn.Parameter(torch.empty(channels, self.modes))
        self.A_imag = nn.Parameter(torch.empty(channels, self.modes))
        self.C = nn.Parameter(torch.empty(channels, self.modes, 2))  # complex, as (re, im)
        self.D = nn.Parameter(torch.empty(channels))
        self.out_proj = nn.Linear(channels, 2 * channels)  # halves of the GLU

    @staticmethod
    def validate(config) -> None:
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "s4d_d_state")
        if config.s4d_d_state % 2:
            raise ValueError(f"s4d_d_state={config.s4d_d_state} must be even: the modes come in conjugate pairs")
        if config.s4d_init not in S4D_INITS:
            raise ValueError(f"s4d_init={config.s4d_init!r} is unknown; valid: {list(S4D_INITS)}")
        if config.s4d_mode not in S4D_MODES:
            raise ValueError(f"s4d_mode={config.s4d_mode!r} is unknown; valid: {list(S4D_MODES)}")
        check_dt_range(config)

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        values = s4d_init(self.D.shape[0], self.modes, init=self.init_name, dt_min=self.dt_range[0], dt_max=self.dt_range[1])
        for name, value in values.items():
            init.copy_(getattr(self, name), value)

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        u = hidden_states if attention_mask is None else hidden_states * attention_mask[..., None].to(hidden_states.dtype)
        dA, W = s4d_discretize(self.log_dt, self.log_A_real, self.A_imag, self.C)  # [H, M] complex
        stored = read_recurrent_state(cache, self.layer_idx)
        state = None if stored is None else torch.view_as_complex(stored)
        shift = _right_padding(attention_mask)
        y, state = s4d_scan(_roll(u, shift), dA, W, self.D, initial_state=state, reset=sequence_starts, mode=self.mode)
        y = _roll(y, None if shift is None else -shift)
        write_recurrent_state(cache, self.layer_idx, torch.view_as_real(state))  # complex64 -> fp32 pairs
        return F.glu(self.out_proj(F.gelu(y)), dim=-1), None


def _right_padding(token_mask):
    """[B] pads after each row's last real token (0 when left padded), or None without a mask."""
    if token_mask is None:
        return None
    seq_len = token_mask.shape[1]
    steps = torch.arange(seq_len, device=token_mask.device)
    last_real = torch.where(token_mask.bool(), steps, -1).amax(-1)  # [B]
    return (seq_len - 1 - last_real).clamp(max=seq_len - 1)


def _roll(x, shift):
    """Each row of x [B, T, H] rotated right by shift[b] steps (None = unchanged)."""
    if shift is None:
        return x
    steps = torch.arange(x.shape[1], device=x.device)
    idx = (steps[None] - shift[:, None]) % x.shape[1]  # [B, T]
    return x.gather(1, idx[..., None].expand_as(x))
