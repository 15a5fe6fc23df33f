"""BERT, RoBERTa, ALBERT and ELECTRA <-> llmarch_encoder: config fields and the key renames.

All four share BERT's post-norm layer; they differ in the embedding extras (RoBERTa's position
offset, ALBERT's and ELECTRA's narrow embedding and projection), in ALBERT's shared layer groups,
and in their heads' module names. Renames are (our regex, native replacement), applied to a key
relative to the encoder (`embed_tokens.weight`) or to a head (`mlm_head.dense.weight`).
"""

from ..models.encoder import LlmArchEncoderConfig

SOURCES = ("bert", "roberta", "albert", "electra")
CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra"}

_EMBEDDINGS = (
    (r"embed_tokens\.", "embeddings.word_embeddings."),
    (r"embed_positions\.", "embeddings.position_embeddings."),
    (r"embed_token_types\.", "embeddings.token_type_embeddings."),
    (r"embed_norm\.", "embeddings.LayerNorm."),
)
_BERT_LAYER = (
    (r"layers\.(\d+)\.self_attn\.q_proj\.", r"encoder.layer.\1.attention.self.query."),
    (r"layers\.(\d+)\.self_attn\.k_proj\.", r"encoder.layer.\1.attention.self.key."),
    (r"layers\.(\d+)\.self_attn\.v_proj\.", r"encoder.layer.\1.attention.self.value."),
    (r"layers\.(\d+)\.self_attn\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"layers\.(\d+)\.input_layernorm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"layers\.(\d+)\.mlp\.up_proj\.", r"encoder.layer.\1.intermediate.dense."),
    (r"layers\.(\d+)\.mlp\.down_proj\.", r"encoder.layer.\1.output.dense."),
    (r"layers\.(\d+)\.post_attention_layernorm\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"pooler\.dense\.", "pooler.dense."),
)
# ALBERT stores one block per layer group (inner_group_num = 1): our layers.g is its group g.
_ALBERT_GROUP = r"encoder.albert_layer_groups.\1.albert_layers.0."
_ALBERT_LAYER = (
    (r"embed_proj\.", "encoder.embedding_hidden_mapping_in."),
    (r"layers\.(\d+)\.self_attn\.q_proj\.", _ALBERT_GROUP + "attention.query."),
    (r"layers\.(\d+)\.self_attn\.k_proj\.", _ALBERT_GROUP + "attention.key."),
    (r"layers\.(\d+)\.self_attn\.v_proj\.", _ALBERT_GROUP + "attention.value."),
    (r"layers\.(\d+)\.self_attn\.o_proj\.", _ALBERT_GROUP + "attention.dense."),
    (r"layers\.(\d+)\.input_layernorm\.", _ALBERT_GROUP + "attention.LayerNorm."),
    (r"layers\.(\d+)\.mlp\.up_proj\.", _ALBERT_GROUP + "ffn."),
    (r"layers\.(\d+)\.mlp\.down_proj\.", _ALBERT_GROUP + "ffn_output."),
    (r"layers\.(\d+)\.post_attention_layernorm\.", _ALBERT_GROUP + "full_layer_layer_norm."),
    (r"pooler\.dense\.", "pooler."),
)
ENCODER_RENAMES = {
    "bert": _EMBEDDINGS + _BERT_LAYER,
    "roberta": _EMBEDDINGS + _BERT_LAYER,
    "albert": _EMBEDDINGS + _ALBERT_LAYER,
    "electra": _EMBEDDINGS + ((r"embed_proj\.", "embeddings_project."),) + _BERT_LAYER,
}
_TASK_HEADS = ((r"classifier\.", "classifier."), (r"qa_outputs\.", "qa_outputs."))
HEAD_RENAMES = {
    "bert": (
        (r"mlm_head\.dense\.", "cls.predictions.transform.dense."),
        (r"mlm_head\.norm\.", "cls.predictions.transform.LayerNorm."),
        (r"lm_head\.bias", "cls.predictions.bias"),
        (r"lm_head\.weight", "cls.predictions.decoder.weight"),
        (r"pair_classifier\.", "cls.seq_relationship."),
    ) + _TASK_HEADS,
    "roberta": (
        (r"mlm_head\.dense\.", "lm_head.dense."),
        (r"mlm_head\.norm\.", "lm_head.layer_norm."),
        (r"lm_head\.bias", "lm_head.bias"),
        (r"lm_head\.weight", "lm_head.decoder.weight"),
    ) + _TASK_HEADS,
    "albert": (
        (r"mlm_head\.dense\.", "predictions.dense."),
        (r"mlm_head\.norm\.", "predictions.LayerNorm."),
        (r"lm_head\.bias", "predictions.bias"),
        (r"lm_head\.weight", "predictions.decoder.weight"),
        (r"pair_classifier\.", "sop_classifier.classifier."),
    ) + _TASK_HEADS,
    "electra": (
        (r"mlm_head\.dense\.", "generator_predictions.dense."),
        (r"mlm_head\.norm\.", "generator_predictions.LayerNorm."),
        (r"lm_head\.", "generator_lm_head."),
        (r"rtd_head\.dense\.", "discriminator_predictions.dense."),
        (r"rtd_head\.out_proj\.", "discriminator_predictions.dense_prediction."),
        (r"summary\.", "sequence_summary.summary."),
    ) + _TASK_HEADS,
}
# The output bias is one tensor that transformers also registers under the decoder (tied): a file
# may hold either name or both.
BIAS_ALIASES = {
    "cls.predictions.bias": "cls.predictions.decoder.bias",
    "lm_head.bias": "lm_head.decoder.bias",
    "predictions.bias": "predictions.decoder.bias",
}
# Buffers older checkpoints saved; transformers 5 rebuilds them.
IGNORED_KEYS = (r"(\w+\.)?embeddings\.(position_ids|token_type_ids)",)


def config_from_hf(cfg) -> dict:
    """Our encoder fields from a BertConfig / RobertaConfig / AlbertConfig / ElectraConfig."""
    _refuse_unsupported(cfg)
    layers = cfg.num_hidden_layers
    fields = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        layer_pattern=f"(attn/mlp)x{layers}",
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        norm_eps=cfg.layer_norm_eps,
        hidden_dropout=float(cfg.hidden_dropout_prob),
        attention_dropout=float(cfg.attention_probs_dropout_prob),
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=getattr(cfg, "bos_token_id", None),
        eos_token_id=getattr(cfg, "eos_token_id", None),
        id2label=dict(cfg.id2label),
        problem_type=cfg.problem_type,
        classifier_dropout=_classifier_dropout(cfg),
    )
    return fields | _SOURCE_FIELDS[cfg.model_type](cfg)


