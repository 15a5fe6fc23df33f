"""Names the layer pattern may use, and the transformers layer type each maps to.

configuration.py validates patterns against this table; the classes are in `mixers/__init__.py`
(one class may serve several names, e.g. attention for `attn` and `swa`).
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
