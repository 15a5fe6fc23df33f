import logging

import pytest
import torch
import torch.nn.functional as F

import hf_llmarch.ops.delta_rule as dr
from hf_llmarch.ops.delta_rule import (
    delta_rule,
    delta_rule_chunk,
    delta_rule_naive,
    delta_rule_recurrent,
    resolve_delta_rule_mode,
)

B, H, DK, DV = 2, 3, 4, 5


def _inputs(T, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (F.normalize(torch.randn(B, T, H, DK, generator=gen, dtype=dtype), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, DV, generator=gen, dtype=dtype)
    beta = torch.randn(B, T, H, generator=gen, dtype=dtype).sigmoid()
    # Data-dependent gates down to strong decays, as Gated DeltaNet's -exp(A_log) * softplus(.) gives.
    g = -3 * F.softplus(torch.randn(B, T, H, generator=gen, dtype=dtype))
    s0 = torch.randn(B, H, DK, DV, generator=gen, dtype=dtype)
    return q, k, v, beta, g, s0


def _forms(chunk_sizes=(4, 16)):
    forms = {"recurrent": delta_rule_recurrent}
    for c in chunk_sizes:
        forms[f"chunk{c}"] = lambda *a, _c=c, **kw: delta_rule_chunk(*a, chunk_size=_c, **kw)
    return forms


def _run_with_grads(fn, q, k, v, beta, g, s0, **kwargs):
    leaves = [x.clone().requires_grad_() for x in (q, k, v, beta)]
    if g is not None:
        leaves.append(g.clone().requires_grad_())
    s0_leaf = None if s0 is None else s0.clone().requires_grad_()
    o, state = fn(*leaves[:4], None if g is None else leaves[4], initial_state=s0_leaf, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    inputs = leaves + ([s0_leaf] if s0_leaf is not None else [])
    # T == 1 from a zero state never reads g: its gradient is exactly 0 in every form.
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return o, state, grads


def _assert_forms_match_naive(q, k, v, beta, g, s0, chunk_sizes=(4, 16), **kwargs):
    ref_o, ref_s, ref_grads = _run_with_grads(delta_rule_naive, q, k, v, beta, g, s0, **kwargs)
    assert ref_o.dtype == torch.float64 and ref_s.dtype == torch.float64
    for name, fn in _forms(chunk_sizes).items():
        o, s, grads = _run_with_grads(fn, q, k, v, beta, g, s0, **kwargs)
        assert o.shape == ref_o.shape and s.shape == (B, H, DK, DV), name
        torch.testing.assert_close(o, ref_o, rtol=1e-10, atol=1e-10, msg=f"{name} output")
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=f"{name} state")
        for i, (gr, ref_gr) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(gr, ref_gr, rtol=1e-10, atol=1e-10, msg=f"{name} grad {i}")


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("use_s0", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_forms_agree_fp64(T, use_s0, gated):
    q, k, v, beta, g, s0 = _inputs(T)
    _assert_forms_match_naive(q, k, v, beta, g if gated else None, s0 if use_s0 else None)


def _resets(T: int) -> torch.Tensor:
    """Row 0: sequences start at 0 (continuing s0), 3, 4, 8 (a chunk-4 boundary) and T-2;
    row 1: at 0 (dropping s0), 4 and T//2."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [p for p in (3, 4, 8, T - 2) if 0 < p < T]] = True
    reset[1, [p for p in (0, 4, T // 2) if p < T]] = True
    return reset


@pytest.mark.parametrize("T", [7, 33])
def test_reset_equals_separate_sequences(T):
    """Packed rows: each sequence sees only itself; the initial state reaches only the first."""
    q, k, v, beta, g, s0 = _inputs(T)
    reset = _resets(T)
    for fn in (delta_rule_naive, *_forms().values()):
        o, state = fn(q, k, v, beta, g, initial_state=s0, reset=reset)
        for row in range(B):
            starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
            init = None if reset[row, 0] else s0[row : row + 1]
            for a, e in zip(starts, starts[1:]):
                piece = (x[row : row + 1, a:e] for x in (q, k, v, beta, g))
                o_ref, s_ref = delta_rule_naive(*piece, initial_state=init)
                torch.testing.assert_close(o[row : row + 1, a:e], o_ref, rtol=1e-10, atol=1e-10)
                init = None
            torch.testing.assert_close(state[row : row + 1], s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("gated", [False, True])
def test_forms_agree_with_reset_fp64(T, gated):
    q, k, v, beta, g, s0 = _inputs(T)
    _assert_forms_match_naive(q, k, v, beta, g if gated else None, s0, chunk_sizes=(1, 4, 16), reset=_resets(T))


def test_paper_vk_form_equals_naive():
    """Second oracle in the papers' convention: S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,
    S [Dv, Dk], o_t = S_t q_t; the same numbers as the KV-layout state, transposed."""
    T = 9
    q, k, v, beta, g, s0 = _inputs(T)
    S, outs, eye = s0.transpose(-1, -2), [], torch.eye(DK, dtype=torch.float64)
    for t in range(T):
        kt, bt, at = k[:, t, :, :, None], beta[:, t, :, None, None], g[:, t, :, None, None].exp()
        S = S @ (at * (eye - bt * kt @ kt.transpose(-1, -2))) + bt * v[:, t, :, :, None] @ kt.transpose(-1, -2)
        outs.append((S @ q[:, t, :, :, None])[..., 0] * DK**-0.5)
    o, state = delta_rule_naive(q, k, v, beta, g, initial_state=s0)
    torch.testing.assert_close(o, torch.stack(outs, dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, S.transpose(-1, -2), rtol=1e-12, atol=1e-12)


def test_padding_is_identity():
    """A right-padded tail with beta = 0 and g = 0 changes neither the outputs nor the final state."""
    q, k, v, beta, g, s0 = _inputs(9)
    ref_o, ref_s = delta_rule_naive(q, k, v, beta, g, initial_state=s0)
    junk = [torch.cat([x, torch.randn_like(x[:, :3])], dim=1) for x in (q, k, v)]
    zeros = [torch.cat([x, torch.zeros_like(x[:, :3])], dim=1) for x in (beta, g)]  # no write, no decay
    padded = (*junk, *zeros)
    for name, fn in _forms().items():
        o, s = fn(*padded, initial_state=s0)
        torch.testing.assert_close(o[:, :9], ref_o, rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=name)


def test_strong_decay_fp32_is_finite():
    # A factored exp(b_i) * exp(-b_j) overflows fp32 within one chunk at g = -30 per step.
    q, k, v, beta, _, s0 = _inputs(40)
    g = torch.full((B, 40, H), -30.0, dtype=torch.float64)
    ref_o, ref_s = delta_rule_naive(q, k, v, beta, g, initial_state=s0)
    o, s, grads = _run_with_grads(delta_rule_chunk, *(x.float() for x in (q, k, v, beta, g, s0)), chunk_size=16)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    # A mask applied after the exp keeps the forward finite but gives inf * 0 = nan in d/dg.
    assert all(torch.isfinite(gr).all() for gr in grads)
    torch.testing.assert_close(o.double(), ref_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), ref_s, rtol=1e-4, atol=1e-4)


def test_fp32_long_chunk_matches_oracle():
    T = 200
    q, k, v, beta, g, s0 = _inputs(T)
    o, s = delta_rule_chunk(*(x.float() for x in (q, k, v, beta, g)), initial_state=s0.float(), chunk_size=64)
    ref_o, ref_s = delta_rule_naive(q, k, v, beta, g, initial_state=s0)
    torch.testing.assert_close(o.double(), ref_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), ref_s, rtol=1e-4, atol=1e-4)


def test_recurrent_decode_continues_prefill():
    q, k, v, beta, g, s0 = _inputs(12)
    ref_o, ref_s = delta_rule_naive(q, k, v, beta, g, initial_state=s0)
    _, state = delta_rule_chunk(*(x[:, :9] for x in (q, k, v, beta, g)), initial_state=s0, chunk_size=4)
    for t in range(9, 12):
        o_t, state = delta_rule(*(x[:, t : t + 1] for x in (q, k, v, beta, g)), initial_state=state)
        torch.testing.assert_close(o_t[:, 0], ref_o[:, t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_s, rtol=1e-10, atol=1e-10)


def test_custom_scale_and_dtypes():
    q, k, v, beta, g, _ = _inputs(5)
    o1, _ = delta_rule(q, k, v, beta, g, scale=1.0)
    o2, _ = delta_rule_naive(q, k, v, beta, g)
    torch.testing.assert_close(o1 * DK**-0.5, o2, rtol=1e-12, atol=1e-12)
    o, s = delta_rule_chunk(*(x.bfloat16() for x in (q, k, v, beta, g)))
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


@pytest.fixture
def dispatched(monkeypatch):
    """Records which form `delta_rule` calls, by wrapping the module-level functions."""
    monkeypatch.delenv(dr.MODE_ENV_VAR, raising=False)
    called = []
    for name in ("delta_rule_chunk", "delta_rule_recurrent", "delta_rule_naive"):

        def wrapper(*args, _name=name, _fn=getattr(dr, name), **kwargs):
            called.append(_name.removeprefix("delta_rule_"))
            return _fn(*args, **kwargs)

        monkeypatch.setattr(dr, name, wrapper)
    return called


def test_auto_mode_dispatch(dispatched):
    assert resolve_delta_rule_mode("auto", _inputs(1)[0]) == "recurrent"
    assert resolve_delta_rule_mode("auto", _inputs(7)[0]) == "chunk"  # CPU tensors never take fla
    for T in (1, 20):
        delta_rule(*_inputs(T)[:5], chunk_size=8)
    delta_rule(*_inputs(20)[:5], mode="naive")
    assert dispatched == ["recurrent", "chunk", "naive"]


def test_env_var_overrides_auto(dispatched, monkeypatch):
    monkeypatch.setenv(dr.MODE_ENV_VAR, "naive")
    delta_rule(*_inputs(20)[:5], chunk_size=8)
    delta_rule(*_inputs(20)[:5], mode="chunk", chunk_size=8)  # an explicit mode wins
    assert dispatched == ["naive", "chunk"]
    monkeypatch.setenv(dr.MODE_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus.*LLMARCH_DELTA_RULE_MODE"):
        delta_rule(*_inputs(3)[:5])


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="'fused'.*chunk.*recurrent.*naive.*fla"):
        delta_rule(*_inputs(3)[:5], mode="fused")


def test_fla_mode_without_fla_raises(monkeypatch):
    monkeypatch.setattr(dr, "_fla_kernels", lambda: None)
    with pytest.raises(RuntimeError, match="fla-core"):
        delta_rule(*_inputs(3)[:5], mode="fla")


def test_logs_path_once(monkeypatch, caplog):
    monkeypatch.delenv(dr.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(dr, "_logged_paths", set())
    monkeypatch.setattr(dr, "_fla_kernels", lambda: None)
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    for _ in range(2):
        delta_rule(*_inputs(3)[:5])
    msgs = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert msgs == ["delta rule: using the pure-torch chunk path (fla-core not installed)"]
