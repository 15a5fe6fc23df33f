"""par(a,b): mixers side by side in one layer (Falcon-H1). The grammar and its errors, the layer as
the sum of its parts, one transformers cache layer holding both states, and the Falcon-H1 variants
of the Mamba-2 mixer and the MLP. The family contract (generate, padding, packing, Trainer, LoRA,
compile, save/load) runs on the `falcon` family in tests/models and tests/workflows."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

from hf_llmarch.models.hybrid import LlmArchHybridConfig
from hf_llmarch.pattern import compress_pattern, expand_pattern

SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=128, mamba2_head_dim=16, mamba2_d_state=8)


def test_par_is_one_layer_spelt_one_way():
    layers = expand_pattern("(par( attn , mamba2 )/mlp attn)x2 par(swa,mamba)")
    assert layers == [("par(attn,mamba2)", "mlp"), ("attn", "mlp")] * 2 + [("par(swa,mamba)", "mlp")]
    mixers, ffns = [m for m, _ in layers], [f for _, f in layers]
    assert expand_pattern(compress_pattern(mixers, ffns)) == layers
    config = LlmArchHybridConfig(**SMALL, layer_pattern="par(attn,mamba2) par(mamba2,swa) attn", sliding_window=4)
    assert config.layer_types == ["hybrid", "hybrid_sliding", "full_attention"]


@pytest.mark.parametrize(
    "pattern, match",
    [
        ("par(attn)", "at least two mixers"),
        ("par(attn,swa)", "one attention mixer .* beside one recurrent mixer"),
        ("par(mamba,mamba2)", "one attention mixer .* beside one recurrent mixer"),
        ("par(attn,mamba2,retention)", "one attention mixer .* beside one recurrent mixer"),
        ("par(attn,mamba3)", r"mixer_types\[0\].*'mamba3' is not a known mixer"),
    ],
)
def test_bad_par_names_the_layer(pattern, match):
    with pytest.raises(ValueError, match=match):
        LlmArchHybridConfig(**SMALL, layer_pattern=pattern)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"parallel_out_multipliers": {"retention": 2.0}}, "parallel_out_multipliers names 'retention'"),
        ({"parallel_in_multipliers": {"attn": -1.0}}, r"parallel_in_multipliers\['attn'\]=-1.0"),
        ({"mamba2_proj_multipliers": [1.0, 2.0]}, "mamba2_proj_multipliers=.* 5 positive floats"),
        ({"mamba2_d_inner": 100}, "mamba2_d_inner=100 does not divide into heads of mamba2_head_dim=16"),
        ({"mlp_multipliers": [1.0]}, r"mlp_multipliers=\[1.0\] must be \[gate, down\]"),
        ({"mlp_multipliers": [1.0, 0.5], "mlp_gated": False}, "mlp_gated=False"),
    ],
)
def test_bad_parallel_and_falcon_fields_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        LlmArchHybridConfig(**SMALL, layer_pattern="par(attn,mamba2)", **fields)


def _falcon(**overrides):
    return tiny_model("falcon", initializer_range=0.2, **overrides).double()


def test_the_layer_is_the_scaled_sum_of_its_parts():
    model = _falcon()
    parallel = model.model.layers[0].mixer
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    positions = model.model.rotary_emb(x, torch.arange(7)[None])
    out, _ = parallel(x, position_embeddings=positions)
    attention, _ = parallel.self_attn(x, position_embeddings=positions)
    mamba, _ = parallel.mamba(x * 1.25, position_embeddings=positions)
    torch.testing.assert_close(out, attention * 0.9 + mamba * 0.25)  # falcon-h1-tiny's multipliers


def test_one_cache_layer_holds_keys_values_and_states():
    model = _falcon()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 250, (2, 9)), past_key_values=cache, use_cache=True)
    layer, sliding = cache.layers[0], cache.layers[2]
    assert type(layer).__name__ == "LinearAttentionAndFullAttentionLayer"
    assert type(sliding).__name__ == "LinearAttentionAndSlidingWindowAttentionLayer"
    mamba = model.model.layers[0].mixer.mamba
    assert layer.keys.shape == (2, 2, 9, 16)
    assert layer.recurrent_states[0].shape == (2, mamba.num_heads, mamba.head_dim, mamba.state_size)
    assert layer.conv_states[0].shape == (2, mamba.conv_dim, mamba.conv_width - 1)


def test_token_by_token_decode_equals_the_full_forward():
    """fp64, past the sliding window of the par(swa, mamba2) layer."""
    model = _falcon()
    ids = torch.randint(0, 250, (2, 13))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(13)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)


def test_gradients_reach_both_parts():
    model = _falcon().train()
    model(torch.randint(0, 250, (2, 11)), labels=torch.randint(0, 250, (2, 11))).loss.backward()
    for name, param in model.model.layers[0].mixer.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name


@pytest.mark.parametrize("gate_norm, before", [(True, False), (True, True), (False, False)])
def test_mamba2_output_gate_variants_match_their_formula(gate_norm, before):
    model = _falcon(mamba2_gate_norm=gate_norm, mamba2_norm_before_gate=before, mamba2_proj_multipliers=None)
    mamba = model.model.layers[0].mixer.mamba
    y, z = torch.randn(2, 5, 96, dtype=torch.float64), torch.randn(2, 5, 96, dtype=torch.float64)
    gate = torch.nn.functional.silu(z)
    if not gate_norm:
        assert not hasattr(mamba, "norm")
        return
    with torch.no_grad():
        mamba.norm.weight.uniform_(0.5, 1.5)
    gated = y if before else y * gate
    normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + mamba.norm.variance_epsilon) * mamba.norm.weight
    torch.testing.assert_close(mamba.norm(y, z), normed * gate if before else normed)


def test_proj_multipliers_scale_each_in_proj_section():
    base = _falcon(mamba2_proj_multipliers=None).model.layers[0].mixer.mamba
    scaled = _falcon().model.layers[0].mixer.mamba  # same seed: same weights
    x = torch.randn(1, 3, 64, dtype=torch.float64)
    (z, xbc, dt), (z_mup, xbc_mup, dt_mup) = base._project(x), scaled._project(x)
    inner, group_state = 96, 16  # the falcon family's mamba2_d_inner, one group of state 16
    torch.testing.assert_close(z_mup, z * 0.35)  # falcon-h1-tiny: [z, x, B, C, dt] = [0.35, 0.25, 0.35, 0.5, 0.35]
    torch.testing.assert_close(xbc_mup[..., :inner], xbc[..., :inner] * 0.25)
    torch.testing.assert_close(xbc_mup[..., inner : inner + group_state], xbc[..., inner : inner + group_state] * 0.35)
    torch.testing.assert_close(xbc_mup[..., inner + group_state :], xbc[..., inner + group_state :] * 0.5)
    torch.testing.assert_close(dt_mup, dt * 0.35)
