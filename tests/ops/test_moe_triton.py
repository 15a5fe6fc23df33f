"""The Triton MoE experts kernel on CPU under TRITON_INTERPRET=1 (fp32, one fp16 case), tiny shapes, vs experts_naive.

The kernels are jitted at launch (hf_llmarch/ops/moe/triton.py), so setting the env var per test with
monkeypatch is enough and does not leak into the rest of the suite."""

import functools
import logging
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import hf_llmarch.ops.moe as moe_ops
from hf_llmarch.ops.moe import experts_naive, moe_experts
from hf_llmarch.ops.moe import triton as triton_mod

from test_moe import fwd_bwd, make_case

pytest.importorskip("triton")
# The interpreter needs numpy; without it every kernel launch fails.
pytest.importorskip("numpy")

GRAD_NAMES = ["y", "dx", "dgate_up", "ddown", "dweight"]


@pytest.fixture
def interpret(monkeypatch):
    """Kernels run under the Triton interpreter, with large blocks (its cost grows with the program count)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_mod, "BLOCK_M", 32)
    monkeypatch.setattr(triton_mod, "BLOCK_N", 32)
    monkeypatch.setattr(triton_mod, "BLOCK_K", 32)


@pytest.fixture
def launches(monkeypatch) -> list:
    """Records each kernel launch's kind and the class triton.jit gave the kernel."""
    seen = []
    jit = triton_mod._jit

    def spy(kernel, interpret):
        fn = jit(kernel, interpret)
        seen.append((kernel.__name__, type(fn).__name__))
        return fn

    monkeypatch.setattr(triton_mod, "_jit", spy)
    return seen


def assert_matches_naive(case, tol=1e-4):
    ref, got = fwd_bwd(experts_naive, case), fwd_bwd(triton_mod.experts_triton, case)
    for name, r, g in zip(GRAD_NAMES, ref, got):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol, msg=name)
    return got


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_naive_under_interpreter(interpret, launches, k):
    """N, H, I = 13, 20, 12 are not block multiples; make_case leaves expert e-1 without tokens."""
    case = make_case(n=13, h=20, i=12, e=5, k=k, dtype=torch.float32)
    assert torch.bincount(case[1].reshape(-1), minlength=5)[-1] == 0
    got = assert_matches_naive(case)
    # Forward: 2 grouped GEMMs; backward: 2 more plus 2 weight-gradient launches, all interpreted.
    assert [name for name, _ in launches] == ["_gg_kernel"] * 2 + ["_dw_kernel", "_gg_kernel"] * 2
    assert {cls for _, cls in launches} == {"InterpretedFunction"}
    assert torch.equal(got[2][-1], torch.zeros_like(got[2][-1]))  # the empty expert gets a zero gradient


def test_small_blocks_many_tiles(interpret, monkeypatch):
    """16-wide blocks: several row blocks per expert, several K steps and output tiles per GEMM."""
    for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        monkeypatch.setattr(triton_mod, name, 16)
    assert_matches_naive(make_case(n=29, h=40, i=20, e=4, k=2, dtype=torch.float32))


def test_fp16_matches_naive_fp16(interpret):
    case = make_case(n=13, h=20, i=12, e=5, k=2, dtype=torch.float32)
    case = [t.detach().half().requires_grad_() if t.is_floating_point() else t for t in case]
    ref, got = fwd_bwd(experts_naive, case), fwd_bwd(triton_mod.experts_triton, case)
    for name, r, g in zip(GRAD_NAMES, ref, got):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=5e-2, msg=name)


def test_deterministic(interpret):
    case = make_case(n=13, h=20, i=12, e=5, k=2, dtype=torch.float32)
    first, second = fwd_bwd(triton_mod.experts_triton, case), fwd_bwd(triton_mod.experts_triton, case)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_opcheck(interpret):
    """Schema, fake (meta) kernel and autograd registration of the custom op, as torch.compile relies on them."""
    x, topk_idx, topk_weight, gate_up, down = make_case(n=7, h=20, i=12, e=3, k=2, dtype=torch.float32)
    results = torch.library.opcheck(torch.ops.hf_llmarch.moe_experts_triton, (x, topk_idx, topk_weight, gate_up, down))
    assert results and set(results.values()) == {"SUCCESS"}, results


