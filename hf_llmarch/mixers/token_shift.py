"""RWKV's token shift: each token mixes its input with the previous token's, so a layer carries the
last real input across calls. The time-mix (slot 0) and the channel-mix FFN (slot 1) of one layer
keep theirs side by side in the layer's conv-state slot of transformers' cache, [B, 2C, 1] (a cache
layer holds one conv state; `generate()` reorders it for beams like any other).

Pads must arrive zeroed: the first real token of a left-padded row then sees a zero previous input,
as an unpadded row does. The stored input is each row's last real one (right padding cannot push it
out), and a packed sequence's first token sees zero.
"""

import torch

from ..ops.short_conv import conv_state_after
from .state import read_conv_state, write_conv_state

SLOTS = 2  # time-mix, channel-mix


def shift_tokens(x, cache, layer_idx: int, slot: int, token_mask=None, sequence_starts=None) -> torch.Tensor:
    """x [B, T, C] (pads zeroed) -> the previous token's input at every position [B, T, C], continuing
    from the cached input and storing the one the next call needs."""
    channels = x.shape[-1]
    stored = read_conv_state(cache, layer_idx)  # [B, SLOTS * C, 1] or None
    previous = None if stored is None else stored[:, slot * channels : (slot + 1) * channels]  # [B, C, 1]
    first = x.new_zeros(x.shape[0], 1, channels) if previous is None else previous.transpose(1, 2).to(x.dtype)
    shifted = torch.cat([first, x[:, :-1]], dim=1)
    if sequence_starts is not None:
        shifted = shifted.masked_fill(sequence_starts[..., None], 0.0)
    if cache is not None:
        updated = x.new_zeros(x.shape[0], SLOTS * channels, 1) if stored is None else stored.clone()
        updated[:, slot * channels : (slot + 1) * channels] = conv_state_after(x, 2, previous, token_mask)
        write_conv_state(cache, layer_idx, updated)
    return shifted


def zero_pads(x: torch.Tensor, token_mask) -> torch.Tensor:
    return x if token_mask is None else x * token_mask[..., None].to(x.dtype)
