"""Chunked S4D: a Toeplitz matrix product inside chunks of Q tokens, the state passed between
chunks. Linear in T, supports `reset` (packed rows), and only ever raises dA to powers <= Q."""

from __future__ import annotations

import torch

from .naive import powers, prepare


def _segment_masks(reset):
    """reset [B, N, L] -> (same [B, N, L, L]: token pairs of one sequence, to_end [B, N, L]: tokens of
    the chunk's last sequence, from_start [B, N, L]: tokens continuing the entering state,
    survives [B, N]: the entering state reaches the chunk end). Segment 0 continues the entering state."""
    seg = reset.flatten(1).long().cumsum(dim=1).view(reset.shape)
    last = seg[..., -1]  # [B, N]
    entering = torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1]], dim=1)
    same = seg[..., :, None] == seg[..., None, :]
    return same, seg == last[..., None], seg == entering[..., None], last == entering


def _toeplitz(W, P):
    """Lower-triangular [H, L, L] with entry (i, j) = K_{i-j}, K_l = 2 Re sum_m W_m dA_m^l; P [H, M, L+1]."""
    L = P.shape[-1] - 1
    K = 2 * torch.einsum("hm,hml->hl", W, P[..., :L]).real  # [H, L]
    i = torch.arange(L, device=K.device)
    diff = i[:, None] - i[None, :]
    return K[:, diff.clamp(min=0)] * (diff >= 0)


def _pass_states(state, contrib, decay):
    """State entering each chunk [B, N, H, M] and after the last, from per-chunk contributions
    [B, N, H, M] and decays [B, N, H, M]: s <- decay * s + contrib (a loop over chunks, not tokens)."""
    entering = []
    for n in range(contrib.shape[1]):
        entering.append(state)
        state = decay[:, n] * state + contrib[:, n]
    return torch.stack(entering, dim=1), state


def _chunked(u, reset, state, W, dA, L: int):
    """Run u [B, N*L, H] in chunks of L tokens from `state` [B, H, M].
    Returns (y [B, N*L, H] without the D u term, final state [B, H, M])."""
    B, T, H = u.shape
    u = u.reshape(B, T // L, L, H)
    P = powers(dA, 0, L + 1)  # [H, M, L+1]
    toe = _toeplitz(W, P)
    no_reset = torch.zeros(B, T // L, L, dtype=torch.bool, device=u.device)
    same, to_end, from_start, survives = _segment_masks(no_reset if reset is None else reset.view(B, -1, L))
    if reset is None:  # the unmasked product never builds a [B, N, H, L, L] tensor
        y = torch.einsum("hij,bnjh->bnih", toe, u)
    else:
        y = torch.einsum("bnhij,bnjh->bnih", toe * same[:, :, None], u)
    # Each chunk's own tokens carried to its end: sum_j dA^(L-1-j) u_j over the chunk's last sequence.
    contrib = torch.einsum("bnjh,hmj->bnhm", (u * to_end[..., None]).to(P.dtype), P[..., :L].flip(-1))
    decay = P[..., L] * survives[..., None, None]  # [B, N, H, M]
    entering, state = _pass_states(state, contrib, decay)
    y = y + 2 * torch.einsum("bnhm,hmi->bnih", W * entering, P[..., 1:]).real * from_start[..., None]
    return y.reshape(B, T, H), state


def s4d_chunk(u, dA, W, D=None, *, initial_state=None, reset=None, chunk_size=64):
    """Chunked form; shapes as in `s4d_naive`. The whole chunks run as one batch of chunks and the
    remainder (T mod chunk_size tokens) as one shorter chunk: zero padding is not an identity step
    for an LTI state (it would still decay), so the tail is never padded."""
    out_dtype = u.dtype
    u, dA, W, D, state = prepare(u, dA, W, D, initial_state)
    B, T, H = u.shape
    if state is None:
        state = torch.zeros(B, H, dA.shape[-1], dtype=dA.dtype, device=u.device)
    split = T - T % chunk_size
    ys = []
    for a, e, L in ((0, split, chunk_size), (split, T, T - split)):
        if e > a:
            y, state = _chunked(u[:, a:e], None if reset is None else reset[:, a:e], state, W, dA, L)
            ys.append(y)
    y = torch.cat(ys, dim=1) if ys else u.new_zeros(B, 0, H)
    if D is not None:
        y = y + D * u
    return y.to(out_dtype), state
