import logging

import pytest
import torch

import hf_llmarch.ops.retention as ret
from hf_llmarch.ops.retention import (
    resolve_retention_mode,
    retention,
    retention_chunk,
    retention_decay,
    retention_log_decay,
    retention_naive,
    retention_parallel,
    retention_recurrent,
)

B, H, DK, DV = 2, 3, 4, 5


def _inputs(T, dtype=torch.float64, random_decay=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, DK, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, DV, generator=gen, dtype=dtype)
    if random_decay:
        # Per-token gates spanning weak to strong decay, as in data-dependent GLA.
        g = torch.nn.functional.logsigmoid(2 * torch.randn(B, T, H, generator=gen, dtype=dtype))
    else:
        g = retention_log_decay(H, B, T).to(dtype)
    s0 = torch.randn(B, H, DK, DV, generator=gen, dtype=dtype)
    return q, k, v, g, s0


def _all_forms(chunk_sizes=(4,)):
    forms = {"naive": retention_naive, "parallel": retention_parallel, "recurrent": retention_recurrent}
    for c in chunk_sizes:
        forms[f"chunk{c}"] = lambda *a, _c=c, **kw: retention_chunk(*a, chunk_size=_c, **kw)
    return forms


def _run_with_grads(fn, q, k, v, g, s0, **kwargs):
    # log_decay gets a gradient too: data-dependent gates (GLA) train it.
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g)]
    s0_leaf = None if s0 is None else s0.clone().requires_grad_()
    o, state = fn(*leaves, initial_state=s0_leaf, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    inputs = leaves + ([s0_leaf] if s0_leaf is not None else [])
    # T == 1 from a zero state never reads g in the recurrent form: its gradient is exactly 0.
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return o, state, grads


@pytest.mark.parametrize("T", [1, 7, 33, 65])
@pytest.mark.parametrize("use_s0", [False, True])
@pytest.mark.parametrize("random_decay", [False, True])
def test_forms_agree_fp64(T, use_s0, random_decay):
    q, k, v, g, s0 = _inputs(T, random_decay=random_decay)
    s0 = s0 if use_s0 else None
    ref_o, ref_s, ref_grads = _run_with_grads(retention_naive, q, k, v, g, s0)
    assert ref_o.dtype == torch.float64 and ref_s.dtype == torch.float64
    for name, fn in _all_forms(chunk_sizes=(5, 16)).items():
        if name == "naive":
            continue
        o, s, grads = _run_with_grads(fn, q, k, v, g, s0)
        assert o.shape == (B, T, H, DV) and s.shape == (B, H, DK, DV), name
        torch.testing.assert_close(o, ref_o, rtol=1e-10, atol=1e-10, msg=f"{name} output")
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=f"{name} state")
        for i, (gr, ref_gr) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(gr, ref_gr, rtol=1e-10, atol=1e-10, msg=f"{name} grad {i}")


