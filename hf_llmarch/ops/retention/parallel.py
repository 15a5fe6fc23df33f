"""Quadratic (decay-masked attention) form of gated retention."""

from __future__ import annotations

import torch

from .naive import _prepare, segment_ids


def retention_parallel(q, k, v, log_decay, scale=None, initial_state=None, reset=None):
    """O(T^2) form: o_n = scale * (sum_{m<=n} exp(G_n - G_m) (q_n . k_m) v_m + exp(G_n) q_n S0).

    G = cumsum(log_decay) over T. With `reset`, pairs from different packed sequences are masked
    and S0 reaches only the first sequence. Shapes as in `retention_naive`.
    """
    out_dtype = v.dtype
    q, k, v, g, s0, scale = _prepare(q, k, v, log_decay, scale, initial_state)
    B, T = q.shape[:2]
    G = g.cumsum(dim=1).transpose(1, 2)  # [B, H, T]
    diff = G[..., :, None] - G[..., None, :]  # [B, H, T, T]
    # Mask before the exp: the upper triangle holds positive exponents that could overflow.
    upper = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    decay = diff.masked_fill(upper, float("-inf")).exp()
    if reset is not None:
        seg = segment_ids(reset, B, T, q.device)  # [B, T]
        decay = decay * (seg[:, None, :, None] == seg[:, None, None, :])
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) * decay
    o = torch.einsum("bhnm,bmhv->bnhv", scores, v)  # [B, T, H, Dv]
    G_last = G[..., -1:]  # [B, H, 1]
    w = (G_last - G).exp().transpose(1, 2)  # [B, T, H]: decay from each m to the end
    if reset is not None:
        w = w * (seg == seg[:, -1:])[..., None]  # only the last sequence reaches the final state
    state = torch.einsum("bthk,bthv->bhkv", k * w[..., None], v)
    if s0 is not None:
        s0_reach = G.exp().transpose(1, 2)[..., None]  # [B, T, H, 1]
        s0_kept = G_last.exp()[..., None]  # [B, H, 1, 1]
        if reset is not None:
            s0_reach = s0_reach * (seg == 0)[..., None, None]
            s0_kept = s0_kept * (seg[:, -1] == 0)[:, None, None, None]
        o = o + s0_reach * torch.einsum("bnhk,bhkv->bnhv", q, s0)
        state = state + s0_kept * s0
    return (scale * o).to(out_dtype), state
