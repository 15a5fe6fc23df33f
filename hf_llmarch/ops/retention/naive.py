"""Token-by-token reference recurrence for retention; the test oracle, not meant to be fast."""

from __future__ import annotations

import torch


def segment_ids(reset, batch: int, seq_len: int, device) -> torch.Tensor:
    """[B, T] int: which packed sequence each token belongs to (0 = the one the initial state continues)."""
    if reset is None:
        return torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    return reset.long().cumsum(dim=1)


def _prepare(q, k, v, log_decay, scale, initial_state):
    """Upcast inputs to the compute dtype (float64 if any input is float64, else float32)."""
    dtypes = (q.dtype, k.dtype, v.dtype, log_decay.dtype)
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype), log_decay.to(dtype), initial_state, scale


def retention_naive(q, k, v, log_decay, scale=None, initial_state=None, reset=None):
    """Plain Python loop over time: S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; log_decay: [B, T, H]; initial_state: [B, H, Dk, Dv].
    reset: [B, T] bool, True where a new sequence starts (packed rows): S_{t-1} is dropped there.
    Returns (o [B, T, H, Dv] in v's dtype, final_state [B, H, Dk, Dv] in fp32/fp64).
    """
    out_dtype = v.dtype
    q, k, v, g, state, scale = _prepare(q, k, v, log_decay, scale, initial_state)
    B, T, H, Dk = q.shape
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    outs = []
    for t in range(T):
        decay = g[:, t].exp()[..., None, None]  # [B, H, 1, 1]
        if reset is not None:
            decay = decay.masked_fill(reset[:, t, None, None, None], 0.0)
        outer = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, Dk, Dv]
        state = decay * state + outer
        outs.append(scale * (q[:, t, :, :, None] * state).sum(-2))  # [B, H, Dv]
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o.to(out_dtype), state
