"""Chunked SSD ("Listing 1" of the Mamba-2 paper): quadratic inside each chunk, a linear
recurrence over chunk states across chunks, so the cost is linear in T."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import compute_dtype


def _to_chunks(t, T_pad, Q):
    """Zero-pad dim 1 up to T_pad and split [B, T, ...] -> [B, T_pad // Q, Q, ...]. Zero dt and
    x make the padded tail identity steps."""
    t = F.pad(t, [0, 0] * (t.dim() - 2) + [0, T_pad - t.shape[1]])
    return t.reshape(t.shape[0], T_pad // Q, Q, *t.shape[2:])


def _segsum(a):
    """a [..., Q] -> [..., Q, Q]: out[l, s] = a_{s+1} + ... + a_l for s <= l, -inf above the diagonal.

    Built by masking then cumsum (never cs_l - cs_s), so large cumsums lose no precision and a -inf
    entry (a reset) stays -inf instead of becoming inf - inf = nan.
    """
    Q = a.shape[-1]
    below = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
    seg = a[..., :, None].expand(*a.shape, Q).masked_fill(~below, 0.0).cumsum(-2)  # rows l, cols s
    return seg.masked_fill(below.T, float("-inf"))


def _pass_states(chunk_states, chunk_decay, state):
    """State entering each chunk: h_c = exp(sum of a over chunk c) h_{c-1} + states_c.
    chunk_states [B, c, H, P, N]; chunk_decay [B, c, H]; returns ([B, c, H, P, N], final [B, H, P, N])."""
    entering = []
    for c in range(chunk_states.shape[1]):
        entering.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    return torch.stack(entering, dim=1), state


def _prepare(x, dt, A, B, C, reset, dtype, Q):
    """Discretise and chunk: xd = dt x [b, c, Q, H, P], a = dt A [b, c, H, Q] (-inf where a packed
    sequence starts, which cuts every decay path across it), B, C [b, c, Q, G, N]."""
    T_pad = -(-x.shape[1] // Q) * Q
    dtf = dt.to(dtype)
    a = dtf * A.to(dtype)  # [B, T, H]
    if reset is not None:
        a = a.masked_fill(reset[..., None], float("-inf"))
    xd = x.to(dtype) * dtf[..., None]  # [B, T, H, P]
    xd, a, B, C = (_to_chunks(t, T_pad, Q) for t in (xd, a, B.to(dtype), C.to(dtype)))
    return xd, a.transpose(2, 3), B, C


def ssd_chunk(x, dt, A, B, C, D=None, initial_state=None, reset=None, chunk_size=64):
    """Same contract as `ssd_naive` (shapes in the package docstring); computes in fp32, or fp64 when
    an input is fp64. T need not be a multiple of chunk_size. Returns (y, final_state)."""
    batch, T, H, P = x.shape
    G, N = B.shape[-2:]
    dtype = compute_dtype(x, dt, A, B, C, initial_state)
    Q = min(chunk_size, T)  # short inputs need no padding to a full chunk
    xd, a, Bc, Cc = _prepare(x, dt, A, B, C, reset, dtype, Q)
    nc, R = xd.shape[1], H // G
    xg = xd.reshape(batch, nc, Q, G, R, P)  # head h = g * R + r, as repeat_interleave
    seg = _segsum(a)  # [b, c, H, Q, Q]

    # 1. Intra-chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1} + .. + a_l) xd_s.
    CB = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc)  # [b, c, G, Q, Q]
    M = CB[:, :, :, None] * seg.exp().reshape(batch, nc, G, R, Q, Q)  # [b, c, G, R, Q, Q]
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", M, xg)  # [b, c, Q, G, R, P]

    # 2. Each chunk's own state: every write decayed to the chunk end (last row of the segsum).
    to_end = seg[..., -1, :].exp().transpose(2, 3).reshape(batch, nc, Q, G, R, 1)
    states = torch.einsum("bcsgrp,bcsgn->bcgrpn", xg * to_end, Bc).reshape(batch, nc, H, P, N)

    # 3. Inter-chunk recurrence over chunk states (a reset in a chunk zeroes its decay).
    if initial_state is None:
        initial_state = xd.new_zeros(batch, H, P, N)
    entering, final = _pass_states(states, a.sum(-1).exp(), initial_state.to(dtype))

    # 4. Entering state to output, decayed from the chunk start through token l.
    from_start = a.cumsum(-1).exp().transpose(2, 3).reshape(batch, nc, Q, G, R, 1)
    entering = entering.reshape(batch, nc, G, R, P, N)
    y = y + torch.einsum("bclgn,bcgrpn->bclgrp", Cc, entering) * from_start
    y = y.reshape(batch, nc * Q, H, P)[:, :T]
    if D is not None:
        y = y + D.to(dtype)[:, None] * x.to(dtype)
    return y.to(x.dtype), final
