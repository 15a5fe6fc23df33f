"""Linear attention (`linear_attn`): every retention form equals the masked quadratic oracle
tril(phi(Q) phi(K)^T) V / rowsum on outputs and all gradients at odd lengths; the state (S and z in
one) lives in the cache with constant size; pads and right padding leave it exact; the unnormalised
identity map and bad settings."""

import pytest
import torch
from conftest import tiny_model
from torch.nn import functional as F
from transformers import DynamicCache

from hf_llmarch.models.hybrid import LlmArchHybridConfig

MODES = ["naive", "parallel", "chunk", "recurrent"]


def _model(**overrides):
    return tiny_model("linear", initializer_range=0.2, **overrides).double()


def _quadratic_oracle(mixer, x):
    """The masked quadratic form, computed from the mixer's own projections."""
    b, t, _ = x.shape
    heads = (b, t, mixer.num_heads, mixer.head_dim)
    q = F.elu(mixer.q_proj(x).view(heads)) + 1
    k = F.elu(mixer.k_proj(x).view(heads)) + 1
    v = mixer.v_proj(x).view(heads)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k).tril()  # [B, H, T, T]
    out = torch.einsum("bhqk,bkhd->bqhd", scores, v) / (scores.sum(-1).transpose(1, 2)[..., None] + 1e-6)
    return mixer.o_proj(out.reshape(b, t, -1))


@pytest.mark.parametrize("mode", MODES)
def test_every_form_equals_the_quadratic_oracle_with_gradients(mode):
    """T = 21 with chunks of 16 (the tiny preset's): a partial last chunk."""
    mixer = _model(linear_attn_mode=mode).model.layers[0].mixer
    x = torch.randn(2, 21, 64, dtype=torch.float64, requires_grad=True)
    out, _ = mixer(x)
    expected = _quadratic_oracle(mixer, x)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *mixer.parameters()])
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), [x, *mixer.parameters()])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_state_holds_s_and_z_with_constant_size():
    model = _model()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 250, (2, 30)), past_key_values=cache, use_cache=True)
        shape = tuple(cache.layers[0].recurrent_states[0].shape)
        model(torch.randint(3, 250, (2, 7)), past_key_values=cache, use_cache=True)
    assert shape == tuple(cache.layers[0].recurrent_states[0].shape) == (2, 4, 16, 17)  # [B, H, Dk, Dv + 1 (z)]
    assert cache.layers[0].recurrent_states[0].dtype == torch.float64  # the model's, or fp32 for lower ones


def test_right_padded_prefill_leaves_an_exact_state():
    """elu(0) + 1 = 1: a pad whose key were zeroed before the map would still write; ours writes nothing."""
    model = _model()
    ids, nxt = torch.randint(3, 250, (1, 9)), torch.randint(3, 250, (1, 3))
    padded = torch.cat([ids, torch.full((1, 4), 257)], 1)
    outs = []
    for inputs, mask in ((ids, None), (padded, torch.tensor([[1] * 9 + [0] * 4]))):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(inputs, attention_mask=mask, past_key_values=cache, use_cache=True)
            outs.append((cache.layers[0].recurrent_states[0].clone(), model(nxt, past_key_values=cache, use_cache=True).logits))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])


def test_identity_map_is_unnormalised_with_an_output_norm():
    model = _model(linear_attn_feature_map="identity")
    mixer = model.model.layers[0].mixer
    assert not mixer.normalised and hasattr(mixer, "o_norm")
    ids = torch.randint(3, 250, (2, 11))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(11)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"linear_attn_feature_map": "relu"}, "linear_attn_feature_map='relu' is unknown"),
        ({"linear_attn_num_heads": 5}, "linear_attn_num_heads=5 does not divide hidden_size=64"),
        ({"linear_attn_mode": "fast"}, "linear_attn_mode='fast' is unknown"),
    ],
)
def test_bad_linear_attention_settings_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        LlmArchHybridConfig(hidden_size=64, num_attention_heads=4, layer_pattern="linear_attn/mlp", **fields)
