"""T5, Switch Transformers and BART <-> llmarch_seq2seq: config fields and key renames.

T5: pre-norm RMSNorm without bias, a relative-position bias held by the first block of each stack,
unscaled attention, a ReLU or gated-GELU FFN, and (v1.0) a tied output scaled by d_model ** -0.5.
Switch Transformers: T5 v1.0 with every `sparse_step`-th FFN a top-1 MoE of plain ReLU experts
(per-expert `wi`/`wo`, fused here into the 3D expert weights) with a per-sequence `expert_capacity`.
BART: post-norm with biases, learned positions offset by 2, a norm on the embeddings, GELU, and a
`final_logits_bias` buffer (our output layer's bias). Renames are (our regex, native replacement)
on full state-dict keys; the first that matches applies.
"""

from ..pattern import compress_pattern

SOURCES = ("t5", "switch_transformers", "bart")
NATIVE_CLASSES = {
    "t5": ("T5Model", "T5ForConditionalGeneration"),
    "switch_transformers": ("SwitchTransformersModel", "SwitchTransformersForConditionalGeneration"),
    "bart": ("BartModel", "BartForConditionalGeneration"),
}
# A native key template naming one expert's tensor: our fused [E, ...] weight stacks them.
EXPERT = "{expert}"

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
    mlp = _switch_ffn(layer) if source == "switch_transformers" else _t5_ffn(layer, config.mlp_gated)
    mlp += ((r"(en|de)coder\.layers\.(\d+)\.post_attention_layernorm\.", layer + "{ff}.layer_norm."),)
    # The FFN is T5 sub-layer 1 in the encoder, 2 in the decoder (after cross-attention).
    by_stack = tuple(
        (pattern.replace("(en|de)", stack), replacement.replace(r"\1coder", f"{stack}coder").replace(r"\2", r"\1").replace("{ff}", ff))
        for stack, ff in (("en", "1"), ("de", "2"))
        for pattern, replacement in mlp
    )
    return _T5_STACK + by_stack


def _t5_ffn(layer: str, gated: bool) -> tuple:
    ffn = r"(en|de)coder\.layers\.(\d+)\.mlp\."
    inputs = (
        ((ffn + r"gate_proj\.", layer + "{ff}.DenseReluDense.wi_0."), (ffn + r"up_proj\.", layer + "{ff}.DenseReluDense.wi_1."))
        if gated else ((ffn + r"up_proj\.", layer + "{ff}.DenseReluDense.wi."),)
    )
    return inputs + ((ffn + r"down_proj\.", layer + "{ff}.DenseReluDense.wo."),)


def _switch_ffn(layer: str) -> tuple:
    """Dense layers keep `mlp.wi/wo`; sparse ones a router classifier and one `wi`/`wo` per expert."""
    ffn, experts = r"(en|de)coder\.layers\.(\d+)\.mlp\.", layer + "{ff}.mlp.experts.expert_" + EXPERT
    return (
        (ffn + r"gate\.", layer + "{ff}.mlp.router.classifier."),
        (ffn + r"experts\.gate_up_proj", experts + ".wi.weight"),
        (ffn + r"experts\.down_proj", experts + ".wo.weight"),
        (ffn + r"up_proj\.", layer + "{ff}.mlp.wi."),
        (ffn + r"down_proj\.", layer + "{ff}.mlp.wo."),
    )


def config_from_hf(cfg) -> dict:
    if cfg.model_type == "switch_transformers":
        return _switch_fields(cfg)
    return _t5_fields(cfg) if cfg.model_type == "t5" else _bart_fields(cfg)


def _switch_fields(cfg) -> dict:
    fields = _t5_fields(cfg)  # Switch's FFNs are plain (wi, wo): its config has no gated variant
    patterns = {stack: _sparse_pattern(layers, step) for stack, layers, step in (
        ("layer_pattern", fields["layer_pattern"], cfg.decoder_sparse_step),
        ("encoder_layer_pattern", fields["encoder_layer_pattern"], cfg.encoder_sparse_step),
    )}
    return fields | patterns | dict(
        num_experts=cfg.num_experts, num_experts_per_tok=1, moe_intermediate_size=cfg.d_ff, router_type="switch",
        expert_capacity=cfg.expert_capacity, router_jitter_noise=float(cfg.router_jitter_noise),
        router_aux_loss_coef=cfg.router_aux_loss_coef, router_z_loss_coef=cfg.router_z_loss_coef,
    )


def _sparse_pattern(dense_pattern: str, step: int) -> str:
    """Switch's layer i is sparse when i % step == 1 (every layer when step == 1, none when 0)."""
    layers = int(dense_pattern.rsplit("x", 1)[1].rstrip(")"))
    ffns = ["moe" if step > 0 and (step == 1 or i % step == 1) else "mlp" for i in range(layers)]
    return compress_pattern(["attn"] * layers, ffns)