def _classifier_dropout(cfg):
    value = getattr(cfg, "classifier_dropout", None)
    return getattr(cfg, "classifier_dropout_prob", None) if value is None else value


def _bert_fields(cfg) -> dict:
    return dict(pair_task="nsp")


def _roberta_fields(cfg) -> dict:
    # RoBERTa numbers real tokens from pad_token_id + 1: its first two position rows are never read.
    return dict(position_offset=cfg.pad_token_id + 1, pair_task=None, classifier_head="mlp", classifier_activation="tanh")


def _albert_fields(cfg) -> dict:
    return dict(embedding_size=_narrow(cfg), num_layer_groups=cfg.num_hidden_groups, pair_task="sop")


def _electra_fields(cfg) -> dict:
    return dict(
        embedding_size=_narrow(cfg), has_pooler=False, pair_task=None, classifier_head="mlp", classifier_activation="gelu"
    )


def _narrow(cfg) -> int | None:
    """ALBERT / ELECTRA's embedding width; None when it is hidden_size (ELECTRA then has no projection)."""
    return None if cfg.embedding_size == cfg.hidden_size and cfg.model_type == "electra" else cfg.embedding_size


_SOURCE_FIELDS = {"bert": _bert_fields, "roberta": _roberta_fields, "albert": _albert_fields, "electra": _electra_fields}


