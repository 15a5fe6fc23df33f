"""S4D as a long convolution for training: y = K * u + D u with K_l = 2 Re sum_m W_m dA_m^l.

The kernel is a Vandermonde product (O(H M T)) and the convolution an FFT (O(H T log T)), both in
fp32/fp64: half-precision FFTs lose the kernel's tail. This form cannot reset the state mid-row.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .naive import powers, prepare

# Elements of one Vandermonde block [H, M, L]; blocks are recomputed in backward, so this bounds memory.
VANDERMONDE_BLOCK = 2**22


def _vandermonde_block(dA, coef, x, start: int):
    """For l in [start, start+L): kernels [G, H, L] = 2 Re sum_m coef_gm dA_m^l and the state
    partial sum [B, H, M] = sum_l x_l dA^l. coef [G, H, M] complex; x [B, H, L] real."""
    V = powers(dA, start, x.shape[-1])  # [H, M, L]
    kernels = 2 * torch.einsum("ghm,hml->ghl", coef, V).real
    return kernels, torch.einsum("bhl,hml->bhm", x.to(V.dtype), V)


def _vandermonde(dA, coef, x):
    """`_vandermonde_block` over all of x [B, H, T], in blocks of at most VANDERMONDE_BLOCK elements."""
    T = x.shape[-1]
    step = max(1, VANDERMONDE_BLOCK // dA.numel())
    kernels, state = [], 0
    for start in range(0, T, step):
        k, s = checkpoint(_vandermonde_block, dA, coef, x[..., start : start + step], start, use_reentrant=False)
        kernels.append(k)
        state = state + s
    return torch.cat(kernels, dim=-1), state


def _causal_conv(u, k):
    """y_t = sum_{j<=t} k_{t-j} u_j for u [B, H, T], k [H, T]. Zero-padding to 2T makes the FFT's
    circular convolution linear; with n = T the tail of the kernel would wrap onto early tokens."""
    T = u.shape[-1]
    n = 2 * T
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :T]


def s4d_fft(u, dA, W, D=None, *, initial_state=None):
    """FFT convolution form; shapes as in `s4d_naive` (no reset). The initial state adds
    2 Re sum_m W_m dA_m^(t+1) s0_m to y_t, and the final state is the transposed Vandermonde
    product s_T = sum_j dA^(T-1-j) u_j + dA^T s0, so no step loops over tokens."""
    out_dtype = u.dtype
    u, dA, W, D, s0 = prepare(u, dA, W, D, initial_state)
    T = u.shape[1]
    coef = W[None] if s0 is None else torch.cat([W[None], W * dA * s0])  # [1 or 1+B, H, M]
    x = u.flip(1).transpose(1, 2)  # [B, H, T]: x_l = u_{T-1-l} meets dA^l in the final state
    kernels, state = _vandermonde(dA, coef, x)
    y = _causal_conv(u.transpose(1, 2), kernels[0])  # [B, H, T]
    if s0 is not None:
        y = y + kernels[1:]
        state = state + powers(dA, T, 1)[..., 0] * s0
    y = y.transpose(1, 2)
    if D is not None:
        y = y + D * u
    return y.to(out_dtype), state
