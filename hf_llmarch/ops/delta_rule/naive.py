"""Token-by-token reference recurrence for the (gated) delta rule; the test oracle, not meant to be fast."""

from __future__ import annotations

import torch


def _prepare(q, k, v, beta, log_decay, scale, initial_state):
    """Upcast inputs to the compute dtype (float64 if any input is float64, else float32).
    A missing log_decay becomes zeros: plain DeltaNet is the gated rule with exp(g) = 1."""
    dtypes = [x.dtype for x in (q, k, v, beta, log_decay) if x is not None]
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if log_decay is None:
        log_decay = beta.new_zeros(beta.shape, dtype=dtype)
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    q, k, v, beta, g = (x.to(dtype) for x in (q, k, v, beta, log_decay))
    return q, k, v, beta, g, initial_state, scale


def delta_rule_naive(q, k, v, beta, log_decay=None, scale=None, initial_state=None, reset=None):
    """Plain Python loop over time, KV layout: S <- exp(g_t) S; v_hat = S^T k_t;
    S <- S + k_t (beta_t (v_t - v_hat))^T; o_t = S^T (scale * q_t).

    q, k: [B, T, H, Dk] (already L2-normalised by the caller); v: [B, T, H, Dv]; beta: [B, T, H];
    log_decay: [B, T, H] or None (plain DeltaNet); initial_state: [B, H, Dk, Dv].
    reset: [B, T] bool, True where a new sequence starts (packed rows): the state entering it is dropped.
    Returns (o [B, T, H, Dv] in v's dtype, final_state [B, H, Dk, Dv] in fp32/fp64).
    """
    out_dtype = v.dtype
    q, k, v, beta, g, state, scale = _prepare(q, k, v, beta, log_decay, scale, initial_state)
    B, T, H, Dk = q.shape
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    outs = []
    for t in range(T):
        decay = g[:, t].exp()[..., None, None]  # [B, H, 1, 1]
        if reset is not None:
            decay = decay.masked_fill(reset[:, t, None, None, None], 0.0)
        state = decay * state
        k_t = k[:, t, :, :, None]  # [B, H, Dk, 1]
        v_hat = (state * k_t).sum(-2)  # [B, H, Dv]: what the state predicts for k_t
        delta = beta[:, t, :, None] * (v[:, t] - v_hat)  # [B, H, Dv]
        state = state + k_t * delta[:, :, None, :]
        outs.append((scale * q[:, t, :, :, None] * state).sum(-2))  # [B, H, Dv]
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o.to(out_dtype), state
