"""mamba_ssm's fused selective scan against the pure-torch chunk form. Skipped without CUDA or mamba_ssm."""

import pytest
import torch

from hf_llmarch.ops.selective_scan import resolve_selective_scan_mode, selective_scan, selective_scan_naive

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
Bsz, T, D, N = 2, 300, 64, 16


def _inputs(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(Bsz, T, D, device="cuda", generator=g).to(dtype)
    dt = torch.nn.functional.softplus(torch.randn(Bsz, T, D, device="cuda", generator=g) - 2).to(dtype)
    A = -torch.arange(1, N + 1, device="cuda", dtype=torch.float32).expand(D, N).contiguous()
    Bm, Cm = (torch.randn(Bsz, T, N, device="cuda", generator=g).to(dtype) for _ in range(2))
    Dv = torch.randn(D, device="cuda", generator=g)
    return x, dt, A, Bm, Cm, Dv


def _run(mode, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y, state = selective_scan(*leaves, mode=mode)
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = (y.float() * torch.randn(y.shape, device="cuda", generator=g)).sum() + state.sum()
    return y, state, torch.autograd.grad(loss, leaves)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_cuda_kernel_matches_chunk(dtype, tol):
    pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    inputs = _inputs(dtype)
    assert resolve_selective_scan_mode("auto", inputs[0]) == "cuda"
    y, state, grads = _run("cuda", inputs)
    ref_y, ref_state, ref_grads = _run("chunk", inputs)
    assert y.dtype == dtype and state.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref_y.float(), rtol=tol, atol=tol * ref_y.float().abs().max().item())
    torch.testing.assert_close(state, ref_state, rtol=tol, atol=tol * ref_state.abs().max().item())
    for i, (gr, ref_gr) in enumerate(zip(grads, ref_grads)):
        scale = ref_gr.float().abs().max().item()
        torch.testing.assert_close(gr.float(), ref_gr.float(), rtol=tol, atol=tol * scale, msg=f"grad of input {i}")


@cuda
@pytest.mark.gpu
def test_auto_falls_back_to_chunk_with_state_or_reset():
    x, *_ = _inputs(torch.float32)
    state = torch.zeros(Bsz, D, N, device="cuda")
    reset = torch.zeros(Bsz, T, dtype=torch.bool, device="cuda")
    assert resolve_selective_scan_mode("auto", x, state, None) == "chunk"
    assert resolve_selective_scan_mode("auto", x, None, reset) == "chunk"


@cuda
@pytest.mark.gpu
def test_chunk_matches_naive_on_cuda():
    inputs = [t.double() for t in _inputs(torch.float32)]
    reset = torch.zeros(Bsz, T, dtype=torch.bool, device="cuda")
    reset[:, [5, 64, 200]] = True
    y, state = selective_scan(*inputs, reset=reset, mode="chunk")
    ref_y, ref_state = selective_scan_naive(*inputs, reset=reset)
    torch.testing.assert_close(y, ref_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)
