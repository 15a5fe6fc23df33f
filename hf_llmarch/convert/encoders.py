"""Native encoders (bert, roberta, albert, electra) <-> llmarch_encoder, for the bare encoder and
every head: the native class picks ours (`BertForMaskedLM` -> `LlmArchEncoderForMaskedLM`, ELECTRA's
`ForPreTraining` discriminator -> `LlmArchEncoderForReplacedTokenDetection`) and back. Every tensor
is consumed or the conversion fails; the tied output weight and the output bias transformers keeps
under two names are checked equal, not silently picked."""

import re

import torch
import transformers

from ..models import encoder_heads as heads
from ..models.encoder import LlmArchEncoderConfig, LlmArchEncoderModel
from . import bert
from .checkpoint import CheckpointError, TensorSource, build_model, expected_shapes

SOURCES = bert.SOURCES
OURS_OF_SUFFIX = {
    "Model": LlmArchEncoderModel,
    "ForMaskedLM": heads.LlmArchEncoderForMaskedLM,
    "ForPreTraining": heads.LlmArchEncoderForPreTraining,
    "ForSequenceClassification": heads.LlmArchEncoderForSequenceClassification,
    "ForTokenClassification": heads.LlmArchEncoderForTokenClassification,
    "ForQuestionAnswering": heads.LlmArchEncoderForQuestionAnswering,
    "ForMultipleChoice": heads.LlmArchEncoderForMultipleChoice,
}
OUR_EMBED_KEY, OUR_HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"


def is_ours(model) -> bool:
    return isinstance(model, (LlmArchEncoderModel, heads.LlmArchEncoderPreTrainedModel))


def our_class(source: str, native_class_name: str):
    """Our model class for a native class name (its architectures entry)."""
    suffix = native_class_name.removeprefix(bert.CLASS_PREFIX[source])
    if source == "electra" and suffix == "ForPreTraining":  # ELECTRA's pre-training model is the discriminator
        return heads.LlmArchEncoderForReplacedTokenDetection
    if suffix not in OURS_OF_SUFFIX:
        raise ValueError(f"{native_class_name} has no llmarch_encoder counterpart; convertible heads: {sorted(OURS_OF_SUFFIX)}")
    return OURS_OF_SUFFIX[suffix]


def native_class(model, target: str):
    """The native class our model exports to."""
    prefix, ours = bert.CLASS_PREFIX[target], type(model)
    if isinstance(model, heads.LlmArchEncoderForReplacedTokenDetection):
        if target != "electra":
            raise ValueError(f"replaced-token detection is ELECTRA's discriminator; {target} has no such head")
        return transformers.ElectraForPreTraining
    suffix = next(s for s, cls in OURS_OF_SUFFIX.items() if issubclass(ours, cls) and (cls is not LlmArchEncoderModel or ours is cls))
    if suffix == "ForPreTraining" and target in ("roberta", "electra"):
        if target == "electra" or model.config.pair_task is not None:
            raise ValueError(
                f"{target} has no MLM + sentence-pair pre-training head: export a LlmArchEncoderForMaskedLM "
                "(or, for ELECTRA's discriminator, LlmArchEncoderForReplacedTokenDetection)"
            )
        suffix = "ForMaskedLM"  # RoBERTa pre-trains with MLM alone
    return getattr(transformers, prefix + suffix)


def from_hf(native_config, src: TensorSource, attn: str | None, native_class_name: str, dtype=None):
    source = native_config.model_type
    model_cls = our_class(source, native_class_name)
    config = LlmArchEncoderConfig(**bert.config_from_hf(native_config), converted_from=source)
    expected = expected_shapes(model_cls, config)
    base_prefix = _native_base_prefix(src, source, model_cls)
    state_dict = {}
    for key, shape in expected.items():
        if key == OUR_HEAD_KEY and config.tie_word_embeddings:
            continue
        state_dict[key] = _take(src, _native_key(key, source, base_prefix, model_cls), shape)
    if OUR_HEAD_KEY in expected and config.tie_word_embeddings:
        state_dict[OUR_HEAD_KEY] = _tied_head(src, state_dict[OUR_EMBED_KEY], _native_key(OUR_HEAD_KEY, source, base_prefix, model_cls))
    src.check_consumed(bert.IGNORED_KEYS)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return build_model(model_cls, config, state_dict, dtype or next(iter(state_dict.values())).dtype, attn)


