"""Native encoder-decoders (t5, switch_transformers, bart) <-> llmarch_seq2seq, for the bare model and the Seq2SeqLM
head. Every tensor is consumed or the conversion fails; tied tables (the shared embedding, a tied
output layer) are taken once and checked equal wherever the file repeats them."""

import re

import torch
import transformers

from ..models.seq2seq import LlmArchForConditionalGeneration, LlmArchSeq2SeqConfig, LlmArchSeq2SeqModel
from . import t5_bart
from .checkpoint import CheckpointError, TensorSource, build_model, expected_shapes
from .encoders import rename_first

SOURCES = t5_bart.SOURCES
SHARED_KEY = "encoder.embed_tokens.weight"  # under `model.` in the Seq2SeqLM
# Our key that repeats the shared table: filled from it, never read from the file.
DECODER_COPY = "decoder.embed_tokens.weight"
# Native keys that repeat the shared embedding (T5 and BART keep `shared` plus one per stack).
NATIVE_EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
BIAS_KEY, NATIVE_BIAS_KEY = "lm_head.bias", "final_logits_bias"


def is_ours(model) -> bool:
    return isinstance(model, (LlmArchSeq2SeqModel, LlmArchForConditionalGeneration))


def from_hf(native_config, src: TensorSource, attn: str | None, native_class_name: str, dtype=None):
    source = native_config.model_type
    model_cls = _our_class(source, native_class_name)
    config = LlmArchSeq2SeqConfig(**t5_bart.config_from_hf(native_config), converted_from=source)
    expected = expected_shapes(model_cls, config)
    prefix, ours = _native_prefix(source, model_cls, src), _our_prefix(model_cls)
    copies = [ours + DECODER_COPY] + (["lm_head.weight"] if config.tie_word_embeddings and "lm_head.weight" in expected else [])
    # 5.24's T5 ties every output to `shared` and saves it once; ours keeps a v1.1 output separate.
    saved_tied = "lm_head.weight" in expected and "lm_head.weight" not in src and native_config.tie_word_embeddings
    skipped = [*copies, *(["lm_head.weight"] if saved_tied else [])]
    state_dict = {key: _take(src, key, shape, source, config, prefix) for key, shape in expected.items() if key not in skipped}
    shared = state_dict[ours + SHARED_KEY]
    state_dict |= dict.fromkeys(copies, shared)
    if saved_tied and "lm_head.weight" not in state_dict:
        state_dict["lm_head.weight"] = shared.clone()
    _check_native_copies(src, shared, prefix, config, model_cls)
    src.check_consumed()
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return build_model(model_cls, config, state_dict, dtype or shared.dtype, attn)


def to_native(model, target: str | None):
    config = model.config
    target = target or getattr(config, "converted_from", None) or t5_bart.infer_source(config)
    if target not in SOURCES:
        raise ValueError(f"target {target!r} is not an encoder-decoder family; targets: {list(SOURCES)}")
    t5_bart.check_expressible(config, target)
    native_cls = getattr(transformers, t5_bart.NATIVE_CLASSES[target][isinstance(model, LlmArchForConditionalGeneration)])
    native_config = t5_bart.config_to_hf(config, target, native_cls.config_class)
    expected = expected_shapes(native_cls, native_config)
    ours, our_prefix = model.state_dict(), _our_prefix(type(model))
    prefix = "model." if target == "bart" and not native_cls.__name__.endswith("Model") else ""
    native_of = {_native_key(key, target, config, prefix): key for key in ours if key != our_prefix + DECODER_COPY}
    state_dict = {}
    for key, shape in expected.items():
        expert = _expert_of(key, native_of)
        if expert is not None:
            state_dict[key] = ours[expert[0]][expert[1]]
            continue
        if key not in native_of and not _is_native_copy(key, prefix, native_of):
            raise CheckpointError(f"the native {native_cls.__name__} expects {key!r}, which no tensor of ours maps to")
        tensor = ours[native_of.get(key, our_prefix + SHARED_KEY)]
        state_dict[key] = tensor.reshape(shape) if key.endswith(NATIVE_BIAS_KEY) else tensor
    native = build_model(native_cls, native_config, state_dict, model.dtype, config._attn_implementation)
    _check_nothing_overwritten(native, state_dict)
    return native


