"""Chunked WY form of the (gated) delta rule: parallel inside each chunk, recurrent across chunks
(linear in T). Notation follows recurrent_mixers.md §7, in KV layout."""

from __future__ import annotations

import torch

from ..retention.chunk import _segment_masks, _to_chunks
from ..triangular import unit_lower_inverse
from .naive import _prepare


def _intra_chunk_decay(b, same):
    """Gamma[i, j] = exp(b_i - b_j) for j <= i within one packed sequence, else 0: [B, N, H, C, C].
    The upper triangle is set to -inf before the exp, so every exp is of a non-positive number."""
    C = b.shape[-1]
    upper = torch.ones(C, C, dtype=torch.bool, device=b.device).triu(1)
    decay = (b[..., :, None] - b[..., None, :]).masked_fill(upper, float("-inf")).exp()
    return decay if same is None else decay * same


def _wy(k, v, beta, b, decay, from_start):
    """U = T diag(beta) V and W = T diag(beta e^b) K, with T = (I + A)^-1 and
    A = strict_lower(diag(beta) K K^T * Gamma). k [B, N, C, H, Dk], v [B, N, C, H, Dv], beta [B, N, C, H],
    b [B, N, H, C] -> U [B, N, H, C, Dv], W [B, N, H, C, Dk]."""
    beta_h = beta.transpose(2, 3)[..., None]  # [B, N, H, C, 1]
    A = (beta_h * torch.einsum("bnihk,bnjhk->bnhij", k, k) * decay).tril(-1)
    # Keys that read the entering state; a token whose sequence starts inside the chunk reads zero.
    k_read = k * b.exp().transpose(2, 3)[..., None]
    if from_start is not None:
        k_read = k_read * from_start
    rhs = beta_h * torch.cat([v, k_read], dim=-1).transpose(2, 3)  # [B, N, H, C, Dv + Dk]
    sol = unit_lower_inverse(A) @ rhs  # (I + A)^-1 rhs; only A's strict lower part is read
    return sol.split([v.shape[-1], k.shape[-1]], dim=-1)


def delta_rule_chunk(q, k, v, beta, log_decay=None, scale=None, initial_state=None, chunk_size=64, reset=None):
    """Chunked WY form; shapes as in `delta_rule_naive`.

    T need not be a multiple of chunk_size: the tail is padded with zero q/k/v/beta and zero
    log-decay, an identity step for the state. `reset` starts a new packed sequence: its pairs,
    keys and state never mix with the sequence before it.
    """
    out_dtype = v.dtype
    q, k, v, beta, g, state, scale = _prepare(q, k, v, beta, log_decay, scale, initial_state)
    B, T, H, Dk = q.shape
    Dv, C = v.shape[-1], chunk_size
    T_pad = -(-T // C) * C
    q, k, v, beta, g = (_to_chunks(x, T_pad, C) for x in (scale * q, k, v, beta, g))  # [B, N, C, H, ...]
    b = g.cumsum(dim=2).transpose(2, 3)  # [B, N, H, C]: decay from chunk start through i
    same = to_end = from_start = survives = None
    if reset is not None:
        same, to_end, from_start, survives = _segment_masks(reset, B, T_pad, C, q.device)
    decay = _intra_chunk_decay(b, same)
    u, w = _wy(k, v, beta, b, decay, from_start)
    b_last = b[..., -1:]  # [B, N, H, 1]
    k_write = k * (b_last - b).exp().transpose(2, 3)[..., None]  # each key decayed to the chunk end
    chunk_decay = b_last.exp()[..., None]  # [B, N, H, 1, 1]
    q_read = q * b.exp().transpose(2, 3)[..., None]
    if reset is not None:
        k_write, chunk_decay, q_read = k_write * to_end, chunk_decay * survives, q_read * from_start
    if state is None:
        state = q.new_zeros(B, H, Dk, Dv)
    prev_states, new_values = [], []
    for n in range(T_pad // C):
        prev_states.append(state)
        v_new = u[:, n] - w[:, n] @ state  # [B, H, C, Dv]: what the keys write beyond the state's prediction
        new_values.append(v_new)
        state = chunk_decay[:, n] * state + torch.einsum("bjhk,bhjv->bhkv", k_write[:, n], v_new)
    prev = torch.stack(prev_states, dim=1)  # [B, N, H, Dk, Dv]: state entering each chunk
    v_new = torch.stack(new_values, dim=1)  # [B, N, H, C, Dv]
    scores = torch.einsum("bnihk,bnjhk->bnhij", q, k) * decay
    o = torch.einsum("bnihk,bnhkv->bnihv", q_read, prev) + torch.einsum("bnhij,bnhjv->bnihv", scores, v_new)
    o = o.reshape(B, T_pad, H, Dv)[:, :T]
    return o.to(out_dtype), state
