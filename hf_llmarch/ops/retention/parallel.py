"""Quadratic (decay-masked attention) form of gated retention."""

from __future__ import annotations

import torch

from .naive import _prepare


def retention_parallel(q, k, v, log_decay, scale=None, initial_state=None):
    """O(T^2) form: o_n = scale * (sum_{m<=n} exp(G_n - G_m) (q_n . k_m) v_m + exp(G_n) q_n S0).

    G = cumsum(log_decay) over T. Shapes as in `retention_naive`.
    """
    out_dtype = v.dtype
    q, k, v, g, s0, scale = _prepare(q, k, v, log_decay, scale, initial_state)
    T = q.shape[1]
    G = g.cumsum(dim=1).transpose(1, 2)  # [B, H, T]
    diff = G[..., :, None] - G[..., None, :]  # [B, H, T, T]
    # Mask before the exp: the upper triangle holds positive exponents that could overflow.
    upper = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    decay = diff.masked_fill(upper, float("-inf")).exp()
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) * decay
    o = torch.einsum("bhnm,bmhv->bnhv", scores, v)  # [B, T, H, Dv]
    G_last = G[..., -1:]  # [B, H, 1]
    w = (G_last - G).exp().transpose(1, 2)  # [B, T, H]: decay from each m to the end
    state = torch.einsum("bthk,bthv->bhkv", k * w[..., None], v)
    if s0 is not None:
        o = o + G.exp().transpose(1, 2)[..., None] * torch.einsum("bnhk,bhkv->bnhv", q, s0)
        state = state + G_last.exp()[..., None] * s0
    return (scale * o).to(out_dtype), state
