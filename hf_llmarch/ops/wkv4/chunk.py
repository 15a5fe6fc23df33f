"""Chunked RWKV-4 WKV, linear in T: log-sum-exp sums inside each chunk, the (a, b, p) state across.

Every exponent is shifted by the largest one it is summed with before the exp, so |k| ~ 100 stays
finite in fp32. Decay between two tokens is w times the number of real tokens between them: a pad
is an identity step. Pairs, and the entering state, only reach tokens of the same packed sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .naive import EMPTY_LOG_SCALE, prepare

NEG_INF = float("-inf")


class _Layout(NamedTuple):
    real: torch.Tensor  # [B, N, L] bool: a real token (the tail added up to a whole chunk is pads)
    count: torch.Tensor  # [B, N, L]: real tokens in the chunk up to and including this one
    seg: torch.Tensor  # [B, N, L]: which packed sequence each token belongs to
    seg_enter: torch.Tensor  # [B, N, 1]: the sequence of the state entering the chunk


def _to_chunks(x, T_pad, L):
    """Zero-pad dim 1 up to T_pad and reshape [B, T, ...] -> [B, N, L, ...]."""
    x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, T_pad - x.shape[1]])
    return x.reshape(x.shape[0], T_pad // L, L, *x.shape[2:])


def _layout(k, token_mask, reset, T_pad, L) -> _Layout:
    B, T, _ = k.shape
    real = k.new_ones(B, T, dtype=torch.long) if token_mask is None else token_mask.long()
    real = _to_chunks(real, T_pad, L)
    starts = k.new_zeros(B, T, dtype=torch.long) if reset is None else reset.long()
    # The tail starts nothing, so it stays in the row's last sequence; sequence 0 continues `state`.
    seg = _to_chunks(starts, T_pad, L).flatten(1).cumsum(1).view(real.shape)
    seg_enter = torch.cat([torch.zeros_like(seg[:, :1, -1:]), seg[:, :-1, -1:]], dim=1)
    return _Layout(real.bool(), real.cumsum(2), seg, seg_enter)


def _chunk_states(w, k, v, lay):
    """Each chunk's own contribution to the state at its end, (a, b, p) [B, N, 3, C]: the real
    tokens of the chunk's last sequence, each decayed by the real tokens after it."""
    after = (lay.count[..., -1:] - lay.count)[..., None]  # [B, N, L, 1]
    keep = lay.real & (lay.seg == lay.seg[..., -1:])  # [B, N, L]
    expo = (k - w * after).masked_fill(~keep[..., None], NEG_INF)  # [B, N, L, C]
    # p is part of the returned state, so it keeps its gradient; the clamp gives an empty chunk p = empty.
    p = expo.amax(dim=2).clamp(min=EMPTY_LOG_SCALE)  # [B, N, C]
    e = (expo - p[:, :, None]).exp()
    return torch.stack([(e * v).sum(2), e.sum(2), p], dim=2)


def _merge(state, own, decay, keep):
    """`state` [B, 3, C] decayed by `decay` [B, C] (dropped where `keep` [B] is False), plus `own`."""
    a, b, p = state.unbind(1)
    old = torch.where(keep[:, None], p - decay, NEG_INF)
    q = torch.maximum(old, own[:, 2])
    e1, e2 = (old - q).exp(), (own[:, 2] - q).exp()
    return torch.stack([e1 * a + e2 * own[:, 0], e1 * b + e2 * own[:, 1], q], dim=1)


def _carry(w, own, lay, state):
    """Run the state across chunks: (state entering each chunk [B, N, 3, C], final state [B, 3, C])."""
    survives = lay.seg[..., -1] == lay.seg_enter[..., 0]  # [B, N]: no reset inside the chunk
    decay = w * lay.count[..., -1:]  # [B, N, C]
    entering = []
    for n in range(own.shape[1]):
        entering.append(state)
        state = _merge(state, own[:, n], decay[:, n], survives[:, n])
    return torch.stack(entering, dim=1), state


def _outputs(w, u, k, v, lay, entering):
    """wkv [B, N, L, C] from the earlier real tokens of the same sequence in the chunk, the entering
    state and the token itself (with the bonus u), all summed under one shared max."""
    L = k.shape[2]
    earlier = torch.ones(L, L, dtype=torch.bool, device=k.device).tril(-1)  # [j, i]: i < j
    pair = earlier & lay.real[..., None, :] & (lay.seg[..., :, None] == lay.seg[..., None, :])  # [B, N, L, L]
    before = lay.count - lay.real.long()  # [B, N, L]: real tokens before j in the chunk
    between = (before[..., :, None] - lay.count[..., None, :])[..., None]  # [B, N, L, L, 1]
    pair_expo = (k[:, :, None] - w * between).masked_fill(~pair[..., None], NEG_INF)  # [B, N, L, L, C]
    a, b, p = (x[:, :, None] for x in entering.unbind(2))  # [B, N, 1, C]
    from_state = (lay.seg == lay.seg_enter)[..., None]  # [B, N, L, 1]
    state_expo = torch.where(from_state, p - w * before[..., None], NEG_INF)  # [B, N, L, C]
    self_expo = u + k  # [B, N, L, C]
    # wkv does not depend on the shift, so the shift needs no gradient.
    m = torch.maximum(pair_expo.amax(3), torch.maximum(state_expo, self_expo)).detach()
    e_pair = (pair_expo - m[:, :, :, None]).exp()
    e_state, e_self = (state_expo - m).exp(), (self_expo - m).exp()
    num = (e_pair * v[:, :, None]).sum(3) + e_state * a + e_self * v
    den = e_pair.sum(3) + e_state * b + e_self
    return num / den


def wkv4_chunk(time_decay, time_first, k, v, state=None, token_mask=None, reset=None, chunk_size=32):
    """Chunked form; shapes and return values as in `wkv4_naive`. T need not be a multiple of
    chunk_size: the tail is padded with pads. Memory is O(T * chunk_size * C)."""
    out_dtype = v.dtype
    w, u, k, v, state = prepare(time_decay, time_first, k, v, state)
    B, T, C = k.shape
    L = chunk_size
    T_pad = max(-(-T // L), 1) * L
    lay = _layout(k, token_mask, reset, T_pad, L)
    k, v = (_to_chunks(x, T_pad, L) for x in (k, v))  # [B, N, L, C]
    entering, state = _carry(w, _chunk_states(w, k, v, lay), lay, state)
    out = _outputs(w, u, k, v, lay, entering)
    return out.reshape(B, T_pad, C)[:, :T].to(out_dtype), state
