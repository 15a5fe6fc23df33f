"""Conversion between native transformers causal LMs and our families.

`from_hf` takes a llama / mistral / qwen2 / qwen3 / gpt2 checkpoint (to `llmarch_dense`), a
mixtral / qwen2_moe / qwen3_moe one (to `llmarch_moe`), a mamba / mamba2 one (to `llmarch_ssm`)
or a jamba / granitemoehybrid / falcon_h1 / qwen3_next / rwkv one (to `llmarch_hybrid`), as a directory or an in-memory model, and returns our
model with the same logits; `to_hf` goes back. The per-source adapters (`llama.py`, `gpt2.py`,
`moe.py`, `ssm.py`, `jamba.py`, `granite.py`, `falcon.py`, `deepseek.py`, `qwen3_next.py`, `rwkv.py`) map configs and state dicts and name the family they convert to (`OURS`); this module
checks that every tensor is consumed and builds the target model. `save_from_hf` / `save_to_hf`
write directories.
"""

import copy
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from ..models.causal_lm import LlmArchForCausalLM
from . import deepseek, encoders, falcon, gpt2, granite, jamba, llama, moe, qwen3_next, rwkv, seq2seq, ssm
from .checkpoint import (
    CheckpointError,
    TensorSource,
    append_tensors,
    build_model,
    copy_sidecar_files,
    expected_shapes,
    read_config_json,
)

logger = logging.getLogger(__name__)

ADAPTERS = {
    "llama": llama, "mistral": llama, "qwen2": llama, "qwen3": llama, "gpt2": gpt2, "mixtral": moe, "qwen2_moe": moe,
    "qwen3_moe": moe, "mamba": ssm, "mamba2": ssm, "jamba": jamba,
    "granitemoehybrid": granite, "falcon_h1": falcon, "deepseek_v2": deepseek,
    "deepseek_v3": deepseek, "deepseek_v32": deepseek, "qwen3_next": qwen3_next,
    "rwkv": rwkv,
}
# Families converted head by head from the native class (encoders, encoder-decoders), not as causal LMs.
HEAD_BY_HEAD = (encoders, seq2seq)
HEAD_KEY = "lm_head.weight"
# Native families with muP-style scalings; every other target needs ours at their neutral values.
SCALED_TARGETS = ("granitemoehybrid", "falcon_h1")
NEUTRAL_SCALING = {"embedding_multiplier": 1.0, "residual_multiplier": 1.0, "attention_multiplier": None, "logits_scaling": 1.0}
# Fields only some native families can express, with their neutral value: Falcon-H1's variants of the
# MLP and of Mamba-2 (a Mamba-2 field is absent from a config without Mamba-2 layers, and then
# neutral), Qwen3-Next's zero-centred norms.
TARGET_ONLY_FIELDS = {
    "mlp_multipliers": (("falcon_h1",), None),
    "mamba2_proj_multipliers": (("falcon_h1",), None),
    "mamba2_gate_norm": (("falcon_h1",), True),
    "mamba2_norm_before_gate": (("falcon_h1",), False),
    "norm_unit_offset": (("qwen3_next",), False),
}
PARTIAL_ROPE_TARGETS = ("qwen3_next",)
OUR_EMBED_KEY = "model.embed_tokens.weight"

__all__ = ["ADAPTERS", "CheckpointError", "from_hf", "infer_target", "save_from_hf", "save_to_hf", "to_hf"]


