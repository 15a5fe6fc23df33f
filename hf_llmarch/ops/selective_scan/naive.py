"""Token-by-token selective scan (Mamba-1 recurrence); the test oracle, not meant to be fast.

h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t)[:, None] * B_t[None, :];  y_t = (h_t * C_t).sum(-1) + D * x_t
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def upcast(dtype, *tensors):
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def selective_scan_step(x, dt, A, B, C, D, state):
    """One token. x, dt [B, D]; A [D, N]; B, C [B, N]; D [D] or None; state [B, D, N].
    Returns (y [B, D] in x's dtype, new state [B, D, N] in fp32/fp64)."""
    dtype = compute_dtype(x, dt, A, B, C, D, state)
    xs, dts, As, Bs, Cs, Ds, h = upcast(dtype, x, dt, A, B, C, D, state)
    h = (dts[..., None] * As).exp() * h + (dts * xs)[..., None] * Bs[:, None, :]  # [B, D, N]
    y = (h * Cs[:, None, :]).sum(-1)  # [B, D]
    if Ds is not None:
        y = y + Ds * xs
    return y.to(x.dtype), h


def selective_scan_naive(x, dt, A, B, C, D=None, initial_state=None, reset=None):
    """Plain Python loop over time. x, dt [B, T, D]; A [D, N]; B, C [B, T, N]; D [D] or None;
    initial_state [B, D, N] or None (zeros); reset [B, T] bool: the state is zeroed before that token.
    Returns (y [B, T, D] in x's dtype, final_state [B, D, N] in fp32/fp64)."""
    dtype = compute_dtype(x, dt, A, B, C, D, initial_state)
    Bsz, T, Dm = x.shape
    state = initial_state.to(dtype) if initial_state is not None else x.new_zeros(Bsz, Dm, A.shape[-1], dtype=dtype)
    ys = []
    for t in range(T):
        if reset is not None:
            state = state.masked_fill(reset[:, t, None, None], 0.0)
        y, state = selective_scan_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, state)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(Bsz, 0, Dm)
    return y, state
