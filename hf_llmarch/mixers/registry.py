"""Names the layer pattern may use, and the transformers layer type each maps to.

Torch-free so that configuration.py can validate a pattern without building modules.
The layer type decides which cache layer transformers' DynamicCache creates for the layer:
growing keys/values (`full_attention`), a window (`sliding_attention`), or a fixed-size
recurrent state (`linear_attention`).
"""

MIXER_LAYER_TYPES = {
    "attn": "full_attention",
    "swa": "sliding_attention",
    "retention": "linear_attention",
}

FFN_KINDS = ("mlp", "moe", "none")
