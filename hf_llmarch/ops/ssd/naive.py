"""Token-by-token Mamba-2 (SSD) recurrence: the test oracle and the one-token decode step."""

from __future__ import annotations

import torch


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def expand_groups(bc: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N]: head h reads group h // (H // G) (repeat_interleave, not tile)."""
    return bc.repeat_interleave(num_heads // bc.shape[-2], dim=-2)


def ssd_step(x, dt, A, B, C, D, state):
    """One token: h = exp(dt*A) h + (dt x) ⊗ B, y = h C + D x.

    x [B, H, P]; dt [B, H]; A [H]; B, C [B, G, N]; D [H] or None; state [B, H, P, N].
    Returns (y [B, H, P] in x's dtype, new_state [B, H, P, N] in fp32, or fp64 if any input is).
    """
    dtype = compute_dtype(x, dt, A, B, C, state)
    xf, dtf, Af = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bh, Ch = (expand_groups(t.to(dtype), x.shape[1]) for t in (B, C))  # [B, H, N]
    decay = torch.exp(dtf * Af)[..., None, None]  # [B, H, 1, 1]
    write = (dtf[..., None] * xf)[..., None] * Bh[:, :, None, :]  # [B, H, P, N]
    state = decay * state.to(dtype) + write
    y = (state * Ch[:, :, None, :]).sum(-1)  # [B, H, P]
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), state


def ssd_naive(x, dt, A, B, C, D=None, initial_state=None, reset=None):
    """Python loop of `ssd_step` over time. x [B, T, H, P]; dt [B, T, H]; B, C [B, T, G, N];
    initial_state [B, H, P, N] or None (zeros); reset [B, T] bool: the state is zeroed before a
    True token is absorbed (a packed sequence starts there). Returns (y [B, T, H, P], final_state)."""
    batch, T, H, P = x.shape
    dtype = compute_dtype(x, dt, A, B, C, initial_state)
    state = x.new_zeros(batch, H, P, B.shape[-1], dtype=dtype) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        if reset is not None:
            state = state.masked_fill(reset[:, t, None, None, None], 0.0)
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, state)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
    return y, state.to(dtype)