def _expert_of(native_key: str, native_of: dict) -> tuple[str, int] | None:
    """(our fused key, expert index) of a native per-expert key (`...expert_3.wi.weight`), else None."""
    match = re.search(r"expert_(\d+)\.", native_key)
    if match is None:
        return None
    template = native_key[: match.start()] + "expert_" + t5_bart.EXPERT + "." + native_key[match.end() :]
    return (native_of[template], int(match.group(1))) if template in native_of else None


def _check_nothing_overwritten(native, state_dict: dict) -> None:
    """transformers may re-tie after loading (5.24's T5 ties its output to `shared` whatever the
    config says): a separate output layer would be lost without a word."""
    held = native.state_dict()
    for key, tensor in state_dict.items():
        if not torch.equal(held[key], tensor):
            raise ValueError(
                f"{type(native).__name__} (transformers {transformers.__version__}) replaced {key!r} after loading (it ties "
                "it to another tensor): this model's separate weights cannot be expressed there"
            )


def _our_class(source: str, native_class_name: str):
    model_name, lm_name = t5_bart.NATIVE_CLASSES[source]
    classes = {model_name: LlmArchSeq2SeqModel, lm_name: LlmArchForConditionalGeneration}
    if native_class_name not in classes:
        raise ValueError(f"{native_class_name} has no llmarch_seq2seq counterpart; convertible: {sorted(classes)}")
    return classes[native_class_name]


def _our_prefix(model_cls) -> str:
    return "model." if model_cls is LlmArchForConditionalGeneration else ""


def _native_prefix(source: str, model_cls, src: TensorSource) -> str:
    """BART's heads nest the base model under `model.`; T5's and Switch's do not."""
    if source != "bart" or model_cls is LlmArchSeq2SeqModel:
        return ""
    return "model." if any(k.startswith("model.") for k in src.keys()) else ""


def _native_key(key: str, source: str, config, prefix: str) -> str:
    if key == BIAS_KEY:
        return NATIVE_BIAS_KEY
    if key == "lm_head.weight":
        return key
    stack_key = key.removeprefix("model.")
    return prefix + rename_first(stack_key, t5_bart.stack_renames(source, config))


def _take(src: TensorSource, key: str, shape, source: str, config, prefix: str) -> torch.Tensor:
    native = _native_key(key, source, config, prefix)
    if key == BIAS_KEY:  # BART's final_logits_bias is [1, V]
        return src.take(native, (1, *shape)).reshape(shape)
    if t5_bart.EXPERT in native:  # Switch keeps one tensor per expert: stack them into [E, ...]
        return torch.stack([src.take(native.replace(t5_bart.EXPERT, str(e)), shape[1:]) for e in range(shape[0])])
    return src.take(native, shape)


def _is_native_copy(key: str, prefix: str, native_of: dict) -> bool:
    return key.removeprefix(prefix) in NATIVE_EMBED_COPIES or (key == "lm_head.weight" and "lm_head.weight" not in native_of)


def _check_native_copies(src: TensorSource, shared: torch.Tensor, prefix: str, config, model_cls) -> None:
    """The per-stack copies of the shared table (and a tied head) a file may hold must equal it."""
    copies = [prefix + key for key in NATIVE_EMBED_COPIES]
    if config.tie_word_embeddings and model_cls is LlmArchForConditionalGeneration:
        copies.append("lm_head.weight")
    for key in copies:
        if key in src and not torch.equal(src.take(key, shared.shape), shared):
            raise CheckpointError(f"tensor {key!r} in {src.origin} differs from the shared embedding it is tied to")
