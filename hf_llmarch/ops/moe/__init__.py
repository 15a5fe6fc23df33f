"""Routed-expert compute for MoE layers: a reference loop, a sort-by-expert grouped path and a Triton kernel."""

import logging
import os
from collections.abc import Callable

import torch

from .grouped import FEW_PAIRS, experts_grouped, grouped_mm_usable
from .naive import experts_naive
from .triton import experts_triton, interpreting, triton_unusable_reason

logger = logging.getLogger("hf_llmarch")

MOE_IMPLS = ("auto", "naive", "grouped", "triton")
_logged: set[tuple] = set()


def validate_moe_impl(impl: str) -> str:
    if impl not in MOE_IMPLS:
        raise ValueError(f"Unknown MoE impl {impl!r}; valid: {', '.join(MOE_IMPLS)}")
    return impl


def resolve_moe_impl(impl: str = "auto") -> str:
    """Map impl (or, for "auto", the LLMARCH_MOE_IMPL env var) to "naive", "grouped" or "triton".

    Without the env var "auto" maps to "grouped"; on CUDA, moe_experts may then pick "triton" per call."""
    if validate_moe_impl(impl) == "auto":
        impl = os.environ.get("LLMARCH_MOE_IMPL", "grouped") or "grouped"
        if impl not in MOE_IMPLS[1:]:
            raise ValueError(f"Unknown MoE impl LLMARCH_MOE_IMPL={impl!r}; valid: {', '.join(MOE_IMPLS[1:])}")
    return impl


def _auto_picks_triton(x, topk_idx, gate_up_proj, down_proj, act_fn) -> bool:
    """On CUDA, "auto" runs the Triton kernel where grouped would fall back to its per-expert slice loop
    (grouped_mm unusable for this dtype or alignment); grouped_mm and the decode-sized paths stay."""
    return (
        x.device.type == "cuda"
        and topk_idx.numel() > FEW_PAIRS
        and triton_unusable_reason(x, gate_up_proj, down_proj, act_fn) is None
        and not grouped_mm_usable(x, gate_up_proj, down_proj)
    )


def pick_moe_impl(impl: str, x, topk_idx, gate_up_proj, down_proj, act_fn) -> str:
    """The impl moe_experts runs for these tensors: `resolve_moe_impl`, then, for "auto" without the env
    var, Triton on CUDA where grouped_mm is unusable (`llmarch env` asks this same function)."""
    resolved = resolve_moe_impl(impl)
    if impl == "auto" and not os.environ.get("LLMARCH_MOE_IMPL"):
        if _auto_picks_triton(x, topk_idx, gate_up_proj, down_proj, act_fn):
            return "triton"
    return resolved


def moe_path_label(impl: str, x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor) -> str:
    """The one log line's description of the path impl takes for these tensors."""
    if impl == "grouped":
        gemm = "grouped_mm" if grouped_mm_usable(x, gate_up_proj, down_proj) else "per-expert slices"
        return f"grouped ({gemm}, {x.device.type}, {x.dtype})"
    if impl == "triton":
        return f"triton ({'interpreter, ' if interpreting() else ''}{x.device.type}, {x.dtype})"
    return impl


def moe_experts(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
    impl: str = "auto",
) -> torch.Tensor:
    """x [N, H]; topk_idx/topk_weight [N, k]; gate_up_proj [E, 2I, H]; down_proj [E, H, I] -> [N, H]."""
    impl = pick_moe_impl(impl, x, topk_idx, gate_up_proj, down_proj, act_fn)
    fn = {"naive": experts_naive, "grouped": experts_grouped, "triton": experts_triton}[impl]
    if not torch.compiler.is_compiling() and (impl, x.device.type, x.dtype) not in _logged:
        _logged.add((impl, x.device.type, x.dtype))
        logger.info("hf_llmarch MoE experts path: %s", moe_path_label(impl, x, gate_up_proj, down_proj))
    return fn(x, topk_idx, topk_weight, gate_up_proj, down_proj, act_fn)


__all__ = [
    "MOE_IMPLS",
    "experts_grouped",
    "experts_naive",
    "experts_triton",
    "grouped_mm_usable",
    "moe_experts",
    "moe_path_label",
    "pick_moe_impl",
    "resolve_moe_impl",
    "validate_moe_impl",
]
