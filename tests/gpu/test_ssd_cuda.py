"""mamba_ssm's Triton SSD kernel (ssd_scan mode "cuda") against the CPU-tested chunk form.
Skipped without CUDA or without an importable mamba_ssm."""

import pytest
import torch

from hf_llmarch.ops.ssd import ssd_chunk, ssd_scan
from hf_llmarch.ops.ssd.cuda import load_kernel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(load_kernel() is None, reason="needs mamba_ssm's Triton SSD kernels"),
]

B, T, H, P, G, N = 2, 200, 8, 32, 2, 64  # T not a multiple of the chunk size


def _inputs(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, T, H, P, device="cuda", generator=g).to(dtype)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, device="cuda", generator=g) - 2)
    A = -torch.exp(torch.randn(H, device="cuda", generator=g))
    Bm, Cm = (torch.randn(B, T, G, N, device="cuda", generator=g).to(dtype) for _ in range(2))
    D = torch.randn(H, device="cuda", generator=g)
    s0 = torch.randn(B, H, P, N, device="cuda", generator=g)
    reset = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    reset[0, [30, 64, 150]] = True  # inside a chunk, on a chunk boundary
    reset[1, 0] = True  # drops the initial state
    return (x, dt, A, Bm, Cm, D, s0), reset


def _run(fn, inputs, reset):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y, state = fn(*leaves[:6], initial_state=leaves[6], reset=reset)
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = (y.float() * torch.randn(y.shape, device="cuda", generator=g)).sum()
    loss = loss + (state * torch.randn(state.shape, device="cuda", generator=g)).sum()
    return [y, state, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("with_reset", [False, True])
def test_kernel_matches_chunk(dtype, tol, with_reset):
    inputs, reset = _inputs(dtype)
    reset = reset if with_reset else None
    kernel = _run(lambda *a, **kw: ssd_scan(*a, mode="cuda", chunk_size=64, **kw), inputs, reset)
    ref = _run(lambda *a, **kw: ssd_chunk(*a, chunk_size=64, **kw), inputs, reset)
    assert kernel[0].dtype == dtype and kernel[1].dtype == torch.float32
    names = ("y", "final_state", "dx", "ddt", "dA", "dB", "dC", "dD", "dinitial_state")
    for name, k, r in zip(names, kernel, ref):
        rel = ((k.float() - r.float()).norm() / r.float().norm()).item()
        assert rel < tol, f"{name}: relative error {rel:.2e}"


def test_auto_picks_kernel_on_cuda(monkeypatch):
    from hf_llmarch.ops import ssd

    monkeypatch.delenv(ssd.MODE_ENV_VAR, raising=False)
    x = torch.zeros(1, 8, H, P, device="cuda")
    assert ssd.resolve_ssd_mode("auto", x) == "cuda"
    assert ssd.resolve_ssd_mode("auto", x.double()) == "chunk"  # the kernel has no fp64 path