def _refuse_unsupported(cfg) -> None:
    kind = cfg.model_type
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise ValueError(f"{kind} with is_decoder/add_cross_attention cannot be converted: llmarch_encoder is an encoder")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{kind} position_embedding_type={cfg.position_embedding_type!r} cannot be converted: only 'absolute'")
    if kind == "albert" and cfg.inner_group_num != 1:
        raise ValueError(f"albert inner_group_num={cfg.inner_group_num} cannot be converted: only one layer per group (every released ALBERT)")
    # RoBERTa's and ELECTRA's MLM heads (and ELECTRA's task heads) hard-code GELU where ours read hidden_act.
    if kind in ("roberta", "electra") and cfg.hidden_act != "gelu":
        raise ValueError(f"{kind} hidden_act={cfg.hidden_act!r} cannot be converted: its heads use 'gelu' whatever hidden_act says")
    if kind == "electra":
        summary = (cfg.summary_type, cfg.summary_use_proj, cfg.summary_activation)
        if summary != ("first", True, "gelu"):
            raise ValueError(
                f"electra summary_type/summary_use_proj/summary_activation={summary} cannot be converted: "
                "only ('first', True, 'gelu')"
            )


def infer_source(config) -> str:
    if not config.has_pooler:
        return "electra"
    if config.num_layer_groups is not None or config.embedding_size is not None:
        return "albert"
    return "roberta" if config.position_offset else "bert"


_COMMON_NEEDS = {
    "norm_placement": "post", "norm_type": "layernorm", "position_embedding_type": "learned", "mlp_gated": False,
    "mlp_bias": True, "attention_bias": True, "attention_out_bias": True, "qk_norm": False, "embedding_norm": True,
}
# What each target's layers and heads hard-code.
_TARGET_NEEDS = {
    "bert": dict(position_offset=0, embedding_size=None, num_layer_groups=None, has_pooler=True, classifier_head="pooler"),
    "roberta": dict(embedding_size=None, num_layer_groups=None, has_pooler=True, classifier_head="mlp", classifier_activation="tanh"),
    "albert": dict(position_offset=0, has_pooler=True, classifier_head="pooler"),
    "electra": dict(
        position_offset=0, num_layer_groups=None, has_pooler=False, classifier_head="mlp", classifier_activation="gelu", hidden_act="gelu"
    ),
}


def check_expressible(config: LlmArchEncoderConfig, target: str) -> None:
    """ValueError naming the field `target` cannot hold."""
    needs = _COMMON_NEEDS | _TARGET_NEEDS[target]
    if target == "roberta":
        needs["position_offset"] = (config.pad_token_id or 0) + 1
    for field, value in needs.items():
        if getattr(config, field) != value:
            raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed in {target} (which needs {value!r})")
    if config.num_key_value_heads != config.num_attention_heads or set(config.mixer_types) != {"attn"}:
        raise ValueError(f"{target} has plain multi-head attention in every layer: num_key_value_heads and mixer_types cannot differ")


def config_to_hf(config: LlmArchEncoderConfig, target: str, config_cls):
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout,
        attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.norm_eps,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        id2label=dict(config.id2label),
        problem_type=config.problem_type,
    )
    if target == "albert":
        fields |= dict(
            embedding_size=config.embedding_size or config.hidden_size, num_hidden_groups=config.num_layer_groups or config.num_hidden_layers,
            classifier_dropout_prob=config.classifier_dropout,
        )
    else:
        fields["classifier_dropout"] = config.classifier_dropout
    if target == "electra":
        fields["embedding_size"] = config.embedding_size or config.hidden_size
    return config_cls(**fields)
