"""Chunkwise retention: parallel inside each chunk, recurrent across chunks (linear in T)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import _prepare, segment_ids


def _to_chunks(x, T_pad, C):
    """Zero-pad dim 1 up to T_pad and reshape [B, T, ...] -> [B, N, C, ...]."""
    pad = [0, 0] * (x.dim() - 2) + [0, T_pad - x.shape[1]]
    x = F.pad(x, pad)
    return x.reshape(x.shape[0], T_pad // C, C, *x.shape[2:])


def _segment_masks(reset, B, T_pad, C, device):
    """For packed rows: which (i, j) pairs of a chunk share a sequence [B, N, 1, C, C], which keys
    belong to the chunk's last sequence [B, N, C, 1, 1], which queries continue the entering state
    [B, N, C, 1, 1], and whether the entering state survives the chunk [B, N, 1, 1, 1]."""
    seg = _to_chunks(segment_ids(reset, B, reset.shape[1], device), T_pad, C)  # [B, N, C]
    if T_pad > reset.shape[1]:  # the zero tail belongs to the last real sequence
        tail = torch.arange(T_pad, device=device).reshape(T_pad // C, C) >= reset.shape[1]
        seg = torch.where(tail, seg.flatten(1)[:, reset.shape[1] - 1, None, None], seg)
    last = seg[..., -1:]  # [B, N, 1]
    entering = torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1]], dim=1)  # [B, N, 1]
    same = (seg[..., :, None] == seg[..., None, :])[:, :, None]
    to_end = (seg == last)[..., None, None]
    from_start = (seg == entering)[..., None, None]
    survives = (last == entering)[..., None, None]
    return same, to_end, from_start, survives


def retention_chunk(q, k, v, log_decay, scale=None, initial_state=None, chunk_size=64, reset=None):
    """Chunkwise form with local cumulative log-decays; every exp is of a non-positive number.

    Shapes as in `retention_naive`. T need not be a multiple of chunk_size: the tail is padded
    with zero q/k/v and zero log-decay, an identity step for the state. `reset` starts a new
    packed sequence: its pairs, keys and state never mix with the sequence before it.
    """
    out_dtype = v.dtype
    q, k, v, g, state, scale = _prepare(q, k, v, log_decay, scale, initial_state)
    B, T, H, Dk = q.shape
    Dv, C = v.shape[-1], chunk_size
    T_pad = -(-T // C) * C
    q, k, v, g = (_to_chunks(x, T_pad, C) for x in (q, k, v, g))  # [B, N, C, H, D], g [B, N, C, H]
    b = g.cumsum(dim=2).transpose(2, 3)  # [B, N, H, C]: decay from chunk start through j
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = (b[..., :, None] - b[..., None, :]).masked_fill(upper, float("-inf")).exp()
    if reset is not None:
        same, to_end, from_start, survives = _segment_masks(reset, B, T_pad, C, q.device)
        decay = decay * same
    scores = torch.einsum("bnihk,bnjhk->bnhij", q, k) * decay  # [B, N, H, C, C]
    o = torch.einsum("bnhij,bnjhv->bnihv", scores, v)  # [B, N, C, H, Dv]
    b_last = b[..., -1:]  # [B, N, H, 1]
    # Each chunk's own contribution to the state, every key decayed to the chunk end.
    w = (b_last - b).exp().transpose(2, 3)[..., None]  # [B, N, C, H, 1]
    chunk_decay = b_last.exp()[..., None]  # [B, N, H, 1, 1]
    q_decay = b.exp().transpose(2, 3)[..., None]  # [B, N, C, H, 1]: decay from chunk start through i
    if reset is not None:
        w, chunk_decay, q_decay = w * to_end, chunk_decay * survives, q_decay * from_start
    chunk_kv = torch.einsum("bnjhk,bnjhv->bnhkv", k * w, v)  # [B, N, H, Dk, Dv]
    if state is None:
        state = q.new_zeros(B, H, Dk, Dv)
    prev_states = []  # state entering each chunk
    for n in range(T_pad // C):
        prev_states.append(state)
        state = chunk_decay[:, n] * state + chunk_kv[:, n]
    prev = torch.stack(prev_states, dim=1)  # [B, N, H, Dk, Dv]
    o = o + torch.einsum("bnihk,bnhkv->bnihv", q * q_decay, prev)
    o = (scale * o).reshape(B, T_pad, H, Dv)[:, :T]
    return o.to(out_dtype), state
