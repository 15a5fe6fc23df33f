"""Mamba-1 selective scan: h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t, y_t = h_t . C_t + D x_t.

Shapes: x, dt [B, T, D] (dt after softplus, 0 at pads = identity step); A [D, N] (negative, fp32);
B, C [B, T, N]; D [D] or None; state [B, D, N]. Forms: "naive" (token loop, the oracle), "chunk"
(pure torch, linear in T) and "cuda" (mamba_ssm's fused kernel: no initial state, no resets).
All return (y [B, T, D] in x's dtype, final_state [B, D, N] in fp32, fp64 for fp64 inputs).
"""

from __future__ import annotations

import functools
import logging

import torch

from ..modes import requested_mode
from .chunk import selective_scan_chunk
from .naive import selective_scan_naive, selective_scan_step

__all__ = [
    "resolve_selective_scan_mode",
    "selective_scan",
    "selective_scan_chunk",
    "selective_scan_naive",
    "selective_scan_step",
]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_SELECTIVE_SCAN_MODE"
VALID_MODES = ("auto", "chunk", "naive", "cuda")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_logged_paths: set[str] = set()


@functools.lru_cache(maxsize=None)
def _cuda_kernel():
    """mamba_ssm's selective_scan_fn, or None when the optional extra (or its compiled ext) is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError):
        return None
    return selective_scan_fn


def _cuda_blocker(x, initial_state, reset) -> str | None:
    """Why the fused kernel cannot run these inputs, or None when it can."""
    if initial_state is not None or reset is not None:
        return "the kernel takes no initial_state and no reset"
    if not x.is_cuda:
        return "the tensors are not on CUDA"
    if x.dtype not in _KERNEL_DTYPES:
        return f"the kernel does not support {x.dtype}"
    if _cuda_kernel() is None:
        return "mamba_ssm (with its compiled selective_scan_cuda) is not importable"
    return None


def resolve_selective_scan_mode(mode: str, x, initial_state=None, reset=None) -> str:
    """Concrete mode for `selective_scan`; LLMARCH_SELECTIVE_SCAN_MODE overrides "auto".
    "auto" takes one recurrence step for a single token (decode), the fused kernel when it can run
    these inputs, else "chunk"."""
    mode, _ = requested_mode("selective scan", mode, VALID_MODES, MODE_ENV_VAR)
    if mode == "auto" and x.shape[1] == 1:
        return "step"
    if mode == "auto":
        return "chunk" if _cuda_blocker(x, initial_state, reset) else "cuda"
    if mode == "cuda":
        blocker = _cuda_blocker(x, initial_state, reset)
        if blocker:
            raise RuntimeError(f"selective scan mode 'cuda' was requested but {blocker}; use 'auto' or 'chunk'")
    return mode


def _scan_cuda(x, dt, A, B, C, D):
    """The fused kernel wants [B, D, T] activations, B/C [B, N, T] in x's dtype, fp32 A and D."""
    y, state = _cuda_kernel()(
        x.transpose(1, 2),
        dt.to(x.dtype).transpose(1, 2),
        A.float(),
        B.to(x.dtype).transpose(1, 2),
        C.to(x.dtype).transpose(1, 2),
        None if D is None else D.float(),
        return_last_state=True,
    )
    return y.transpose(1, 2).to(x.dtype), state.float()


def selective_scan(x, dt, A, B, C, D=None, *, initial_state=None, reset=None, mode="auto", chunk_size=16):
    """Dispatch to one selective-scan form; see the module docstring for shapes. `reset` [B, T] bool
    marks where a packed sequence starts: the state is zeroed before that token is absorbed."""
    mode = resolve_selective_scan_mode(mode, x, initial_state, reset)
    if mode not in _logged_paths:
        path = "mamba_ssm fused CUDA kernel" if mode == "cuda" else f"pure-torch {mode} form"
        logger.info("selective scan: using the %s path", path)
        _logged_paths.add(mode)
    if mode == "cuda":
        return _scan_cuda(x, dt, A, B, C, D)
    if mode == "chunk":
        return selective_scan_chunk(x, dt, A, B, C, D, initial_state, reset, chunk_size=chunk_size)
    if mode == "step":
        return _one_step(x, dt, A, B, C, D, initial_state, reset)
    return selective_scan_naive(x, dt, A, B, C, D, initial_state, reset)


def _one_step(x, dt, A, B, C, D, initial_state, reset):
    """A single token [B, 1, D] as one recurrence step: no chunk padding at decode."""
    state = initial_state
    if state is None:
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        state = x.new_zeros(x.shape[0], *A.shape, dtype=wide)  # [B, D, N]
    if reset is not None:
        state = state.masked_fill(reset[:, 0, None, None], 0.0)
    y, state = selective_scan_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, state)
    return y[:, None].to(x.dtype), state
