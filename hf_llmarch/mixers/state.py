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