def _resets(T: int) -> torch.Tensor:
    """Row 0: sequences start at 0 (continuing s0), 3, 4 and T-2; row 1: at 0 (dropping s0) and T//2."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [p for p in (3, 4, T - 2) if 0 < p < T]] = True
    reset[1, [0, T // 2]] = True
    return reset


@pytest.mark.parametrize("T", [7, 33])
def test_reset_equals_separate_sequences(T):
    """Packed rows: each sequence sees only itself; the initial state reaches only the first."""
    q, k, v, g, s0 = _inputs(T, random_decay=True)
    reset = _resets(T)
    o, state = retention_naive(q, k, v, g, initial_state=s0, reset=reset)
    for row in range(B):
        starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
        init = None if reset[row, 0] else s0[row : row + 1]
        for a, e in zip(starts, starts[1:]):
            piece = (x[row : row + 1, a:e] for x in (q, k, v, g))
            o_ref, s_ref = retention_naive(*piece, initial_state=init)
            torch.testing.assert_close(o[row : row + 1, a:e], o_ref, rtol=1e-12, atol=1e-12)
            init = None
        torch.testing.assert_close(state[row : row + 1], s_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 33, 65])
@pytest.mark.parametrize("use_s0", [False, True])
def test_forms_agree_with_reset_fp64(T, use_s0):
    q, k, v, g, s0 = _inputs(T, random_decay=True)
    s0, reset = (s0 if use_s0 else None), _resets(T)
    ref_o, ref_s, ref_grads = _run_with_grads(retention_naive, q, k, v, g, s0, reset=reset)
    for name, fn in _all_forms(chunk_sizes=(1, 5, 16)).items():
        o, s, grads = _run_with_grads(fn, q, k, v, g, s0, reset=reset)
        torch.testing.assert_close(o, ref_o, rtol=1e-10, atol=1e-10, msg=f"{name} output")
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=f"{name} state")
        for i, (gr, ref_gr) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(gr, ref_gr, rtol=1e-10, atol=1e-10, msg=f"{name} grad {i}")


def test_naive_matches_closed_form_decay():
    # With constant gamma and zero state, o_n = scale * sum_m gamma^(n-m) (q_n.k_m) v_m.
    T = 6
    q, k, v, g, _ = _inputs(T)
    o, _ = retention_naive(q, k, v, g)
    gamma = retention_decay(H).double().exp()  # [H]
    n = torch.arange(T, dtype=torch.float64)
    dist = (n[:, None] - n[None, :]).clamp(min=0)
    D = (gamma[:, None, None] ** dist).tril()  # [H, T, T]
    ref = torch.einsum("bnhk,bmhk,hnm,bmhv->bnhv", q, k, D, v) * DK**-0.5
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", ["left", "middle", "right"])
@pytest.mark.parametrize("use_s0", [False, True])
def test_padding_is_identity(where, use_s0):
    T, P = 9, 4
    q, k, v, _, s0 = _inputs(T)
    s0 = s0 if use_s0 else None
    start = {"left": 0, "middle": 3, "right": T}[where]
    real = torch.ones(B, T + P)
    real[:, start : start + P] = 0
    idx = real[0].bool()

    gen = torch.Generator().manual_seed(2)

    def pad(x):  # insert P random (junk) positions at `start`
        junk = torch.randn(B, P, *x.shape[2:], dtype=x.dtype, generator=gen)
        return torch.cat([x[:, :start], junk, x[:, start:]], dim=1)

    q_p, v_p = pad(q), pad(v)
    k_p = pad(k) * real[..., None, None].double()  # pads do not write
    g_p = retention_log_decay(H, B, T + P, token_mask=real).double()  # pads do not decay
    assert (g_p[:, ~idx] == 0).all() and (g_p[:, idx] < 0).all()
    g = retention_log_decay(H, B, T).double()
    ref_o, ref_s = retention_naive(q, k, v, g, initial_state=s0)
    for name, fn in _all_forms().items():
        o, s = fn(q_p, k_p, v_p, g_p, initial_state=s0)
        torch.testing.assert_close(o[:, idx], ref_o, rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=name)


def test_right_padding_without_zero_decay_corrupts_state():
    # Guards the padding rule itself: a decaying pad tail changes the final state.
    q, k, v, _, s0 = _inputs(8)
    k_p = torch.cat([k, torch.zeros_like(k[:, :3])], dim=1)
    q_p, v_p = (torch.cat([x, x[:, :3]], dim=1) for x in (q, v))
    _, ref_s = retention_chunk(q, k, v, retention_log_decay(H, B, 8).double(), initial_state=s0)
    _, bad_s = retention_chunk(q_p, k_p, v_p, retention_log_decay(H, B, 11).double(), initial_state=s0)
    assert (bad_s - ref_s).abs().max() > 1e-3


def test_gamma_values():
    gamma = retention_decay(8).exp()
    assert retention_decay(8).dtype == torch.float32 and gamma.shape == (8,)
    assert gamma[0].item() == 0.96875
    assert gamma[7].item() == 1 - 2**-12
    g = retention_log_decay(8, 2, 5)
    assert g.shape == (2, 5, 8) and g.dtype == torch.float32
    torch.testing.assert_close(g[1, 3], retention_decay(8))


@pytest.mark.parametrize(
    "dtype, o_tol, s_tol",
    [(torch.float32, 1e-6, 1e-6), (torch.bfloat16, 5e-3, 1e-6)],
)
@pytest.mark.parametrize("random_decay", [False, True])
def test_chunk_low_precision(dtype, o_tol, s_tol, random_decay):
    T = 200
    q, k, v, g, s0 = _inputs(T, random_decay=random_decay)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    o, s = retention_chunk(q, k, v, g.float(), initial_state=s0.float(), chunk_size=64)
    assert o.dtype == dtype and s.dtype == torch.float32
    # Oracle on the same (rounded) inputs in fp64: isolates the kernel's own error.
    ref_o, ref_s = retention_naive(*(x.double() for x in (q, k, v, g)), initial_state=s0)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(o, ref_o) < o_tol, rel(o, ref_o)
    assert rel(s, ref_s) < s_tol, rel(s, ref_s)


def test_chunk_bf16_long_sequence_is_finite():
    T = 1024
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, T, 2, 16, generator=gen).bfloat16() for _ in range(2))
    v = torch.randn(1, T, 2, 16, generator=gen).bfloat16()
    g = retention_log_decay(2, 1, T)
    o, s = retention_chunk(q, k, v, g, chunk_size=256)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    ref_o, ref_s = retention_parallel(q.double(), k.double(), v.double(), g.double())
    torch.testing.assert_close(o.double(), ref_o, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(s.double(), ref_s, rtol=1e-4, atol=1e-4)


def test_strong_decay_no_overflow():
    # Very negative log-decays: a factored gamma^n * gamma^-m form would overflow here.
    q, k, v, _, s0 = _inputs(40)
    g = torch.full((B, 40, H), -30.0, dtype=torch.float64)
    ref_o, ref_s = retention_naive(q, k, v, g, initial_state=s0)
    for name, fn in _all_forms(chunk_sizes=(16,)).items():
        o, s, grads = _run_with_grads(fn, q.float(), k.float(), v.float(), g.float(), s0.float())
        assert torch.isfinite(o).all() and torch.isfinite(s).all(), name
        # A mask applied after the exp keeps the forward finite but gives inf * 0 = nan in d/dg.
        assert all(torch.isfinite(gr).all() for gr in grads), name
        torch.testing.assert_close(o.double(), ref_o, rtol=1e-4, atol=1e-4, msg=name)


def test_recurrent_decode_continues_prefill():
    q, k, v, g, s0 = _inputs(12)
    ref_o, ref_s = retention_naive(q, k, v, g, initial_state=s0)
    _, state = retention_chunk(q[:, :9], k[:, :9], v[:, :9], g[:, :9], initial_state=s0, chunk_size=4)
    for t in range(9, 12):
        step = (x[:, t : t + 1] for x in (q, k, v, g))
        o_t, state = retention_recurrent(*step, initial_state=state)
        torch.testing.assert_close(o_t[:, 0], ref_o[:, t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_s, rtol=1e-10, atol=1e-10)


def test_custom_scale():
    q, k, v, g, _ = _inputs(5)
    o1, _ = retention(q, k, v, g, scale=1.0)
    o2, _ = retention_naive(q, k, v, g)
    torch.testing.assert_close(o1 * DK**-0.5, o2, rtol=1e-12, atol=1e-12)


@pytest.fixture
def dispatched(monkeypatch):
    """Records which form `retention` calls, by wrapping the module-level functions."""
    monkeypatch.delenv(ret.MODE_ENV_VAR, raising=False)
    called = []
    for name in ("retention_chunk", "retention_parallel", "retention_recurrent", "retention_naive"):

        def wrapper(*args, _name=name, _fn=getattr(ret, name), **kwargs):
            called.append(_name.removeprefix("retention_"))
            return _fn(*args, **kwargs)

        monkeypatch.setattr(ret, name, wrapper)
    return called


def test_auto_mode_dispatch(dispatched):
    assert resolve_retention_mode("auto", 1, 64) == "recurrent"
    assert resolve_retention_mode("auto", 64, 64) == "parallel"
    assert resolve_retention_mode("auto", 65, 64) == "chunk"
    assert resolve_retention_mode("naive", 65, 64) == "naive"
    for T in (1, 8, 20):
        retention(*_inputs(T)[:4], chunk_size=8)
    retention(*_inputs(20)[:4], mode="parallel", chunk_size=8)
    assert dispatched == ["recurrent", "parallel", "chunk", "parallel"]


def test_env_var_overrides_auto(dispatched, monkeypatch):
    monkeypatch.setenv(ret.MODE_ENV_VAR, "naive")
    assert resolve_retention_mode("auto", 1, 64) == "naive"
    retention(*_inputs(20)[:4], chunk_size=8)
    retention(*_inputs(20)[:4], mode="chunk", chunk_size=8)  # an explicit mode wins
    assert dispatched == ["naive", "chunk"]
    monkeypatch.setenv(ret.MODE_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        retention(*_inputs(3)[:4])


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="'fused'.*parallel.*chunk.*recurrent"):
        retention(*_inputs(3)[:4], mode="fused")


def test_logs_path_once(monkeypatch, caplog):
    monkeypatch.delenv(ret.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(ret, "_logged_path", False)
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    q, k, v, g, _ = _inputs(3)
    retention(q, k, v, g)
    retention(q, k, v, g)
    msgs = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert msgs == ["retention: using pure-torch chunk/parallel/recurrent path (no fused kernel installed)"]
