"""Parameter counts and decode-state sizes of the linear-time (recurrent) mixers, from a config alone.

Each `_<mixer>_state` gives (state FLOPs per token, fp32 state elements, model-dtype conv-history
elements) of one layer: constant in context length.
"""

from .basics import Params, add, linear


def _linear_attn_params(config) -> Params:
    """q, k, v, o (hidden x hidden each), and the per-head output RMSNorm of the unnormalised map."""
    h = config.hidden_size
    norm = 0 if config.linear_attn_feature_map == "elu+1" else h // config.linear_attn_num_heads
    return add(*[linear(h, h)] * 4, (0, norm))


def _linear_attn_state(config) -> tuple[int, int, int]:
    """S and the normaliser z share one [H, Dk, Dv + 1] fp32 state; ~4 FLOPs per element (write and read)."""
    heads = config.linear_attn_num_heads
    dim = config.hidden_size // heads
    elements = heads * dim * (dim + (config.linear_attn_feature_map == "elu+1"))
    return 4 * elements, elements, 0


def _retention_dims(config) -> tuple[int, int, int]:
    heads = config.retention_num_heads
    key_dim = config.hidden_size // heads
    return heads, key_dim, config.retention_value_factor * key_dim


def _retention_params(config) -> Params:
    h = config.hidden_size
    heads, dk, dv = _retention_dims(config)
    return add(
        linear(h, heads * dk),  # q_proj
        linear(h, heads * dk),  # k_proj
        linear(h, heads * dv),  # v_proj
        linear(h, heads * dv),  # g_proj
        linear(heads * dv, h),  # o_proj
        (0, dv),  # g_norm, RMSNorm shared by the heads
    )


def _retention_state(config) -> tuple[int, int, int]:
    """(state FLOPs per token, fp32 state elements, model-dtype conv elements) of one retention layer."""
    heads, dk, dv = _retention_dims(config)
    # Decay + outer-product write k^T v and the read q S: about 4 FLOPs per state element.
    return 4 * heads * dk * dv, heads * dk * dv, 0


def _mamba_dims(config) -> tuple[int, int, int, int]:
    from ..mixers.mamba import dt_rank

    return int(config.mamba_expand * config.hidden_size), config.mamba_d_state, dt_rank(config), config.mamba_d_conv


def _mamba_params(config) -> Params:
    h, bias = config.hidden_size, config.mamba_proj_bias
    inner, n, rank, width = _mamba_dims(config)
    return add(
        linear(h, 2 * inner, bias),  # in_proj
        (0, inner * width + (inner if config.mamba_conv_bias else 0)),  # depthwise conv1d
        linear(inner, rank + 2 * n),  # x_proj
        linear(rank, inner, True),  # dt_proj
        (0, inner * n + inner),  # A_log, D
        (0, rank + 2 * n if config.mamba_inner_norms else 0),  # Jamba's dt, B and C RMSNorms
        linear(inner, h, bias),  # out_proj
    )


def _mamba_state(config) -> tuple[int, int, int]:
    inner, n, _, width = _mamba_dims(config)
    # Per state element: decay, write and read (~5 FLOPs); the conv: one multiply-add per tap.
    return 5 * inner * n + 2 * inner * width, inner * n, inner * (width - 1)


def _mamba2_dims(config) -> tuple[int, int, int, int]:
    from ..mixers.mamba2 import mamba2_inner

    inner = mamba2_inner(config)
    heads = inner // config.mamba2_head_dim
    return inner, heads, inner + 2 * config.mamba2_n_groups * config.mamba2_d_state, config.mamba2_d_conv


def _mamba2_params(config) -> Params:
    h, bias = config.hidden_size, config.mamba2_proj_bias
    inner, heads, conv_dim, width = _mamba2_dims(config)
    return add(
        linear(h, inner + conv_dim + heads, bias),  # in_proj: z, x B C, dt
        (0, conv_dim * width + (conv_dim if config.mamba2_conv_bias else 0)),  # depthwise conv1d
        (0, 3 * heads + (inner if config.mamba2_gate_norm else 0)),  # dt_bias, A_log, D, gated norm weight
        linear(inner, h, bias),  # out_proj
    )


def _mamba2_state(config) -> tuple[int, int, int]:
    inner, heads, conv_dim, width = _mamba2_dims(config)
    elements = heads * config.mamba2_head_dim * config.mamba2_d_state
    return 4 * elements + 2 * conv_dim * width, elements, conv_dim * (width - 1)


def _s4d_params(config) -> Params:
    h, modes = config.hidden_size, config.s4d_d_state // 2
    # log_dt, log_A_real, A_imag, C (complex as 2 reals), D; then out_proj H -> 2H with bias (GLU).
    return add((0, h + 4 * h * modes + h), linear(h, 2 * h, True))


def _s4d_state(config) -> tuple[int, int, int]:
    modes = config.hidden_size * config.s4d_d_state // 2
    # A complex multiply-add per mode to step, and a complex multiply to read: ~12 real FLOPs.
    return 12 * modes, 2 * modes, 0  # complex, stored as fp32 (re, im)


def _delta_dims(config) -> tuple[int, int, int]:
    """(q/k width, v width, value heads) of a (Gated) DeltaNet layer."""
    return (
        config.delta_num_heads * config.delta_head_dim,
        config.delta_num_value_heads * config.delta_value_head_dim,
        config.delta_num_value_heads,
    )


