"""Oracle for the short causal depthwise convolution: one output token at a time from its window."""

import torch


def short_conv_naive(x, weight, bias=None, state=None, reset=None):
    """Same contract as `short_conv`: x [B, T, C], weight [C, K], state [B, C, K-1] or None."""
    batch, seq_len, channels = x.shape
    width = weight.shape[1]
    history = x.new_zeros(batch, width - 1, channels) if state is None else state.transpose(1, 2).to(x.dtype)
    outputs = []
    for t in range(seq_len):
        if reset is not None:
            # A packed sequence starts here: the window sees none of the previous sequence.
            history = torch.where(reset[:, t, None, None], torch.zeros_like(history), history)
        window = torch.cat([history, x[:, t : t + 1]], dim=1)  # [B, K, C]
        y = (window * weight.T.to(x.dtype)).sum(1)  # [B, C]
        outputs.append(y if bias is None else y + bias.to(x.dtype))
        history = window[:, 1:]
    return torch.stack(outputs, dim=1)
