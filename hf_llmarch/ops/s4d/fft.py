"""S4D as a long convolution for training: y = K * u + D u with K_l = 2 Re sum_m W_m dA_m^l.

The kernel is a Vandermonde product (O(H M T)) and the convolution an FFT (O(H T log T)), both in
fp32/fp64: half-precision FFTs lose the kernel's tail. This form cannot reset the state mid-row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .naive import powers, prepare


def _split_powers(dA, T: int):
    """Writing l = q R + r with R = ceil(sqrt(T)): dA^l = high_q * low_r, so no [H, M, T] tensor is
    ever built (nor saved for backward). Returns high [H, M, Q] = dA^(qR), low [H, M, R] = dA^r."""
    R = math.isqrt(T - 1) + 1
    return powers(dA, 0, -(-T // R), step=R), powers(dA, 0, R)


def _kernels(coef, high, low, T: int):
    """[G, H, T] real: 2 Re sum_m coef_gm dA_m^l for coef [G, H, M], as matrix products over m."""
    K = torch.einsum("ghmq,hmr->ghqr", coef[..., None] * high, low)  # [G, H, Q, R]
    return 2 * K.flatten(2)[..., :T].real


def _transposed_vandermonde(x, high, low):
    """[B, H, M] = sum_l x_l dA^l for x [B, H, T] real, split like `_kernels`."""
    Q, R = high.shape[-1], low.shape[-1]
    x = F.pad(x, (0, Q * R - x.shape[-1])).view(*x.shape[:2], Q, R).to(low.dtype)  # zeros add nothing
    return torch.einsum("bhqm,hmq->bhm", torch.einsum("bhqr,hmr->bhqm", x, low), high)


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
    high, low = _split_powers(dA, T)
    coef = W[None] if s0 is None else torch.cat([W[None], W * dA * s0])  # [1 or 1+B, H, M]
    kernels = _kernels(coef, high, low, T)
    y = _causal_conv(u.transpose(1, 2), kernels[0])  # [B, H, T]
    # x_l = u_{T-1-l} meets dA^l in the final state.
    state = _transposed_vandermonde(u.flip(1).transpose(1, 2), high, low)
    if s0 is not None:
        y = y + kernels[1:]
        state = state + powers(dA, T, 1)[..., 0] * s0
    y = y.transpose(1, 2)
    if D is not None:
        y = y + D * u
    return y.to(out_dtype), state
