"""Routed-expert compute for MoE layers: a reference loop and a sort-by-expert grouped path."""

import logging
import os
from collections.abc import Callable

import torch

from .grouped import experts_grouped, grouped_mm_usable
from .naive import experts_naive

logger = logging.getLogger("hf_llmarch")

MOE_IMPLS = ("auto", "naive", "grouped")
_logged: set[tuple] = set()


def validate_moe_impl(impl: str) -> str:
    if impl not in MOE_IMPLS:
        raise ValueError(f"Unknown MoE impl {impl!r}; valid: {', '.join(MOE_IMPLS)}")
    return impl


def resolve_moe_impl(impl: str = "auto") -> str:
    """Map impl (or, for "auto", the LLMARCH_MOE_IMPL env var) to "naive" or "grouped"."""
    if validate_moe_impl(impl) == "auto":
        impl = os.environ.get("LLMARCH_MOE_IMPL", "grouped") or "grouped"
        if impl not in ("naive", "grouped"):
            raise ValueError(f"Unknown MoE impl LLMARCH_MOE_IMPL={impl!r}; valid: naive, grouped")
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
    impl = resolve_moe_impl(impl)
    fn = experts_naive if impl == "naive" else experts_grouped
    if not torch.compiler.is_compiling() and (impl, x.device.type, x.dtype) not in _logged:
        _logged.add((impl, x.device.type, x.dtype))
        path = impl
        if impl == "grouped":
            gemm = "grouped_mm" if grouped_mm_usable(x, gate_up_proj, down_proj) else "per-expert slices"
            path = f"grouped ({gemm}, {x.device.type}, {x.dtype})"
        logger.info("hf_llmarch MoE experts path: %s", path)
    return fn(x, topk_idx, topk_weight, gate_up_proj, down_proj, act_fn)


__all__ = [
    "MOE_IMPLS",
    "experts_grouped",
    "experts_naive",
    "grouped_mm_usable",
    "moe_experts",
    "resolve_moe_impl",
    "validate_moe_impl",
]
