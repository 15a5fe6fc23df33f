"""Sort-by-expert MoE: one gather, one GEMM per expert (or one grouped_mm), deterministic reduce."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .naive import expert_hidden

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)

# On CPU, torch 2.13's grouped_mm is a C++ loop of per-group mm calls (multithreaded BLAS). It gives exactly
# the slice loop's results and used less CPU time for fwd+bwd (1 thread, fp32 and bf16): 2-5% less at
# N=2048, H=256, I=512, E=8, k=2 and ~15% less at N=1024, H=128, I=64, E=64, k=6. So CPU uses it when aligned.
USE_GROUPED_MM_ON_CPU = True

_probe_cache: dict[tuple[str, torch.dtype], bool] = {}

# Decode-sized inputs (a few tokens) skip the sort/gather/scatter: their cost is pure overhead there.
FEW_PAIRS = 16


# Kept out of torch.compile: the first compiled call per (device, dtype) graph-breaks here once,
# so fullgraph=True needs one eager call first (or a dtype that skips grouped_mm under compile).
@torch.compiler.disable
def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Run a tiny aligned grouped_mm fwd+bwd (with an empty group) and compare with F.linear."""
    try:
        # Identity saved-tensor hooks shadow an enclosing activation checkpoint's, which would
        # otherwise count the probe's tensors and fail its recomputation check.
        identity = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        with torch.inference_mode(False), torch.enable_grad(), identity:
            # linspace, not randn: the probe must not advance the caller's RNG stream.
            a = torch.linspace(-1, 1, 8 * 16, device=device, dtype=dtype).view(8, 16).requires_grad_()
            w = torch.linspace(1, -1, 3 * 16 * 16, device=device, dtype=dtype).view(3, 16, 16).requires_grad_()
            offs = torch.tensor([3, 3, 8], device=device, dtype=torch.int32)
            y = _GROUPED_MM(a, w.transpose(1, 2), offs=offs)
            y.backward(torch.ones_like(y))
            ref = torch.cat([F.linear(a[:3], w[0]), F.linear(a[3:], w[2])])
            return bool(torch.allclose(y, ref, rtol=2e-2, atol=2e-2))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


def grouped_mm_usable(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor) -> bool:
    """Whether experts_grouped will run its GEMMs through grouped_mm for these tensors."""
    if _GROUPED_MM is None or not (x.dtype == gate_up_proj.dtype == down_proj.dtype):
        return False
    if x.device.type == "cpu" and not USE_GROUPED_MM_ON_CPU:
        return False
    # Under torch.compile the fake-tensor (meta) kernel of grouped_mm accepts bf16 only.
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return False
    # grouped_mm needs every row stride (H, I and 2I elements, fwd and bwd) to be a multiple of 16 bytes.
    align = 16 // x.element_size()
    if x.shape[-1] % align or down_proj.shape[-1] % align:
        return False
    key = (x.device.type, x.dtype)
    if key not in _probe_cache:
        _probe_cache[key] = _probe_grouped_mm(x.device, x.dtype)
    return _probe_cache[key]


def _gemm_grouped_mm(a: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """a [P, K] rows sorted by expert; w [E, out, K]; counts [E] -> [P, out]."""
    offs = torch.cumsum(counts, 0, dtype=torch.int32)  # [E] end of each expert's rows
    # grouped_mm's backward rejects stride-0 grads (e.g. from y.sum()); in experts_grouped both outputs
    # feed chunk / index ops whose backward hands it a freshly allocated contiguous grad.
    return _GROUPED_MM(a, w.transpose(1, 2), offs=offs)


def _gemm_slices(a: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Same contract as _gemm_grouped_mm, one F.linear per non-empty expert slice."""
    # unbind: its backward stacks the E grads once, where w[e] would build E full-size zero grads.
    ws = w.unbind(0)
    chunks = a.split(counts.tolist())
    return torch.cat([F.linear(c, ws[e]) for e, c in enumerate(chunks) if c.shape[0]])


def experts_grouped(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Same contract as experts_naive: x [N, H], topk_idx/topk_weight [N, k],
    gate_up_proj [E, 2I, H], down_proj [E, H, I] -> [N, H] in x.dtype."""
    n, k = topk_idx.shape
    if n * k <= FEW_PAIRS:
        # Compiled decode (CUDA graphs, fullgraph) needs static shapes and no host reads of the routing.
        few_pairs = _experts_gathered if torch.compiler.is_compiling() else _experts_by_pair
        return few_pairs(x, topk_idx, topk_weight, gate_up_proj, down_proj, act_fn)
    flat = topk_idx.reshape(-1)  # [N*k] pair p = (token p // k, slot p % k)
    order = torch.argsort(flat, stable=True)  # [N*k] pair ids grouped by expert
    # scatter_add rather than bincount: same counts, but a static output shape, so torch.compile can trace it.
    counts = flat.new_zeros(gate_up_proj.shape[0]).scatter_add_(0, flat, torch.ones_like(flat))  # [E]
    gemm = _gemm_grouped_mm if grouped_mm_usable(x, gate_up_proj, down_proj) else _gemm_slices

    xs = x[order // k]  # [N*k, H] token rows in expert order
    hidden = expert_hidden(gemm(xs, gate_up_proj, counts), act_fn, down_proj)  # [N*k, I]
    ys = gemm(hidden, down_proj, counts)  # [N*k, H]

    inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    y = ys[inv].view(n, k, -1)  # [N, k, H] back in pair order
    # Weighted sum over k instead of index_add_: fixed reduction order, so deterministic.
    return (y * topk_weight.unsqueeze(-1)).sum(1).to(x.dtype)


def _experts_by_pair(x, topk_idx, topk_weight, gate_up_proj, down_proj, act_fn) -> torch.Tensor:
    """One F.linear per (token, slot) on views of the expert weights: no copies, no sort."""
    rows = []
    for n, experts in enumerate(topk_idx.tolist()):
        acc = None
        for j, e in enumerate(experts):
            hidden = expert_hidden(F.linear(x[n], gate_up_proj[e]), act_fn, down_proj)  # [I]
            h = F.linear(hidden, down_proj[e]) * topk_weight[n, j]  # [H]
            acc = h if acc is None else acc + h
        rows.append(acc)
    return torch.stack(rows).to(x.dtype)  # [N, H]


def _experts_gathered(x, topk_idx, topk_weight, gate_up_proj, down_proj, act_fn) -> torch.Tensor:
    """Decode sizes under torch.compile: each pair's expert weights gathered, one bmm per projection."""
    n, k = topk_idx.shape
    flat = topk_idx.reshape(-1)  # [P]
    xs = x.repeat_interleave(k, dim=0).unsqueeze(-1)  # [P, H, 1]
    hidden = expert_hidden(torch.bmm(gate_up_proj[flat], xs).squeeze(-1), act_fn, down_proj)  # [P, I]
    ys = torch.bmm(down_proj[flat], hidden.unsqueeze(-1)).squeeze(-1)  # [P, H]
    return (ys.view(n, k, -1) * topk_weight.unsqueeze(-1)).sum(1).to(x.dtype)
