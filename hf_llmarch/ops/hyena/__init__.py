"""Hyena's implicit long convolution (Poli et al. 2023; recurrent_mixers.md §8).

y_t = sum_{j<=t} h_{t-j} u_j + bias * u_t per channel, with u [B, T, D], a filter h [D, L >= T]
and a skip `bias` [D]; `reset` [B, T] bool marks packed-sequence starts (no sum crosses one).
Paths: "fft" (pure torch, O(D T log T)), "naive" (the Toeplitz oracle, O(D T^2)); "auto" = fft,
and the env var LLMARCH_HYENA_MODE overrides "auto". No fused kernel exists for this op.
`long_conv_step` is the decode form: the newest output from the cached inputs, O(t D).
"""

import logging

from ..modes import requested_mode
from .fft import long_conv_fft
from .naive import long_conv_naive, long_conv_step

__all__ = ["long_conv", "long_conv_fft", "long_conv_naive", "long_conv_step", "resolve_hyena_mode"]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_HYENA_MODE"
VALID_MODES = ("auto", "fft", "naive")
_logged: set[str] = set()


def resolve_hyena_mode(mode: str = "auto") -> str:
    """The path `long_conv` runs: the mode argument, or for "auto" the env var, else "fft"."""
    mode, _ = requested_mode("hyena long conv", mode, VALID_MODES, MODE_ENV_VAR)
    return "fft" if mode == "auto" else mode


def long_conv(u, h, bias, *, reset=None, mode="auto"):
    """Dispatch to one path; shapes as in the module docstring. Returns [B, T, D] in u's dtype."""
    mode = resolve_hyena_mode(mode)
    if mode not in _logged:
        _logged.add(mode)
        path = "FFT" if mode == "fft" else "naive Toeplitz"
        logger.info("hyena long conv: using the pure-torch %s path (no fused kernel exists for implicit long convolutions)", path)
    if mode == "naive":
        return long_conv_naive(u, h, bias, reset)
    return long_conv_fft(u, h, bias, reset)
