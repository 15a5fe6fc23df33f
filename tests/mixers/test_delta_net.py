"""DeltaNet and Gated DeltaNet mixers: every op path gives the same outputs and parameter gradients
at an odd length; grouped value heads equal explicitly repeated q/k heads; the cache holds a
constant-size state; right pads neither write nor decay; bad settings name their field."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

from hf_llmarch.mixers.delta_net import l2_normalise
from hf_llmarch.models.hybrid import LlmArchHybridConfig


def _model(family="qwen3next", **overrides):
    return tiny_model(family, initializer_range=0.2, **overrides).double()


def _vk_oracle(mixer, x):
    """The paper's VK-layout recurrence S_t = S_{t-1} alpha (I - beta k k^T) + beta v k^T, o = S q,
    written from the mixer's projections with q/k repeated per value head by hand."""
    b, t, _ = x.shape
    qkv = torch.nn.functional.silu(mixer.conv1d(torch.cat([mixer.q_proj(x), mixer.k_proj(x), mixer.v_proj(x)], -1).transpose(1, 2))[..., :t])
    q, k, v = qkv.transpose(1, 2).split([mixer.key_dim, mixer.key_dim, mixer.value_dim], -1)
    ratio = mixer.num_value_heads // mixer.num_heads
    q, k = (l2_normalise(z.view(b, t, mixer.num_heads, -1)).repeat_interleave(ratio, 2) for z in (q, k))
    v = v.view(b, t, mixer.num_value_heads, -1)
    beta = torch.sigmoid(mixer.b_proj(x))
    alpha = torch.exp(mixer._log_decay(x)) if mixer.gated else torch.ones_like(beta)
    state = x.new_zeros(b, mixer.num_value_heads, mixer.value_head_dim, mixer.head_dim)
    eye = torch.eye(mixer.head_dim, dtype=x.dtype)
    outs = []
    for i in range(t):
        kk = k[:, i, :, :, None] * k[:, i, :, None, :]  # [B, H, Dk, Dk]
        transition = alpha[:, i, :, None, None] * (eye - beta[:, i, :, None, None] * kk)
        state = state @ transition + beta[:, i, :, None, None] * v[:, i, :, :, None] * k[:, i, :, None, :]
        outs.append(state @ (q[:, i, :, :, None] * mixer.head_dim**-0.5))
    out = torch.cat(outs, -1).permute(0, 3, 1, 2)  # [B, T, H, Dv]
    gate = mixer.g_proj(x).view_as(out) if mixer.output_gate else None
    out = mixer.o_norm(out, gate) if mixer.output_gate else mixer.o_norm(out)
    return mixer.o_proj(out.reshape(b, t, -1))


@pytest.mark.parametrize("family,layer", [("qwen3next", 0), ("deltanet", 0)])
@pytest.mark.parametrize("mode", ["chunk", "recurrent", "naive"])
def test_every_path_equals_the_paper_recurrence_with_gradients(family, layer, mode):
    """T = 21 with chunks of 8: a partial last chunk; the oracle is the VK-layout paper form."""
    mixer = _model(family, delta_mode=mode).model.layers[layer].mixer
    x = torch.randn(2, 21, 64, dtype=torch.float64, requires_grad=True)
    out, _ = mixer(x)
    expected = _vk_oracle(mixer, x)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)
    params = [p for p in mixer.parameters()]
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *params])
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), [x, *params])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)


def test_qwen3next_layer_has_grouped_value_heads_and_a_gate():
    mixer = _model().model.layers[0].mixer
    assert (mixer.num_heads, mixer.num_value_heads, mixer.gated, mixer.output_gate) == (2, 4, True, True)
    plain = _model("deltanet").model.layers[0].mixer
    assert not plain.gated and not plain.output_gate and not hasattr(plain, "g_proj") and not hasattr(plain, "A_log")


def test_state_has_constant_size_in_the_cache():
    model = _model()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 250, (2, 30)), past_key_values=cache, use_cache=True)
        shapes = (tuple(cache.layers[0].recurrent_states[0].shape), tuple(cache.layers[0].conv_states[0].shape))
        model(torch.randint(3, 250, (2, 7)), past_key_values=cache, use_cache=True)
    assert shapes == (tuple(cache.layers[0].recurrent_states[0].shape), tuple(cache.layers[0].conv_states[0].shape))
    assert shapes == ((2, 4, 32, 32), (2, 2 * 64 + 128, 3))  # [B, Hv, Dk, Dv]; [B, 2 Hk Dk + Hv Dv, K-1]


def test_right_padded_prefill_neither_writes_nor_decays_the_state():
    """Qwen3-Next's own layer decays the state at pads (g != 0 there); ours leaves it exact, and the
    continuation after it equals the unpadded row's."""
    model = _model(layer_pattern="(gated_deltanet/mlp)x2")
    ids, nxt = torch.randint(3, 250, (1, 9)), torch.randint(3, 250, (1, 3))
    padded = torch.cat([ids, torch.full((1, 4), 257)], 1)
    results = []
    for inputs, mask in ((ids, None), (padded, torch.tensor([[1] * 9 + [0] * 4]))):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(inputs, attention_mask=mask, past_key_values=cache, use_cache=True)
            states = [layer.recurrent_states[0].clone() for layer in cache.layers]
            results.append((states, model(nxt, past_key_values=cache, use_cache=True).logits))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(delta_num_heads=2, delta_num_value_heads=3), "delta_num_value_heads"),
        (dict(delta_conv_size=1), "delta_conv_size"),
        (dict(delta_mode="fast"), "delta_mode"),
        (dict(delta_num_heads=3, delta_head_dim=None), "delta_num_heads"),
        (dict(delta_chunk_size=0), "delta_chunk_size"),
    ],
)
def test_bad_settings_name_their_field(overrides, field):
    fields = dict(vocab_size=50, hidden_size=64, num_attention_heads=4, layer_pattern="gated_deltanet/mlp") | overrides
    with pytest.raises(ValueError, match=field):
        LlmArchHybridConfig(**fields)


def test_gated_decay_starts_slow_enough_to_remember():
    """dt = softplus(dt_bias) log-uniform in [1e-3, 0.1] (fla's init): Qwen3-Next's dt_bias = 1 makes
    every head forget within a few tokens at the start, and such a model never learned MQAR here."""
    mixer = tiny_model("qwen3next").model.layers[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert bool(((dt >= 1e-4) & (dt <= 0.1 + 1e-6)).all())
