"""T5 and BART <-> llmarch_seq2seq: config fields and key renames.

T5: pre-norm RMSNorm without bias, a relative-position bias held by the first block of each stack,
unscaled attention, a ReLU or gated-GELU FFN, and (v1.0) a tied output scaled by d_model ** -0.5.
BART: post-norm with biases, learned positions offset by 2, a norm on the embeddings, GELU, and a
`final_logits_bias` buffer (our output layer's bias). Renames are (our regex, native replacement)
on full state-dict keys; the first that matches applies.
"""

import torch

SOURCES = ("t5", "bart")
NATIVE_CLASSES = {"t5": ("T5Model", "T5ForConditionalGeneration"), "bart": ("BartModel", "BartForConditionalGeneration")}

_T5_STACK = (
    (r"(en|de)coder\.embed_tokens\.", r"shared."),
    (r"(en|de)coder\.relative_position_bias\.", r"\1coder.block.0.layer.0.SelfAttention."),
    (r"(en|de)coder\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.", r"\1coder.block.\2.layer.0.SelfAttention.\3."),
    (r"(en|de)coder\.layers\.(\d+)\.input_layernorm\.", r"\1coder.block.\2.layer.0.layer_norm."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.(q|k|v|o)_proj\.", r"decoder.block.\1.layer.1.EncDecAttention.\2."),
    (r"decoder\.layers\.(\d+)\.cross_attn_layernorm\.", r"decoder.block.\1.layer.1.layer_norm."),
    (r"(en|de)coder\.norm\.", r"\1coder.final_layer_norm."),
)
_BART_STACK = (
    (r"(en|de)coder\.embed_tokens\.", r"shared."),
    (r"(en|de)coder\.embed_positions\.", r"\1coder.embed_positions."),
    (r"(en|de)coder\.embed_norm\.", r"\1coder.layernorm_embedding."),
    (r"(en|de)coder\.layers\.(\d+)\.self_attn\.o_proj\.", r"\1coder.layers.\2.self_attn.out_proj."),
    (r"(en|de)coder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"\1coder.layers.\2.self_attn.\3_proj."),
    (r"(en|de)coder\.layers\.(\d+)\.input_layernorm\.", r"\1coder.layers.\2.self_attn_layer_norm."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.o_proj\.", r"decoder.layers.\1.encoder_attn.out_proj."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.(q|k|v)_proj\.", r"decoder.layers.\1.encoder_attn.\2_proj."),
    (r"decoder\.layers\.(\d+)\.cross_attn_layernorm\.", r"decoder.layers.\1.encoder_attn_layer_norm."),
    (r"(en|de)coder\.layers\.(\d+)\.mlp\.up_proj\.", r"\1coder.layers.\2.fc1."),
    (r"(en|de)coder\.layers\.(\d+)\.mlp\.down_proj\.", r"\1coder.layers.\2.fc2."),
    (r"(en|de)coder\.layers\.(\d+)\.post_attention_layernorm\.", r"\1coder.layers.\2.final_layer_norm."),
)


def stack_renames(source: str, config) -> tuple:
    """Renames of keys under `encoder.` / `decoder.` (relative to our seq2seq base model)."""
    if source == "bart":
        return _BART_STACK
    layer = r"\1coder.block.\2.layer."
    mlp = (
        ((r"(en|de)coder\.layers\.(\d+)\.mlp\.gate_proj\.", layer + "{ff}.DenseReluDense.wi_0."),
         (r"(en|de)coder\.layers\.(\d+)\.mlp\.up_proj\.", layer + "{ff}.DenseReluDense.wi_1."))
        if config.mlp_gated else ((r"(en|de)coder\.layers\.(\d+)\.mlp\.up_proj\.", layer + "{ff}.DenseReluDense.wi."),)
    ) + (
        (r"(en|de)coder\.layers\.(\d+)\.mlp\.down_proj\.", layer + "{ff}.DenseReluDense.wo."),
        (r"(en|de)coder\.layers\.(\d+)\.post_attention_layernorm\.", layer + "{ff}.layer_norm."),
    )
    # The FFN is T5 sub-layer 1 in the encoder, 2 in the decoder (after cross-attention).
    by_stack = tuple(
        (pattern.replace("(en|de)", stack), replacement.replace(r"\1coder", f"{stack}coder").replace(r"\2", r"\1").replace("{ff}", ff))
        for stack, ff in (("en", "1"), ("de", "2"))
        for pattern, replacement in mlp
    )
    return _T5_STACK + by_stack


def config_from_hf(cfg) -> dict:
    return _t5_fields(cfg) if cfg.model_type == "t5" else _bart_fields(cfg)


def _t5_fields(cfg) -> dict:
    if cfg.is_gated_act and cfg.dense_act_fn not in ("gelu_new", "gelu", "silu", "relu"):
        raise ValueError(f"t5 dense_act_fn={cfg.dense_act_fn!r} cannot be converted")
    decoder_layers = cfg.num_decoder_layers if cfg.num_decoder_layers is not None else cfg.num_layers
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, head_dim=cfg.d_kv, intermediate_size=cfg.d_ff,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        layer_pattern=f"(attn/mlp)x{decoder_layers}", encoder_layer_pattern=f"(attn/mlp)x{cfg.num_layers}",
        hidden_act=cfg.dense_act_fn, mlp_gated=cfg.is_gated_act, norm_type="rmsnorm", norm_eps=cfg.layer_norm_epsilon,
        position_embedding_type="relative_buckets", relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance, attention_multiplier=1.0,
        hidden_dropout=float(cfg.dropout_rate), attention_dropout=float(cfg.dropout_rate),
        # v1.0 ties its output to `shared` and scales it by d_model ** -0.5; v1.1 has a separate output.
        # From 5.24 transformers' config says so in `scale_decoder_outputs` (and claims every T5 tied).
        tie_word_embeddings=_t5_v1_0(cfg), logits_scaling=cfg.d_model**0.5 if _t5_v1_0(cfg) else 1.0,
        pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id, bos_token_id=None,
        decoder_start_token_id=getattr(cfg, "decoder_start_token_id", None) or cfg.pad_token_id,
        initializer_range=cfg.initializer_factor,
    )


def _t5_v1_0(cfg) -> bool:
    return getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings)


