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
    "mamba": "linear_attention",
    "mamba2": "linear_attention",
    "s4d": "linear_attention",
}

FFN_KINDS = ("mlp", "moe", "none")

# Tensor-parallel plan per kind, keyed relative to the block (Megatron-style: projections into
# heads split by columns, the projection back by rows). The config assembles the model's plan
# from the kinds its stack holds, so every entry matches a parameter. MoE experts stay whole.
_ATTENTION_TP = {f"self_attn.{p}_proj": "colwise" for p in "qkv"} | {"self_attn.o_proj": "rowwise"}
MIXER_TP_PLANS = {
    "attn": _ATTENTION_TP,
    "swa": _ATTENTION_TP,
    "retention": {f"retention.{p}_proj": "colwise" for p in "qkvg"} | {"retention.o_proj": "rowwise"},
}
GATED_MLP_TP = {"mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise"}
PLAIN_MLP_TP = {"mlp.up_proj": "colwise", "mlp.down_proj": "rowwise"}

# Expert-parallel plan (`DistributedConfig(ep_size=...)`), the one Mixtral declares: each rank holds a
# contiguous block of whole experts (dim 0 of the fused weights), and the experts module receives its
# tokens through transformers' token dispatch (all-to-all or all-reduce, `ep_implementation`).
MOE_EP_PLAN = {
    "mlp.experts.gate_up_proj": "grouped_gemm",
    "mlp.experts.down_proj": "grouped_gemm",
    "mlp.experts": "ep_dispatch_experts",
}


def fill_config_defaults(config, fields: dict) -> None:
    """Give `config` each of a mixer's fields it lacks (or holds as None) at its default: a mixer owns
    its fields, and config.json stays flat."""
    for name, default in fields.items():
        if getattr(config, name, None) is None:
            setattr(config, name, default)


def check_positive_ints(config, *fields) -> None:
    for field in fields:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{field}={value!r} must be a positive integer")
