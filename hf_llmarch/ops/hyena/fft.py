"""Hyena's long convolution by FFT: O(D T log T) instead of the direct form's O(D T^2).

Zero-padding both signals to 2T turns the FFT's circular convolution into the linear causal one
(with length T the filter's tail would wrap onto early tokens: the future leaks). Computed in fp32
(fp64 for fp64 inputs): half-precision FFTs lose the filter's tail.

Packed rows (`reset`) are unpacked, not masked: every sequence is copied into a row of its own
starting at column 0, sequences of similar length share a bucket of a power-of-two width (so the
buffers hold at most twice the tokens), each bucket runs one FFT, and the outputs are gathered
back. Exact, at the FFT's cost; it reads the sequence lengths on the host.
"""

import torch

from .naive import compute_dtype


def long_conv_fft(u, h, bias, reset=None) -> torch.Tensor:
    """Same contract as `long_conv_naive`: u [B, T, D]; h [D, L >= T]; bias [D]; reset [B, T] or None."""
    dtype = compute_dtype(u)
    u32, h = u.to(dtype), h[:, : u.shape[1]].to(dtype)
    if reset is None:
        y = causal_fft_conv(u32.transpose(1, 2), h).transpose(1, 2)
    else:
        y = _packed_fft_conv(u32, h, reset)
    return (y + bias.to(dtype) * u32).to(u.dtype)


def causal_fft_conv(x, h) -> torch.Tensor:
    """y_t = sum_{j<=t} h_{t-j} x_j for x [..., D, T] and h [D, L] (columns past T are unused;
    missing ones count as zero)."""
    seq_len = x.shape[-1]
    n = 2 * seq_len
    spectrum = torch.fft.rfft(x, n=n) * torch.fft.rfft(h[:, :seq_len], n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :seq_len]


def _packed_fft_conv(u, h, reset) -> torch.Tensor:
    """u [B, T, D] with sequences starting where reset [B, T] is True (and at every row start)."""
    batch, seq_len, channels = u.shape
    flat = u.reshape(batch * seq_len, channels)
    starts = reset.clone()
    starts[:, 0] = True
    starts = starts.flatten()  # [B*T]
    sequence = starts.long().cumsum(0) - 1  # [B*T]: which sequence each token belongs to
    first = starts.nonzero().squeeze(1)  # [S]: flat index of each sequence's first token
    position = torch.arange(flat.shape[0], device=u.device) - first[sequence]  # [B*T]
    lengths = torch.bincount(sequence, minlength=first.shape[0])  # [S]
    width = 2 ** torch.ceil(torch.log2(lengths.double())).long()  # [S]: the bucket of each sequence
    index, values = [], []
    for size in width.unique().tolist():
        in_bucket = width == size  # [S]
        row_of = in_bucket.long().cumsum(0) - 1  # [S]: row of the sequence inside its bucket
        tokens = in_bucket[sequence].nonzero().squeeze(1)  # [n]: flat indices of the bucket's tokens
        rows, cols = row_of[sequence[tokens]], position[tokens]
        buffer = flat.new_zeros(int(in_bucket.sum()), size, channels).index_put((rows, cols), flat[tokens])
        out = causal_fft_conv(buffer.transpose(1, 2), h).transpose(1, 2)  # [rows, size, D]
        index.append(tokens)
        values.append(out[rows, cols])
    y = flat.new_zeros(flat.shape).index_put((torch.cat(index),), torch.cat(values))
    return y.view(batch, seq_len, channels)