def _bart_fields(cfg) -> dict:
    if (cfg.encoder_attention_heads, cfg.encoder_ffn_dim) != (cfg.decoder_attention_heads, cfg.decoder_ffn_dim):
        raise ValueError(
            "bart encoder_attention_heads/encoder_ffn_dim differ from the decoder's: llmarch_seq2seq stacks share "
            "their heads and FFN width"
        )
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.decoder_ffn_dim,
        num_attention_heads=cfg.decoder_attention_heads, num_key_value_heads=cfg.decoder_attention_heads,
        layer_pattern=f"(attn/mlp)x{cfg.decoder_layers}", encoder_layer_pattern=f"(attn/mlp)x{cfg.encoder_layers}",
        hidden_act=cfg.activation_function, mlp_gated=False, mlp_bias=True, attention_bias=True, attention_out_bias=True,
        norm_type="layernorm", norm_eps=1e-5, norm_placement="post", embedding_norm=True,
        position_embedding_type="learned", max_position_embeddings=cfg.max_position_embeddings + 2, position_offset=2,
        embedding_multiplier=cfg.d_model**0.5 if cfg.scale_embedding else 1.0, lm_head_bias=True,
        hidden_dropout=float(cfg.dropout), attention_dropout=float(cfg.attention_dropout),
        tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, decoder_start_token_id=cfg.decoder_start_token_id,
        initializer_range=cfg.init_std,
    )


def infer_source(config) -> str:
    return "t5" if config.position_embedding_type == "relative_buckets" else "bart"


_NEEDS = {
    "t5": dict(position_embedding_type="relative_buckets", norm_type="rmsnorm", norm_placement="pre", attention_multiplier=1.0,
               attention_bias=False, attention_out_bias=False, mlp_bias=False, lm_head_bias=False, qk_norm=False, qkv_norm=False,
               attention_output_norm=False, embedding_norm=False, embedding_multiplier=1.0),
    "bart": dict(position_embedding_type="learned", position_offset=2, norm_type="layernorm", norm_placement="post",
                 attention_bias=True, attention_out_bias=True, mlp_bias=True, mlp_gated=False, lm_head_bias=True,
                 qk_norm=False, qkv_norm=False, attention_output_norm=False, embedding_norm=True),
}


def check_expressible(config, target: str) -> None:
    for field, value in _NEEDS[target].items():
        if getattr(config, field) != value:
            raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed in {target} (which needs {value!r})")
    if config.num_key_value_heads != config.num_attention_heads or {*config.mixer_types} != {"attn"}:
        raise ValueError(f"{target} has plain multi-head attention in every layer: num_key_value_heads and mixer_types cannot differ")
    if target == "t5" and config.logits_scaling not in (1.0, config.hidden_size**0.5):
        raise ValueError(f"logits_scaling={config.logits_scaling} cannot be expressed in t5 (1 or sqrt(hidden_size))")
    if target == "bart" and config.embedding_multiplier not in (1.0, config.hidden_size**0.5):
        raise ValueError(f"embedding_multiplier={config.embedding_multiplier} cannot be expressed in bart (1 or sqrt(d_model))")


def config_to_hf(config, target: str, config_cls):
    encoder_layers = len(config.stack_config(encoder=True).mixer_types)
    if target == "t5":
        return config_cls(
            vocab_size=config.vocab_size, d_model=config.hidden_size, d_kv=config.head_dim, d_ff=config.intermediate_size,
            num_layers=encoder_layers, num_decoder_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
            relative_attention_num_buckets=config.relative_attention_num_buckets,
            relative_attention_max_distance=config.relative_attention_max_distance, dropout_rate=config.hidden_dropout,
            layer_norm_epsilon=config.norm_eps, feed_forward_proj=("gated-" if config.mlp_gated else "") + _t5_act(config.hidden_act),
            tie_word_embeddings=config.logits_scaling != 1.0, pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
            decoder_start_token_id=config.decoder_start_token_id, initializer_factor=config.initializer_range,
        )
    return config_cls(
        vocab_size=config.vocab_size, d_model=config.hidden_size, encoder_layers=encoder_layers, decoder_layers=config.num_hidden_layers,
        encoder_attention_heads=config.num_attention_heads, decoder_attention_heads=config.num_attention_heads,
        encoder_ffn_dim=config.intermediate_size, decoder_ffn_dim=config.intermediate_size, activation_function=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings - 2, scale_embedding=config.embedding_multiplier != 1.0,
        dropout=config.hidden_dropout, attention_dropout=config.attention_dropout, tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id, init_std=config.initializer_range,
    )


def _t5_act(hidden_act: str) -> str:
    """T5 names gated GELU 'gated-gelu' and means gelu_new."""
    return "gelu" if hidden_act == "gelu_new" else hidden_act


def final_logits_bias_from(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1)  # [1, V] -> [V]
