"""Triton grouped-GEMM MoE experts (SwiGLU with SiLU), forward and backward, as a torch.library custom op.

Pairs (token, slot) are sorted by expert and laid out so that every BLOCK_M-row block holds one expert's
pairs: only the int32 index list is padded, never the token rows. One kernel runs both grouped GEMMs
(gathering token rows for gate_up, reading pair-order rows for down) and the input gradients through
transposed stride views; a second kernel computes each expert's weight gradient by looping over that
expert's row blocks inside one program. No atomics, so results are deterministic.
"""

# String annotations: `tl.constexpr` must not be evaluated when triton is missing (triton reads the string).
from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.activations import ACT2CLS

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: without it the op raises when called, `import hf_llmarch` still works
    triton = None

# Tile sizes (rows, output columns, reduction). The interpreter's cost grows with the number of program
# instances, so the tests raise them; on GPU these are a plain untuned default.
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32

_SILU_TYPES = (torch.nn.SiLU, ACT2CLS["silu"])


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_unusable_reason(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, act_fn) -> str | None:
    """Why experts_triton cannot run these inputs (None when it can)."""
    if triton is None:
        return "the triton package is not installed"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        return f"it needs a CUDA tensor (got {x.device.type}; on CPU only with TRITON_INTERPRET=1)"
    dtypes = (x.dtype, gate_up_proj.dtype, down_proj.dtype)
    if len(set(dtypes)) > 1 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"it needs x and both expert weights in one of float32/float16/bfloat16, got {dtypes}"
    if gate_up_proj.shape[1] == down_proj.shape[2]:
        return "it runs gated (SwiGLU) experts only; these are plain (gate_up_proj [E, I, H])"
    if not (act_fn is F.silu or isinstance(act_fn, _SILU_TYPES)):
        name = getattr(act_fn, "__name__", type(act_fn).__name__)
        return f"it supports only the SiLU activation (hidden_act='silu'), got {name}"
    return None


