"""Chunkwise DPLR delta rule: linear in T, a loop over chunks only.

Inside a chunk, with c_i the per-channel cumulative log-decay from the chunk start through token i,
the value read by token i's removal term, x_i = S_{i-1}^T a_i, obeys the unit lower-triangular system
    x_i - sum_{j<i} A_ab[i, j] x_j = (a_i e^{c_{i-1}})^T S_0 + sum_{j<i} A_ak[i, j] v_j,
with A_xy[i, j] = sum_d x_i[d] y_j[d] e^{c_{i-1}[d] - c_j[d]}. One batched unit-triangular inverse gives
x = u + m S_0 for every chunk at once (`ops/triangular.py`); then each chunk is an affine map S_0 -> S_C, and
o_i = (q_i e^{c_i})^T S_0 + sum_{j<=i} [A_qk[i, j] v_j + A_qb[i, j] x_j] (A_q* use e^{c_i - c_j}).

Pair scores are factored as (x_i e^{c}) . (y_j e^{-c}), so e^{-c_j} is the one exp of a positive
number. Precondition: chunk_size * max(-log_decay) must stay well inside fp32's exp range (< ~80).
RWKV-7 bounds each step's log-decay by -e^{-0.5} ≈ -0.6065, so a chunk of 16 reaches e^{9.7} at most.
Nothing here checks or clamps the decays.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..triangular import unit_lower_inverse
from .naive import prepare


def _to_chunks(x, T_pad, C):
    """Zero-pad dim 1 up to T_pad (identity steps), then [B, T, H, D] -> [B, H, N, C, D]."""
    x = F.pad(x, (0, 0, 0, 0, 0, T_pad - x.shape[1]))
    return x.reshape(x.shape[0], T_pad // C, C, *x.shape[2:]).permute(0, 3, 1, 2, 4)


def _segment_masks(reset, T_pad, C):
    """Packed-row masks, broadcast over heads: same [B, 1, N, C, C] (pairs of one sequence), to_end
    [B, 1, N, C, 1] (tokens of the chunk's last sequence), from_start [B, 1, N, C, 1] (tokens that
    continue the entering state), survives [B, 1, N, 1, 1] (the entering state reaches the chunk end)."""
    # The zero-padded tail starts no sequence, so it belongs to the last real one.
    seg = F.pad(reset.long(), (0, T_pad - reset.shape[1])).cumsum(dim=1)
    seg = seg.reshape(reset.shape[0], 1, T_pad // C, C)  # [B, 1, N, C]
    last = seg[..., -1:]  # [B, 1, N, 1]
    entering = torch.cat([torch.zeros_like(last[:, :, :1]), last[:, :, :-1]], dim=2)
    same = seg[..., :, None] == seg[..., None, :]
    return same, (seg == last)[..., None], (seg == entering)[..., None], (last == entering)[..., None]


def _pair_scores(q_in, a_in, k_out, b_out, same):
    """Decayed pair scores [B, H, N, C, C]: A_qk, A_qb (j <= i) and A_ak, A_ab (j < i)."""
    C = q_in.shape[-2]
    ones = torch.ones(C, C, dtype=torch.bool, device=q_in.device)
    incl, strict = ones.tril() & same, ones.tril(-1) & same
    # Masked after the product: the dropped (j > i) entries are finite under the precondition.
    A_qk, A_qb = ((q_in @ x.transpose(-1, -2)) * incl for x in (k_out, b_out))
    A_ak, A_ab = ((a_in @ x.transpose(-1, -2)) * strict for x in (k_out, b_out))
    return A_qk, A_qb, A_ak, A_ab


def _chunk_maps(q, k, v, a, b, w, masks):
    """Per chunk, everything not depending on the entering state S_0: o = o_part + o_state @ S_0 and
    S_C = state_map @ S_0 + state_write. Shapes [B, H, N, C, Dv], [B, H, N, C, Dk], [B, H, N, Dk, Dk],
    [B, H, N, Dk, Dv]."""
    same, to_end, from_start, survives = masks
    c = w.cumsum(dim=-2)  # [B, H, N, C, Dk]
    c_last = c[..., -1:, :]  # [B, H, N, 1, Dk]
    q_in, a_in = q * c.exp(), a * (c - w).exp()  # decayed from the chunk start through i / up to i
    k_out, b_out = k * (-c).exp(), b * (-c).exp()  # the positive exponent the precondition bounds
    A_qk, A_qb, A_ak, A_ab = _pair_scores(q_in, a_in, k_out, b_out, same)
    rhs = torch.cat([A_ak @ v, a_in * from_start], dim=-1)
    sol = unit_lower_inverse(-A_ab) @ rhs  # (I - A_ab)^-1 rhs
    u, m = sol.split([v.shape[-1], c.shape[-1]], dim=-1)  # removal reads: x = u + m @ S_0
    o_part = A_qk @ v + A_qb @ u
    o_state = q_in * from_start + A_qb @ m
    to_chunk_end = (c_last - c).exp() * to_end  # [B, H, N, C, Dk]
    k_end, b_end = (k * to_chunk_end).transpose(-1, -2), (b * to_chunk_end).transpose(-1, -2)
    state_write = k_end @ v + b_end @ u
    state_map = torch.diag_embed(c_last.squeeze(-2).exp()) * survives + b_end @ m
    return o_part, o_state, state_map, state_write


def dplr_delta_chunk(q, k, v, a, b, log_decay, scale=1.0, initial_state=None, chunk_size=16, reset=None):
    """Chunkwise form; shapes and return values as in `dplr_delta_naive`, precondition in the module
    docstring. T need not be a multiple of chunk_size: the tail is padded with zeros (identity
    steps). `reset` starts a packed sequence: its pairs, reads and writes never cross a boundary."""
    out_dtype = v.dtype
    q, k, v, a, b, w, state = prepare(q, k, v, a, b, log_decay, initial_state)
    B, T, H, Dk = q.shape
    Dv, C = v.shape[-1], chunk_size
    T_pad = -(-T // C) * C
    q, k, v, a, b, w = (_to_chunks(x, T_pad, C) for x in (q, k, v, a, b, w))  # [B, H, N, C, D]
    # Without packed rows every mask is all-True.
    masks = (True,) * 4 if reset is None else _segment_masks(reset, T_pad, C)
    o_part, o_state, state_map, state_write = _chunk_maps(q, k, v, a, b, w, masks)
    if state is None:
        state = q.new_zeros(B, H, Dk, Dv)
    entering = []
    for n in range(T_pad // C):
        entering.append(state)
        state = state_map[:, :, n] @ state + state_write[:, :, n]
    o = o_part + o_state @ torch.stack(entering, dim=2)  # [B, H, N, C, Dv]
    o = (scale * o).permute(0, 2, 3, 1, 4).reshape(B, T_pad, H, Dv)[:, :T]
    return o.to(out_dtype), state
