"""Triton flash-decoding kernel for absorbed MLA: one query token per sequence over the latent cache.

Absorbed MLA is multi-query attention whose key is [latent ; k_rope] and whose value is the latent
itself. One program serves one batch row and a block of BLOCK_H heads: it walks the cache in blocks
of BLOCK_T keys with an online softmax (running max, running sum, fp32 accumulator [BLOCK_H, R]),
loading each latent block once and using it both for the scores (q_latent . latent^T) and for the
output (p . latent), so the cache is read once per head block and never expanded per head.
"""

# String annotations: `tl.constexpr` must not be evaluated when triton is missing (triton reads the string).
from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: without it the op raises when called, importing this module still works
    triton = None

# Heads per program and keys per loop step: a plain untuned GPU default (tl.dot needs both >= 16); the
# tests lower BLOCK_T so that tiny caches end in partial blocks.
BLOCK_H, BLOCK_T = 16, 32

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def mla_decode_triton(q_latent, q_rope, latent, k_rope, key_valid, scale: float) -> torch.Tensor:
    """One decode step of absorbed MLA.

    q_latent [B, H, R], q_rope [B, H, Dr]: the one new token's query per sequence; latent [B, Tk, R],
    k_rope [B, Tk, Dr]: the cache, any strides; key_valid: None (every key attended) or [B, Tk] bool,
    True = attend, any pattern. Returns o_latent [B, H, R] =
    softmax_t((q_latent . latent[t] + q_rope . k_rope[t]) * scale, masked) @ latent in q_latent's dtype,
    accumulated in fp32. A row with no valid key (all False, or Tk = 0) gets zeros, not NaN."""
    if triton is None:
        raise RuntimeError("mla kernel 'triton' is unavailable: the triton package is not installed")
    _check(q_latent, q_rope, latent, k_rope, key_valid)
    batch, heads, rank = q_latent.shape
    rope_dim = k_rope.shape[-1]
    out = q_latent.new_empty(batch, heads, rank)  # [B, H, R]
    mask = latent if key_valid is None else key_valid.view(torch.uint8)  # [B, Tk]; unread without a mask
    mask_strides = (0, 0) if key_valid is None else key_valid.stride()
    block_h = min(BLOCK_H, max(16, triton.next_power_of_2(heads)))  # no wider than the heads need
    grid = (batch, triton.cdiv(heads, block_h))
    _jit(_decode_kernel, interpreting())[grid](
        q_latent, q_rope, latent, k_rope, mask, out,
        heads, latent.shape[1], scale * _LOG2E,
        *q_latent.stride(), *q_rope.stride(), *latent.stride(), *k_rope.stride(), *mask_strides, *out.stride(),
        R=rank, DR=rope_dim, R_PAD=_pad(rank), DR_PAD=_pad(rope_dim), HAS_MASK=key_valid is not None,
        BLOCK_H=block_h, BLOCK_T=BLOCK_T, PRECISION=_precision(latent.dtype),
        # fp32 at R = 512: 3 pipelined latent blocks need 186 KB of shared memory (sm_80 has 164 KB), 2 need 113 KB.
        num_stages=2 if latent.element_size() == 4 else 3,
    )
    return out


def _check(q_latent, q_rope, latent, k_rope, key_valid) -> None:
    """ValueError naming the argument when shapes, dtypes or devices disagree."""
    named = {"q_latent": q_latent, "q_rope": q_rope, "latent": latent, "k_rope": k_rope}
    for name, t in named.items():
        if t.dim() != 3:
            raise ValueError(f"mla_decode_triton: {name} must be 3D, got shape {tuple(t.shape)}")
    batch, heads, rank = q_latent.shape
    tk, rope_dim = latent.shape[1], k_rope.shape[-1]
    expected = {"q_rope": (batch, heads, rope_dim), "latent": (batch, tk, rank), "k_rope": (batch, tk, rope_dim)}
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(
                f"mla_decode_triton: {name} has shape {tuple(named[name].shape)}, expected {shape} "
                f"(B, H, R from q_latent {tuple(q_latent.shape)}, Tk from latent, Dr from k_rope {tuple(k_rope.shape)})"
            )
    if key_valid is not None and (key_valid.dtype != torch.bool or tuple(key_valid.shape) != (batch, tk)):
        raise ValueError(
            f"mla_decode_triton: key_valid must be a bool tensor of shape {(batch, tk)}, "
            f"got {key_valid.dtype} {tuple(key_valid.shape)}"
        )
    dtypes = {t.dtype for t in named.values()}
    if len(dtypes) > 1 or q_latent.dtype not in _DTYPES:
        raise ValueError(
            f"mla_decode_triton: q_latent, q_rope, latent and k_rope need one dtype of {_DTYPES}, got {dtypes}"
        )
    devices = {t.device for t in named.values()} | ({key_valid.device} if key_valid is not None else set())
    if len(devices) > 1 or not (q_latent.is_cuda or (q_latent.device.type == "cpu" and interpreting())):
        raise ValueError(
            f"mla_decode_triton: needs all tensors on one CUDA device (CPU only with TRITON_INTERPRET=1), got {devices}"
        )