def experts_triton(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Same contract as experts_naive (SiLU only): x [N, H], topk_idx/topk_weight [N, k],
    gate_up_proj [E, 2I, H], down_proj [E, H, I] -> [N, H] in x.dtype."""
    reason = triton_unusable_reason(x, gate_up_proj, down_proj, act_fn)
    if reason is not None:
        # A missing package is an environment problem; anything else is a bad argument.
        error = RuntimeError if triton is None else ValueError
        raise error(f"MoE impl 'triton' is unavailable: {reason}")
    return torch.ops.hf_llmarch.moe_experts_triton(x, topk_idx, topk_weight, gate_up_proj, down_proj)[0]


def _gg_kernel(
    a_ptr, w_ptr, out_ptr, sorted_pair_ptr, block_expert_ptr,
    n_pairs, n_experts, n_out, n_in,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_om, stride_on,
    GATHER_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[pair] = a[pair // GATHER_K] @ w[e]^T for one block of expert e's pairs; w[e] [n_out, n_in] by strides."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m)
    # The grid has a static upper bound of blocks; those past the last expert's rows have nothing to do.
    if e >= n_experts:
        return
    pair = tl.load(sorted_pair_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # [BM], n_pairs in padding slots
    valid = pair < n_pairs
    rows = (pair // GATHER_K).to(tl.int64)  # [BM] token rows when gathering, else pair rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + e.to(tl.int64) * stride_we
    # tl.full, not tl.zeros: tl.zeros is itself a @triton.jit function, fixed as compiled or interpreted when
    # triton is imported, so it breaks when TRITON_INTERPRET is set later; builtins follow the launch.
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
    for k0 in range(0, n_in, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(a_ptr + rows[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=valid[:, None] & (kk[None, :] < n_in), other=0.0)  # [BM, BK]
        w = tl.load(w_base + kk[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                    mask=(kk[:, None] < n_in) & (offs_n[None, :] < n_out), other=0.0)  # [BK, BN]
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    out = out_ptr + pair.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (offs_n[None, :] < n_out))


def _dw_kernel(
    g_ptr, a_ptr, dw_ptr, sorted_pair_ptr, pad_start_ptr, counts_ptr,
    n_out, n_in,
    stride_gm, stride_gn, stride_am, stride_ak, stride_de, stride_dn, stride_dk,
    GATHER_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dw[e] [n_out, n_in] = sum over expert e's pairs of g[pair]^T a[pair // GATHER_K]; one program per tile."""
    e = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    start = tl.load(pad_start_ptr + e)
    count = tl.load(counts_ptr + e)
    acc = tl.full((BLOCK_N, BLOCK_K), 0.0, dtype=tl.float32)  # not tl.zeros: see _gg_kernel
    # Sequential over the expert's row blocks in a fixed order: the reduction needs no atomics.
    for m0 in range(0, count, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        valid = offs_m < count
        pair = tl.load(sorted_pair_ptr + start + offs_m)  # [BM]; the padded layout keeps this in bounds
        rows = (pair // GATHER_K).to(tl.int64)
        g = tl.load(g_ptr + pair.to(tl.int64)[None, :] * stride_gm + offs_n[:, None] * stride_gn,
                    mask=valid[None, :] & (offs_n[:, None] < n_out), other=0.0)  # [BN, BM]
        a = tl.load(a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=valid[:, None] & (offs_k[None, :] < n_in), other=0.0)  # [BM, BK]
        acc = tl.dot(g, a, acc, input_precision=PRECISION)
    dw = dw_ptr + e.to(tl.int64) * stride_de + offs_n[:, None] * stride_dn + offs_k[None, :] * stride_dk
    tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=(offs_n[:, None] < n_out) & (offs_k[None, :] < n_in))


@functools.cache
def _jit(kernel: Callable, interpret: bool):
    """triton.jit at first launch, not at import: triton.jit reads TRITON_INTERPRET (hence the cache key)."""
    return triton.jit(kernel)


def _precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's matmul precision setting, as F.linear on the other paths does; fp16/bf16 ignore it.
    return "ieee" if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest" else "tf32"


def _route(topk_idx: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, ...]:
    """Pair ids sorted by expert, each expert's segment padded to a BLOCK_M multiple with sentinel P.

    Returns sorted_pair [B*BLOCK_M] int32, block_expert [B] int32 (n_experts past the end),
    pad_start [E] int32 and counts [E] int32, where B = cdiv(P, BLOCK_M) + E bounds the block count
    without a host sync."""
    flat = topk_idx.reshape(-1)  # [P] pair p = (token p // k, slot p % k)
    n_pairs, device = flat.numel(), flat.device
    order = torch.argsort(flat, stable=True)  # [P] pair ids grouped by expert
    counts = torch.zeros(n_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # [E]
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    start = torch.cumsum(counts, 0) - counts
    sorted_e = flat[order]  # [P]
    slot = pad_start[sorted_e] + torch.arange(n_pairs, device=device) - start[sorted_e]  # [P] padded position
    n_blocks = triton.cdiv(n_pairs, BLOCK_M) + n_experts
    sorted_pair = torch.full((n_blocks * BLOCK_M,), n_pairs, dtype=torch.int32, device=device)
    sorted_pair.scatter_(0, slot, order.to(torch.int32))
    block_start = torch.arange(n_blocks, device=device) * BLOCK_M
    block_expert = torch.searchsorted(pad_end, block_start, right=True).to(torch.int32)  # [B]
    return sorted_pair, block_expert, pad_start.to(torch.int32), counts.to(torch.int32)


def _gg(a: torch.Tensor, w: torch.Tensor, routing: tuple, n_pairs: int, gather_k: int) -> torch.Tensor:
    """a [rows, K] (token rows when gather_k = k, else pair rows); w [E, out, K], any strides -> [P, out]."""
    sorted_pair, block_expert, _, _ = routing
    n_experts, n_out, n_in = w.shape
    out = a.new_empty(n_pairs, n_out)
    grid = (block_expert.numel(), triton.cdiv(n_out, BLOCK_N))
    _jit(_gg_kernel, interpreting())[grid](
        a, w, out, sorted_pair, block_expert, n_pairs, n_experts, n_out, n_in,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        GATHER_K=gather_k, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=_precision(a.dtype),
    )
    return out


def _dw(g: torch.Tensor, a: torch.Tensor, routing: tuple, n_experts: int, gather_k: int) -> torch.Tensor:
    """g [P, out] pair order; a [rows, K] as in _gg -> [E, out, K]: g_e^T a_e per expert (zeros if it has no pairs)."""
    sorted_pair, _, pad_start, counts = routing
    n_out, n_in = g.shape[1], a.shape[1]
    dw = g.new_empty(n_experts, n_out, n_in)
    grid = (n_experts, triton.cdiv(n_out, BLOCK_N), triton.cdiv(n_in, BLOCK_K))
    _jit(_dw_kernel, interpreting())[grid](
        g, a, dw, sorted_pair, pad_start, counts, n_out, n_in,
        g.stride(0), g.stride(1), a.stride(0), a.stride(1), dw.stride(0), dw.stride(1), dw.stride(2),
        GATHER_K=gather_k, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=_precision(g.dtype),
    )
    return dw


@torch.library.custom_op("hf_llmarch::moe_experts_triton", mutates_args=())
def _experts_op(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y [N, H] and, for backward, h [P, 2I] (gate/up pre-activation) and ys [P, H] (unweighted outputs)."""
    n, k = topk_idx.shape
    routing = _route(topk_idx, gate_up_proj.shape[0])
    h = _gg(x, gate_up_proj, routing, n * k, gather_k=k)  # [P, 2I]
    gate, up = h.chunk(2, dim=-1)  # [P, I] each
    ys = _gg(F.silu(gate) * up, down_proj, routing, n * k, gather_k=1)  # [P, H]
    # Weighted sum over k in torch: fixed reduction order (deterministic), same promotion as experts_naive.
    y = (ys.view(n, k, x.shape[1]) * topk_weight.unsqueeze(-1)).sum(1).to(x.dtype)  # [N, H]
    return y, h, ys


@_experts_op.register_fake
def _(x, topk_idx, topk_weight, gate_up_proj, down_proj):
    pairs = topk_idx.numel()
    return x.new_empty(x.shape), x.new_empty(pairs, gate_up_proj.shape[1]), x.new_empty(pairs, x.shape[1])


@torch.library.custom_op("hf_llmarch::moe_experts_triton_backward", mutates_args=())
def _experts_backward_op(
    dy: torch.Tensor, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor, down_proj: torch.Tensor, h: torch.Tensor, ys: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx [N, H], dtopk_weight [N, k], dgate_up_proj [E, 2I, H], ddown_proj [E, H, I])."""
    n, k = topk_idx.shape
    n_experts = gate_up_proj.shape[0]
    routing = _route(topk_idx, n_experts)
    hidden = x.shape[1]
    dweight = (dy.unsqueeze(1) * ys.view(n, k, hidden)).sum(-1).to(topk_weight.dtype)  # [N, k]
    dys = (dy.unsqueeze(1) * topk_weight.unsqueeze(-1)).reshape(n * k, hidden).to(x.dtype)  # [P, H]
    gate, up = h.float().chunk(2, dim=-1)  # [P, I] each; the SiLU backward in fp32
    act = (F.silu(gate) * up).to(x.dtype)  # [P, I]
    ddown = _dw(dys, act, routing, n_experts, gather_k=1)  # [E, H, I]
    dact = _gg(dys, down_proj.transpose(1, 2), routing, n * k, gather_k=1).float()  # [P, I]
    sig = torch.sigmoid(gate)
    dh = torch.cat([dact * up * sig * (1 + gate * (1 - sig)), dact * gate * sig], dim=-1).to(x.dtype)  # [P, 2I]
    dgate_up = _dw(dh, x, routing, n_experts, gather_k=k)  # [E, 2I, H]
    dx_pairs = _gg(dh, gate_up_proj.transpose(1, 2), routing, n * k, gather_k=1)  # [P, H]
    dx = dx_pairs.view(n, k, hidden).sum(1)  # [N, H]
    return dx, dweight, dgate_up, ddown


@_experts_backward_op.register_fake
def _(dy, x, topk_idx, topk_weight, gate_up_proj, down_proj, h, ys):
    return tuple(torch.empty_like(t) for t in (x, topk_weight, gate_up_proj, down_proj))


def _setup_context(ctx, inputs, output):
    x, topk_idx, topk_weight, gate_up_proj, down_proj = inputs
    ctx.save_for_backward(x, topk_idx, topk_weight, gate_up_proj, down_proj, output[1], output[2])


def _backward(ctx, dy, _dh, _dys):
    # h and ys are internal outputs (only y reaches the caller), so their grads are ignored.
    dx, dweight, dgate_up, ddown = torch.ops.hf_llmarch.moe_experts_triton_backward(dy, *ctx.saved_tensors)
    return dx, None, dweight, dgate_up, ddown


_experts_op.register_autograd(_backward, setup_context=_setup_context)
