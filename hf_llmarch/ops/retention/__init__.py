"""RetNet retention in gated ("simple GLA") form with a per-token log-decay.

All forms compute S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t with
q, k [B, T, H, Dk], v [B, T, H, Dv], log_decay g [B, T, H] (0 at pads) and a KV-layout
state [B, H, Dk, Dv]. They return (o in v's dtype, final_state in fp32 or fp64).
"""

from __future__ import annotations

import logging

import torch

from ..modes import requested_mode
from .chunk import retention_chunk
from .naive import retention_naive
from .parallel import retention_parallel
from .recurrent import retention_recurrent

__all__ = [
    "retention",
    "retention_chunk",
    "retention_decay",
    "retention_log_decay",
    "retention_naive",
    "retention_parallel",
    "retention_recurrent",
    "resolve_retention_mode",
]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_RETENTION_MODE"
VALID_MODES = ("auto", "parallel", "chunk", "recurrent", "naive")
_logged_path = False


def resolve_retention_mode(mode: str, seq_len: int, chunk_size: int = 64) -> str:
    """Concrete mode for `retention`; the env var LLMARCH_RETENTION_MODE overrides "auto"."""
    mode, _ = requested_mode("retention", mode, VALID_MODES, MODE_ENV_VAR)
    if mode != "auto":
        return mode
    if seq_len == 1:
        return "recurrent"
    return "parallel" if seq_len <= chunk_size else "chunk"


def retention(q, k, v, log_decay, *, scale=None, initial_state=None, mode="auto", chunk_size=64, reset=None):
    """Dispatch to one retention form; see the module docstring for shapes. `reset` [B, T] bool
    marks where a packed sequence starts (its state starts from zero). Returns (o, final_state)."""
    global _logged_path
    mode = resolve_retention_mode(mode, q.shape[1], chunk_size)
    if not _logged_path:
        logger.info("retention: using pure-torch chunk/parallel/recurrent path (no fused kernel installed)")
        _logged_path = True
    if mode == "chunk":
        return retention_chunk(q, k, v, log_decay, scale, initial_state, chunk_size=chunk_size, reset=reset)
    fn = {"parallel": retention_parallel, "recurrent": retention_recurrent, "naive": retention_naive}[mode]
    return fn(q, k, v, log_decay, scale, initial_state, reset=reset)


def retention_decay(num_heads: int, device=None) -> torch.Tensor:
    """ln(gamma_h) with gamma_h = 1 - 2**(-5-h), h = 0..H-1, as float32 [H]."""
    h = torch.arange(num_heads, dtype=torch.float64, device=device)
    # Computed in fp64 so gamma near 1 keeps its precision before the cast.
    return torch.log1p(-torch.exp2(-5.0 - h)).to(torch.float32)


def retention_log_decay(
    num_heads: int, batch: int, seq_len: int, token_mask=None, device=None, heads: slice | None = None
) -> torch.Tensor:
    """Per-token log-decay [B, T, H] float32; multiplied by token_mask [B, T] so pads get 0.
    `heads` picks the heads this process computes (a tensor-parallel shard); default all."""
    if device is None and token_mask is not None:
        device = token_mask.device
    decay = retention_decay(num_heads, device=device)[heads or slice(None)]
    g = decay.expand(batch, seq_len, decay.shape[0])
    if token_mask is not None:
        g = g * token_mask.to(device=device, dtype=torch.float32)[..., None]
    return g.contiguous()
