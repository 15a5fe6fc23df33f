"""DeltaNet / Gated DeltaNet delta rule in KV layout (recurrent_mixers.md §7).

Per token: S <- exp(g_t) S; S <- S + k_t (beta_t (v_t - S^T k_t))^T; o_t = S^T (scale * q_t), with
q, k [B, T, H, Dk] (L2-normalised by the caller), v [B, T, H, Dv], beta [B, T, H], log_decay g
[B, T, H] or None (plain DeltaNet; pads need beta = 0 and g = 0) and a state [B, H, Dk, Dv].
Paths: "chunk" (WY form, linear in T), "recurrent" (decode), "naive" (the oracle) and "fla"
(fla-core's Triton kernels); "auto" = recurrent for one token, fla when usable, else chunk; the env
var LLMARCH_DELTA_RULE_MODE overrides "auto". All return (o in v's dtype, final_state in fp32 or fp64).
"""

from __future__ import annotations

import logging

from ..fla import fla_blocker, fla_op
from ..modes import requested_mode
from .chunk import delta_rule_chunk
from .naive import delta_rule_naive
from .recurrent import delta_rule_recurrent

__all__ = ["delta_rule", "delta_rule_chunk", "delta_rule_naive", "delta_rule_recurrent", "resolve_delta_rule_mode"]

logger = logging.getLogger("hf_llmarch")

MODE_ENV_VAR = "LLMARCH_DELTA_RULE_MODE"
VALID_MODES = ("auto", "chunk", "recurrent", "naive", "fla")
_PATH_NAMES = {
    "chunk": "pure-torch chunk",
    "recurrent": "pure-torch recurrent",
    "naive": "pure-torch naive",
    "fla": "fla-core Triton",
}
_logged_paths: set[str] = set()


def _fla_kernels():
    """(chunk_delta_rule, chunk_gated_delta_rule) from fla-core, or None when it is not installed."""
    kernels = fla_op("delta_rule", "chunk_delta_rule"), fla_op("gated_delta_rule", "chunk_gated_delta_rule")
    return None if None in kernels else kernels


def resolve_delta_rule_mode(mode: str, q, reset=None) -> str:
    """Concrete path for `delta_rule`; an explicit "fla" that cannot run raises RuntimeError."""
    mode, source = requested_mode("delta rule", mode, VALID_MODES, MODE_ENV_VAR)
    if mode == "fla":
        _check_fla_runnable(q, reset, source)
    if mode != "auto":
        return mode
    if q.shape[1] <= 1:
        return "recurrent"
    # fla packs sequences through cu_seqlens (batch 1), not per-token resets: those stay on chunk.
    if fla_blocker(_fla_kernels(), q, "reset" if reset is not None else None) is None:
        return "fla"
    return "chunk"


def _check_fla_runnable(q, reset, source):
    if _fla_kernels() is None:
        raise RuntimeError(
            f"delta rule mode 'fla' (from {source}) needs fla-core (fla.ops.delta_rule, fla.ops.gated_delta_rule), "
            "which cannot be imported; install fla-core or use mode 'chunk'"
        )
    if not q.is_cuda or reset is not None:
        raise RuntimeError(f"delta rule mode 'fla' (from {source}) needs CUDA tensors and no packed resets")


def _fla_delta_rule(q, k, v, beta, log_decay=None, scale=None, initial_state=None):
    """fla-core's chunk kernels; its default state layout is KV, [B, H, Dk, Dv], like ours."""
    chunk_delta_rule, chunk_gated_delta_rule = _fla_kernels()
    if initial_state is not None:
        initial_state = initial_state.float()
    common = dict(scale=scale, initial_state=initial_state, output_final_state=True)
    if log_decay is None:
        o, state = chunk_delta_rule(q, k, v, beta, **common)
    else:
        o, state = chunk_gated_delta_rule(q, k, v, log_decay, beta, **common)
    return o.to(v.dtype), state


def delta_rule(
    q, k, v, beta, log_decay=None, *, scale=None, initial_state=None, mode="auto", chunk_size=64, reset=None
):
    """Dispatch to one delta-rule form; see the module docstring for shapes. `reset` [B, T] bool
    marks where a packed sequence starts (its state starts from zero). Returns (o, final_state)."""
    mode = resolve_delta_rule_mode(mode, q, reset)
    if mode not in _logged_paths:
        _logged_paths.add(mode)
        found = "found" if _fla_kernels() is not None else "not installed"
        logger.info("delta rule: using the %s path (fla-core %s)", _PATH_NAMES[mode], found)
    if mode == "fla":
        return _fla_delta_rule(q, k, v, beta, log_decay, scale, initial_state)
    if mode == "chunk":
        return delta_rule_chunk(q, k, v, beta, log_decay, scale, initial_state, chunk_size=chunk_size, reset=reset)
    fn = delta_rule_recurrent if mode == "recurrent" else delta_rule_naive
    return fn(q, k, v, beta, log_decay, scale, initial_state, reset=reset)