def sparse_step(ffn_types: list[str]) -> int:
    """The Switch sparse step that gives `ffn_types`; ValueError naming the field when none does."""
    for step in range(len(ffn_types) + 1):
        if ffn_types == ["moe" if step > 0 and (step == 1 or i % step == 1) else "mlp" for i in range(len(ffn_types))]:
            return step
    raise ValueError(
        f"ffn_types={ffn_types} cannot be expressed in switch_transformers, whose layer i is sparse when i % step == 1"
    )


def _t5_fields(cfg) -> dict:
    gated = getattr(cfg, "is_gated_act", False)
    decoder_layers = cfg.num_decoder_layers if cfg.num_decoder_layers is not None else cfg.num_layers
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, head_dim=cfg.d_kv, intermediate_size=cfg.d_ff,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        layer_pattern=f"(attn/mlp)x{decoder_layers}", encoder_layer_pattern=f"(attn/mlp)x{cfg.num_layers}",
        hidden_act=cfg.dense_act_fn, mlp_gated=gated, norm_type="rmsnorm", norm_eps=cfg.layer_norm_epsilon,
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
    if config.position_embedding_type != "relative_buckets":
        return "bart"
    return "switch_transformers" if "moe" in config.ffn_types else "t5"


_NEEDS = {
    "t5": dict(position_embedding_type="relative_buckets", norm_type="rmsnorm", norm_placement="pre", attention_multiplier=1.0,
               attention_bias=False, attention_out_bias=False, mlp_bias=False, lm_head_bias=False, qk_norm=False, qkv_norm=False,
               attention_output_norm=False, embedding_norm=False, embedding_multiplier=1.0),
    "switch_transformers": dict(position_embedding_type="relative_buckets", norm_type="rmsnorm", norm_placement="pre",
                                attention_multiplier=1.0, attention_bias=False, attention_out_bias=False, mlp_bias=False,
                                mlp_gated=False, lm_head_bias=False, qk_norm=False, qkv_norm=False, attention_output_norm=False,
                                embedding_norm=False, embedding_multiplier=1.0, router_type="switch",
                                shared_expert_intermediate_size=None),
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
    if target != "switch_transformers" and "moe" in config.ffn_types:
        raise ValueError(f"ffn_types={config.ffn_types} cannot be expressed in {target}, which has no MoE layers")
    if target == "switch_transformers":
        _check_switch(config)
    if target in ("t5", "switch_transformers") and config.logits_scaling not in (1.0, config.hidden_size**0.5):
        raise ValueError(f"logits_scaling={config.logits_scaling} cannot be expressed in t5 (1 or sqrt(hidden_size))")
    if target == "bart" and config.embedding_multiplier not in (1.0, config.hidden_size**0.5):
        raise ValueError(f"embedding_multiplier={config.embedding_multiplier} cannot be expressed in bart (1 or sqrt(d_model))")


def _check_switch(config) -> None:
    if config.expert_capacity is None or config.num_experts_per_tok != 1 or config.moe_intermediate_size != config.intermediate_size:
        raise ValueError(
            f"expert_capacity={config.expert_capacity}, num_experts_per_tok={config.num_experts_per_tok}, moe_intermediate_size="
            f"{config.moe_intermediate_size}: switch_transformers routes top-1 with a per-sequence expert_capacity, its "
            "experts as wide as its dense FFNs"
        )
    if (config.logits_scaling != 1.0) != config.tie_word_embeddings:
        raise ValueError(
            f"logits_scaling={config.logits_scaling} with tie_word_embeddings={config.tie_word_embeddings} cannot be expressed "
            "in switch_transformers, which scales the output by d_model ** -0.5 exactly when tied"
        )


def config_to_hf(config, target: str, config_cls):
    encoder_layers = len(config.stack_config(encoder=True).mixer_types)
    if target == "switch_transformers":
        return config_cls(**_t5_like_native(config, encoder_layers) | dict(
            dense_act_fn=config.hidden_act, tie_word_embeddings=config.tie_word_embeddings,
            num_experts=config.num_experts, expert_capacity=config.expert_capacity,
            encoder_sparse_step=sparse_step(config.stack_config(encoder=True).ffn_types),
            decoder_sparse_step=sparse_step(config.ffn_types), router_jitter_noise=config.router_jitter_noise,
            router_aux_loss_coef=config.router_aux_loss_coef, router_z_loss_coef=config.router_z_loss_coef,
        ))
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


def _t5_like_native(config, encoder_layers: int) -> dict:
    return dict(
        vocab_size=config.vocab_size, d_model=config.hidden_size, d_kv=config.head_dim, d_ff=config.intermediate_size,
        num_layers=encoder_layers, num_decoder_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance, dropout_rate=config.hidden_dropout,
        layer_norm_epsilon=config.norm_eps, pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id, initializer_factor=config.initializer_range,
    )


def _t5_act(hidden_act: str) -> str:
    """T5 names gated GELU 'gated-gelu' and means gelu_new."""
    return "gelu" if hidden_act == "gelu_new" else hidden_act