def _delta_params(config, gated: bool) -> Params:
    h = config.hidden_size
    key, value, heads = _delta_dims(config)
    conv = 2 * key + value
    return add(
        linear(h, key), linear(h, key), linear(h, value), linear(h, heads),  # q, k, v, b
        linear(h, heads) if gated else (0, 0),  # a_proj
        (0, 2 * heads if gated else 0),  # dt_bias, A_log
        linear(h, value) if config.delta_output_gate else (0, 0),  # g_proj
        (0, conv * config.delta_conv_size + config.delta_value_head_dim),  # depthwise conv1d, o_norm
        linear(value, h),  # o_proj
    )


def _delta_state(config) -> tuple[int, int, int]:
    key, value, heads = _delta_dims(config)
    elements = heads * config.delta_head_dim * config.delta_value_head_dim
    # Decay, predict S^T k, correct with the outer product and read S^T q: ~6 FLOPs per state element.
    return 6 * elements + 2 * (2 * key + value) * config.delta_conv_size, elements, (2 * key + value) * (config.delta_conv_size - 1)


def _rwkv4_params(config) -> Params:
    """key, value, receptance, output; time_decay and time_first [A]; three token-shift mixes [C]."""
    h, inner = config.hidden_size, config.rwkv4_attention_hidden_size
    return add(*[linear(h, inner)] * 3, linear(inner, h), (0, 2 * inner + 3 * h))


def _rwkv4_state(config) -> tuple[int, int, int]:
    """(a, b, p) per channel in fp32; the token-shift inputs of time and channel mix in the model dtype."""
    inner = config.rwkv4_attention_hidden_size
    return 12 * inner, 3 * inner, 2 * config.hidden_size


def _rwkv7_low_rank(config, part: str, bias: bool = True) -> Params:
    rank = getattr(config, f"rwkv7_{part}_low_rank")
    return add(linear(config.hidden_size, rank), linear(rank, config.hidden_size, bias))


def _rwkv7_params(config) -> Params:
    """r, k, v, o; the decay, rate, value-residual and gate low-rank maps; six shift mixes, k_k, k_a,
    r_k and the GroupNorm. The first rwkv7 layer has no value residual (`FIRST_LAYER_WITHOUT`)."""
    h = config.hidden_size
    low_rank = add(*(_rwkv7_low_rank(config, part) for part in ("decay", "a", "v")), _rwkv7_low_rank(config, "gate", False))
    return add(*[linear(h, h)] * 4, low_rank, (0, 6 * h + 3 * h + 2 * h))


def _rwkv7_state(config) -> tuple[int, int, int]:
    """S [H, D, D] fp32 (decay, removal read and write, key write, read: ~8 FLOPs per element); the
    token-shift inputs of time and channel mix."""
    elements = config.hidden_size * config.rwkv7_head_dim
    return 8 * elements, elements, 2 * config.hidden_size


def _hyena_params(config) -> Params:
    """in_proj to N+1 streams and out_proj (per-token matmuls); the short conv; the implicit filter's
    MLP (run over positions, not tokens: counted with the other parameters) and its skip bias."""
    d, n, f, e = config.hidden_size, config.hyena_order, config.hyena_filter_order, config.hyena_filter_emb_dim
    short_conv = (n + 1) * d * (config.hyena_short_conv_size + 1)
    filter_mlp = e * f + 2 * f * f + (n - 1) * d * f + 6 * f  # 4 weights, 3 biases, 3 sine frequencies
    return add(linear(d, (n + 1) * d, True), linear(d, d, True), (0, short_conv + filter_mlp + (n - 1) * d))


def _hyena_state(config) -> tuple[int, int, int]:
    """The short conv's window (constant); the long convolutions' input history grows per token
    (`HISTORY_ELEMENTS_PER_TOKEN`)."""
    streams, width = (config.hyena_order + 1) * config.hidden_size, config.hyena_short_conv_size
    return 2 * streams * width, 0, streams * (width - 1)


RECURRENT_MIXER_PARAMS = {
    "rwkv7": _rwkv7_params,
    "hyena": _hyena_params,
    "rwkv4": _rwkv4_params,
    "deltanet": lambda c: _delta_params(c, gated=False),
    "gated_deltanet": lambda c: _delta_params(c, gated=True),
    "retention": _retention_params,
    "linear_attn": _linear_attn_params,
    "mamba": _mamba_params,
    "mamba2": _mamba2_params,
    "s4d": _s4d_params,
}
MIXER_STATE = {
    "linear_attn": _linear_attn_state, "retention": _retention_state, "mamba": _mamba_state, "mamba2": _mamba2_state,
    "s4d": _s4d_state, "deltanet": _delta_state, "gated_deltanet": _delta_state,
    "rwkv4": _rwkv4_state, "hyena": _hyena_state, "rwkv7": _rwkv7_state,
}
# Parameters the first layer of a mixer kind lacks: RWKV-7's first layer keeps v_first, so it has no
# value-residual map.
FIRST_LAYER_WITHOUT = {"rwkv7": lambda c: _rwkv7_low_rank(c, "v")}
# Mixers whose decode state also grows with context (Hyena keeps its long convolutions' inputs: exact,
# where a constant state would need a distilled approximation): model-dtype values per token.
HISTORY_ELEMENTS_PER_TOKEN = {"hyena": lambda c: (c.hyena_order - 1) * c.hidden_size}