def _decode_kernel(
    ql_ptr, qr_ptr, lat_ptr, kr_ptr, valid_ptr, out_ptr,
    n_heads, n_keys, qk_scale,
    s_qlb, s_qlh, s_qlr, s_qrb, s_qrh, s_qrd, s_lb, s_lt, s_lr, s_krb, s_krt, s_krd, s_vb, s_vt, s_ob, s_oh, s_or,
    R: tl.constexpr, DR: tl.constexpr, R_PAD: tl.constexpr, DR_PAD: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr,
):
    """out[b, heads] = online softmax over key blocks; qk_scale = scale * log2(e), so exp2 gives exp."""
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, R_PAD)
    offs_d = tl.arange(0, DR_PAD)
    head_ok = offs_h < n_heads
    q_lat = tl.load(ql_ptr + b * s_qlb + offs_h[:, None] * s_qlh + offs_r[None, :] * s_qlr,
                    mask=head_ok[:, None] & (offs_r[None, :] < R), other=0.0)  # [BH, R_PAD]
    q_rope = tl.load(qr_ptr + b * s_qrb + offs_h[:, None] * s_qrh + offs_d[None, :] * s_qrd,
                     mask=head_ok[:, None] & (offs_d[None, :] < DR), other=0.0)  # [BH, DR_PAD]
    # tl.full, not tl.zeros: tl.zeros is jitted at triton import, so it breaks when TRITON_INTERPRET is set later.
    m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.full((BLOCK_H,), 0.0, dtype=tl.float32)  # running sum of weights
    acc = tl.full((BLOCK_H, R_PAD), 0.0, dtype=tl.float32)
    for t0 in range(0, n_keys, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        key_ok = offs_t < n_keys
        if HAS_MASK:
            key_ok = key_ok & (tl.load(valid_ptr + b * s_vb + offs_t * s_vt, mask=key_ok, other=0) != 0)
        lat = tl.load(lat_ptr + b * s_lb + offs_t[:, None] * s_lt + offs_r[None, :] * s_lr,
                      mask=(offs_t[:, None] < n_keys) & (offs_r[None, :] < R), other=0.0)  # [BT, R_PAD], read once
        k_rope = tl.load(kr_ptr + b * s_krb + offs_t[:, None] * s_krt + offs_d[None, :] * s_krd,
                         mask=(offs_t[:, None] < n_keys) & (offs_d[None, :] < DR), other=0.0)  # [BT, DR_PAD]
        s = tl.dot(q_lat, tl.trans(lat), input_precision=PRECISION)
        s = tl.dot(q_rope, tl.trans(k_rope), s, input_precision=PRECISION) * qk_scale  # [BH, BT]
        s = tl.where(key_ok[None, :], s, float("-inf"))
        # tl.max/tl.sum are jitted like tl.zeros; tl.reduce over the combine functions they expand to (both fp32
        # here) is the same op, and the interpreter maps it to numpy.
        m_new = tl.maximum(m_i, tl.reduce(s, 1, tl.standard._elementwise_max))
        # While a row has seen no valid key its max is -inf; subtracting 0 instead keeps exp2 from NaN (-inf - -inf).
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)  # [BH] rescale of the previous blocks
        p = tl.exp2(s - m_ref[:, None])  # [BH, BT], 0 at masked keys
        l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
        acc = tl.dot(p.to(lat.dtype), lat, acc * alpha[:, None], input_precision=PRECISION)  # [BH, R_PAD]
        m_i = m_new
    # A row with no valid key has l_i = 0 and acc = 0: dividing by 1 returns the documented zeros.
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_ptr + b * s_ob + offs_h[:, None] * s_oh + offs_r[None, :] * s_or, out.to(out_ptr.dtype.element_ty),
             mask=head_ok[:, None] & (offs_r[None, :] < R))


@functools.cache
def _jit(kernel: Callable, interpret: bool):
    """triton.jit at first launch, not at import: triton.jit reads TRITON_INTERPRET (hence the cache key)."""
    return triton.jit(kernel)


def _pad(size: int) -> int:
    """Tile width for a feature size: a power of two, at least 16 for tl.dot; the extra lanes are masked."""
    return max(16, triton.next_power_of_2(size))


def _precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's matmul precision setting, as the torch path does; fp16/bf16 ignore it.
    return "ieee" if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest" else "tf32"
