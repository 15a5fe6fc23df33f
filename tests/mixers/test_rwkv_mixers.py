"""RWKV-4 and RWKV-7 time mixes against their papers' recurrences written from the mixers' own
parameters (every op path, outputs and all parameter gradients, an odd length); the value residual
runs down the stack; the channel mix shares the layer's shift state; bad settings name their field."""

import pytest
import torch
from conftest import tiny_model
from torch.nn import functional as F

from hf_llmarch.models.hybrid import LlmArchHybridConfig


def _model(family, **overrides):
    return tiny_model(family, initializer_range=0.2, **overrides).double()


def _shifted(x):
    return F.pad(x, (0, 0, 1, -1))  # the previous token's input, zero first


def _wkv4_oracle(mixer, x):
    """The WKV definition, a quadratic sum in fp64 (no stabilisation needed there)."""
    prev = _shifted(x)
    mix = lambda mu: x * mu + prev * (1 - mu)  # noqa: E731
    k, v = mixer.key(mix(mixer.time_mix_key)), mixer.value(mix(mixer.time_mix_value))
    r = torch.sigmoid(mixer.receptance(mix(mixer.time_mix_receptance)))
    t = x.shape[1]
    w, u = torch.exp(mixer.time_decay), mixer.time_first
    lag = (torch.arange(t)[:, None] - 1 - torch.arange(t)[None, :]).clamp(min=0).to(x.dtype)  # [T, T]: t-1-i
    weight = torch.exp(-lag[..., None] * w + k[:, None, :, :])  # [B, t, i, C]
    weight = weight * torch.ones(t, t, dtype=torch.bool).tril(-1)[..., None]
    own = torch.exp(u + k)
    wkv = ((weight * v[:, None]).sum(2) + own * v) / (weight.sum(2) + own)
    return mixer.output(r * wkv)


def _rwkv7_oracle(mixer, x, v_first):
    """BlinkDL's RNN form (rwkv_v7_demo_rnn.py), VK layout: S = S (diag(d) - kappa^T (a kappa)) + v^T k~, o = S r."""
    b, t, c = x.shape
    h, d = mixer.num_heads, mixer.head_dim
    delta = _shifted(x) - x
    xr, xw, xk, xv, xa, xg = (x + delta * getattr(mixer, name) for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
    r, k, v = mixer.r_proj(xr), mixer.k_proj(xk), mixer.v_proj(xv)
    if v_first is not None:
        v = v + (v_first - v) * torch.sigmoid(mixer.v_lora(xv))
    v_out = v
    decay = torch.exp(-torch.exp(torch.tensor(-0.5, dtype=x.dtype)) * torch.sigmoid(mixer.w_lora(xw)))
    a = torch.sigmoid(mixer.a_lora(xa))
    kappa = F.normalize((k * mixer.k_k).view(b, t, h, d), dim=-1)
    k = k * (1 + (a - 1) * mixer.k_a)
    state = x.new_zeros(b, h, d, d)
    outs = []
    split = lambda z: z.view(b, t, h, d)  # noqa: E731
    r, k, v, a, decay = split(r), split(k), split(v), split(a), split(decay)
    for i in range(t):
        removal = kappa[:, i, :, :, None] * (a[:, i] * kappa[:, i])[:, :, None, :]  # [B, H, D, D]
        state = state @ (torch.diag_embed(decay[:, i]) - removal) + v[:, i, :, :, None] * k[:, i, :, None, :]
        outs.append((state @ r[:, i, :, :, None])[..., 0])
    out = mixer.g_norm(torch.stack(outs, 1).reshape(-1, c)).view(b, t, c)
    bonus = ((r * k * mixer.r_k).sum(-1, keepdim=True) * v).reshape(b, t, c)
    return mixer.o_proj((out + bonus) * mixer.g_lora(xg)), v_out


def _assert_same_with_gradients(out, expected, x, params):
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-7)
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *params])
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), [x, *params])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("mode", ["chunk", "recurrent", "naive"])
def test_rwkv4_time_mix_equals_the_wkv_definition(mode):
    mixer = _model("rwkv4", rwkv4_mode=mode).model.layers[0].mixer
    x = torch.randn(2, 19, 64, dtype=torch.float64, requires_grad=True)
    _assert_same_with_gradients(mixer(x)[0], _wkv4_oracle(mixer, x), x, list(mixer.parameters()))


@pytest.mark.parametrize("mode", ["chunk", "recurrent", "naive"])
def test_rwkv7_time_mix_equals_the_rnn_form_through_the_value_residual(mode):
    """Layer 1 reads layer 0's v (the value residual): both layers against the oracle chained."""
    model = _model("rwkv7", rwkv7_mode=mode)
    first, second = (layer.mixer for layer in model.model.layers)
    x = torch.randn(2, 19, 64, dtype=torch.float64, requires_grad=True)
    shared = {}
    out = second(first(x, shared_across_layers=shared)[0], shared_across_layers=shared)[0]
    expected_first, v_first = _rwkv7_oracle(first, x, None)
    expected, _ = _rwkv7_oracle(second, expected_first, v_first)
    _assert_same_with_gradients(out, expected, x, [*first.parameters(), *second.parameters()])


def test_first_rwkv7_layer_has_no_value_residual_map():
    first, second = (layer.mixer for layer in tiny_model("rwkv7").model.layers)
    assert not hasattr(first, "v_lora") and hasattr(second, "v_lora")
    assert type(tiny_model("rwkv7").model.layers[0].mlp).__name__ == "LlmArchChannelMix7"
    assert type(tiny_model("rwkv4").model.layers[0].mlp).__name__ == "LlmArchChannelMix"


@pytest.mark.parametrize(
    "pattern,overrides,field",
    [
        ("(rwkv7/rwkv_cmix)x2", dict(rwkv7_head_dim=24), "rwkv7_head_dim"),
        ("(rwkv7/rwkv_cmix)x2", dict(rwkv7_mode="fast"), "rwkv7_mode"),
        ("(rwkv4/rwkv_cmix)x2", dict(rwkv4_mode="fast"), "rwkv4_mode"),
        ("attn/rwkv_cmix rwkv4/rwkv_cmix", {}, r"ffn_types\[0\]"),
        ("(rwkv7/rwkv_cmix)x2", dict(rwkv7_gate_low_rank=0), "rwkv7_gate_low_rank"),
    ],
)
def test_bad_settings_name_their_field(pattern, overrides, field):
    with pytest.raises(ValueError, match=field):
        LlmArchHybridConfig(vocab_size=50, hidden_size=64, num_attention_heads=4, layer_pattern=pattern, **overrides)
