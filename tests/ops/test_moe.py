import logging

import pytest
import torch
import torch.nn.functional as F

import hf_llmarch.ops.moe as moe_ops
from hf_llmarch.ops.moe import experts_grouped, experts_naive, grouped_mm_usable, moe_experts
from hf_llmarch.ops.moe import grouped as grouped_mod


def make_case(n, h, i, e, k, dtype, seed=0, gated=True):
    """Random inputs; expert e-1 never receives a token, and every token has k distinct experts.
    `gated=False`: plain experts (Switch's), gate_up [E, I, H]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=dtype, requires_grad=True)
    topk_idx = torch.rand(n, e - 1, generator=g).argsort(-1)[:, :k]  # [N, k], never e-1
    topk_weight = torch.rand(n, k, generator=g, dtype=dtype).requires_grad_()
    gate_up = (0.3 * torch.randn(e, (2 if gated else 1) * i, h, generator=g, dtype=dtype)).requires_grad_()
    down = (0.3 * torch.randn(e, h, i, generator=g, dtype=dtype)).requires_grad_()
    return x, topk_idx, topk_weight, gate_up, down


def fwd_bwd(fn, case, seed=1):
    x, topk_idx, topk_weight, gate_up, down = case
    for t in (x, topk_weight, gate_up, down):
        t.grad = None
    y = fn(x, topk_idx, topk_weight, gate_up, down, F.silu)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype))
    return [y.detach()] + [t.grad.clone() for t in (x, gate_up, down, topk_weight)]


def spy_group_counts(monkeypatch) -> list:
    """Records the per-expert row counts [E] that experts_grouped hands each of its GEMMs."""
    counts = []
    for name in ("_gemm_grouped_mm", "_gemm_slices"):
        gemm = getattr(grouped_mod, name)
        monkeypatch.setattr(grouped_mod, name, lambda a, w, c, gemm=gemm: counts.append(c.clone()) or gemm(a, w, c))
    return counts


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("use_grouped_mm", [False, True])
def test_grouped_matches_naive(monkeypatch, dtype, tol, k, use_grouped_mm):
    monkeypatch.setattr(grouped_mod, "USE_GROUPED_MM_ON_CPU", use_grouped_mm)
    case = make_case(n=37, h=16, i=8, e=5, k=k, dtype=dtype)
    # grouped_mm has no float64 kernel, so float64 always takes the slice loop.
    assert grouped_mm_usable(case[0], case[3], case[4]) == (use_grouped_mm and dtype == torch.float32)
    counts = spy_group_counts(monkeypatch)
    ref, got = fwd_bwd(experts_naive, case), fwd_bwd(experts_grouped, case)
    for name, r, g in zip(["y", "dx", "dgate_up", "ddown", "dweight"], ref, got):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol, msg=name)
    routed = torch.bincount(case[1].reshape(-1), minlength=5)  # [E] (token, slot) pairs per expert
    assert routed[-1] == 0 and len(counts) == 2  # one group split for gate_up, one for down
    assert all(torch.equal(c, routed) for c in counts)
    for dgate_up in (ref[2], got[2]):  # exactly the experts that got tokens get a gradient
        assert torch.equal(dgate_up.flatten(1).abs().sum(1) > 0, routed > 0)


def test_plain_experts_are_act_of_up_then_down_on_every_path():
    """Switch-style experts (no gate): the oracle equals a hand loop, and every fast path the oracle."""
    case = make_case(n=23, h=16, i=8, e=5, k=2, dtype=torch.float64, gated=False)
    x, topk_idx, topk_weight, up, down = case
    with torch.no_grad():
        by_hand = torch.stack([
            sum(topk_weight[n, j] * down[e] @ F.relu(up[e] @ x[n]) for j, e in enumerate(topk_idx[n].tolist()))
            for n in range(x.shape[0])
        ])
        torch.testing.assert_close(experts_naive(x, topk_idx, topk_weight, up, down, F.relu), by_hand)
    ref = fwd_bwd(experts_naive, case)
    few = make_case(n=2, h=16, i=8, e=5, k=2, dtype=torch.float64, gated=False)
    for fn, inputs in ((experts_grouped, case), (grouped_mod._experts_by_pair, few), (grouped_mod._experts_gathered, few)):
        expected = ref if inputs is case else fwd_bwd(experts_naive, few)
        for name, r, g in zip(["y", "dx", "dup", "ddown", "dweight"], expected, fwd_bwd(fn, inputs)):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=f"{fn.__name__} {name}")


@pytest.mark.parametrize("n,k", [(1, 1), (1, 2), (3, 2), (5, 3)])
@pytest.mark.parametrize("path", ["_experts_by_pair", "_experts_gathered"])
def test_few_token_paths_match_naive(n, k, path):
    """Decode-sized inputs: the per-pair path (eager) and the gathered path (under torch.compile)
    give the oracle's outputs and gradients."""
    case = make_case(n=n, h=16, i=8, e=5, k=k, dtype=torch.float64)
    assert n * k <= grouped_mod.FEW_PAIRS
    ref, got = fwd_bwd(experts_naive, case), fwd_bwd(getattr(grouped_mod, path), case)
    for name, r, g in zip(["y", "dx", "dgate_up", "ddown", "dweight"], ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)


