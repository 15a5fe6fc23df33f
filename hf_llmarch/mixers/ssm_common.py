"""What the state-space mixers (mamba, mamba2) share: the dt init fields, and the short conv run
from and into the cache."""

import math

import torch

from ..ops.short_conv import conv_state_after, short_conv
from .state import read_conv_state, write_conv_state

DT_FIELDS = {"ssm_dt_min": 1e-3, "ssm_dt_max": 1e-1, "ssm_dt_init_floor": 1e-4}


def check_dt_range(config) -> None:
    if not 0 < config.ssm_dt_min <= config.ssm_dt_max:
        raise ValueError(f"ssm_dt_min={config.ssm_dt_min}, ssm_dt_max={config.ssm_dt_max}: need 0 < ssm_dt_min <= ssm_dt_max")


def dt_init_range(config) -> tuple[float, float, float]:
    return config.ssm_dt_min, config.ssm_dt_max, config.ssm_dt_init_floor


def inverse_softplus_dt(size: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """[size] bias b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] and at least `floor`
    (mamba_ssm's init)."""
    low, high = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(size) * (high - low) + low).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """The SSM's A, D and dt run in fp32 under bf16/fp16 weights; an fp64 model keeps fp64 (the oracle)."""
    return t if t.dtype == torch.float64 else t.float()


def cached_short_conv(conv1d, x, token_mask, cache, layer_idx: int, sequence_starts=None) -> torch.Tensor:
    """x [B, T, C] (pads zeroed) through the depthwise `conv1d`, continuing the cached history, and
    storing the history the next chunk needs (each row's last real inputs)."""
    history = read_conv_state(cache, layer_idx)
    y = short_conv(x, conv1d.weight[:, 0], conv1d.bias, state=history, reset=sequence_starts)
    if cache is not None:
        write_conv_state(cache, layer_idx, conv_state_after(x, conv1d.kernel_size[0], history, token_mask))
    return y
