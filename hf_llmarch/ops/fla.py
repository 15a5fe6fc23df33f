"""fla-core (flash-linear-attention's Triton kernels, the optional extra `[fla]`): its ops imported on
first use, so a missing package never breaks import, and why a call cannot take them."""

import functools
import importlib

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def fla_op(module: str, name: str):
    """`fla.ops.<module>.<name>`, or None when fla-core is not installed."""
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}"), name)
    except ImportError:
        return None


def fla_blocker(kernel, x: torch.Tensor, unsupported: str | None = None) -> str | None:
    """Why `kernel` (an fla op or None) cannot run on inputs like `x`, or None when it can;
    `unsupported` names an argument of the call the kernel has no counterpart for."""
    if kernel is None:
        return "fla-core not installed"
    if unsupported:
        return unsupported
    if not x.is_cuda:
        return f"the tensors are on {x.device}, not CUDA"
    if x.dtype not in KERNEL_DTYPES:
        return f"fla's kernels do not take {x.dtype}"
    return None
