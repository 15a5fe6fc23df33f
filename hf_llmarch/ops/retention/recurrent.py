"""Step-by-step retention used for decoding."""

from __future__ import annotations

import torch

from .naive import _prepare


def _step(q_t, k_t, v_t, g_t, state, reset_t=None):
    """One token: q_t, k_t [B, H, Dk]; v_t [B, H, Dv]; g_t [B, H]; state [B, H, Dk, Dv] or None;
    reset_t [B] bool drops the state where a packed sequence starts."""
    write = torch.einsum("bhk,bhv->bhkv", k_t, v_t)
    if state is not None:
        decay = g_t.exp()[..., None, None]
        if reset_t is not None:
            decay = decay.masked_fill(reset_t[:, None, None, None], 0.0)
        state = decay * state + write
    else:
        state = write
    return torch.einsum("bhk,bhkv->bhv", q_t, state), state


def retention_recurrent(q, k, v, log_decay, scale=None, initial_state=None, reset=None):
    """Recurrent form; a single einsum step when T == 1. Shapes as in `retention_naive`."""
    out_dtype = v.dtype
    q, k, v, g, state, scale = _prepare(q, k, v, log_decay, scale, initial_state)
    B, T, H, _ = q.shape
    if T == 1:
        o, state = _step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state, None if reset is None else reset[:, 0])
        return (scale * o).unsqueeze(1).to(out_dtype), state
    if state is None:
        state = q.new_zeros(B, H, q.shape[-1], v.shape[-1])
    outs = []
    for t in range(T):
        o_t, state = _step(q[:, t], k[:, t], v[:, t], g[:, t], state, None if reset is None else reset[:, t])
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return (scale * o).to(out_dtype), state
