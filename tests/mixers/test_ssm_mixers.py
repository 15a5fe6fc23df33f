"""The state-space mixers (mamba, mamba2, s4d) inside the model: every path agrees, the state lives
in transformers' cache with constant size, padding on either side leaves outputs and cache exact,
LoRA reaches the projections, and bad settings name their field."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

from hf_llmarch.models.ssm import LlmArchSsmConfig

SSM_FAMILIES = ["mamba", "mamba2", "s4d"]
MODE_FIELD = {"mamba": "mamba_mode", "mamba2": "mamba2_mode", "s4d": "s4d_mode"}
FAST_MODES = {"mamba": ["chunk"], "mamba2": ["chunk"], "s4d": ["fft", "chunk"]}


def _model(family, **overrides):
    """A tiny model whose mixers carry real signal: at the default 0.02 init the SSM state is ~1e-6, so
    an absolute tolerance would hide a corrupted one."""
    return tiny_model(family, initializer_range=0.2, **overrides)


def _mixer(model, layer=0):
    return model.model.layers[layer].mixer


@pytest.mark.parametrize("family", SSM_FAMILIES)
def test_every_path_matches_the_naive_one_in_the_model(family):
    """fp64, T = 21 (not a multiple of any chunk): logits and the gradient of every mixer parameter."""
    ids = torch.randint(0, 250, (2, 21))
    results = {}
    for mode in ["naive", *FAST_MODES[family]]:
        model = _model(family, **{MODE_FIELD[family]: mode}).double()
        logits = model(ids).logits
        logits.pow(2).mean().backward()
        grads = {n: p.grad for n, p in _mixer(model).named_parameters()}
        results[mode] = (logits.detach(), grads)
    ref_logits, ref_grads = results["naive"]
    for mode in FAST_MODES[family]:
        logits, grads = results[mode]
        torch.testing.assert_close(logits, ref_logits, atol=1e-10, rtol=1e-8)
        assert grads.keys() == ref_grads.keys() and len(grads) >= 5
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("family", SSM_FAMILIES)
def test_token_by_token_decode_equals_the_chunked_forward(family):
    model = _model(family).double()
    ids = torch.randint(0, 250, (2, 19))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(19)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("family", SSM_FAMILIES)
def test_state_lives_in_cache_with_constant_size(family):
    model = _model(family)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 250, (2, 30)), past_key_values=cache, use_cache=True)
    layer = cache.layers[0]
    shapes = _state_shapes(layer)
    with torch.no_grad():
        model(torch.randint(0, 250, (2, 5)), past_key_values=cache, use_cache=True)
    assert type(layer).__name__ == "LinearAttentionLayer" and layer.recurrent_states[0].dtype == torch.float32
    assert _state_shapes(layer) == shapes
    mixer = _mixer(model)
    if family == "mamba":
        expected = {"ssm": (2, mixer.inner, mixer.state_size), "conv": (2, mixer.inner, mixer.conv_width - 1)}
    elif family == "mamba2":
        expected = {
            "ssm": (2, mixer.num_heads, mixer.head_dim, mixer.state_size),
            "conv": (2, mixer.conv_dim, mixer.conv_width - 1),
        }
    else:
        expected = {"ssm": (2, model.config.hidden_size, mixer.modes, 2)}
    assert shapes == expected


def _held_states(layer) -> dict:
    held = {"ssm": layer.recurrent_states[0], "conv": layer.conv_states[0]}
    return {name: state.clone() for name, state in held.items() if state is not None}


def _state_shapes(layer) -> dict:
    return {name: tuple(state.shape) for name, state in _held_states(layer).items()}


@pytest.mark.parametrize("family", SSM_FAMILIES)
@pytest.mark.parametrize("continuation", [1, 3])
def test_right_padded_prefill_leaves_an_exact_cache(family, continuation):
    """transformers' Mamba keeps pads in the conv state and lets them decay the SSM state
    (transformers#48256): the next tokens after a right-padded prefill come out wrong. Here a
    right-padded row continues exactly as the same row unpadded, one token or several at once."""
    model = _model(family)
    ids = torch.randint(0, 250, (1, 9))
    nxt = torch.randint(0, 250, (1, continuation))
    padded = torch.cat([ids, torch.full((1, 4), model.config.pad_token_id)], 1)
    results = []
    for inputs, mask in ((ids, None), (padded, torch.tensor([[1] * 9 + [0] * 4]))):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            first = model(inputs, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, :9]
            states = [_held_states(layer) for layer in cache.layers]
            then = model(nxt, past_key_values=cache, use_cache=True).logits
        results.append((first, states, then))
    (first, states, then), (first_padded, states_padded, then_padded) = results
    torch.testing.assert_close(first_padded, first, atol=1e-5, rtol=1e-5)
    for layer, layer_padded in zip(states, states_padded, strict=True):  # the cache itself, not only logits
        for name in layer:
            assert layer[name].abs().max() > 1e-2, name  # a state worth comparing
            torch.testing.assert_close(layer_padded[name], layer[name], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(then_padded, then, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", SSM_FAMILIES)
def test_lora_defaults_reach_the_state_space_projections_and_merge(family):
    from peft import LoraConfig, get_peft_model

    model = _model(family)
    ids = torch.randint(0, 250, (2, 10))
    with torch.no_grad():
        base = model(ids).logits
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and ".mixer." not in n}
    expected = {"mamba": {"in_proj", "x_proj", "dt_proj", "out_proj"}, "mamba2": {"in_proj", "out_proj"}, "s4d": {"out_proj"}}[family]
    assert expected <= wrapped, wrapped
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-3
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"layer_pattern": "mamba", "mamba_d_state": 0}, "mamba_d_state=0 must be a positive integer"),
        ({"layer_pattern": "mamba", "mamba_d_conv": 1}, "mamba_d_conv=1 must be an integer >= 2"),
        ({"layer_pattern": "mamba", "mamba_mode": "fast"}, "mamba_mode='fast' is unknown"),
        ({"layer_pattern": "mamba", "ssm_dt_min": 0.5, "ssm_dt_max": 0.1}, "ssm_dt_min=0.5"),
        ({"layer_pattern": "mamba2", "mamba2_head_dim": 48}, "does not divide into heads of mamba2_head_dim=48"),
        ({"layer_pattern": "mamba2", "mamba2_head_dim": 32, "mamba2_n_groups": 3}, "mamba2_n_groups=3 does not divide the 4 heads"),
        ({"layer_pattern": "mamba2", "mamba2_d_state": 0}, "mamba2_d_state=0"),
        ({"layer_pattern": "mamba2", "mamba2_d_conv": 1}, "mamba2_d_conv=1"),
        ({"layer_pattern": "mamba2", "mamba2_dt_limit": [0.5, 0.1]}, "mamba2_dt_limit"),
        ({"layer_pattern": "s4d", "s4d_d_state": 7}, "s4d_d_state=7 must be even"),
        ({"layer_pattern": "s4d", "s4d_init": "hippo"}, "s4d_init='hippo' is unknown"),
    ],
)
def test_bad_state_space_settings_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        LlmArchSsmConfig(hidden_size=64, num_attention_heads=4, **fields)


def test_mixer_fields_are_filled_saved_and_overridable(tmp_path):
    import hf_llmarch

    config = hf_llmarch.load_preset("mamba2-tiny", mamba2_chunk_size=8)
    assert config.mamba2_chunk_size == 8 and config.mamba2_dt_limit[0] == 0.0
    config.save_pretrained(tmp_path)
    assert LlmArchSsmConfig.from_pretrained(tmp_path).mamba2_chunk_size == 8
    with pytest.raises(ValueError, match="did you mean 'mamba2_chunk_size'"):
        hf_llmarch.load_preset("mamba2-tiny", mamba2_chunk_sise=8)
