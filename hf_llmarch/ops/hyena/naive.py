"""Oracle for Hyena's implicit long convolution, and its one-token decode step.

y_t = sum_{j<=t} h_{t-j} u_j + bias * u_t per channel, as an explicit Toeplitz product (O(T^2 D)).
Both compute in fp32 (fp64 for fp64 inputs) and return u's dtype.
"""

import torch


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64; everything else runs in fp32 (half-precision sums lose the filter's tail)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def long_conv_naive(u, h, bias, reset=None) -> torch.Tensor:
    """u [B, T, D]; h [D, L >= T] (h[:, l] weighs the input l steps back); bias [D]; reset [B, T]
    bool or None, True where a packed sequence starts (the sum never reaches back across it)."""
    dtype = compute_dtype(u)
    seq_len = u.shape[1]
    u32, h, bias = u.to(dtype), h[:, :seq_len].to(dtype), bias.to(dtype)
    steps = torch.arange(seq_len, device=u.device)
    lag = steps[:, None] - steps[None, :]  # [T, T]: output i reads input j at lag i - j
    toeplitz = h[:, lag.clamp(min=0)] * (lag >= 0)  # [D, T, T]
    if reset is None:
        y = torch.einsum("dij,bjd->bid", toeplitz, u32)
    else:
        segment = reset.long().cumsum(-1)  # [B, T]
        same = (segment[:, :, None] == segment[:, None, :]).to(dtype)  # [B, T, T]
        y = torch.einsum("dij,bij,bjd->bid", toeplitz, same, u32)
    return (y + bias * u32).to(u.dtype)


def long_conv_step(history, h, bias) -> torch.Tensor:
    """Decode: the output for the newest input. history [B, D, t] holds every input of the
    sequence so far, oldest first, the new one last; h [D, L >= t]; bias [D]. Returns [B, D] in
    O(t D): one dot product per channel with the reversed filter."""
    dtype = compute_dtype(history)
    length = history.shape[-1]
    x = history.to(dtype)
    y = (x * h[:, :length].flip(-1).to(dtype)).sum(-1) + bias.to(dtype) * x[..., -1]
    return y.to(history.dtype)