def _adapter(model_type: str | None):
    if model_type not in ADAPTERS:
        raise ValueError(f"model_type {model_type!r} is not supported for conversion; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]


def from_hf(path_or_model, dtype: torch.dtype | str | None = None) -> LlmArchForCausalLM:
    """A native causal LM (directory or model) as ours: `LlmArchDenseForCausalLM` for llama / mistral /
    qwen2 / qwen3 / gpt2, `LlmArchMoeForCausalLM` for mixtral / qwen2_moe / qwen3_moe,
    `LlmArchSsmForCausalLM` for mamba / mamba2, `LlmArchHybridForCausalLM` for jamba / granitemoehybrid /
    falcon_h1.

    Encoders (bert / roberta / albert / electra) become the `llmarch_encoder` class of the same head
    (`convert/encoders.py`), encoder-decoders (t5 / switch_transformers / bart) `llmarch_seq2seq`
    (`convert/seq2seq.py`).

    `dtype=None` keeps the dtype the weights are stored in."""
    native_config, src, attn = _open_native(path_or_model)
    for family in HEAD_BY_HEAD:
        if native_config.model_type in family.SOURCES:
            model = family.from_hf(native_config, src, attn, _native_class_name(path_or_model, native_config), dtype)
            return _with_generation_config(model, path_or_model)
    adapter = _adapter(native_config.model_type)
    config_cls, model_cls = adapter.OURS
    fields = adapter.config_from_hf(native_config)
    if hasattr(adapter, "fields_for_checkpoint"):  # settings only the tensors can tell (DeepSeek's MTP depth)
        fields = adapter.fields_for_checkpoint(fields, src)
    config = config_cls(**fields, converted_from=native_config.model_type)
    expected = expected_shapes(model_cls, config)
    head_shape = expected.pop(HEAD_KEY)
    state_dict = adapter.state_dict_from_hf(src, expected, config)
    _attach_head(src, state_dict, OUR_EMBED_KEY, config.tie_word_embeddings, head_shape, _native_head_key(adapter))
    state_dict[HEAD_KEY] = state_dict.pop(_native_head_key(adapter))
    src.check_consumed(adapter.IGNORED_KEYS)
    return _build(model_cls, config, state_dict, dtype, attn)


def to_hf(model_or_path, target: str | None = None) -> PreTrainedModel:
    """Our causal LM (model or directory) as a native LlamaForCausalLM / MistralForCausalLM /
    Qwen2ForCausalLM / Qwen3ForCausalLM / GPT2LMHeadModel / MixtralForCausalLM / Qwen2MoeForCausalLM / Qwen3MoeForCausalLM /
    MambaForCausalLM / Mamba2ForCausalLM / JambaForCausalLM / GraniteMoeHybridForCausalLM / FalconH1ForCausalLM. `target` defaults to the model type it was converted
    from, else to `infer_target`. Raises a ValueError naming the field the target cannot express."""
    model = _load_ours(model_or_path)
    for family in HEAD_BY_HEAD:
        if family.is_ours(model):
            return family.to_native(model, target)
    native, extra = _to_native(model, target)
    if extra:  # tensors the native class has no module for (DeepSeek's MTP layers)
        raise ValueError(
            f"{type(native).__name__} has no module for {sorted(extra)[:3]} ...: save_to_hf writes them into the "
            "checkpoint beside it; to_hf gives the main model only of a config without them"
        )
    return native


def _to_native(model, target: str | None) -> tuple[PreTrainedModel, dict]:
    """(the native model, {checkpoint name: tensor} of ours the native class has no module for)."""
    config = model.config
    target = target or getattr(config, "converted_from", None) or infer_target(config)
    adapter = _adapter(target)
    _check_plain_stack(config, target, adapter.MIXER_KINDS[target], adapter.FFN_KINDS)
    adapter.check_expressible(config, target)
    native_config = adapter.config_to_hf(config, target)
    native_cls = adapter.NATIVE_CLASSES[target][1]
    expected = expected_shapes(native_cls, native_config)
    head_shape = expected.pop(_native_head_key(adapter))
    src = TensorSource.from_state_dict(model.state_dict(), f"the {type(model).__name__}")
    state_dict = adapter.state_dict_to_hf(src, expected, config)
    _attach_head(src, state_dict, adapter.EMBED_KEY, config.tie_word_embeddings, head_shape)
    state_dict[_native_head_key(adapter)] = state_dict.pop(HEAD_KEY)
    extra = adapter.extra_tensors_to_hf(src, config) if hasattr(adapter, "extra_tensors_to_hf") else {}
    src.check_consumed()
    return _build(native_cls, native_config, state_dict, model.dtype, config._attn_implementation), extra


def infer_target(config) -> str:
    """The native family closest to our config: parallel attention + Mamba-2 -> falcon_h1; Gated
    DeltaNet -> qwen3_next; RWKV-4 -> rwkv; Mamba or
    Mamba-2 layers -> mamba / mamba2, with
    attention -> jamba; MoE layers -> qwen2_moe with a shared expert,
    qwen3_moe with QK-norm or dense layers, else mixtral; learned positions + LayerNorm -> gpt2; QK-norm -> qwen3; q/k/v bias
    without o bias -> qwen2; sliding window -> mistral (all layers) or qwen2 (a mix); else llama."""
    if any(m.startswith("par(") for m in config.mixer_types):
        return "falcon_h1"
    if "gated_deltanet" in config.mixer_types:
        return "qwen3_next"
    if "rwkv4" in config.mixer_types:
        return "rwkv"
    if "dsa" in config.mixer_types:
        return "deepseek_v32"
    if "mla" in config.mixer_types:
        return "deepseek_v3" if config.router_type == "deepseek" else "deepseek_v2"
    if set(config.mixer_types) <= {"mamba", "mamba2"}:
        return config.mixer_types[0]
    if set(config.mixer_types) == {"attn", "mamba"}:
        return "jamba"
    if set(config.mixer_types) <= {"attn", "mamba2"} and "mamba2" in config.mixer_types:
        return "granitemoehybrid"
    if "moe" in config.ffn_types:
        if config.shared_expert_intermediate_size:
            return "qwen2_moe"
        return "qwen3_moe" if config.qk_norm or "mlp" in config.ffn_types else "mixtral"
    if config.position_embedding_type == "learned" and config.norm_type == "layernorm":
        return "gpt2"
    if config.qk_norm:
        return "qwen3"
    if config.attention_bias and not config.attention_out_bias:
        return "qwen2"
    swa = [m == "swa" for m in config.mixer_types]
    if any(swa):
        return "mistral" if all(swa) else "qwen2"
    return "llama"


def save_from_hf(src, out, dtype: torch.dtype | str | None = None) -> Path:
    """Convert `src` (directory or model) with `from_hf` and write it plus src's tokenizer files to `out`."""
    out = Path(out)
    from_hf(src, dtype=dtype).save_pretrained(out)
    if isinstance(src, (str, Path)):
        copy_sidecar_files(src, out)
    return out


def save_to_hf(src, out, target: str | None = None) -> Path:
    """Convert `src` (directory or model) with `to_hf` and write it plus src's tokenizer files to `out`;
    tensors the native class has no module for (DeepSeek's MTP layers) go into the checkpoint too,
    under the names the native family's own checkpoints use."""
    out = Path(out)
    model = _load_ours(src)
    family = next((family for family in HEAD_BY_HEAD if family.is_ours(model)), None)
    native, extra = (family.to_native(model, target), {}) if family else _to_native(model, target)
    native.save_pretrained(out)
    if extra:
        append_tensors(out, extra)
    if isinstance(src, (str, Path)):
        copy_sidecar_files(src, out)
    return out


def _open_native(path_or_model):
    """(native config, its tensors, attention implementation to keep or None)."""
    if isinstance(path_or_model, PreTrainedModel):
        config = path_or_model.config
        _check_convertible(config.model_type)
        origin = f"the in-memory {type(path_or_model).__name__}"
        return config, TensorSource.from_state_dict(path_or_model.state_dict(), origin), config._attn_implementation
    if not isinstance(path_or_model, (str, Path)):
        raise TypeError(f"expected a checkpoint directory or a PreTrainedModel, got {type(path_or_model).__name__}")
    # Check the type before AutoConfig, whose error for unknown types does not say what converts.
    _check_convertible(read_config_json(path_or_model).get("model_type"))
    return AutoConfig.from_pretrained(path_or_model), TensorSource.from_dir(path_or_model), None


def _with_generation_config(model, path_or_model):
    """Generation defaults travel with the weights (BART forces its eos and bans repeats, T5 starts
    from pad): without them generate() would decode differently from the native model."""
    if not hasattr(model, "generation_config"):  # a bare base model does not generate
        return model
    if isinstance(path_or_model, PreTrainedModel):
        native = getattr(path_or_model, "generation_config", None)
        if native is None:
            return model
    elif (Path(path_or_model) / "generation_config.json").is_file():
        native = GenerationConfig.from_pretrained(path_or_model)
    else:
        return model
    model.generation_config = copy.deepcopy(native)
    return model


def _check_convertible(model_type: str | None):
    if not any(model_type in family.SOURCES for family in HEAD_BY_HEAD):
        _adapter(model_type)


def _native_class_name(path_or_model, native_config) -> str:
    """The native class the checkpoint was saved from: encoders convert head by head."""
    if isinstance(path_or_model, PreTrainedModel):
        return type(path_or_model).__name__
    architectures = native_config.architectures or []
    if len(architectures) != 1:
        raise ValueError(
            f"config.json of {path_or_model} lists architectures={architectures}: name exactly one native class "
            "(e.g. BertForMaskedLM) so the matching head converts"
        )
    return architectures[0]


def _load_ours(model_or_path):
    if isinstance(model_or_path, (str, Path)):
        config = read_config_json(model_or_path)
        model_type = config.get("model_type")
        if not str(model_type).startswith("llmarch_"):
            raise ValueError(f"{model_or_path} holds model_type {model_type!r}, not an hf_llmarch model")
        model_or_path = _our_class_from_json(config).from_pretrained(model_or_path)
    if not isinstance(model_or_path, LlmArchForCausalLM) and not any(family.is_ours(model_or_path) for family in HEAD_BY_HEAD):
        raise ValueError(f"to_hf needs an hf_llmarch causal LM, got {type(model_or_path).__name__}")
    return model_or_path


def _our_class_from_json(config: dict):
    """Decoders load as causal LMs; encoders and encoder-decoders as the class their config.json names."""
    if config.get("model_type") not in ("llmarch_encoder", "llmarch_seq2seq"):
        return AutoModelForCausalLM
    import hf_llmarch.models as ours

    name = (config.get("architectures") or ["LlmArchEncoderModel"])[0]
    for module in (ours.encoder_heads, ours.encoder, ours.seq2seq):
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"config.json names architectures={config.get('architectures')}, which is not an hf_llmarch class")


