"""MLA in latent space (absorbed decode): `mla_latent_attention` picks the path.

Paths: "torch" (`naive.py`, einsum over the cache: any number of queries, any mask) and "triton"
(`triton.py`: one query token per sequence, the decode step). "auto" takes triton on CUDA for a
one-token step when triton is importable, torch otherwise; the field `mla_kernel` or the
environment variable LLMARCH_MLA_KERNEL forces one. One log line names the path the first time.
"""

import logging

import torch

from ..modes import requested_mode
from .naive import mla_latent_attention_naive

logger = logging.getLogger("hf_llmarch")
MLA_KERNELS = ("auto", "torch", "triton")
_logged = set()


def mla_latent_attention(q_latent, q_rope, latent, k_rope, mask, scale: float, kernel: str = "auto") -> torch.Tensor:
    """o_latent [B, H, Tq, R] = softmax((q_latent . latent + q_rope . k_rope) * scale + mask) @ latent.
    Shapes and mask as `mla_latent_attention_naive`; the triton path takes Tq == 1 only."""
    path = _pick(kernel, q_latent, latent)
    if path == "triton":
        from .triton import mla_decode_triton

        key_valid = None if mask is None else _decode_key_mask(mask)
        out = mla_decode_triton(q_latent[:, :, 0], q_rope[:, :, 0], latent, k_rope, key_valid, scale)
        return out.unsqueeze(2)
    return mla_latent_attention_naive(q_latent, q_rope, latent, k_rope, mask, scale)


def _pick(kernel: str, q_latent, latent) -> str:
    mode, source = requested_mode("mla", kernel, MLA_KERNELS, "LLMARCH_MLA_KERNEL")
    if mode == "auto":
        mode = "triton" if _triton_fits(q_latent, latent) else "torch"
    elif mode == "triton" and q_latent.shape[2] != 1:
        raise ValueError(f"mla kernel 'triton' (from {source}) decodes one query token per sequence, got {q_latent.shape[2]}")
    if mode not in _logged:
        _logged.add(mode)
        logger.info("mla: absorbed attention over the latent cache runs on the %s path", mode)
    return mode


def _decode_key_mask(mask) -> torch.Tensor:
    """[B, Tk] bool (True = attend) from a one-query 4D mask [B, 1, 1, Tk], bool or additive float
    (0 = attend, as transformers' masks: a soft additive bias is not a padding mask)."""
    row = mask[:, 0, -1]
    return row if row.dtype == torch.bool else row == 0


def _triton_fits(q_latent, latent) -> bool:
    """The kernel's domain: a one-token CUDA step, query and cache in one of its dtypes, triton importable."""
    from . import triton as kernel

    same_dtype = q_latent.dtype == latent.dtype and q_latent.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return q_latent.is_cuda and q_latent.shape[2] == 1 and same_dtype and kernel.triton is not None


__all__ = ["MLA_KERNELS", "mla_latent_attention", "mla_latent_attention_naive"]
