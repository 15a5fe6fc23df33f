import math

import pytest
import torch
from conftest import moe_block_config
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func

from hf_llmarch.modules.moe import MoEFeedForward, router_losses


def make_block(seed=0, **overrides):
    torch.manual_seed(seed)
    block = MoEFeedForward(moe_block_config(**overrides))
    block.experts.reset_parameters(std=0.2)
    return block


def routed_counts(block, x, real=None) -> torch.Tensor:
    """int64 [E]: the top-k experts of each real token, recomputed from the gate weight by hand."""
    logits = x.reshape(-1, x.shape[-1]).float() @ block.gate.weight.float().T  # [N, E]
    idx = logits.topk(block.top_k, dim=-1).indices  # [N, k]; softmax keeps the order
    if real is not None:
        idx = idx[real.reshape(-1).bool()]
    return torch.bincount(idx.reshape(-1), minlength=block.num_experts)


def test_router_losses_hand_computed():
    # Rows chosen so softmax and logsumexp are exact: sums of exp are 3, 4, 5 and 7.
    logits = torch.log(torch.tensor([[1.0, 1, 1], [2, 1, 1], [1, 3, 1], [1, 1, 5]]))
    topk_idx = torch.tensor([[0], [0], [1], [2]])
    lb, z, tpe = router_losses(logits, topk_idx, num_experts=3)
    p = [(1 / 3 + 2 / 4 + 1 / 5 + 1 / 7) / 4, (1 / 3 + 1 / 4 + 3 / 5 + 1 / 7) / 4, (1 / 3 + 1 / 4 + 1 / 5 + 5 / 7) / 4]
    assert tpe.tolist() == [2, 1, 1] and tpe.dtype == torch.int64
    assert lb.item() == pytest.approx(3 * (2 / 4 * p[0] + 1 / 4 * p[1] + 1 / 4 * p[2]), rel=1e-6)
    assert z.item() == pytest.approx(sum(math.log(s) ** 2 for s in (3, 4, 5, 7)) / 4, rel=1e-6)

    # Masking the last token: 3 real tokens, expert 2 loses its only assignment.
    lb, z, tpe = router_losses(logits, topk_idx, 3, token_mask=torch.tensor([True, True, True, False]))
    p = [(1 / 3 + 2 / 4 + 1 / 5) / 3, (1 / 3 + 1 / 4 + 3 / 5) / 3, (1 / 3 + 1 / 4 + 1 / 5) / 3]
    assert tpe.tolist() == [2, 1, 0]
    assert lb.item() == pytest.approx(3 * (2 / 3 * p[0] + 1 / 3 * p[1]), rel=1e-6)
    assert z.item() == pytest.approx(sum(math.log(s) ** 2 for s in (3, 4, 5)) / 3, rel=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_load_balancing_matches_transformers(masked):
    torch.manual_seed(0)
    b, t, e, k = 3, 7, 6, 2
    logits = torch.randn(b * t, e) * 2
    topk_idx = logits.softmax(-1).topk(k, -1).indices
    attention_mask = torch.ones(b, t, dtype=torch.long)
    if masked:
        attention_mask[0, :3] = 0
        attention_mask[2, 5:] = 0
    expected = load_balancing_loss_func((logits,), e, k, attention_mask if masked else None)
    lb, _, tpe = router_losses(logits, topk_idx, e, attention_mask.reshape(-1).bool() if masked else None)
    torch.testing.assert_close(lb, expected.float(), rtol=1e-6, atol=1e-7)
    real_idx = topk_idx[attention_mask.reshape(-1).bool()] if masked else topk_idx  # [N_real, k]
    assert torch.equal(tpe, torch.bincount(real_idx.reshape(-1), minlength=e))


def test_router_losses_ignore_garbage_at_padding():
    torch.manual_seed(0)
    logits, mask = torch.randn(10, 5), torch.rand(10) > 0.4
    topk_idx = logits.topk(2, -1).indices
    garbage_logits, garbage_idx = logits.clone(), topk_idx.clone()
    garbage_logits[~mask] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, 3.0])
    garbage_idx[~mask] = 4
    ref = router_losses(logits[mask], topk_idx[mask], 5)
    for got in (router_losses(logits, topk_idx, 5, mask), router_losses(garbage_logits, garbage_idx, 5, mask)):
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("impl", ["naive", "grouped"])
def test_matches_mixtral_sparse_moe_block(impl):
    block = make_block(moe_impl=impl)
    hf_cfg = MixtralConfig(
        hidden_size=16, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, hidden_act="silu"
    )
    hf_block = MixtralSparseMoeBlock(hf_cfg).eval()
    with torch.no_grad():
        hf_block.gate.weight.copy_(block.gate.weight)
        hf_block.experts.gate_up_proj.copy_(block.experts.gate_up_proj)
        hf_block.experts.down_proj.copy_(block.experts.down_proj)
    x = torch.randn(2, 9, 16)
    out, aux = block(x)
    torch.testing.assert_close(out, hf_block(x), rtol=1e-5, atol=1e-5)
    assert aux.shape == () and aux.item() > 0


def test_padding_excluded_from_stats_and_losses():
    block = make_block()
    x = torch.randn(2, 6, 16)
    token_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
    out, aux = block(x, token_mask)
    tpe, lb, z = block.last_tokens_per_expert, block.last_load_balancing_loss, block.last_z_loss

    real_out, real_aux = block(x[token_mask.bool()][None])  # the same real tokens, no padding
    torch.testing.assert_close(tpe, block.last_tokens_per_expert)
    torch.testing.assert_close(lb, block.last_load_balancing_loss)
    torch.testing.assert_close(z, block.last_z_loss)
    torch.testing.assert_close(aux, real_aux)
    torch.testing.assert_close(out[token_mask.bool()], real_out[0])
    assert tpe.dtype == torch.int64 and torch.equal(tpe, routed_counts(block, x, token_mask))
    torch.testing.assert_close(aux, 0.01 * lb + 0.001 * z)

    block(x)  # without the mask, the padded tokens count
    assert torch.equal(block.last_tokens_per_expert, routed_counts(block, x))
    assert not block.last_load_balancing_loss.requires_grad


