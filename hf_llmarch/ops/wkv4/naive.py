"""Token-by-token RWKV-4 WKV in its numerically stable form; the test oracle and the decode step.

The state holds the numerator a, the denominator b and their log-scale p: the true sums are
a * e^p and b * e^p, so every exp below is of a non-positive number.
"""

from __future__ import annotations

import torch

# The log-scale of the empty state: finite, so p - q never meets -inf - (-inf).
EMPTY_LOG_SCALE = -1e38


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def wkv4_initial_state(batch: int, channels: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The empty state [B, 3, C]: a = b = 0, p = EMPTY_LOG_SCALE."""
    state = torch.zeros(batch, 3, channels, device=device, dtype=dtype)
    state[:, 2] = EMPTY_LOG_SCALE
    return state


def prepare(time_decay, time_first, k, v, state):
    """Upcast to the compute dtype; returns (w = exp(time_decay) > 0, u, k, v, state [B, 3, C])."""
    dtype = compute_dtype(time_decay, time_first, k, v, state)
    if state is None:
        state = wkv4_initial_state(k.shape[0], k.shape[-1], device=k.device, dtype=dtype)
    w = time_decay.to(dtype).exp()
    return w, time_first.to(dtype), k.to(dtype), v.to(dtype), state.to(dtype)


def wkv4_step(w, u, k, v, state, real=None, reset=None):
    """One token. w (the positive decay rate), u [C]; k, v [B, C]; state [B, 3, C];
    real, reset [B] bool or None. Returns (wkv [B, C], new state [B, 3, C]), both in k's dtype."""
    if reset is not None:
        empty = wkv4_initial_state(k.shape[0], k.shape[-1], device=k.device, dtype=k.dtype)
        state = torch.where(reset[:, None, None], empty, state)
    a, b, p = state.unbind(1)  # [B, C] each
    q = torch.maximum(p, u + k)
    e1, e2 = (p - q).exp(), (u + k - q).exp()
    wkv = (e1 * a + e2 * v) / (e1 * b + e2)
    q = torch.maximum(p - w, k)
    e1, e2 = (p - w - q).exp(), (k - q).exp()
    new = torch.stack([e1 * a + e2 * v, e1 * b + e2, q], dim=1)
    if real is not None:  # a pad neither writes nor decays
        new = torch.where(real[:, None, None], new, state)
    return wkv, new


def wkv4_naive(time_decay, time_first, k, v, state=None, token_mask=None, reset=None):
    """Plain Python loop over time.

    time_decay, time_first: [C] (raw; the decay per step is e^{-exp(time_decay)}); k, v: [B, T, C];
    state: [B, 3, C] (a, b, p) or None (empty); token_mask: [B, T] bool, False at pads;
    reset: [B, T] bool, True where a packed sequence starts (the state entering it is empty).
    Returns (wkv [B, T, C] in v's dtype, final state [B, 3, C] in fp32, fp64 for fp64 inputs).
    """
    out_dtype = v.dtype
    w, u, k, v, state = prepare(time_decay, time_first, k, v, state)
    outs = []
    for t in range(k.shape[1]):
        real = None if token_mask is None else token_mask[:, t]
        starts = None if reset is None else reset[:, t]
        wkv, state = wkv4_step(w, u, k[:, t], v[:, t], state, real, starts)
        outs.append(wkv)
    out = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return out.to(out_dtype), state
