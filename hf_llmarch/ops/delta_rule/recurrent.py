"""Step-by-step (gated) delta rule used for decoding."""

from __future__ import annotations

import torch

from .naive import _prepare


def _step(q_t, k_t, v_t, beta_t, g_t, state, reset_t=None):
    """One token: q_t (pre-scaled), k_t [B, H, Dk]; v_t [B, H, Dv]; beta_t, g_t [B, H];
    state [B, H, Dk, Dv]; reset_t [B] bool drops the state where a packed sequence starts."""
    decay = g_t.exp()[..., None, None]
    if reset_t is not None:
        decay = decay.masked_fill(reset_t[:, None, None, None], 0.0)
    state = decay * state
    v_hat = torch.einsum("bhk,bhkv->bhv", k_t, state)
    state = state + torch.einsum("bhk,bhv->bhkv", k_t, beta_t[..., None] * (v_t - v_hat))
    return torch.einsum("bhk,bhkv->bhv", q_t, state), state


def delta_rule_recurrent(q, k, v, beta, log_decay=None, scale=None, initial_state=None, reset=None):
    """Recurrent form, O(Dk Dv) per head and token; shapes as in `delta_rule_naive`."""
    out_dtype = v.dtype
    q, k, v, beta, g, state, scale = _prepare(q, k, v, beta, log_decay, scale, initial_state)
    B, T, H, Dk = q.shape
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    q = scale * q
    outs = []
    for t in range(T):
        reset_t = None if reset is None else reset[:, t]
        o_t, state = _step(q[:, t], k[:, t], v[:, t], beta[:, t], g[:, t], state, reset_t)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o.to(out_dtype), state
