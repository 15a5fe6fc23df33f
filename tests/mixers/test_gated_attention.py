"""Gated attention (`gated_attn`, Qwen3-Next): the output is attention * sigmoid(gate) per channel, the
gate projected beside each head's query; partial RoPE rotates only the first channels of a head;
zero-centred norms start at 0 and scale by 1 + weight. (Parity with Qwen3NextForCausalLM is in
tests/convert.)"""

import pytest
import torch
from conftest import tiny_model

from hf_llmarch.models.hybrid import LlmArchHybridConfig
from hf_llmarch.modules.rotary import apply_rotary


def _attention_layer(model):
    return next(layer.mixer for layer in model.model.layers if type(layer.mixer).__name__ == "LlmArchGatedAttention")


def test_output_is_plain_attention_times_the_sigmoid_gate():
    model = tiny_model("qwen3next").double()
    mixer = _attention_layer(model)
    x = torch.randn(1, 6, 64, dtype=torch.float64)
    rotary = model.model.rotary_emb(x, torch.arange(6)[None])
    gated, _ = mixer(x, position_embeddings=rotary)
    # The same layer without its gate: o_proj's input is attention * sigmoid(gate), so undo it.
    heads = mixer.q_proj(x).view(1, 6, -1, 2 * mixer.head_dim)
    gate = torch.sigmoid(heads[..., mixer.head_dim :].reshape(1, 6, -1))
    mixer.output_gate = False
    with torch.no_grad():
        query_rows = mixer.q_proj.weight.view(-1, 2, mixer.head_dim, 64)[:, 0].reshape(-1, 64).clone()
    mixer.q_proj = torch.nn.Linear(64, query_rows.shape[0], bias=False, dtype=torch.float64)
    mixer.q_proj.weight.data.copy_(query_rows)
    o_proj = mixer.o_proj
    mixer.o_proj = torch.nn.Identity()
    plain, _ = mixer(x, position_embeddings=rotary)
    torch.testing.assert_close(gated, o_proj(plain * gate))


def test_partial_rope_rotates_only_the_leading_channels():
    q, k = torch.randn(2, 1, 3, 16, dtype=torch.float64), torch.randn(2, 1, 3, 16, dtype=torch.float64)
    angle = torch.rand(1, 3, 2, dtype=torch.float64)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)  # a rotary of width 4
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    torch.testing.assert_close(q_rot[..., 4:], q[..., 4:])
    torch.testing.assert_close(k_rot[..., 4:], k[..., 4:])
    full_q, _ = apply_rotary(q[..., :4], k[..., :4], cos, sin)
    torch.testing.assert_close(q_rot[..., :4], full_q)
    assert tiny_model("qwen3next").model.rotary_emb.inv_freq.shape == (4,)  # head_dim 32 * 0.25 / 2


def test_zero_centred_norms_start_at_zero_and_scale_by_one_plus_weight():
    model = tiny_model("qwen3next")
    norms = [model.model.norm, model.model.layers[0].input_layernorm, _attention_layer(model).q_norm]
    assert all(norm.unit_offset and not norm.weight.any() for norm in norms)
    gdn_norm = model.model.layers[0].mixer.o_norm  # Qwen3-Next's gated norm is not zero-centred
    assert torch.equal(gdn_norm.weight, torch.ones_like(gdn_norm.weight))
    x = torch.randn(3, 64)
    with torch.no_grad():
        model.model.norm.weight.fill_(0.5)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.config.norm_eps) * 1.5
    torch.testing.assert_close(model.model.norm(x), expected)


@pytest.mark.parametrize("factor", [0.0, 1.5, 0.19])  # 0.19 of head_dim 16 rotates 3 channels: odd
def test_a_partial_rotary_factor_out_of_range_or_odd_names_the_field(factor):
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        LlmArchHybridConfig(
            vocab_size=50, hidden_size=64, num_attention_heads=4, layer_pattern="gated_attn/mlp",
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": factor},
        )
