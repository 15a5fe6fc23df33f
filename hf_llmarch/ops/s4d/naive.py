"""Token-by-token S4D recurrence; the test oracle and the decode step, not meant to be fast.

State s [B, H, M] complex (M = N/2 modes, one per conjugate pair): s_t = dA * s_{t-1} + u_t,
y_t = 2 Re(sum_m W_m s_t,m) + D u_t (the factor 2 adds the conjugate half).
"""

from __future__ import annotations

import torch


def prepare(u, dA, W, D, state):
    """Upcast to the compute dtypes: complex128/float64 if u or dA is double, else complex64/float32.
    Returns (u, dA, W, D, state) with u real [.., H] and the rest complex (D real or None)."""
    double = u.dtype == torch.float64 or dA.dtype == torch.complex128
    real, cplx = (torch.float64, torch.complex128) if double else (torch.float32, torch.complex64)
    D = None if D is None else D.to(real)
    state = None if state is None else state.to(cplx)
    return u.to(real), dA.to(cplx), W.to(cplx), D, state


def readout(s, W, u, D):
    """y = 2 Re(sum_m W_m s_m) + D u; s [..., H, M], u [..., H] -> [..., H] real."""
    y = 2 * (W * s).sum(-1).real
    return y if D is None else y + D * u


def s4d_step(u, dA, W, D, state):
    """One token: u [B, H], state [B, H, M] complex (None = zeros). Returns (y [B, H] in u.dtype, new state)."""
    out_dtype = u.dtype
    u, dA, W, D, state = prepare(u, dA, W, D, state)
    if state is None:
        state = torch.zeros(u.shape[0], *dA.shape, dtype=dA.dtype, device=u.device)  # [B, H, M]
    state = dA * state + u[..., None]
    return readout(state, W, u, D).to(out_dtype), state


def s4d_naive(u, dA, W, D=None, *, initial_state=None, reset=None):
    """Plain loop over time. u [B, T, H] real; dA, W [H, M] complex; D [H] or None;
    initial_state [B, H, M] complex or None; reset [B, T] bool, True where a packed sequence
    starts (the state is zeroed before that token). Returns (y [B, T, H] in u.dtype, final state)."""
    out_dtype = u.dtype
    u, dA, W, D, state = prepare(u, dA, W, D, initial_state)
    B, T, H = u.shape
    if state is None:
        state = torch.zeros(B, H, dA.shape[-1], dtype=dA.dtype, device=u.device)
    ys = []
    for t in range(T):
        if reset is not None:
            state = state.masked_fill(reset[:, t, None, None], 0.0)
        state = dA * state + u[:, t, :, None]
        ys.append(readout(state, W, u[:, t], D))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(B, 0, H)
    return y.to(out_dtype), state


def powers(dA, start: int, length: int, step: int = 1) -> torch.Tensor:
    """dA^l for l = start, start+step, .. (length values), as exp(l log dA): [H, M, length].
    Any branch of the complex log gives the same integer powers, and exp(l z) needs no loop."""
    z = torch.log(dA)
    l = start + step * torch.arange(length, device=dA.device, dtype=z.real.dtype)
    return torch.exp(z[..., None] * l)
