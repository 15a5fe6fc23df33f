"""Diagonal-plus-low-rank (DPLR) delta rule, the state update of RWKV-7 time mix.

KV layout, per head and token, with row vectors q, k, a, b, w (log-decay, <= 0) in R^Dk, v in R^Dv:
    S_t = exp(w_t)[:, None] * S_{t-1} + b_t[:, None] * (a_t @ S_{t-1})[None, :] + k_t[:, None] * v_t[None, :]
    o_t = scale * S_t^T q_t
a reads the undecayed S_{t-1}, b writes the result (fla's convention). RWKV-7 passes q = r, k = k~,
a = -kappa_hat, b = kappa_hat * a_rate: the transpose of the paper's VK form
S_t = S_{t-1} (diag(d_t) - kappa_hat^T (a_rate * kappa_hat)) + v_t^T k~_t, o_t = S_t r_t.
Shapes: q, k, a, b, log_decay [B, T, H, Dk]; v [B, T, H, Dv]; state [B, H, Dk, Dv]. Every form returns
(o in v's dtype, final_state in fp32, or fp64 for fp64 inputs).
"""

from __future__ import annotations

import logging

from ..fla import fla_blocker, fla_op
from ..modes import requested_mode
from .chunk import dplr_delta_chunk
from .naive import dplr_delta_naive, dplr_delta_step

__all__ = ["dplr_delta", "dplr_delta_chunk", "dplr_delta_naive", "dplr_delta_step", "resolve_dplr_mode"]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_DPLR_MODE"
VALID_MODES = ("auto", "chunk", "recurrent", "naive", "fla")
_logged_paths: set[str] = set()


def _fla_kernel():
    """fla-core's `chunk_rwkv7`, or None when fla is not installed."""
    return fla_op("rwkv7", "chunk_rwkv7")


def _fla_blocker(q, reset) -> str | None:
    """Why fla's kernel cannot run these inputs, or None when it can."""
    return fla_blocker(_fla_kernel(), q, "fla's kernel takes no reset" if reset is not None else None)


def resolve_dplr_mode(mode: str, q, reset=None) -> str:
    """Concrete mode for `dplr_delta`; LLMARCH_DPLR_MODE overrides "auto". "auto" takes the token
    recurrence for one token (decode), fla's kernel when it can run these inputs, else "chunk"."""
    mode, source = requested_mode("dplr delta", mode, VALID_MODES, MODE_ENV_VAR)
    if mode == "fla":
        blocker = _fla_blocker(q, reset)
        if blocker:
            raise RuntimeError(f"dplr delta mode 'fla' (from {source}) cannot run: {blocker}; use 'auto' or 'chunk'")
    if mode != "auto":
        return mode
    if q.shape[1] == 1:
        return "recurrent"
    return "chunk" if _fla_blocker(q, reset) else "fla"


def _log_path(mode, q, reset):
    if mode in _logged_paths:
        return
    _logged_paths.add(mode)
    if mode == "fla":
        logger.info("dplr delta rule (RWKV-7): using fla-core's chunk_rwkv7 kernel")
    else:
        why = _fla_blocker(q, reset) or f"mode {mode!r}"
        logger.info("dplr delta rule (RWKV-7): using the pure-torch %s path (%s)", mode, why)


def _dplr_fla(q, k, v, a, b, log_decay, scale, initial_state):
    state = None if initial_state is None else initial_state.float()
    o, final = _fla_kernel()(
        r=q, w=log_decay, k=k, v=v, a=a, b=b, scale=scale, initial_state=state, output_final_state=True
    )
    return o.to(v.dtype), final.float()


def dplr_delta(q, k, v, a, b, log_decay, *, scale=1.0, initial_state=None, mode="auto", chunk_size=16, reset=None):
    """Dispatch to one form; see the module docstring. `reset` [B, T] bool marks where a packed
    sequence starts (the state entering that token is zero). The "chunk" form assumes RWKV-7's
    decay bound (see its module docstring). Returns (o, final_state)."""
    mode = resolve_dplr_mode(mode, q, reset)
    _log_path(mode, q, reset)
    if mode == "fla":
        return _dplr_fla(q, k, v, a, b, log_decay, scale, initial_state)
    if mode == "chunk":
        return dplr_delta_chunk(q, k, v, a, b, log_decay, scale, initial_state, chunk_size=chunk_size, reset=reset)
    # The naive token loop is the decode form: at T == 1 it is exactly one `dplr_delta_step`.
    return dplr_delta_naive(q, k, v, a, b, log_decay, scale, initial_state, reset=reset)
