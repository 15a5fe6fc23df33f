"""Reading and writing a recurrent mixer's state in transformers' cache.

The state lives in the `LinearAttentionLayer` that `DynamicCache(config)` creates for a
`linear_attention` layer, so `generate()` (including beam reordering) handles it unchanged.
Only the layer attributes common to transformers 5.17 and 5.23 are used here.
"""

import torch


def read_recurrent_state(cache, layer_idx: int) -> torch.Tensor | None:
    """The state stored for `layer_idx`, or None before the first write (a zero state)."""
    if cache is None or layer_idx >= len(cache.layers):
        return None
    states = getattr(cache.layers[layer_idx], "recurrent_states", None)
    if not states:
        return None
    return states.get(0) if isinstance(states, dict) else states[0]


def write_recurrent_state(cache, layer_idx: int, state: torch.Tensor):
    if cache is not None:
        cache.update_recurrent_state(state, layer_idx)


def read_conv_state(cache, layer_idx: int) -> torch.Tensor | None:
    """The short-conv history [B, C, K-1] stored for `layer_idx`, or None before the first write."""
    if cache is None or layer_idx >= len(cache.layers):
        return None
    layer = cache.layers[layer_idx]
    if not getattr(layer, "has_previous_state", [False])[0]:
        return None
    return layer.conv_states[0]


def write_conv_state(cache, layer_idx: int, state: torch.Tensor):
    """Store exactly `state` [B, C, K-1]: transformers keeps the last `conv_kernel_size` columns of
    what it is given (after its stored ones), so with the size set to K-1 it keeps these."""
    if cache is not None:
        cache.update_conv_state(state, layer_idx, conv_kernel_size=state.shape[-1])
