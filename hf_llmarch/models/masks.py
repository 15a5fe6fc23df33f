"""The attention masks the backbone builds per forward: one per kind of attention in the stack,
shaped by the topology (`attention_mask_kind`: causal, bidirectional or prefix)."""

from functools import partial

import torch
from torch.nn import functional as F
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    create_sliding_window_causal_mask,
)

from .. import compat
from ..mixers.registry import MASK_OF_LAYER_TYPE

MASK_BUILDERS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
    # Sparse (DSA) layers narrow a real mask, so sdpa's "None means causal" shortcut is off for them.
    compat.INDEXED_ATTENTION_LAYER_TYPE: partial(create_causal_mask, allow_is_causal_skip=False),
}
# Encoders: padding only (topology.py admits only full attention there).
BIDIRECTIONAL_BUILDERS = {"full_attention": create_bidirectional_mask}


def real_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions counting real tokens only (a left-padded row starts at 0) from a 2D padding mask."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def layer_mask_types(config) -> list[str]:
    """Per layer, the backbone's mask its mixer reads (MASK_OF_LAYER_TYPE of its layer type)."""
    return [MASK_OF_LAYER_TYPE[t] for t in config.layer_types]


def build_attention_masks(
    config, mask_types: list[str], inputs_embeds, attention_mask, position_ids, cache, prefix_mask=None
) -> dict:
    """{mask kind: 4D mask or None} for each kind of attention the stack holds (a par() layer's
    attention included), each built against the cache layer of the first layer that reads it;
    `mask_types` is `layer_mask_types(config)`, which the backbone reads once, not per forward.

    `prefix_mask` [B, T] (prefix LMs) marks the tokens of this chunk that see each other both ways."""
    if config.attention_mask_kind == "bidirectional":
        return {
            mask_type: builder(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
            for mask_type, builder in BIDIRECTIONAL_BUILDERS.items()
            if mask_type in mask_types
        }
    # A position bias is added to the mask, so the causal part must be materialised (no sdpa is_causal shortcut).
    extra = {"allow_is_causal_skip": False} if config.position_embedding_type == "relative_buckets" else {}
    if prefix_mask is not None:
        if tuple(prefix_mask.shape) != tuple(inputs_embeds.shape[:2]):
            raise ValueError(
                f"prefix_mask has shape {tuple(prefix_mask.shape)} but the input is {tuple(inputs_embeds.shape[:2])}: "
                "it must mark this chunk's tokens, [batch, seq]"
            )
        extra["block_sequence_ids"] = prefix_block_ids(prefix_mask, cache)
    return {
        mask_type: builder(
            config=config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **compat.cache_kwargs(cache),
            layer_idx=mask_types.index(mask_type),  # 5.17 picks a wrong default in hybrids
            **extra,
        )
        for mask_type, builder in MASK_BUILDERS.items()
        if mask_type in mask_types
    }


def prefix_block_ids(prefix_mask: torch.Tensor, cache) -> torch.Tensor:
    """[B, past + T] block ids for transformers' blockwise overlay: 0 on the prefix (one block, seen
    both ways), -1 elsewhere (causal). Cached tokens are -1: they are already visible to every later
    query, and a prefix cannot reach back into a chunk computed earlier."""
    block_ids = torch.where(prefix_mask.bool(), 0, -1)
    past = int(cache.get_seq_length(0)) if cache is not None else 0  # a prefix stack is attention only
    return F.pad(block_ids, (past, 0), value=-1) if past else block_ids
