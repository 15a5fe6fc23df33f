import logging

import pytest
import torch

import hf_llmarch.ops.ssd as ssd
from hf_llmarch.ops.ssd import resolve_ssd_mode, ssd_chunk, ssd_naive, ssd_scan, ssd_step

B, H, P, N = 2, 4, 3, 5
F64 = torch.float64


def _inputs(T, G=2, dtype=F64, seed=0, log_dt_scale=1.0):
    """x, dt (softplus of a normal), A (negative), B, C, D, s0; ratio H // G heads per group."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, P, generator=gen, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, generator=gen, dtype=dtype) * log_dt_scale)
    A = -torch.exp(torch.randn(H, generator=gen, dtype=dtype))
    Bm, Cm = (torch.randn(B, T, G, N, generator=gen, dtype=dtype) for _ in range(2))
    D = torch.randn(H, generator=gen, dtype=dtype)
    s0 = torch.randn(B, H, P, N, generator=gen, dtype=dtype)
    return x, dt, A, Bm, Cm, D, s0


def _chunk(chunk_size):
    return lambda *a, **kw: ssd_chunk(*a, chunk_size=chunk_size, **kw)


def _run_with_grads(fn, x, dt, A, Bm, Cm, D, s0, reset=None):
    """Outputs, final state and the gradients of every input (x, dt, A, B, C, D, initial_state)."""
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, Bm, Cm, D)]
    s0_leaf = None if s0 is None else s0.clone().requires_grad_()
    y, state = fn(*leaves, initial_state=s0_leaf, reset=reset)
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    inputs = leaves + ([s0_leaf] if s0_leaf is not None else [])
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return y, state, grads


def _assert_forms_agree(inputs, reset, chunk_sizes, tol=1e-10):
    ref_y, ref_s, ref_grads = _run_with_grads(ssd_naive, *inputs, reset=reset)
    assert ref_y.dtype == F64 and ref_s.dtype == F64
    for c in chunk_sizes:
        y, s, grads = _run_with_grads(_chunk(c), *inputs, reset=reset)
        assert y.shape == ref_y.shape and s.shape == (B, H, P, N)
        torch.testing.assert_close(y, ref_y, rtol=tol, atol=tol, msg=f"chunk {c} output")
        torch.testing.assert_close(s, ref_s, rtol=tol, atol=tol, msg=f"chunk {c} state")
        names = ("x", "dt", "A", "B", "C", "D", "initial_state")
        for name, g, ref_g in zip(names, grads, ref_grads):
            torch.testing.assert_close(g, ref_g, rtol=tol, atol=tol, msg=f"chunk {c} grad {name}")


@pytest.mark.parametrize("T", [1, 7, 33, 70])
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("use_s0", [False, True])
def test_chunk_matches_naive_fp64(T, G, use_s0):
    x, dt, A, Bm, Cm, D, s0 = _inputs(T, G)
    _assert_forms_agree((x, dt, A, Bm, Cm, D, s0 if use_s0 else None), None, chunk_sizes=(5, 16))


def test_groups_are_repeat_interleaved():
    # H=4, G=2: heads 0, 1 read group 0 and heads 2, 3 read group 1 (not tiled 0, 1, 0, 1).
    x, dt, A, Bm, Cm, D, _ = _inputs(6, G=2)
    y, _ = ssd_chunk(x, dt, A, Bm, Cm, D, chunk_size=4)
    expand = lambda t: t.repeat_interleave(2, dim=2)  # noqa: E731
    y_ref, _ = ssd_naive(x, dt, A, expand(Bm), expand(Cm), D)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def _resets(T):
    """Row 0: packed sequences start at 3 (inside a chunk of 8), 8 and 16 (chunk boundaries), T-2;
    row 1: at 0 (dropping the initial state) and T // 2."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [p for p in (3, 8, 16, T - 2) if 0 < p < T]] = True
    reset[1, [0, T // 2]] = True
    return reset


@pytest.mark.parametrize("T", [1, 7, 33, 70])
@pytest.mark.parametrize("use_s0", [False, True])
def test_chunk_matches_naive_with_resets(T, use_s0):
    x, dt, A, Bm, Cm, D, s0 = _inputs(T)
    _assert_forms_agree((x, dt, A, Bm, Cm, D, s0 if use_s0 else None), _resets(T), chunk_sizes=(1, 8, 16))


@pytest.mark.parametrize("fn", [ssd_naive, _chunk(8)], ids=["naive", "chunk8"])
def test_reset_equals_separate_sequences(fn):
    """Each packed sequence sees only itself; the initial state reaches only the row's first one."""
    T = 33
    x, dt, A, Bm, Cm, D, s0 = _inputs(T)
    reset = _resets(T)
    y, state = fn(x, dt, A, Bm, Cm, D, initial_state=s0, reset=reset)
    for row in range(B):
        starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
        init = None if reset[row, 0] else s0[row : row + 1]
        for a, e in zip(starts, starts[1:]):
            piece = (t[row : row + 1, a:e] for t in (x, dt))
            bc = (t[row : row + 1, a:e] for t in (Bm, Cm))
            y_ref, s_ref = ssd_naive(*piece, A, *bc, D, initial_state=init)
            torch.testing.assert_close(y[row : row + 1, a:e], y_ref, rtol=1e-12, atol=1e-12)
            init = None
        torch.testing.assert_close(state[row : row + 1], s_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_reset", [False, True])
def test_strong_decay_is_finite(with_reset):
    # dt * A down to -30 per token: the stable segsum never forms exp of a positive number, and
    # masks act before the exp, so neither the forward nor d/d(dt, A) sees inf * 0 = nan.
    T = 40
    x, dt, A, Bm, Cm, D, s0 = (t.float() for t in _inputs(T))
    A = torch.full((H,), -30.0)
    dt = torch.rand(B, T, H, generator=torch.Generator().manual_seed(3))
    reset = _resets(T) if with_reset else None
    y, s, grads = _run_with_grads(_chunk(16), x, dt, A, Bm, Cm, D, s0, reset=reset)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert all(torch.isfinite(g).all() for g in grads)
    ref_y, ref_s = ssd_naive(*(t.double() for t in (x, dt, A, Bm, Cm, D)), initial_state=s0.double(), reset=reset)
    torch.testing.assert_close(y.double(), ref_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), ref_s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", ["left", "middle", "right"])
@pytest.mark.parametrize("fn", [ssd_naive, _chunk(4)], ids=["naive", "chunk4"])
def test_dt_zero_is_identity_step(where, fn):
    """Positions with dt = 0 (pads) neither write nor decay, whatever x, B, C hold there."""
    T, pad = 9, 3
    x, dt, A, Bm, Cm, D, s0 = _inputs(T)
    start = {"left": 0, "middle": 4, "right": T}[where]
    gen = torch.Generator().manual_seed(2)

    def insert(t, fill=None):
        junk = torch.randn(B, pad, *t.shape[2:], dtype=t.dtype, generator=gen) if fill is None else fill
        return torch.cat([t[:, :start], junk, t[:, start:]], dim=1)

    dt_p = insert(dt, torch.zeros(B, pad, H, dtype=F64))
    y_p, s_p = fn(insert(x), dt_p, A, insert(Bm), insert(Cm), D, initial_state=s0)
    y, s = ssd_naive(x, dt, A, Bm, Cm, D, initial_state=s0)
    real = torch.ones(T + pad, dtype=torch.bool)
    real[start : start + pad] = False
    torch.testing.assert_close(y_p[:, real], y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_p, s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("G", [1, 2])
def test_step_is_one_naive_token(G):
    x, dt, A, Bm, Cm, D, s0 = _inputs(1, G)
    y_ref, s_ref = ssd_naive(x, dt, A, Bm, Cm, D, initial_state=s0)
    y, s = ssd_step(x[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, s0)
    assert y.shape == (B, H, P) and s.shape == (B, H, P, N)
    torch.testing.assert_close(y, y_ref[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)


def test_step_decode_continues_chunk_prefill():
    x, dt, A, Bm, Cm, D, s0 = _inputs(12)
    y_ref, s_ref = ssd_naive(x, dt, A, Bm, Cm, D, initial_state=s0)
    _, state = ssd_chunk(x[:, :9], dt[:, :9], A, Bm[:, :9], Cm[:, :9], D, initial_state=s0, chunk_size=4)
    for t in range(9, 12):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], D, state)
        torch.testing.assert_close(y_t, y_ref[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, s_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, y_tol, s_tol", [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-2, 1e-5)])
def test_low_precision_close_to_fp64(dtype, y_tol, s_tol):
    T = 200
    x, dt, A, Bm, Cm, D, s0 = _inputs(T)
    x, Bm, Cm = (t.to(dtype) for t in (x, Bm, Cm))
    y, s = ssd_chunk(x, dt.float(), A.float(), Bm, Cm, D.float(), initial_state=s0.float(), reset=_resets(T))
    assert y.dtype == dtype and s.dtype == torch.float32
    # Oracle on the same (rounded) inputs in fp64: measures the chunk form's own error.
    ref_y, ref_s = ssd_naive(*(t.double() for t in (x, dt, A, Bm, Cm, D)), initial_state=s0, reset=_resets(T))
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(y, ref_y) < y_tol, rel(y, ref_y)
    assert rel(s, ref_s) < s_tol, rel(s, ref_s)


@pytest.fixture
def dispatched(monkeypatch):
    """Records which form `ssd_scan` calls."""
    monkeypatch.delenv(ssd.MODE_ENV_VAR, raising=False)
    called = []
    for name in ("ssd_chunk", "ssd_naive", "_one_step"):

        def wrapper(*args, _name=name, _fn=getattr(ssd, name), **kwargs):
            called.append(_name)
            return _fn(*args, **kwargs)

        monkeypatch.setattr(ssd, name, wrapper)
    return called


def test_auto_mode_dispatch(dispatched):
    x1, x8 = _inputs(1)[0], _inputs(8)[0]
    assert resolve_ssd_mode("auto", x1) == "step"
    assert resolve_ssd_mode("auto", x8) == "chunk"  # CPU: the Triton kernel never runs here
    assert resolve_ssd_mode("naive", x8) == "naive"
    for T in (1, 8):
        x, dt, A, Bm, Cm, D, s0 = _inputs(T)
        reset = _resets(T)
        y, s = ssd_scan(x, dt, A, Bm, Cm, D, initial_state=s0, reset=reset, chunk_size=4)
        y_ref, s_ref = ssd_naive(x, dt, A, Bm, Cm, D, initial_state=s0, reset=reset)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
    ssd_scan(*_inputs(8)[:6], mode="naive")
    assert dispatched == ["_one_step", "ssd_chunk", "ssd_naive"]


def test_env_var_overrides_auto(dispatched, monkeypatch):
    monkeypatch.setenv(ssd.MODE_ENV_VAR, "naive")
    assert resolve_ssd_mode("auto", _inputs(1)[0]) == "naive"
    ssd_scan(*_inputs(8)[:6])
    ssd_scan(*_inputs(8)[:6], mode="chunk")  # an explicit mode wins
    assert dispatched == ["ssd_naive", "ssd_chunk"]
    monkeypatch.setenv(ssd.MODE_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="'bogus'.*LLMARCH_SSD_MODE"):
        ssd_scan(*_inputs(3)[:6])


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="'fused'.*mode argument.*auto, chunk, naive, cuda"):
        ssd_scan(*_inputs(3)[:6], mode="fused")


def test_explicit_cuda_on_cpu_raises(monkeypatch):
    monkeypatch.delenv(ssd.MODE_ENV_VAR, raising=False)
    with pytest.raises(RuntimeError, match="'cuda'.*mode argument.*CUDA tensors"):
        ssd_scan(*_inputs(3)[:6], mode="cuda")
    monkeypatch.setenv(ssd.MODE_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="'cuda'.*LLMARCH_SSD_MODE"):
        resolve_ssd_mode("auto", _inputs(3)[0])


def test_missing_kernel_raises_clear_error(monkeypatch):
    """An explicit "cuda" request on a machine without mamba_ssm names the missing package."""
    monkeypatch.setattr(ssd, "load_kernel", lambda: None)
    x = _inputs(3)[0]
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        resolve_ssd_mode("cuda", x)
    assert resolve_ssd_mode("auto", x) == "chunk"  # auto falls back instead


def test_logs_path_once(monkeypatch, caplog):
    monkeypatch.delenv(ssd.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(ssd, "_logged_path", False)
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    ssd_scan(*_inputs(5)[:6])
    ssd_scan(*_inputs(5)[:6])
    msgs = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert len(msgs) == 1 and msgs[0].startswith("ssd: using the chunk path"), msgs


@pytest.mark.parametrize("mode", ["naive", "chunk", "auto"])
def test_no_skip_term_equals_zero_D(mode):
    x, dt, A, Bm, Cm, D, s0 = _inputs(1 if mode == "auto" else 9)
    y, s = ssd_scan(x, dt, A, Bm, Cm, None, initial_state=s0, mode=mode, chunk_size=4)
    y_ref, s_ref = ssd_naive(x, dt, A, Bm, Cm, torch.zeros_like(D), initial_state=s0)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
