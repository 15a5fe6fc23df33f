"""Optional mamba_ssm Triton SSD kernel, imported lazily: a missing extra never breaks import."""

from __future__ import annotations

import functools

import torch


@functools.cache
def load_kernel():
    """`mamba_chunk_scan_combined`, or None when mamba_ssm (or its compiled extension) is missing."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:  # also covers mamba_ssm's unconditional `import selective_scan_cuda`
        return None
    return mamba_chunk_scan_combined


def ssd_cuda(x, dt, A, B, C, D=None, initial_state=None, reset=None, chunk_size=64):
    """Same contract as `ssd_chunk`. A packed row's resets become mamba_ssm's seq_idx: tokens with
    seq_idx 0 continue initial_state, and a state never crosses a change of seq_idx."""
    seq_idx = None if reset is None else reset.to(torch.int32).cumsum(-1, dtype=torch.int32).contiguous()
    y, final = load_kernel()(
        x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, seq_idx=seq_idx, return_final_states=True
    )
    return y, final.float()
