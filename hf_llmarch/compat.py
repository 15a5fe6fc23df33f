"""Every difference between the transformers releases we support, in one place.

Model code calls these helpers and never checks a version itself. Each difference says which
release introduced it. Tested range: see `TESTED_TRANSFORMERS` (pyproject pins the same).
"""

import functools
import inspect

import transformers
from packaging.version import Version
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, CacheLayerMixin
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.generic import TransformersKwargs

TESTED_TRANSFORMERS = ("5.17", "5.24")  # oldest and newest minor the suite runs on

# 5.24 renamed the cache argument and output field `past_key_values` (and Mamba's `cache_params`)
# to `cache`: generate() passes `cache=` and reads `outputs.cache`, mask builders and
# GradientCheckpointingLayer take `cache=`. Before 5.24 everything says `past_key_values`.
CACHE_RENAMED = "cache" in BaseModelOutputWithPast.__dataclass_fields__
CACHE_ARG = "cache" if CACHE_RENAMED else "past_key_values"
# transformers' own Mamba / Mamba-2 models (conversion sources) take theirs as `cache_params` before 5.24.
NATIVE_SSM_CACHE_ARG = "cache" if CACHE_RENAMED else "cache_params"
# The cache layer type of DeepSeek-V3.2's sparse attention (a KV layer plus the indexer's keys) was
# renamed: "deepseek_sparse_attention" in 5.17, "indexed_attention" by 5.24.
INDEXED_ATTENTION_LAYER_TYPE = next(
    name for name, layer in DYNAMIC_LAYER_TYPE_MAPPING.items() if layer.__name__ == "DynamicIndexedLayer"
)
# transformers' FalconH1 (a conversion source) with mamba_rms_norm=True cannot generate on 5.17: its cached
# decode step mis-sizes the attention mask (keys 14, mask 13); 5.24 decodes. Releases between are untested.
NATIVE_FALCON_H1_NORM_GENERATES = Version(transformers.__version__).release >= (5, 24)


# transformers' Mamba-2 gated RMSNorm normalises each of its n_groups slices, as mamba_ssm does, only
# once it has `group_size` (5.24 has it, 5.17 does not: there it normalises over all groups at once,
# so a native Mamba-2 with n_groups > 1 computes another function than its mamba_ssm checkpoint).
@functools.cache
def native_mamba2_norm_per_group() -> bool:
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    return "group_size" in inspect.signature(MambaRMSNormGated.__init__).parameters

# Both names, for class attributes that list keys by name (device placement, Trainer's
# keys_to_ignore_at_inference): listing both is right on every release.
CACHE_NAMES = ["cache", "past_key_values"]

# Keyword arguments a forward accepts beyond its named parameters, because something downstream
# consumes them: output capture (output_*), can_return_tuple (return_dict), the loss
# (num_items_in_batch), flash-attention varlen (cu_seq_lens_*, max_length_*; packed rows are
# also told by position_ids, which every path reads). Anything else is refused by name.
CONSUMED_KWARGS = frozenset(TransformersKwargs.__annotations__) | {
    "return_dict",
    "output_attentions",
    "output_hidden_states",
}
# TransformersKwargs keys we cannot honour: a True value would be silently ignored.
UNSUPPORTED_FLAGS = ("output_router_logits",)


# Before 5.24, generate() asks `cache.get_seq_length()` at prefill even when every layer is
# recurrent, and the cache raises there (5.24 checks `cache.is_linear` first). Such a cache is
# given the answer from the token count the backbone keeps on it (`llmarch_seen_tokens`).
GENERATE_ASKS_RECURRENT_LENGTH = Version(transformers.__version__).release < (5, 24)

# Switch Transformers applies its expert capacity (per sequence) from 5.24 on; in 5.17 its router's cumsum
# runs over a size-1 axis, so no token is ever dropped (ours drops past capacity, as Switch does).
NATIVE_SWITCH_APPLIES_CAPACITY = Version(transformers.__version__).release >= (5, 24)

# Expert parallelism (`base_model_ep_plan`, loaded with `DistributedConfig(ep_size=..., ep_implementation=...)`)
# needs 5.23, which added `ep_implementation` (all-to-all or all-reduce token dispatch) to the
# `ep_dispatch_experts` style of 5.19. Before 5.19 EP was `enable_expert_parallel` with Mixtral's
# `ep_router` plan, which hooks a router output our MoE block does not produce.
EXPERT_PARALLEL_DISPATCH = Version(transformers.__version__).release >= (5, 23)


class _SeenTokensLength:
    """Mixin: `get_seq_length` of a cache without attention layers is the backbone's token count."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if any(isinstance(layer, CacheLayerMixin) for layer in self.layers):
            return super().get_seq_length(layer_idx)
        return int(getattr(self, "llmarch_seen_tokens", 0))


@functools.cache
def _with_seen_tokens_length(cache_cls: type) -> type:
    return type(cache_cls.__name__, (_SeenTokensLength, cache_cls), {})


def prepare_generation_cache(model_kwargs: dict, recurrent_only: bool):
    """Called on the cache generate() is about to use (its own or the caller's)."""
    cache = model_kwargs.get(CACHE_ARG)
    if GENERATE_ASKS_RECURRENT_LENGTH and recurrent_only and cache is not None:
        cache.__class__ = _with_seen_tokens_length(type(cache))


def resolve_cache(cache, past_key_values):
    """The cache a forward was given under either name (both names work on every release)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def cache_kwargs(cache) -> dict:
    """`{name: cache}` under the installed release's name: for calling transformers' own helpers
    (mask builders) and for building a ModelOutput whose field generate() reads."""
    return {CACHE_ARG: cache}


def output_cache(outputs):
    """The cache a ModelOutput carries, read from the installed release's field."""
    return getattr(outputs, CACHE_ARG)


def check_forward_kwargs(owner: str, kwargs: dict):
    """Refuse keyword arguments nothing would read, naming them: a renamed argument (as the cache
    in 5.24) must fail loudly, not vanish into **kwargs."""
    unknown = sorted(set(kwargs) - CONSUMED_KWARGS)
    if unknown:
        raise TypeError(
            f"{owner}.forward() got unexpected keyword argument(s) {unknown} (transformers {transformers.__version__}); "
            "they would be ignored"
        )
    for flag in UNSUPPORTED_FLAGS:
        if kwargs.get(flag):
            raise ValueError(f"{owner}.forward(): {flag}=True is not supported (router statistics come as aux_loss)")


def restore_pipeline_task(task: str) -> None:
    """transformers dropped text2text-generation in 5.0; from 5.24 it also lists removed tasks and refuses
    their names before looking at its registry, so a task we register again must leave that list."""
    from transformers import pipelines

    getattr(pipelines, "REMOVED_TASKS", {}).pop(task, None)
