"""RWKV-4 WKV: per channel, with w = exp(time_decay) and u = time_first,

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t})

time_decay, time_first [C] (raw parameters); k, v [B, T, C]; state [B, 3, C] fp32 holding
(a, b, p): numerator and denominator scaled by e^{-p} (`wkv4_initial_state` is the empty one).
Forms: "naive" and "recurrent" (the stable token step; recurrent is the decode path), "chunk"
(pure torch, linear in T) and "fla" (fla-core's fused kernel: no token_mask, no reset).
All return (wkv [B, T, C] in v's dtype, final state [B, 3, C] in fp32, fp64 for fp64 inputs).
"""

from __future__ import annotations

import logging

from ..fla import fla_blocker, fla_op
from ..modes import requested_mode
from .chunk import wkv4_chunk
from .naive import EMPTY_LOG_SCALE, wkv4_initial_state, wkv4_naive, wkv4_step

__all__ = [
    "EMPTY_LOG_SCALE",
    "resolve_wkv4_mode",
    "wkv4",
    "wkv4_chunk",
    "wkv4_initial_state",
    "wkv4_naive",
    "wkv4_step",
]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_WKV4_MODE"
VALID_MODES = ("auto", "chunk", "recurrent", "naive", "fla")
_logged_paths: set[str] = set()


def _fla_kernel():
    """fla-core's `fused_recurrent_rwkv4`, or None when the optional package is missing."""
    return fla_op("rwkv4", "fused_recurrent_rwkv4")


def _fla_blocker(k, token_mask, reset) -> str | None:
    """Why the fla kernel cannot run these inputs, or None when it can."""
    masked = token_mask is not None or reset is not None
    return fla_blocker(_fla_kernel(), k, "the kernel takes no token_mask and no reset" if masked else None)


def resolve_wkv4_mode(mode: str, k, token_mask=None, reset=None) -> str:
    """Concrete path for `wkv4`; LLMARCH_WKV4_MODE overrides "auto". "auto" takes the recurrent
    step for one token (decode), fla when it can run these inputs, else "chunk"."""
    mode, source = requested_mode("RWKV-4 WKV", mode, VALID_MODES, MODE_ENV_VAR)
    if mode == "fla":
        blocker = _fla_blocker(k, token_mask, reset)
        if blocker:
            raise RuntimeError(f"RWKV-4 WKV mode 'fla' (from {source}) cannot run: {blocker}; use 'auto' or 'chunk'")
    if mode != "auto":
        return mode
    if k.shape[1] == 1:
        return "recurrent"
    return "chunk" if _fla_blocker(k, token_mask, reset) else "fla"


def _log_path_once(mode: str) -> None:
    if mode in _logged_paths:
        return
    if mode == "fla":
        logger.info("RWKV-4 WKV: using fla-core's fused_recurrent_rwkv4 kernel")
    else:
        found = "fla-core found" if _fla_kernel() else "fla-core not installed"
        logger.info("RWKV-4 WKV: using the pure-torch %s path (%s)", mode, found)
    _logged_paths.add(mode)


def _wkv4_fla(time_decay, time_first, k, v, state):
    """fla applies -exp(time_decay) itself and keeps its state as [B, 3, 1, C]; fp32 k and v keep
    the state it returns in fp32."""
    if state is None:
        state = wkv4_initial_state(k.shape[0], k.shape[-1], device=k.device)
    out, state = _fla_kernel()(time_decay.float(), time_first.float(), k.float(), v.float(), state.float()[:, :, None])
    return out.to(v.dtype), state[:, :, 0].float()


def wkv4(time_decay, time_first, k, v, *, state=None, token_mask=None, reset=None, mode="auto", chunk_size=32):
    """Dispatch to one WKV form; see the module docstring for shapes. token_mask [B, T] bool is
    False at pads (identity steps); reset [B, T] bool marks where a packed sequence starts (the
    state entering it is empty). Returns (wkv, final_state)."""
    mode = resolve_wkv4_mode(mode, k, token_mask, reset)
    _log_path_once(mode)
    if mode == "fla":
        return _wkv4_fla(time_decay, time_first, k, v, state)
    if mode == "chunk":
        return wkv4_chunk(time_decay, time_first, k, v, state, token_mask, reset, chunk_size=chunk_size)
    # "recurrent" is the naive loop itself: at T == 1 (decode) that is one stable step.
    return wkv4_naive(time_decay, time_first, k, v, state, token_mask, reset)
