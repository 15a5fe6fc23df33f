"""S4D: diagonal linear time-invariant SSM (Gu et al. 2022), M = N/2 complex modes per head.

All forms compute s_t = dA * s_{t-1} + u_t, y_t = 2 Re(sum_m W_m s_t,m) + D u_t with u [B, T, H]
real, dA, W [H, M] complex (from `s4d_discretize`), D [H] or None and a state [B, H, M] complex.
They return (y [B, T, H] in u's dtype, final_state complex64, or complex128 for fp64 inputs).
"""

from __future__ import annotations

import logging

from ..modes import requested_mode
from .chunk import s4d_chunk
from .fft import s4d_fft
from .naive import s4d_naive, s4d_step
from .params import s4d_discretize, s4d_init

__all__ = [
    "resolve_s4d_mode",
    "s4d_chunk",
    "s4d_discretize",
    "s4d_fft",
    "s4d_init",
    "s4d_naive",
    "s4d_scan",
    "s4d_step",
]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_S4D_MODE"
VALID_MODES = ("auto", "fft", "chunk", "naive")
_logged_path = False


def resolve_s4d_mode(mode: str = "auto", reset=None, seq_len: int | None = None) -> str:
    """Concrete mode for `s4d_scan`; the env var LLMARCH_S4D_MODE overrides "auto", which picks one
    recurrence "step" for a single token (decode), else "fft" without resets and "chunk" with them
    (a convolution cannot restart its state)."""
    mode, source = requested_mode("s4d", mode, VALID_MODES, MODE_ENV_VAR)
    if mode == "auto" and seq_len == 1:
        return "step"
    if mode == "auto":
        return "fft" if reset is None else "chunk"
    if mode == "fft" and reset is not None:
        raise ValueError(f"s4d mode 'fft' (from {source}) cannot reset the state; use 'chunk' or 'naive' with reset")
    return mode


def s4d_scan(u, dA, W, D=None, *, initial_state=None, reset=None, mode="auto", chunk_size=64):
    """Dispatch to one S4D form; see the module docstring for shapes. `reset` [B, T] bool marks
    where a packed sequence starts (the state is zeroed before that token)."""
    global _logged_path
    mode = resolve_s4d_mode(mode, reset, u.shape[1])
    if not _logged_path:
        logger.info("s4d: using the pure-torch %s path (no fused kernel installed)", mode)
        _logged_path = True
    if mode == "step":
        state = initial_state
        if reset is not None and state is not None:
            state = state.masked_fill(reset[:, 0, None, None], 0.0)
        y, state = s4d_step(u[:, 0], dA, W, D, state)
        return y[:, None], state
    if mode == "fft":
        return s4d_fft(u, dA, W, D, initial_state=initial_state)
    if mode == "chunk":
        return s4d_chunk(u, dA, W, D, initial_state=initial_state, reset=reset, chunk_size=chunk_size)
    return s4d_naive(u, dA, W, D, initial_state=initial_state, reset=reset)
