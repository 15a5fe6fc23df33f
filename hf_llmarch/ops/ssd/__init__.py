"""Mamba-2 SSD scan: h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) ⊗ B_t, y_t = h_t C_t + D x_t.

x [B, T, H, P]; dt [B, T, H] (after softplus, 0 at pads); A [H] (negative); B, C [B, T, G, N]
with head h reading group h // (H // G); D [H] or None; state [B, H, P, N] (VK layout).
All forms return (y in x's dtype, final_state in fp32, or fp64 when the inputs are fp64).
"""

from __future__ import annotations

import logging

import torch

from ..modes import requested_mode
from .chunk import ssd_chunk
from .cuda import load_kernel, ssd_cuda
from .naive import ssd_naive, ssd_step

__all__ = ["resolve_ssd_mode", "ssd_chunk", "ssd_cuda", "ssd_naive", "ssd_scan", "ssd_step"]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_SSD_MODE"
VALID_MODES = ("auto", "chunk", "naive", "cuda")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_logged_path = False


def _check_cuda_runnable(x, source):
    if not x.is_cuda:
        raise RuntimeError(f"SSD mode 'cuda' (from {source}) needs CUDA tensors, got device {x.device}")
    if load_kernel() is None:
        raise RuntimeError(
            f"SSD mode 'cuda' (from {source}) needs mamba_ssm's Triton kernels "
            "(mamba_ssm.ops.triton.ssd_combined), which cannot be imported; install mamba-ssm or use mode 'chunk'"
        )


def resolve_ssd_mode(mode: str, x, reset=None) -> str:
    """Concrete path for `ssd_scan`: "cuda", "chunk", "naive", or "step" (auto with one token).
    LLMARCH_SSD_MODE overrides "auto"; an explicit "cuda" that cannot run raises RuntimeError.
    `reset` is accepted for reporting symmetry: every path supports it."""
    mode, source = requested_mode("SSD", mode, VALID_MODES, MODE_ENV_VAR)
    if mode == "cuda":
        _check_cuda_runnable(x, source)
    if mode != "auto":
        return mode
    if x.shape[1] == 1:
        return "step"
    if x.is_cuda and x.dtype in _KERNEL_DTYPES and load_kernel() is not None:
        return "cuda"
    return "chunk"


def _one_step(x, dt, A, B, C, D=None, initial_state=None, reset=None):
    """T == 1 through `ssd_step` (decode): no chunk bookkeeping."""
    batch, _, H, P = x.shape
    # ssd_step upcasts a zero fp32 state to fp64 when the inputs are fp64.
    state = x.new_zeros(batch, H, P, B.shape[-1], dtype=torch.float32) if initial_state is None else initial_state
    if reset is not None:
        state = state.masked_fill(reset[:, 0, None, None, None], 0.0)
    y, state = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, state)
    return y[:, None], state


def ssd_scan(x, dt, A, B, C, D=None, *, initial_state=None, reset=None, mode="auto", chunk_size=64):
    """Dispatch to one SSD form; see the module docstring. `reset` [B, T] bool marks where a packed
    sequence starts (the state is zeroed before that token). Returns (y, final_state)."""
    global _logged_path
    mode = resolve_ssd_mode(mode, x, reset)
    if not _logged_path:
        logger.info("ssd: using the %s path (mamba_ssm kernel %s)", mode, "found" if load_kernel() else "not installed")
        _logged_path = True
    if mode in ("chunk", "cuda"):
        fn = ssd_chunk if mode == "chunk" else ssd_cuda
        return fn(x, dt, A, B, C, D, initial_state, reset, chunk_size=chunk_size)
    fn = ssd_naive if mode == "naive" else _one_step
    return fn(x, dt, A, B, C, D, initial_state, reset)