def to_native(model, target: str | None):
    config = model.config
    target = target or getattr(config, "converted_from", None) or bert.infer_source(config)
    if target not in SOURCES:
        raise ValueError(f"target {target!r} is not an encoder family; encoder targets: {list(SOURCES)}")
    native_cls = native_class(model, target)
    bert.check_expressible(config, target)
    native_config = bert.config_to_hf(config, target, native_cls.config_class)
    expected = expected_shapes(native_cls, native_config)
    ours = {_native_key(key, target, _base_prefix_of(native_cls, target), type(model)): key for key in model.state_dict()}
    src = TensorSource.from_state_dict(model.state_dict(), f"the {type(model).__name__}")
    state_dict = {key: src.take(_our_key_for(key, ours), shape) for key, shape in expected.items()}
    src.check_consumed()
    return build_model(native_cls, native_config, state_dict, model.dtype, config._attn_implementation)


def _native_base_prefix(src: TensorSource, source: str, model_cls) -> str:
    """`bert.` inside a head model; a bare BertModel saved by transformers has no prefix."""
    return "" if model_cls is LlmArchEncoderModel and not any(k.startswith(source + ".") for k in src.keys()) else source + "."


def _base_prefix_of(native_cls, target: str) -> str:
    return "" if native_cls.__name__.endswith("Model") else target + "."


def _native_key(key: str, source: str, base_prefix: str, model_cls) -> str:
    """The native name of our key: encoder keys (under `model.` in a head) get the encoder renames
    and the native base prefix, head keys the head renames."""
    if model_cls is LlmArchEncoderModel:
        return base_prefix + rename_first(key, bert.ENCODER_RENAMES[source])
    if key.startswith("model."):
        return base_prefix + rename_first(key.removeprefix("model."), bert.ENCODER_RENAMES[source])
    return rename_first(key, bert.HEAD_RENAMES[source])


def rename_first(key: str, renames) -> str:
    """`key` under the first (regex, replacement) that matches its start; a key no rule covers is a
    module this table does not know, so the conversion stops instead of guessing."""
    for pattern, replacement in renames:
        renamed, count = re.subn("^" + pattern, replacement, key)
        if count:
            return renamed
    raise CheckpointError(f"no native name for {key!r}: the key tables in convert/bert.py do not cover it")


def _take(src: TensorSource, key: str, shape) -> torch.Tensor:
    """`key`, or the other name transformers keeps the same output bias under; equal when both exist."""
    alias = bert.BIAS_ALIASES.get(key)
    if alias is None or alias not in src:
        return src.take(key, shape)
    tensor = src.take(alias, shape)
    if key in src and not torch.equal(src.take(key, shape), tensor):
        raise CheckpointError(f"tensors {key!r} and {alias!r} in {src.origin} differ, but they are one tied output bias")
    return tensor


def _tied_head(src: TensorSource, embedding: torch.Tensor, native_key: str) -> torch.Tensor:
    if native_key in src and not torch.equal(src.take(native_key, embedding.shape), embedding):
        raise CheckpointError(
            f"tensor {native_key!r} in {src.origin} differs from the word embeddings although tie_word_embeddings=True; "
            "set tie_word_embeddings=false in config.json if the output layer is meant to be separate"
        )
    return embedding


def _our_key_for(native_key: str, ours: dict[str, str]) -> str:
    """Our key for a native key, through the output-bias alias when the native class holds both names."""
    if native_key in ours:
        return ours[native_key]
    canonical = {alias: key for key, alias in bert.BIAS_ALIASES.items()}.get(native_key)
    if canonical in ours:
        return ours[canonical]
    raise CheckpointError(f"the native model expects {native_key!r}, which no tensor of ours maps to")