def test_compile_fullgraph(interpret, launches):
    """torch.compile (inductor) traces the dispatcher and the custom op (its fake kernel) without a graph break
    and runs the op's autograd; the kernels still run under the interpreter."""
    case = make_case(n=13, h=20, i=12, e=5, k=2, dtype=torch.float32)
    compiled = torch.compile(functools.partial(moe_experts, impl="triton"), fullgraph=True, dynamic=False)
    for name, r, g in zip(GRAD_NAMES, fwd_bwd(experts_naive, case), fwd_bwd(compiled, case)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4, msg=name)
    assert len(launches) == 6 and {cls for _, cls in launches} == {"InterpretedFunction"}


def test_dispatch_forced_and_logged(interpret, monkeypatch, caplog):
    monkeypatch.setattr(moe_ops, "_logged", set())
    monkeypatch.delenv("LLMARCH_MOE_IMPL", raising=False)
    args = [t.detach() for t in make_case(n=9, h=20, i=12, e=3, k=2, dtype=torch.float32)] + [F.silu]
    with caplog.at_level(logging.INFO, logger="hf_llmarch"):
        y = moe_experts(*args, impl="triton")
        moe_experts(*args)  # "auto" on CPU stays grouped even with the interpreter on
        monkeypatch.setenv("LLMARCH_MOE_IMPL", "triton")
        y_env = moe_experts(*args)
    messages = [r.getMessage() for r in caplog.records if "MoE experts path" in r.getMessage()]
    assert messages[0].endswith("triton (interpreter, cpu, torch.float32)")
    assert "grouped" in messages[1] and len(messages) == 2
    torch.testing.assert_close(y, experts_naive(*args), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y_env, y)


def test_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = [t.detach() for t in make_case(n=4, h=8, i=4, e=3, k=1, dtype=torch.float32)] + [F.silu]
    with pytest.raises(ValueError, match="'triton'.*CUDA tensor.*TRITON_INTERPRET=1"):
        moe_experts(*args, impl="triton")


def test_only_silu(interpret):
    args = [t.detach() for t in make_case(n=4, h=8, i=4, e=3, k=1, dtype=torch.float32)] + [F.gelu]
    with pytest.raises(ValueError, match="only the SiLU activation.*gelu"):
        moe_experts(*args, impl="triton")


def test_bad_impl_lists_triton():
    with pytest.raises(ValueError, match="'fast'.*auto, naive, grouped, triton"):
        moe_ops.validate_moe_impl("fast")


def test_without_triton_package():
    """`import hf_llmarch` works without triton; the op then says why it cannot run."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, torch.nn.functional as F, hf_llmarch\n"
        "from hf_llmarch.ops.moe import moe_experts\n"
        "x, idx, w = torch.zeros(2, 4), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1)\n"
        "try:\n"
        "    moe_experts(x, idx, w, torch.zeros(1, 4, 4), torch.zeros(1, 4, 2), F.silu, impl='triton')\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "the triton package is not installed" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_cuda_matches_naive(monkeypatch, dtype, tol):
    """The compiled kernels with their default blocks; fp32 without TF32 so the oracle is comparable."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    case = make_case(n=300, h=96, i=80, e=6, k=2, dtype=dtype)
    case = [t.detach().cuda().requires_grad_(t.requires_grad) for t in case]
    ref, got = fwd_bwd(experts_naive, case), fwd_bwd(triton_mod.experts_triton, case)
    for name, r, g in zip(GRAD_NAMES, ref, got):
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_picks_triton_when_grouped_mm_cannot(monkeypatch, caplog):
    """bf16 with H = 20 breaks grouped_mm's 16-byte row alignment, so "auto" takes the Triton kernel."""
    monkeypatch.setattr(moe_ops, "_logged", set())
    monkeypatch.delenv("LLMARCH_MOE_IMPL", raising=False)
    case = make_case(n=40, h=20, i=12, e=4, k=2, dtype=torch.bfloat16)
    args = [t.detach().cuda() for t in case] + [F.silu]
    with caplog.at_level(logging.INFO, logger="hf_llmarch"):
        y = moe_experts(*args)
    assert any("triton (cuda, torch.bfloat16)" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(y.float(), experts_naive(*args).float(), rtol=5e-2, atol=5e-2)