def _check_plain_stack(config, target: str, mixer_kinds: tuple[str, ...], ffn_kinds: tuple[str, ...]):
    """Native targets are stacks of the mixer and FFN kinds their layers have."""
    for i, (mixer, ffn) in enumerate(zip(config.mixer_types, config.ffn_types)):
        if mixer not in mixer_kinds:
            raise ValueError(f"mixer_types[{i}]={mixer!r} cannot be expressed in {target}: only {'/'.join(mixer_kinds)} layers convert")
        if ffn not in ffn_kinds:
            raise ValueError(f"ffn_types[{i}]={ffn!r} cannot be expressed in {target}: only {'/'.join(ffn_kinds)} layers convert")
    for field, (targets, neutral) in TARGET_ONLY_FIELDS.items():
        if target not in targets and getattr(config, field, neutral) != neutral:
            raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed in {target}; only {'/'.join(targets)} has it")
    partial = (config.rope_parameters or {}).get("partial_rotary_factor", 1.0)
    if partial != 1.0 and target not in PARTIAL_ROPE_TARGETS:
        raise ValueError(
            f"rope_parameters['partial_rotary_factor']={partial} cannot be expressed in {target}, which rotates whole heads"
        )
    if target != "falcon_h1":
        inner = getattr(config, "mamba2_d_inner", None)
        if inner is not None and inner != config.mamba2_expand * config.hidden_size:
            raise ValueError(
                f"mamba2_d_inner={inner} cannot be expressed in {target}, whose Mamba-2 width is expand * hidden_size "
                f"({config.mamba2_expand} * {config.hidden_size}); set mamba2_expand to match instead"
            )
    if config.residual_in_fp32 and target not in ("mamba", "mamba2"):
        raise ValueError(f"residual_in_fp32=True cannot be expressed in {target}; only mamba and mamba2 keep an fp32 residual")
    if target not in SCALED_TARGETS:
        for field, neutral in NEUTRAL_SCALING.items():
            if getattr(config, field) != neutral:
                raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed in {target}, which has no such scaling")
    if config.hidden_dropout and target != "gpt2":
        # Dropout only acts in training, so the exported model still computes the same function.
        logger.warning("hidden_dropout=%s has no counterpart in %s and is dropped", config.hidden_dropout, target)


def _native_head_key(adapter) -> str:
    """The output head's name in the native family (RWKV's is `head.weight`)."""
    return getattr(adapter, "NATIVE_HEAD_KEY", HEAD_KEY)


def _attach_head(src: TensorSource, state_dict: dict, embed_key: str, tied: bool, shape: tuple, src_key: str = HEAD_KEY):
    """Add the head as `state_dict[src_key]`: src's tensor `src_key`, or the embedding when tied (where a
    stored copy must equal it)."""
    if not tied:
        state_dict[src_key] = src.take(src_key, shape)
        return
    if src_key in src and not torch.equal(src.take(src_key, shape), state_dict[embed_key]):
        raise CheckpointError(
            f"tensor {src_key!r} in {src.origin} differs from the input embedding although tie_word_embeddings=True; "
            "set tie_word_embeddings=false in config.json if the head is meant to be separate"
        )
    state_dict[src_key] = state_dict[embed_key]


def _build(model_cls, config, state_dict: dict, dtype, attn_implementation: str | None):
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return build_model(model_cls, config, state_dict, dtype or state_dict[HEAD_KEY].dtype, attn_implementation)
