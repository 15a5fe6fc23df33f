"""The Triton MLA decode kernel on CPU under TRITON_INTERPRET=1 (fp32, one fp16 and one bf16 case), tiny shapes,
vs mla_latent_attention_naive.

The kernel is jitted at launch (hf_llmarch/ops/mla/triton.py), so setting the env var per test with
monkeypatch is enough and does not leak into the rest of the suite."""

import os
import subprocess
import sys

import pytest
import torch

import hf_llmarch.ops.mla as mla_ops
from hf_llmarch.ops.mla import mla_latent_attention, mla_latent_attention_naive
from hf_llmarch.ops.mla import triton as triton_mod

pytest.importorskip("triton")
# The interpreter needs numpy; without it every kernel launch fails.
pytest.importorskip("numpy")

SCALE = 0.3


@pytest.fixture
def interpret(monkeypatch):
    """The kernel runs under the Triton interpreter; 16-key blocks so Tk = 7, 33 end in partial blocks."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_mod, "BLOCK_T", 16)


def make_case(b=2, h=3, tk=33, r=32, dr=16, dtype=torch.float32, seed=0):
    """q_latent [B, H, R], q_rope [B, H, Dr] and non-contiguous cache views: latent is the first Tk rows of a
    [B, 1, Tk + 5, R] buffer (`[:, 0, :Tk]`), k_rope one of two interleaved [B, Tk, 2, Dr] halves."""
    gen = torch.Generator().manual_seed(seed)
    q_latent = torch.randn(b, h, r, generator=gen).to(dtype)
    q_rope = torch.randn(b, h, dr, generator=gen).to(dtype)
    latent = torch.randn(b, 1, tk + 5, r, generator=gen).to(dtype)[:, 0, :tk]  # [B, Tk, R]
    k_rope = torch.randn(b, tk, 2, dr, generator=gen).to(dtype)[:, :, 0]  # [B, Tk, Dr]
    return q_latent, q_rope, latent, k_rope


def make_key_valid(kind: str, b: int, tk: int):
    """None, left padding (row i has i * 3 leading pad keys) or an arbitrary pattern; every row keeps a valid key."""
    if kind == "none":
        return None
    if kind == "left_pad":
        return torch.arange(tk)[None, :] >= torch.tensor([min(i * 3, tk - 1) for i in range(b)])[:, None]
    valid = torch.rand(b, tk, generator=torch.Generator().manual_seed(1)) > 0.5
    valid[:, -1] = True
    return valid


def naive(q_latent, q_rope, latent, k_rope, key_valid):
    mask = None if key_valid is None else key_valid[:, None, None, :]
    return mla_latent_attention_naive(q_latent[:, :, None], q_rope[:, :, None], latent, k_rope, mask, SCALE)[:, :, 0]


@pytest.mark.parametrize("kind", ["none", "left_pad", "pattern"])
@pytest.mark.parametrize("heads", [3, 5])
@pytest.mark.parametrize("tk", [1, 7, 33])
def test_matches_naive(interpret, tk, heads, kind):
    case = make_case(b=3, h=heads, tk=tk)
    assert not case[2].is_contiguous() and not case[3].is_contiguous()
    key_valid = make_key_valid(kind, 3, tk)
    got = triton_mod.mla_decode_triton(*case, key_valid, SCALE)
    assert got.shape == (3, heads, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, naive(*case, key_valid), rtol=1e-5, atol=1e-5)


def test_several_head_blocks_and_odd_sizes(interpret):
    """20 heads over 16-head programs (the second one partial); R = 24 and Dr = 8 are padded to masked 32/16 tiles."""
    case = make_case(b=2, h=20, tk=40, r=24, dr=8)
    key_valid = make_key_valid("pattern", 2, 40)
    torch.testing.assert_close(triton_mod.mla_decode_triton(*case, key_valid, SCALE), naive(*case, key_valid),
                               rtol=1e-5, atol=1e-5)


def test_strided_query_and_mask(interpret):
    """Query and key_valid given as non-contiguous views too: every input is read through its strides."""
    q_latent, q_rope, latent, k_rope = make_case(b=2, h=4, tk=20)
    q_latent = q_latent.transpose(0, 1).contiguous().transpose(0, 1)  # [B, H, R] with the batch stride smallest
    key_valid = make_key_valid("pattern", 2, 40)[:, ::2]  # [B, Tk], stride 2
    got = triton_mod.mla_decode_triton(q_latent, q_rope, latent, k_rope, key_valid, SCALE)
    torch.testing.assert_close(got, naive(q_latent, q_rope, latent, k_rope, key_valid), rtol=1e-5, atol=1e-5)


def test_fp16(interpret):
    """The weights p are rounded to fp16 for the p . latent product, hence the looser tolerance. (bf16 only on CUDA:
    the interpreter's tl.dot multiplies bf16 as its raw uint16 bits.)"""
    case = make_case(b=2, h=5, tk=33, dtype=torch.float16)
    key_valid = make_key_valid("left_pad", 2, 33)
    got = triton_mod.mla_decode_triton(*case, key_valid, SCALE)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), naive(*case, key_valid).float(), rtol=2e-2, atol=2e-2)