def test_gradients_reach_router_and_experts():
    block = make_block()
    out, aux = block(torch.randn(2, 5, 16))
    (out.square().mean() + aux).backward()
    for p in (block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_norm_topk_prob_off_keeps_raw_softmax_weights():
    block = make_block(norm_topk_prob=False)
    x = torch.randn(7, 16)
    idx, weight, _ = block.route(x)
    probs = torch.softmax(x @ block.gate.weight.T, -1)
    torch.testing.assert_close(weight, probs.gather(1, idx))
    assert (weight.sum(-1) < 1).all()
    _, weight, _ = make_block(norm_topk_prob=True).route(x)
    torch.testing.assert_close(weight.sum(-1), torch.ones(7))


def test_bf16_block_keeps_fp32_router():
    block = make_block().to(torch.bfloat16)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    weight = block.route(x).topk_weight
    assert block.router_logits(x).dtype == torch.float32 and weight.dtype == torch.bfloat16
    out, aux = block(torch.randn(1, 5, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and aux.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_impl_raises():
    with pytest.raises(ValueError, match="'fast'"):
        MoEFeedForward(moe_block_config(moe_impl="fast"))


def test_torch_compile_matches_eager():
    # aot_eager runs dynamo + AOT autograd (fake-tensor meta checks, graph breaks, attribute side effects)
    # without inductor's C++ codegen, which alone costs > 10 s on the CI CPU.
    torch._dynamo.reset()
    block = make_block(moe_impl="grouped")
    x, token_mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref_out, ref_aux = block(x, token_mask)
    ref_tpe = block.last_tokens_per_expert
    assert torch.equal(ref_tpe, routed_counts(block, x, token_mask))
    out, aux = torch.compile(block, backend="aot_eager")(x, token_mask)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux, ref_aux, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(block.last_tokens_per_expert, ref_tpe)


@pytest.mark.parametrize("impl", ["naive", "grouped"])
def test_matches_qwen2_moe_block_with_gated_shared_expert(impl):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    block = make_block(norm_topk_prob=False, shared_expert_intermediate_size=24, shared_expert_gate=True, moe_impl=impl)
    cfg = Qwen2MoeConfig(
        hidden_size=16, moe_intermediate_size=32, shared_expert_intermediate_size=24, num_experts=4,
        num_experts_per_tok=2, norm_topk_prob=False,
    )
    ref = Qwen2MoeSparseMoeBlock(cfg)
    ref.load_state_dict(block.state_dict(), strict=False)
    assert set(ref.state_dict()) == set(block.state_dict())  # every tensor, shared expert and its gate included
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x)[0], ref(x), atol=1e-6, rtol=1e-5)


def test_shared_expert_output_by_hand_and_for_dropped_tokens():
    """out = routed + sigmoid(w . x) * MLP(x); a token Switch drops gets the shared part alone."""
    block = make_block(
        router_type="switch", num_experts_per_tok=1, capacity_factor=0.25, shared_expert_intermediate_size=8,
        shared_expert_gate=True,
    )
    routeless = make_block(router_type="switch", num_experts_per_tok=1, capacity_factor=0.25)
    routeless.load_state_dict(block.state_dict(), strict=False)
    x = torch.randn(1, 8, 16)
    out, _ = block(x)
    mlp = block.shared_expert
    by_hand = torch.sigmoid(x @ block.shared_expert_gate.weight.T) * mlp.down_proj(
        torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    )
    routed, _ = routeless(x)
    torch.testing.assert_close(out, routed + by_hand)
    dropped = routed.abs().sum(-1) == 0  # [1, 8]: Switch's capacity drops these
    assert block.last_dropped_tokens > 0 and dropped.any()
    torch.testing.assert_close(out[dropped], by_hand[dropped])


def test_shared_expert_gate_without_shared_expert_is_refused():
    from hf_llmarch.models.moe import LlmArchMoeConfig

    with pytest.raises(ValueError, match="shared_expert_gate=True needs a shared expert"):
        LlmArchMoeConfig(shared_expert_gate=True)
    with pytest.raises(ValueError, match="shared_expert_intermediate_size=0"):
        LlmArchMoeConfig(shared_expert_intermediate_size=0)


def test_switch_capacity_compiles_into_one_graph():
    """Switch routing with drops compiles whole (fullgraph) and matches eager. The capacity stays on the
    device, so on a GPU no step waits for the real-token count to reach the host."""
    torch._dynamo.reset()
    block = make_block(router_type="switch", num_experts_per_tok=1, capacity_factor=0.5, moe_impl="grouped")
    x, token_mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref_out, ref_aux = block(x, token_mask)
    assert block.last_dropped_tokens > 0
    out, aux = torch.compile(block, backend="aot_eager", fullgraph=True)(x, token_mask)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux, ref_aux, rtol=1e-5, atol=1e-6)


def test_a_zero_coefficient_z_loss_is_not_computed():
    """Converted Mixtral / Qwen-MoE models carry router_z_loss_coef=0: no logsumexp is spent on it."""
    block = make_block(router_z_loss_coef=0.0).train()
    x = torch.randn(2, 5, 16)
    _, aux = block(x)
    assert set(block.last_losses) == {"load_balancing"} and block.last_z_loss is None
    torch.testing.assert_close(aux, 0.01 * block.last_load_balancing_loss)
