"""The cache's two names (transformers 5.24 renamed `past_key_values` to `cache`), and no argument
that generate() builds may vanish into **kwargs unread. Runs on every transformers we test."""

import inspect
import warnings

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

from hf_llmarch import compat


def _ids(batch=2, length=6, seed=0):
    return torch.randint(3, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def _named_parameters(forward) -> set[str]:
    return {n for n, p in inspect.signature(forward).parameters.items() if p.kind is not p.VAR_KEYWORD}


def _cache_content(cache) -> float:
    """Sum of |x| over every tensor the cache holds (keys, values, recurrent states): it changes
    whenever a forward writes to the cache, for every cache class and layer kind."""
    tensors = []
    for layer in cache.layers:
        tensors += [getattr(layer, name, None) for name in ("keys", "values")]
        tensors += list(getattr(layer, "recurrent_states", {}).values())
    return sum(float(t.double().abs().sum()) for t in tensors if isinstance(t, torch.Tensor))


def _record_generate_calls(model, **generate_kwargs) -> list[tuple[dict, float]]:
    """The keyword arguments of every forward call generate() makes (built by the installed
    transformers' prepare_inputs_for_generation), each with the cache content after the call."""
    calls = []

    def record(module, args, kwargs, output):
        cache = kwargs.get(compat.CACHE_ARG)
        calls.append((dict(kwargs), _cache_content(cache) if cache is not None else None))

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        model.generate(**generate_kwargs)
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_generation_inputs_are_all_consumed(family, cache_implementation):
    model = tiny_model(family)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    calls = _record_generate_calls(
        model, input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, cache_implementation=cache_implementation
    )
    accepted = _named_parameters(model.forward) | compat.CONSUMED_KWARGS
    assert len(calls) == 3
    contents = []
    for kwargs, content in calls:
        assert not set(kwargs) - accepted, f"would vanish into **kwargs: {sorted(set(kwargs) - accepted)}"
        assert compat.CACHE_ARG in kwargs, f"generate() passed no cache under {compat.CACHE_ARG!r}: {sorted(kwargs)}"
        contents.append(content)
    assert calls[1][0]["input_ids"].shape[1] == 1, "decode steps must feed one token on top of the cache"
    assert contents[0] > 0 and len(set(contents)) == 3, "a step did not write the cache it was given"


def test_both_cache_names_work_and_agree(family):
    model = tiny_model(family)
    ids = _ids(seed=3)
    with torch.no_grad():
        full = model(ids).logits
        for name in ("cache", "past_key_values"):
            cache = DynamicCache(config=model.config)
            first = model(ids[:, :4], use_cache=True, **{name: cache})
            assert compat.output_cache(first) is cache
            rest = model(ids[:, 4:], use_cache=True, **{name: cache}).logits
            torch.testing.assert_close(torch.cat([first.logits, rest], 1), full, atol=2e-5, rtol=1e-4)


def test_both_names_at_once_is_an_error():
    model = tiny_model("llama")
    cache = DynamicCache(config=model.config)
    with pytest.raises(ValueError, match="`cache` or as `past_key_values`"):
        model(_ids(), cache=cache, past_key_values=cache)
    with pytest.raises(ValueError, match="`cache` or as `past_key_values`"):
        model.model(_ids(), cache=cache, past_key_values=cache)


@pytest.mark.parametrize("name", ["cache_params", "past_key_value", "cache_position"])
def test_unread_arguments_are_refused_by_name(name):
    model = tiny_model("hybrid")
    with pytest.raises(TypeError, match=name):
        model(_ids(), **{name: torch.zeros(1)})


@pytest.mark.parametrize(("name", "field"), [("token_type_ids", "type_vocab_size"), ("prefix_mask", "attention_mask_kind")])
def test_topology_arguments_a_decoder_lacks_are_refused_by_field(name, field):
    model = tiny_model("hybrid")
    with pytest.raises(ValueError, match=field):
        model(_ids(), **{name: torch.zeros_like(_ids())})


def test_output_field_is_the_one_generate_reads():
    model = tiny_model("hybrid")
    with torch.no_grad():
        out = model(_ids(), use_cache=True)
    assert isinstance(out[compat.CACHE_ARG], DynamicCache)
    if compat.CACHE_RENAMED:  # transformers keeps the old attribute as an alias from 5.24 on
        assert out.past_key_values is out.cache


def test_no_deprecation_warnings_from_our_calls(family):
    """Our forward calls transformers' helpers (mask builders) by the names they take."""
    model = tiny_model(family)
    ids = _ids()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(ids, attention_mask=torch.ones_like(ids), use_cache=True)
        model.generate(ids, max_new_tokens=2, do_sample=False)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecations
