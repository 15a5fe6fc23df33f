"""Dense -> MoE upcycling: the upcycled model computes the dense function at step 0 (in fp64, to
the fp32 router's rounding), copies and fine-grained splits alike, from our checkpoints and native
Llama ones."""

import pytest
import torch
from conftest import tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_llmarch.cli import main as llmarch
from hf_llmarch.convert.upcycle import upcycle
from hf_llmarch.models.moe import LlmArchMoeForCausalLM


def _ids(vocab=250):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("experts,top_k,granularity", [(4, 2, 1), (8, 1, 1), (4, 3, 1), (4, 4, 2), (8, 8, 4)])
def test_upcycled_model_reproduces_the_dense_logits(experts, top_k, granularity):
    dense = tiny_model("llama").double()
    moe = upcycle(dense, experts, top_k, granularity)
    assert isinstance(moe, LlmArchMoeForCausalLM) and moe.config.ffn_types == ["moe", "moe"]
    assert moe.config.moe_intermediate_size * granularity == dense.config.intermediate_size
    # The router runs in fp32 (Switch's selective precision): renormalised top-k weights sum to 1 to
    # fp32 rounding, so k > 1 copies agree to ~1e-7; one weight of 1, or 1/E, is exact.
    exact = top_k == 1 or granularity > 1
    with torch.no_grad():
        torch.testing.assert_close(moe(_ids()).logits, dense(_ids()).logits, atol=1e-12 if exact else 1e-6, rtol=0)
    if granularity == 1:  # a random router, so tokens spread over the experts from the start
        assert moe.model.layers[0].mlp.gate.weight.abs().sum() > 0


def test_fine_grained_slices_add_up_to_the_mlp():
    dense = tiny_model("llama").double()
    moe = upcycle(dense, 4, 4, granularity=4)
    mlp, experts = dense.model.layers[0].mlp, moe.model.layers[0].mlp.experts
    x = torch.randn(5, dense.config.hidden_size, dtype=torch.float64)
    slices = []
    for e in range(4):  # each expert's SwiGLU on its slice, without the x4 scale of its down projection
        gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        slices.append(torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, experts.down_proj[e]) / 4)
    torch.testing.assert_close(sum(slices), mlp(x), atol=1e-12, rtol=0)


def test_native_llama_checkpoint_upcycles_through_the_cli(tmp_path):
    torch.manual_seed(0)
    native = LlamaForCausalLM(
        LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    ).eval()
    native.save_pretrained(tmp_path / "native")
    assert llmarch(["upcycle", str(tmp_path / "native"), "--experts", "4", "--top-k", "2", "--out", str(tmp_path / "moe")]) == 0
    from transformers import AutoModelForCausalLM

    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()
    assert isinstance(moe, LlmArchMoeForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(moe(_ids(128)).logits, native(_ids(128)).logits, atol=1e-5, rtol=0)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(moe.generate(_ids(128), **greedy), native.generate(_ids(128), **greedy))


@pytest.mark.parametrize(
    "kwargs,field",
    [(dict(num_experts=4, top_k=5), "top_k"), (dict(num_experts=4, top_k=2, granularity=3), "granularity"),
     (dict(num_experts=4, top_k=2, granularity=2), "granularity=2 reproduces")],
)
def test_bad_upcycling_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        upcycle(tiny_model("llama"), **kwargs)


def test_plain_gelu_mlp_is_refused():
    with pytest.raises(ValueError, match="mlp_gated=False"):
        upcycle(tiny_model("gpt2"), num_experts=4, top_k=2)
