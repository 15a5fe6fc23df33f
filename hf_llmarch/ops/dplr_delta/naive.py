"""Token-by-token DPLR delta rule: the test oracle, and (one step at a time) the decode form."""

from __future__ import annotations

import torch


def prepare(*tensors):
    """Upcast to the compute dtype: float64 if any input is float64, else float32 (None passes through)."""
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    return [None if t is None else t.to(dtype) for t in tensors]


def dplr_delta_step(q, k, v, a, b, log_decay, state, scale=1.0):
    """One token in KV layout: S = exp(w)[:, None] * S + b[:, None] * (a @ S)[None, :] + k[:, None] * v[None, :],
    o = scale * S^T q. q, k, a, b, log_decay [B, H, Dk]; v [B, H, Dv]; state [B, H, Dk, Dv]."""
    # The removal term reads the state before this token's decay (RWKV-7's "a @ S_{t-1}").
    read = torch.einsum("bhk,bhkv->bhv", a, state)  # [B, H, Dv]
    state = log_decay.exp()[..., None] * state + b[..., None] * read[..., None, :] + k[..., None] * v[..., None, :]
    return scale * torch.einsum("bhk,bhkv->bhv", q, state), state


def dplr_delta_naive(q, k, v, a, b, log_decay, scale=1.0, initial_state=None, reset=None):
    """Python loop of `dplr_delta_step` over time.

    q, k, a, b, log_decay: [B, T, H, Dk]; v: [B, T, H, Dv]; initial_state: [B, H, Dk, Dv] or None (zeros).
    reset: [B, T] bool, True where a packed sequence starts: the state entering that token is zero.
    Returns (o [B, T, H, Dv] in v's dtype, final_state [B, H, Dk, Dv] in fp32, fp64 if any input is).
    """
    out_dtype = v.dtype
    q, k, v, a, b, w, state = prepare(q, k, v, a, b, log_decay, initial_state)
    batch, T, H, Dk = q.shape
    if state is None:
        state = q.new_zeros(batch, H, Dk, v.shape[-1])
    outs = []
    for t in range(T):
        if reset is not None:
            state = state.masked_fill(reset[:, t, None, None, None], 0.0)
        o_t, state = dplr_delta_step(q[:, t], k[:, t], v[:, t], a[:, t], b[:, t], w[:, t], state, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o.to(out_dtype), state
