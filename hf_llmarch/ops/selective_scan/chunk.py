"""Chunked selective scan: a log-depth parallel scan inside each chunk, state passing across chunks.

Mamba-1's decay exp(dt_t * A) differs per (channel, state) pair, so the intra-chunk "segsum" matrix
would be [B, Q, Q, D, N]. Composing the affine steps h -> a * h + b pairwise (Hillis-Steele) instead
costs log2(Q) passes over [B, T, D, N], only multiplies decays in [0, 1] (no cumsum differences, so
strong decays underflow to an exact 0 instead of overflowing) and handles a reset as a = 0.
The backward pass is the same recurrence run backwards in time, so autograd stores only a and h.
Work and memory are linear in T; the only Python loops run over scan levels and over chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import compute_dtype, upcast


def _to_chunks(t, T_pad, Q, value=0.0):
    """Pad dim 1 with `value` up to T_pad and reshape [B, T, ...] -> [B, T_pad // Q, Q, ...]."""
    if T_pad > t.shape[1]:
        t = F.pad(t, [0, 0] * (t.dim() - 2) + [0, T_pad - t.shape[1]], value=value)
    return t.reshape(t.shape[0], T_pad // Q, Q, *t.shape[2:])


def _scan_within_chunks(a, b):
    """Inclusive scan of the steps h -> a_t * h + b_t along dim 2 (the token in the chunk).
    a, b [B, nC, Q, D, N] -> (decay from the chunk start through t, state at t from a zero start)."""
    Q = a.shape[2]
    shifts = [2**i for i in range(max(Q - 1, 0).bit_length())]
    # Two output buffers used in turn: fresh CPU allocations of this size cost more than the math.
    buffers = [(torch.empty_like(a), torch.empty_like(b)) for _ in shifts[:2]]
    for level, shift in enumerate(shifts):
        # Compose step t with the span ending at t - shift; both read the previous level's a and b.
        new_a, new_b = buffers[level % 2]
        new_a[:, :, :shift], new_b[:, :, :shift] = a[:, :, :shift], b[:, :, :shift]
        torch.addcmul(b[:, :, shift:], a[:, :, shift:], b[:, :, :-shift], out=new_b[:, :, shift:])
        torch.mul(a[:, :, shift:], a[:, :, :-shift], out=new_a[:, :, shift:])
        a, b = new_a, new_b
    return a, b


def _pass_states(a_end, b_end, state):
    """State entering each chunk [B, nC, D, N], from each chunk's total decay and own contribution
    a_end, b_end [B, nC, D, N] and the state before the first chunk [B, D, N]."""
    entering = []
    for a_c, b_c in zip(a_end.unbind(1), b_end.unbind(1)):
        entering.append(state)
        state = torch.addcmul(b_c, a_c, state)
    return torch.stack(entering, dim=1)


def _scan(a, b, h0, Q):
    """All states h_t = a_t * h_{t-1} + b_t from h0: a, b [B, T, D, N], h0 [B, D, N] -> [B, T, D, N].
    The tail up to a multiple of Q is padded with the identity step (a = 1, b = 0)."""
    T = a.shape[1]
    T_pad = -(-T // Q) * Q
    a, b = _scan_within_chunks(_to_chunks(a, T_pad, Q, 1.0), _to_chunks(b, T_pad, Q))  # [B, nC, Q, D, N]
    entering = _pass_states(a[:, :, -1], b[:, :, -1], h0)  # [B, nC, D, N]
    return torch.addcmul(b, a, entering[:, :, None]).flatten(1, 2)[:, :T]


class _LinearRecurrence(torch.autograd.Function):
    """h = _scan(a, b, h0) with a hand-written backward (autograd through the scan levels would keep
    every level and zero-fill a full-size gradient for each slice)."""

    @staticmethod
    def forward(ctx, a, b, h0, chunk_size):
        h = _scan(a, b, h0, chunk_size)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        # g_t = dL/db_t = grad_h_t + a_{t+1} * g_{t+1}: the same recurrence, reversed in time, from 0.
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        grad_b = _scan(a_next.flip(1), grad_h.flip(1), torch.zeros_like(h0), ctx.chunk_size).flip(1)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)  # [B, T, D, N]
        return grad_b * h_prev, grad_b, a[:, 0] * grad_b[:, 0], None


def selective_scan_chunk(x, dt, A, B, C, D=None, initial_state=None, reset=None, chunk_size=16):
    """Chunked form; shapes and semantics as `selective_scan_naive`, T >= 1 (T need not be a
    multiple of chunk_size)."""
    dtype = compute_dtype(x, dt, A, B, C, D, initial_state)
    xs, dts, As, Bs, Cs, Ds, state = upcast(dtype, x, dt, A, B, C, D, initial_state)
    if state is None:
        state = xs.new_zeros(x.shape[0], x.shape[2], A.shape[-1])
    a = (dts[..., None] * As).exp()  # [B, T, D, N]
    if reset is not None:
        a = a.masked_fill(reset[:, :, None, None], 0.0)  # drop the previous sequence's state
    b = (dts * xs)[..., None] * Bs[:, :, None, :]  # [B, T, D, N]
    h = _LinearRecurrence.apply(a, b, state, chunk_size)  # [B, T, D, N]
    with torch.autocast(x.device.type, enabled=False):  # keep the contraction in the compute dtype
        y = torch.einsum("btdn,btn->btd", h, Cs)  # [B, T, D]
    if Ds is not None:
        y = y + Ds * xs
    return y.to(x.dtype), h[:, -1]
