"""Short causal depthwise convolution, as Mamba, Mamba-2 and the delta-rule mixers put before their
recurrence: y_t = bias + sum_j weight[:, K-1-j] * x_{t-j}, over the previous K-1 inputs.

`state` [B, C, K-1] holds the inputs before this chunk (oldest first; None = zeros). `reset` [B, T]
bool marks packed-sequence starts: a window never reaches back across one. The caller zeroes pad
inputs (exact for left padding) and keeps the state with `conv_state_after`.
Paths: "torch" (conv1d, or K shifted multiply-adds when packed), "naive" (the oracle), "cuda"
(causal-conv1d's kernel when installed); "auto" = cuda when usable, else torch; the env var
LLMARCH_SHORT_CONV_MODE overrides "auto".
"""

import logging

import torch
import torch.nn.functional as F

from ..modes import requested_mode
from .naive import short_conv_naive

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_SHORT_CONV_MODE"
VALID_MODES = ("auto", "torch", "naive", "cuda")
_logged: set[str] = set()

__all__ = ["conv_state_after", "resolve_short_conv_mode", "short_conv", "short_conv_naive", "short_conv_torch"]


def _causal_conv1d_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def resolve_short_conv_mode(mode: str, x: torch.Tensor, state=None, reset=None) -> str:
    """The path `short_conv` runs; the kernel takes no carried state and no resets here."""
    mode, _ = requested_mode("short conv", mode, VALID_MODES, MODE_ENV_VAR)
    if mode != "auto":
        return mode
    kernel_fits = x.is_cuda and state is None and reset is None and _causal_conv1d_fn() is not None
    return "cuda" if kernel_fits else "torch"


def short_conv(x, weight, bias=None, *, state=None, reset=None, mode="auto") -> torch.Tensor:
    """x [B, T, C]; weight [C, K]; bias [C] or None -> y [B, T, C] (before any activation)."""
    mode = resolve_short_conv_mode(mode, x, state, reset)
    if mode not in _logged:
        _logged.add(mode)
        logger.info("short conv: using the %s path", {"cuda": "causal-conv1d kernel"}.get(mode, f"pure-torch {mode}"))
    if mode == "naive":
        return short_conv_naive(x, weight, bias, state, reset)
    if mode == "cuda":
        return _short_conv_cuda(x, weight, bias, state, reset)
    return short_conv_torch(x, weight, bias, state, reset)


def short_conv_torch(x, weight, bias=None, state=None, reset=None) -> torch.Tensor:
    width = weight.shape[1]
    history = x.new_zeros(x.shape[0], x.shape[2], width - 1) if state is None else state.to(x.dtype)
    padded = torch.cat([history, x.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
    if x.shape[1] == 1 and reset is None:  # decode: one window, a multiply-add beats a conv call
        y = (padded * weight.to(x.dtype)).sum(-1)[:, None]  # [B, 1, C]
    elif reset is None:
        y = F.conv1d(padded, weight.to(x.dtype)[:, None], bias=None, groups=weight.shape[0])  # [B, C, T]
        y = y.transpose(1, 2)
    else:
        y = _shifted_sum(padded.transpose(1, 2), weight.to(x.dtype), reset)
    return y if bias is None else y + bias.to(x.dtype)


def _shifted_sum(padded: torch.Tensor, weight: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """Packed rows: sum of K shifted inputs, each kept only where no sequence start lies between the
    tap and the output token. padded [B, K-1+T, C] -> [B, T, C]."""
    width, seq_len = weight.shape[1], reset.shape[1]
    # Sequence index of every padded position; the carried history counts as the first sequence.
    segment = F.pad(reset.long().cumsum(-1), (width - 1, 0))  # [B, K-1+T]
    out_segment = segment[:, width - 1 :]  # [B, T]
    y = 0
    for lag in range(width):
        start = width - 1 - lag
        same = (segment[:, start : start + seq_len] == out_segment)[..., None]  # [B, T, 1]
        y = y + torch.where(same, padded[:, start : start + seq_len] * weight[:, width - 1 - lag], 0.0)
    return y


def _short_conv_cuda(x, weight, bias, state, reset):
    kernel = _causal_conv1d_fn()
    if kernel is None or not x.is_cuda or state is not None or reset is not None:
        raise RuntimeError(
            "short conv mode 'cuda' needs causal-conv1d installed, CUDA tensors, and no carried state or packed resets"
        )
    return kernel(x.transpose(1, 2), weight, bias).transpose(1, 2)


def conv_state_after(x: torch.Tensor, width: int, state=None, token_mask=None) -> torch.Tensor:
    """[B, C, K-1]: the inputs the next token's window needs, ending at each row's last real token
    (right padding must not push real inputs out of the state); a row with no real token keeps its
    state. x [B, T, C] (pads zeroed); token_mask [B, T] bool or None."""
    batch, seq_len, channels = x.shape
    history = x.new_zeros(batch, channels, width - 1) if state is None else state.to(x.dtype)
    padded = torch.cat([history, x.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
    if token_mask is None:
        return padded[..., -(width - 1) :]
    steps = torch.arange(seq_len, device=x.device)
    last_real = torch.where(token_mask.bool(), steps, -1).amax(-1)  # [B]; -1 = no real token
    end = last_real + width - 1  # index in padded of the last input to keep
    idx = end[:, None] - torch.arange(width - 2, -1, -1, device=x.device)  # [B, K-1]
    return padded.gather(-1, idx[:, None].expand(batch, channels, width - 1))
