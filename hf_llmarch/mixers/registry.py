"""Names the layer pattern may use, and the transformers layer type each maps to.

configuration.py validates patterns against this table; the classes are in `mixers/__init__.py`
(one class may serve several names, e.g. attention for `attn` and `swa`).
The layer type decides which cache layer transformers' DynamicCache creates for the layer:
growing keys/values (`full_attention`), a window (`sliding_attention`), or a fixed-size
recurrent state (`linear_attention`).
"""

from ..compat import INDEXED_ATTENTION_LAYER_TYPE
from ..pattern import parallel_parts

MIXER_LAYER_TYPES = {
    "attn": "full_attention",
    "swa": "sliding_attention",
    "gated_attn": "full_attention",
    "retention": "linear_attention",
    "linear_attn": "linear_attention",
    "deltanet": "linear_attention",
    "gated_deltanet": "linear_attention",
    "rwkv4": "linear_attention",
    "rwkv7": "linear_attention",
    "hyena": "linear_attention",  # its growing input history rides in the recurrent-state slot
    "mamba": "linear_attention",
    "mamba2": "linear_attention",
    "s4d": "linear_attention",
    "mla": "full_attention",
    "dsa": INDEXED_ATTENTION_LAYER_TYPE,  # a KV layer that also keeps the indexer's keys
}

FFN_KINDS = ("mlp", "moe", "none", "rwkv_cmix")

# A `par(...)` layer runs one attention mixer beside one recurrent mixer; transformers' cache has a
# layer type holding both (a KV cache and the conv/SSM states), named after the attention kind.
PARALLEL_LAYER_TYPES = {"full_attention": "hybrid", "sliding_attention": "hybrid_sliding"}
# Layer types whose cache holds a recurrent state (they read the token mask and packed-sequence starts).
STATEFUL_LAYER_TYPES = ("linear_attention", *PARALLEL_LAYER_TYPES.values())
# The backbone's mask each layer type's attention reads (a recurrent-only layer reads the token mask).
MASK_OF_LAYER_TYPE = {
    "full_attention": "full_attention",
    "sliding_attention": "sliding_attention",
    "linear_attention": "linear_attention",
    INDEXED_ATTENTION_LAYER_TYPE: INDEXED_ATTENTION_LAYER_TYPE,  # always materialised: the indexer reads it
} | {parallel: attention for attention, parallel in PARALLEL_LAYER_TYPES.items()}


def mixer_layer_type(mixer: str) -> str:
    """The transformers layer type of a pattern mixer name, `par(...)` included; ValueError naming the
    mixer when it is unknown or a parallel combination no cache layer can hold."""
    parts = parallel_parts(mixer)
    if parts is None:
        if mixer not in MIXER_LAYER_TYPES:
            raise ValueError(f"{mixer!r} is not a known mixer; valid mixers: {sorted(MIXER_LAYER_TYPES)} or par(a,b)")
        return MIXER_LAYER_TYPES[mixer]
    kinds = [mixer_layer_type(part) for part in parts]  # the grammar admits no nested par()
    attention = [kind for kind in kinds if kind != "linear_attention"]
    if len(attention) != 1 or len(kinds) != 2:
        raise ValueError(
            f"{mixer!r}: par() runs one attention mixer (attn or swa) beside one recurrent mixer (e.g. mamba2), "
            "as Falcon-H1 does: transformers' cache layer for such a layer holds one KV cache and one recurrent state"
        )
    return PARALLEL_LAYER_TYPES[attention[0]]

# Tensor-parallel plan per kind, keyed relative to the block (Megatron-style: projections into
# heads split by columns, the projection back by rows). The config assembles the model's plan
# from the kinds its stack holds, so every entry matches a parameter. MoE experts stay whole.
_ATTENTION_TP = {f"self_attn.{p}_proj": "colwise" for p in "qkv"} | {"self_attn.o_proj": "rowwise"}
MIXER_TP_PLANS = {
    "attn": _ATTENTION_TP,
    "swa": _ATTENTION_TP,
    "gated_attn": _ATTENTION_TP,  # q_proj's rows are per head [q_h | g_h]: column shards keep heads whole
    "retention": {f"retention.{p}_proj": "colwise" for p in "qkvg"} | {"retention.o_proj": "rowwise"},
}
PARALLEL_BLOCK_ATTR = "parallel"  # a par() layer's mixers live under block.parallel.<their block_attr>


def mixer_tp_plan(mixer: str) -> dict[str, str]:
    """A mixer's tensor-parallel plan relative to the block; a par() layer's is its parts' plans,
    under the parallel mixer's attribute."""
    parts = parallel_parts(mixer)
    if parts is None:
        return MIXER_TP_PLANS.get(mixer, {})
    return {f"{PARALLEL_BLOCK_ATTR}.{name}": style for part in parts for name, style in MIXER_TP_PLANS.get(part, {}).items()}


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