def test_decode_sized_experts_compile_fullgraph():
    """No graph break at decode sizes in fp32 (grouped_mm's compile kernel is bf16-only): the
    routing is never read on the host, so compiled decode can be captured whole."""
    x, topk_idx, topk_weight, gate_up, down = (t.detach() for t in make_case(n=1, h=16, i=8, e=5, k=2, dtype=torch.float32))
    compiled = torch.compile(experts_grouped, fullgraph=True, dynamic=False)
    torch.testing.assert_close(
        compiled(x, topk_idx, topk_weight, gate_up, down, F.silu),
        experts_naive(x, topk_idx, topk_weight, gate_up, down, F.silu), rtol=1e-5, atol=1e-5,
    )


def test_unaligned_shapes_fall_back_to_slices():
    case = make_case(n=11, h=6, i=5, e=4, k=2, dtype=torch.float32)
    assert not grouped_mm_usable(case[0], case[3], case[4])
    for r, g in zip(fwd_bwd(experts_naive, case), fwd_bwd(experts_grouped, case)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_grouped_mm_backward_with_expanded_grad():
    # y.sum().backward() starts from a stride-0 grad, which grouped_mm's own backward would reject.
    x, topk_idx, topk_weight, gate_up, down = make_case(n=9, h=16, i=8, e=4, k=2, dtype=torch.float32)
    assert grouped_mm_usable(x, gate_up, down)
    experts_grouped(x, topk_idx, topk_weight, gate_up, down, F.silu).sum().backward()
    expected = torch.autograd.grad(experts_naive(x, topk_idx, topk_weight, gate_up, down, F.silu).sum(), gate_up)[0]
    torch.testing.assert_close(gate_up.grad, expected)


def test_grouped_bf16_close_to_float32():
    case = make_case(n=24, h=16, i=16, e=4, k=2, dtype=torch.float32)
    x, idx, w, gu, d = (t.detach() for t in case)
    y32 = experts_naive(x, idx, w, gu, d, F.silu)
    y16 = experts_grouped(x.bfloat16(), idx, w.bfloat16(), gu.bfloat16(), d.bfloat16(), F.silu)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=5e-2, atol=5e-2)


def test_moe_experts_dispatch_and_env(monkeypatch):
    calls = []
    monkeypatch.setattr(moe_ops, "experts_naive", lambda *a: calls.append("naive") or experts_naive(*a))
    monkeypatch.setattr(moe_ops, "experts_grouped", lambda *a: calls.append("grouped") or experts_grouped(*a))
    args = [t.detach() for t in make_case(n=10, h=8, i=4, e=3, k=2, dtype=torch.float64)] + [F.gelu]
    monkeypatch.delenv("LLMARCH_MOE_IMPL", raising=False)
    y_auto = moe_experts(*args)
    monkeypatch.setenv("LLMARCH_MOE_IMPL", "naive")
    y_env = moe_experts(*args)
    y_explicit = moe_experts(*args, impl="grouped")  # an explicit impl ignores the env var
    assert calls == ["grouped", "naive", "grouped"]
    torch.testing.assert_close(y_auto, y_env)
    torch.testing.assert_close(y_explicit, y_env)


def test_bad_impl_raises(monkeypatch):
    args = [t.detach() for t in make_case(n=4, h=8, i=4, e=3, k=1, dtype=torch.float32)] + [F.silu]
    with pytest.raises(ValueError, match="'fast'.*auto, naive, grouped, triton"):
        moe_experts(*args, impl="fast")
    monkeypatch.setenv("LLMARCH_MOE_IMPL", "cutlass")
    with pytest.raises(ValueError, match="LLMARCH_MOE_IMPL.*cutlass"):
        moe_experts(*args)


def test_logs_path_once(monkeypatch, caplog):
    monkeypatch.setattr(moe_ops, "_logged", set())
    args = [t.detach() for t in make_case(n=4, h=8, i=4, e=3, k=1, dtype=torch.float64)] + [F.silu]
    with caplog.at_level(logging.INFO, logger="hf_llmarch"):
        moe_experts(*args, impl="naive")
        moe_experts(*args, impl="naive")
        moe_experts(*args, impl="grouped")
    messages = [r.getMessage() for r in caplog.records if "MoE experts path" in r.getMessage()]
    assert len(messages) == 2 and "naive" in messages[0] and "per-expert slices" in messages[1]
