"""Per-token usage from a config alone: forward and training FLOPs, and the bytes the generation
cache holds (KV caches grow, recurrent states do not)."""

import torch

from ..mixers.registry import MASK_OF_LAYER_TYPE
from .params import (
    ATTENTION_FLOPS_PER_KEY,
    INDEXER_FLOPS_PER_KEY,
    KV_ELEMENTS_PER_TOKEN,
    STATE_DTYPE,
    io_matmul_params,
    is_seq2seq,
    layer_counts,
    layer_parts,
)
from .recurrent import MIXER_STATE


def _attended_tokens(config, layer_type: str, context: int) -> int:
    if MASK_OF_LAYER_TYPE[layer_type] == "sliding_attention":
        return min(context, config.sliding_window)
    return context


def flops_per_token(config, context: int, encoder_context: int | None = None) -> dict:
    """Forward FLOPs for one token that sees `context` tokens (itself included), and training ≈ 3×.

        forward = 2 * M + sum_attention_layers n_kv(layer) * F_key + sum_recurrent S

    * M: active matmul weights, i.e. the weight matrices of every projection, FFN, router and the
      active and shared experts of every layer that runs (ALBERT's shared blocks once per layer), plus
      the LM head (vocab x hidden, a matmul even when tied; an encoder's MLM transform and vocab x E
      projection) and any embed_proj. The embedding lookup, biases and norm weights are not matmuls
      and are left out.
    * n_kv: keys attended, `context` for full attention, min(context, sliding_window) for sliding
      layers; F_key: 4 * num_heads * head_dim (2 for q·k and 2 for weights·v per head dimension), for
      MLA 2 * num_heads * (qk_nope + qk_rope + v head dims); DSA attends to min(n_kv, index_topk) keys
      and its indexer scores all n_kv at 2 * index_n_heads * index_head_dim each.
    * S: a recurrent mixer's state update and read-out (retention: 4 * H * Dk * Dv), constant in
      context.
    * training = 3 * forward (backward ≈ 2 × forward).

    Encoder-decoders (llmarch_seq2seq) count two kinds of token, each with the rule above:

    * the top-level figures are per DECODER token: the decoder stack (self-attention over `context`
      decoder tokens), its cross-attention's q_proj and o_proj and its scores against
      `encoder_context` encoder tokens (default `context`; F_key per key, `cross_attention` gives
      that part), and the LM head;
    * `encoder` holds the same figures per ENCODER token: the encoder stack (bidirectional attention
      over `encoder_context` tokens), any embed_proj, and the k_proj and v_proj of every decoder
      layer's cross-attention, which project each encoder token once per sequence (a generation
      cache keeps them).

    A training example of S source and T target tokens thus costs about
    S * encoder['training'] + T * training (with encoder_context=S, context=T).
    """
    if context < 1:
        raise ValueError(f"context={context} must be a positive number of tokens")
    if not is_seq2seq(config):
        return _finish(_stack_flops(config, context, io_matmul_params(config)), context)
    encoder_context = context if encoder_context is None else encoder_context
    if encoder_context < 1:
        raise ValueError(f"encoder_context={encoder_context} must be a positive number of tokens")
    cross_query_out, cross_key_value = _cross_attention_matmul(config)
    decoder = _stack_flops(config, context, io_matmul_params(config) + cross_query_out, cross=False)
    cross_scores = len(config.mixer_types) * encoder_context * ATTENTION_FLOPS_PER_KEY["attn"](config)
    decoder["attention"] += cross_scores
    encoder_view = config.stack_config(encoder=True)
    encoder = _stack_flops(encoder_view, encoder_context, io_matmul_params(encoder_view, encoder=True) + cross_key_value)
    result = _finish(decoder, context)
    result |= {"encoder_context": encoder_context, "cross_attention": cross_scores, "encoder": _finish(encoder, encoder_context)}
    return result


def _cross_attention_matmul(config) -> tuple[int, int]:
    """A decoder stack's cross-attention matmul weights: (q_proj + o_proj, which run per decoder
    token; k_proj + v_proj, which run per encoder token), over all its layers."""
    h, head_dim = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layers = len(config.mixer_types)
    return layers * 2 * h * q_out, layers * 2 * h * kv_out


def _stack_flops(config, context: int, io_matmul: int, cross: bool = True) -> dict:
    """One stack's matmul weights per token (its layers plus `io_matmul`), attention and state FLOPs.
    `cross=False` leaves out the stack's cross-attention weights (the caller splits them)."""
    layers = layer_counts(config)
    matmul = sum(p[0] for p in layers["mixers"].values()) + layers["dense_ffn"][0]
    matmul += layers["router"][0] + layers["moe_experts_active"][0] + layers["moe_shared"][0] + io_matmul
    if cross:
        matmul += layers["cross_attention"][0]
    attention = state = 0
    for mixer, layer_type in zip(config.mixer_types, config.layer_types):
        for part in layer_parts(mixer):
            if part in MIXER_STATE:
                state += MIXER_STATE[part](config)[0]
            if part in ATTENTION_FLOPS_PER_KEY:
                attended = _attended_tokens(config, layer_type, context)
                if part in INDEXER_FLOPS_PER_KEY:  # DSA: attend to the top-k, score every key
                    attention += context * INDEXER_FLOPS_PER_KEY[part](config)
                    attended = min(attended, config.index_topk)
                attention += attended * ATTENTION_FLOPS_PER_KEY[part](config)
    return {"matmul_params": matmul, "attention": attention, "recurrent_state": state}


