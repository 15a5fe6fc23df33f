"""Topology as config data: which keys each query sees, where the norms sit, and the embedding
extras of BERT-style encoders. The backbone reads these fields; no family has its own block.

* `attention_mask_kind`
  - `causal`: decoders (the default);
  - `bidirectional`: encoders; only the padding mask applies;
  - `prefix`: GLM / UniLM prefix LMs. Tokens marked by the forward's `prefix_mask` [B, T] see each
    other both ways, every later token is causal. `generate()` makes the prompt the prefix.
  Recurrent mixers carry a state left to right, so a non-causal stack of them is refused instead
  of silently running causally; so is flash attention with a prefix, which drops mask functions.
* `norm_placement`: `pre` (x + f(norm(x)), a final norm) or `post` (norm(x + f(x)), no final norm:
  BERT and the original Transformer).
* `type_vocab_size`: token-type (segment) embeddings added to the input (BERT: 2); 0 = none.
* `embedding_size`: tokens embed in this width and a projection lifts them to `hidden_size`
  (ALBERT, ELECTRA); None = `hidden_size`.
* `position_offset`: learned positions index their table at position + offset (RoBERTa: 2, the
  rows below its first real position).
* `num_layer_groups`: ALBERT's cross-layer sharing; the stack holds this many distinct blocks,
  and layer i runs block i * groups // layers. Encoders only: a shared block has one cache slot.
* `cross_attention`: each block attends to an encoder's output after its mixer (the decoder of an
  encoder-decoder, `models/seq2seq.py`).
* positions (`position_embedding_type`): besides RoPE and learned tables, `sinusoidal` (the original
  Transformer's fixed table) and `relative_buckets` (T5: a learned per-head bias over bucketed
  distances, `relative_attention_num_buckets` / `relative_attention_max_distance`, added to the
  attention mask; eager and sdpa only).
"""

MASK_KINDS = ("causal", "bidirectional", "prefix")
NORM_PLACEMENTS = ("pre", "post")
# Mixers whose attention mask the backbone can make non-causal (the others keep a left-to-right state).
NON_CAUSAL_MIXERS = {"bidirectional": ("attn", "gated_attn"), "prefix": ("attn", "gated_attn", "swa", "mla")}


def validate_topology(config) -> None:
    """Raise a ValueError naming the field for a topology the backbone cannot run."""
    _check_choice(config, "attention_mask_kind", MASK_KINDS)
    _check_choice(config, "norm_placement", NORM_PLACEMENTS)
    if config.attention_mask_kind != "causal":
        _check_non_causal_mixers(config)
    if config.cross_attention and config.attention_mask_kind == "bidirectional":
        raise ValueError(
            "cross_attention=True in an encoder (attention_mask_kind='bidirectional'): only an encoder-decoder's decoder "
            "cross-attends; use the llmarch_seq2seq family"
        )
    _check_embedding_extras(config)
    if config.num_layer_groups is not None:
        _check_layer_groups(config)
    if config.position_embedding_type == "relative_buckets":
        _check_relative_buckets(config)


def shared_block_of_layer(config) -> list[int]:
    """Per layer, the index of the block it runs (identity without cross-layer sharing)."""
    layers, groups = config.num_hidden_layers, config.num_layer_groups or config.num_hidden_layers
    return [i * groups // layers for i in range(layers)]


def check_attention_implementation(config) -> None:
    """Flash attention takes a padding mask only (mask functions are dropped), so a prefix LM on it
    would silently attend causally over its prefix; T5's position bias rides in an additive mask,
    which only eager and sdpa take."""
    impl = config._attn_implementation or ""
    if config.attention_mask_kind == "prefix" and impl.startswith("flash"):
        raise ValueError(
            f"attention_mask_kind='prefix' cannot run on attn_implementation={impl!r}: flash attention ignores the "
            "prefix mask; use 'sdpa', 'eager' or 'flex_attention'"
        )
    if config.position_embedding_type == "relative_buckets" and impl not in ("eager", "sdpa", ""):
        raise ValueError(
            f"position_embedding_type='relative_buckets' cannot run on attn_implementation={impl!r}: the bias is an "
            "additive mask; use 'sdpa' or 'eager'"
        )


def _check_choice(config, field: str, valid: tuple[str, ...]) -> None:
    if getattr(config, field) not in valid:
        raise ValueError(f"{field}={getattr(config, field)!r} is unknown; valid: {list(valid)}")


def _check_non_causal_mixers(config) -> None:
    kind, allowed = config.attention_mask_kind, NON_CAUSAL_MIXERS[config.attention_mask_kind]
    for i, mixer in enumerate(config.mixer_types):
        if mixer not in allowed:
            raise ValueError(
                f"mixer_types[{i}]={mixer!r} cannot run with attention_mask_kind={kind!r}: it is causal-only "
                f"(a recurrent state or a causal index runs left to right); mixers allowed here: {list(allowed)}"
            )
    if config.num_nextn_predict_layers:
        raise ValueError(
            f"num_nextn_predict_layers={config.num_nextn_predict_layers} predicts next tokens causally; it needs "
            f"attention_mask_kind='causal', not {kind!r}"
        )


def _check_embedding_extras(config) -> None:
    if not isinstance(config.type_vocab_size, int) or config.type_vocab_size < 0:
        raise ValueError(f"type_vocab_size={config.type_vocab_size!r} must be a non-negative integer (0: no token types)")
    if config.embedding_size is not None and (not isinstance(config.embedding_size, int) or config.embedding_size < 1):
        raise ValueError(f"embedding_size={config.embedding_size!r} must be a positive integer, or None for hidden_size")
    if not isinstance(config.position_offset, int) or config.position_offset < 0:
        raise ValueError(f"position_offset={config.position_offset!r} must be a non-negative integer")
    if config.position_offset and config.position_embedding_type != "learned":
        raise ValueError(
            f"position_offset={config.position_offset} shifts a learned position table, but "
            f"position_embedding_type={config.position_embedding_type!r}: use 'learned' or position_offset=0"
        )


def _check_relative_buckets(config) -> None:
    for i, mixer in enumerate(config.mixer_types):
        if mixer != "attn":
            raise ValueError(
                f"mixer_types[{i}]={mixer!r}: position_embedding_type='relative_buckets' (T5's bias) is added to full "
                "attention masks only; use 'attn' layers"
            )
    if not isinstance(config.relative_attention_num_buckets, int) or config.relative_attention_num_buckets < 2:
        raise ValueError(f"relative_attention_num_buckets={config.relative_attention_num_buckets!r} must be an integer >= 2")


def _check_layer_groups(config) -> None:
    groups, layers = config.num_layer_groups, config.num_hidden_layers
    if not isinstance(groups, int) or groups < 1 or layers % groups:
        raise ValueError(
            f"num_layer_groups={groups!r} must be a positive divisor of num_hidden_layers={layers} "
            "(each group of layers shares one block)"
        )
    if config.attention_mask_kind != "bidirectional":
        raise ValueError(
            f"num_layer_groups={groups} shares blocks across layers, which needs an encoder "
            f"(attention_mask_kind='bidirectional'; here {config.attention_mask_kind!r}): a shared block has one cache slot"
        )
    if len(set(zip(config.mixer_types, config.ffn_types, strict=True))) > 1:
        raise ValueError(
            f"num_layer_groups={groups} shares blocks, so every layer must be the same kind; layer_pattern="
            f"{config.layer_pattern!r} mixes several"
        )