def test_fully_masked_row_is_zero(interpret):
    """Row 1 has no valid key; row 2's first 16-key block is all padding (its running max stays -inf for a block)."""
    case = make_case(b=3, h=3, tk=33)
    key_valid = make_key_valid("left_pad", 3, 33)
    key_valid[1] = False
    key_valid[2, :20] = False
    got = triton_mod.mla_decode_triton(*case, key_valid, SCALE)
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    keep = [0, 2]
    torch.testing.assert_close(got[keep], naive(*case, key_valid)[keep], rtol=1e-5, atol=1e-5)


def test_empty_cache_is_zero(interpret):
    got = triton_mod.mla_decode_triton(*make_case(b=2, h=3, tk=0), None, SCALE)
    assert torch.equal(got, torch.zeros(2, 3, 32))


@pytest.mark.parametrize("arg, change, message", [
    ("q_rope", lambda t: t[..., 1:], r"q_rope has shape \(2, 3, 15\), expected \(2, 3, 16\)"),
    ("q_rope", lambda t: t[:, :2], r"q_rope has shape \(2, 2, 16\), expected \(2, 3, 16\)"),
    ("latent", lambda t: t[..., 1:], r"latent has shape \(2, 7, 31\), expected \(2, 7, 32\)"),
    ("latent", lambda t: t[:, :5], r"k_rope has shape \(2, 7, 16\), expected \(2, 5, 16\)"),
    ("k_rope", lambda t: t[:1], r"k_rope has shape \(1, 7, 16\), expected \(2, 7, 16\)"),
    ("q_latent", lambda t: t[0], r"q_latent must be 3D, got shape \(3, 32\)"),
    ("key_valid", lambda t: torch.ones(2, 6, dtype=torch.bool), r"key_valid .* \(2, 7\), got torch.bool \(2, 6\)"),
    ("key_valid", lambda t: torch.ones(2, 7), r"key_valid must be a bool tensor"),
    ("latent", lambda t: t.half(), r"need one dtype"),
    ("q_latent", lambda t: t.double(), r"need one dtype"),
])
def test_bad_arguments_raise(interpret, arg, change, message):
    args = dict(zip(["q_latent", "q_rope", "latent", "k_rope"], make_case(b=2, h=3, tk=7)), key_valid=None)
    args[arg] = change(args[arg])
    with pytest.raises(ValueError, match=message):
        triton_mod.mla_decode_triton(**args, scale=SCALE)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_dispatcher_triton_equals_torch(interpret, monkeypatch, mask_kind):
    """kernel="triton" with Tq = 1 against kernel="torch", the 4D mask going through _decode_key_mask."""
    monkeypatch.delenv("LLMARCH_MLA_KERNEL", raising=False)
    q_latent, q_rope, latent, k_rope = make_case(b=3, h=5, tk=33)
    allowed = make_key_valid("left_pad", 3, 33)[:, None, None, :]  # [B, 1, 1, Tk]
    mask = {"none": None, "bool": allowed,
            "additive": torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)}[mask_kind]
    args = (q_latent[:, :, None], q_rope[:, :, None], latent, k_rope, mask, SCALE)
    got = mla_latent_attention(*args, kernel="triton")
    assert got.shape == (3, 5, 1, 32)
    torch.testing.assert_close(got, mla_latent_attention(*args, kernel="torch"), rtol=1e-5, atol=1e-5)


def test_dispatcher_auto_stays_torch_on_cpu(interpret, monkeypatch):
    monkeypatch.delenv("LLMARCH_MLA_KERNEL", raising=False)
    assert mla_ops._pick("auto", torch.zeros(1, 1, 1, 8), torch.zeros(1, 3, 8)) == "torch"


def test_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA device.*TRITON_INTERPRET=1"):
        triton_mod.mla_decode_triton(*make_case(b=1, h=2, tk=4), None, SCALE)


@pytest.mark.parametrize("block_triton", [False, True])
def test_import_without_interpreter_or_triton(block_triton):
    """A fresh process with TRITON_INTERPRET unset imports the module; without triton the call says why it fails."""
    code = (
        f"import sys\nif {block_triton}: sys.modules['triton'] = None\n"
        "import torch\nfrom hf_llmarch.ops.mla.triton import mla_decode_triton\n"
        "try:\n"
        "    mla_decode_triton(*(torch.zeros(1, n, d) for n, d in [(1, 4), (1, 2), (3, 4), (3, 2)]), None, 1.0)\n"
        "except (RuntimeError, ValueError) as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    expected = "RuntimeError" if block_triton else "ValueError"  # no triton / no CUDA and no interpreter
    assert out.stdout.startswith(expected), out.stdout
    if block_triton:
        assert "triton package is not installed" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_cuda_matches_naive(monkeypatch, dtype, tol):
    """DeepSeek-V3 widths (R = 512, Dr = 64) with the default blocks; fp32 without TF32 so the oracle is comparable."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    case = [t.cuda() for t in make_case(b=3, h=24, tk=1000, r=512, dr=64, dtype=dtype)]
    key_valid = make_key_valid("left_pad", 3, 1000).cuda()
    got = triton_mod.mla_decode_triton(*case, key_valid, SCALE)
    torch.testing.assert_close(got.float(), naive(*case, key_valid).float(), rtol=tol, atol=tol)