def _finish(parts: dict, context: int) -> dict:
    forward = 2 * parts["matmul_params"] + parts["attention"] + parts["recurrent_state"]
    return {
        "context": context,
        "matmul_params": parts["matmul_params"],
        "matmul": 2 * parts["matmul_params"],
        "attention": parts["attention"],
        "recurrent_state": parts["recurrent_state"],
        "forward": forward,
        "training": 3 * forward,
    }


def _layer_cache_bytes(config, layer_idx: int, context: int, dtype: torch.dtype) -> tuple[int, bool]:
    """(bytes layer `layer_idx` holds at `context` for batch 1, whether that stopped growing); a
    par() layer holds its attention's keys and values and its recurrent part's state."""
    layer_type = config.layer_types[layer_idx]
    held, constant = 0, True
    for part in layer_parts(config.mixer_types[layer_idx]):
        part_held, part_constant = _part_cache_bytes(config, part, layer_type, context, dtype)
        held, constant = held + part_held, constant and part_constant
    return held, constant


def _part_cache_bytes(config, mixer: str, layer_type: str, context: int, dtype: torch.dtype) -> tuple[int, bool]:
    """A fixed state (recurrent mixers), a per-token cache (attention), or both (Hyena's short-conv
    window and its input history)."""
    if mixer not in MIXER_STATE and mixer not in KV_ELEMENTS_PER_TOKEN:
        raise NotImplementedError(f"accounting does not know the cache of mixer {mixer!r} ({layer_type}) yet")
    fixed = 0
    if mixer in MIXER_STATE:
        _, state, conv = MIXER_STATE[mixer](config)
        fixed = state * STATE_DTYPE.itemsize + conv * dtype.itemsize
    if mixer not in KV_ELEMENTS_PER_TOKEN:
        return fixed, True
    per_token = KV_ELEMENTS_PER_TOKEN[mixer](config) * dtype.itemsize
    if MASK_OF_LAYER_TYPE[layer_type] == "sliding_attention":
        # DynamicSlidingWindowLayer keeps the last window - 1 tokens; the current one is appended.
        held = min(context, config.sliding_window - 1)
        return fixed + held * per_token, context >= config.sliding_window - 1
    return fixed + context * per_token, False


def cache_bytes_per_token(config, context: int, dtype: torch.dtype = torch.bfloat16, encoder_context: int | None = None) -> dict:
    """Bytes the generation cache holds for one sequence after `context` tokens, and per token.

    * full attention: 2 (k, v) * num_key_value_heads * head_dim * dtype bytes for every token;
    * sliding attention: the same for min(context, sliding_window - 1) tokens (what transformers'
      DynamicSlidingWindowLayer keeps);
    * recurrent mixers (retention): a fixed fp32 state, [H, Dk, Dv] per layer, whatever `context`;
    * MLA: the latent and the shared RoPE key, kv_lora_rank + qk_rope_head_dim values per token; with
      MLA layers the result also gives `mha_equivalent_bytes_per_token`, what the same heads would
      cache as full keys and values (num_heads * (qk_nope + qk_rope + v head dims) per layer).

    `bytes_per_token` figures are total / context. `constant_layers` lists the layers whose cache
    no longer grows at this context (recurrent always, sliding once the window is full). `cached` is
    False for bidirectional stacks (encoders): every token attends to later ones, so nothing is kept
    to decode with, and every figure is 0.

    Encoder-decoders (llmarch_seq2seq): the figures above are the decoder's self-attention cache,
    per generated (decoder) token. `cross_attention` adds the other half of transformers'
    EncoderDecoderCache: every decoder layer's cross-attention keys and values, 2 *
    num_key_value_heads * head_dim values per ENCODER token (`bytes_per_encoder_token`), held for
    `encoder_context` encoder tokens (default `context`) from the first decoding step on;
    `sequence_total_bytes` is both halves together.
    """
    if context < 1:
        raise ValueError(f"context={context} must be a positive number of tokens")
    if encoder_context is not None and encoder_context < 1:
        raise ValueError(f"encoder_context={encoder_context} must be a positive number of tokens")
    cached = config.attention_mask_kind != "bidirectional"
    by_type: dict[str, dict] = {}
    constant_layers = []
    for i, layer_type in enumerate(config.layer_types if cached else ()):
        held, constant = _layer_cache_bytes(config, i, context, dtype)
        entry = by_type.setdefault(layer_type, {"layers": 0, "total_bytes": 0, "constant_in_context": True})
        entry["layers"] += 1
        entry["total_bytes"] += held
        entry["constant_in_context"] &= constant
        if constant:
            constant_layers.append(i)
    for entry in by_type.values():
        entry["bytes_per_token"] = entry["total_bytes"] / context
    total = sum(entry["total_bytes"] for entry in by_type.values())
    result = {
        "context": context,
        "dtype": str(dtype).removeprefix("torch."),
        "cached": cached,
        "total_bytes": total,
        "bytes_per_token": total / context,
        "by_layer_type": by_type,
        "constant_layers": constant_layers,
    }
    mla_layers = config.mixer_types.count("mla") + config.mixer_types.count("dsa")
    if mla_layers:
        per_layer = config.num_attention_heads * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim)
        result["mha_equivalent_bytes_per_token"] = mla_layers * per_layer * dtype.itemsize
    if is_seq2seq(config):
        encoder_context = context if encoder_context is None else encoder_context
        layers = len(config.mixer_types)
        per_encoder_token = layers * KV_ELEMENTS_PER_TOKEN["attn"](config) * dtype.itemsize
        result["cross_attention"] = {
            "layers": layers,
            "encoder_context": encoder_context,
            "bytes_per_encoder_token": per_encoder_token,
            "total_bytes": encoder_context * per_encoder_token,
        }
        result["sequence_total_bytes"] = total + encoder_context * per_encoder_token
    return result
