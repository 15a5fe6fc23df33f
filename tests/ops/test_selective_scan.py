import logging

import pytest
import torch

import hf_llmarch.ops.selective_scan as ss
from hf_llmarch.ops.selective_scan import (
    resolve_selective_scan_mode,
    selective_scan,
    selective_scan_chunk,
    selective_scan_naive,
    selective_scan_step,
)

B, D, N = 2, 3, 4


def _inputs(T, dtype=torch.float64, max_log_decay=None, seed=0):
    """x, dt, A, B, C, D, s0 as the mixer makes them; max_log_decay scales dt so min(dt * A) = -max_log_decay."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(B, T, D, generator=gen, dtype=dtype) - 2)
    A = -torch.arange(1, N + 1, dtype=dtype).expand(D, N) * torch.rand(D, N, generator=gen, dtype=dtype).add(0.5)
    if max_log_decay is not None:
        dt = dt * max_log_decay / (dt[..., None] * A).neg().amax()
    Bm, Cm = (torch.randn(B, T, N, generator=gen, dtype=dtype) for _ in range(2))
    Dv = torch.randn(D, generator=gen, dtype=dtype)
    s0 = torch.randn(B, D, N, generator=gen, dtype=dtype)
    return x, dt, A, Bm, Cm, Dv, s0


def _chunk(chunk_size):
    return lambda *a, **kw: selective_scan_chunk(*a, chunk_size=chunk_size, **kw)


def _run_with_grads(fn, x, dt, A, Bm, Cm, Dv, s0, reset=None):
    """Outputs and the gradients of a random loss on (y, final state) w.r.t. every tensor input."""
    leaves = [None if t is None else t.clone().requires_grad_() for t in (x, dt, A, Bm, Cm, Dv, s0)]
    y, state = fn(*leaves[:6], initial_state=leaves[6], reset=reset)
    gen = torch.Generator().manual_seed(1)  # the same weights whatever the dtype
    loss = (y * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=torch.float64).to(state.dtype)).sum()
    inputs = [t for t in leaves if t is not None]
    return y, state, torch.autograd.grad(loss, inputs, materialize_grads=True, allow_unused=True)


def _assert_same(got, ref, tol, name):
    y, s, grads = got
    ref_y, ref_s, ref_grads = ref
    torch.testing.assert_close(y, ref_y, rtol=tol, atol=tol, msg=f"{name}: output")
    torch.testing.assert_close(s, ref_s, rtol=tol, atol=tol, msg=f"{name}: final state")
    for i, (g, ref_g) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, ref_g, rtol=tol, atol=tol, msg=f"{name}: grad of input {i}")


@pytest.mark.parametrize("T", [1, 7, 33, 50])
@pytest.mark.parametrize("use_s0", [False, True])
def test_chunk_matches_naive_fp64(T, use_s0):
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(T)
    s0 = s0 if use_s0 else None
    ref = _run_with_grads(selective_scan_naive, x, dt, A, Bm, Cm, Dv, s0)
    assert ref[0].shape == (B, T, D) and ref[1].shape == (B, D, N) and ref[1].dtype == torch.float64
    for Q in (1, 5, 16):  # 5 and 16 divide neither 33 nor 7; 16 is the default
        _assert_same(_run_with_grads(_chunk(Q), x, dt, A, Bm, Cm, Dv, s0), ref, 1e-10, f"chunk{Q} T={T}")


def test_chunk_without_skip_term():
    x, dt, A, Bm, Cm, _, s0 = _inputs(20)
    ref = _run_with_grads(selective_scan_naive, x, dt, A, Bm, Cm, None, s0)
    _assert_same(_run_with_grads(_chunk(6), x, dt, A, Bm, Cm, None, s0), ref, 1e-10, "D=None")


def _resets(T, chunk_size):
    """Row 0 continues s0, then sequences start inside a chunk (3), on two chunk boundaries and at
    T-1; row 1 drops s0 (reset at 0) and restarts in the middle."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [3, chunk_size, 2 * chunk_size, T - 1]] = True
    reset[1, [0, T // 2]] = True
    return reset


@pytest.mark.parametrize("T", [17, 33])
def test_chunk_with_resets_matches_naive(T):
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(T)
    reset = _resets(T, chunk_size=8)
    ref = _run_with_grads(selective_scan_naive, x, dt, A, Bm, Cm, Dv, s0, reset=reset)
    _assert_same(_run_with_grads(_chunk(8), x, dt, A, Bm, Cm, Dv, s0, reset=reset), ref, 1e-10, "reset")


@pytest.mark.parametrize("fn", [selective_scan_naive, _chunk(8)], ids=["naive", "chunk"])
def test_reset_equals_separate_sequences(fn):
    T = 33
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(T)
    reset = _resets(T, chunk_size=8)
    y, state = fn(x, dt, A, Bm, Cm, Dv, initial_state=s0, reset=reset)
    for b in range(B):
        starts = [0] + [t for t in range(1, T) if reset[b, t]] + [T]
        for i, (lo, hi) in enumerate(zip(starts, starts[1:])):
            init = s0[b : b + 1] if i == 0 and not reset[b, 0] else None
            part = (t[b : b + 1, lo:hi] for t in (x, dt, Bm, Cm))
            xs, dts, Bs, Cs = part
            y_seg, s_seg = selective_scan_naive(xs, dts, A, Bs, Cs, Dv, initial_state=init)
            torch.testing.assert_close(y[b : b + 1, lo:hi], y_seg, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state[b : b + 1], s_seg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_strong_decay_is_stable(dtype, tol):
    # dt * A reaches -30 per token over a long sequence: exp(cumsum) would under/overflow in any
    # form that subtracts cumulative sums; the result must stay finite and match the fp64 oracle.
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(300, max_log_decay=30.0)
    assert (dt[..., None] * A).min().item() == pytest.approx(-30.0)
    ref = _run_with_grads(selective_scan_naive, x, dt, A, Bm, Cm, Dv, s0)
    low = [t.to(dtype) for t in (x, dt, A, Bm, Cm, Dv, s0)]
    got = _run_with_grads(_chunk(16), *low)
    assert all(torch.isfinite(t).all() for t in (got[0], got[1], *got[2]))
    got = (got[0].double(), got[1].double(), [g.double() for g in got[2]])
    _assert_same(got, ref, tol, f"strong decay {dtype}")


@pytest.mark.parametrize("fn", [selective_scan_naive, _chunk(4)], ids=["naive", "chunk"])
def test_zero_dt_is_identity_step(fn):
    T = 10
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(T)
    _, state = fn(x, dt, A, Bm, Cm, Dv, initial_state=s0)
    # Trailing pads (dt = 0, any x): the state is bitwise unchanged.
    pad = [torch.cat([t, torch.randn_like(t[:, :3])], dim=1) for t in (x, dt, Bm, Cm)]
    pad[1][:, T:] = 0.0
    _, padded_state = fn(pad[0], pad[1], A, pad[2], pad[3], Dv, initial_state=s0)
    assert torch.equal(padded_state, state)
    # Pads in the middle: real positions and the final state match the unpadded run.
    mid = [torch.cat([t[:, :4], torch.randn_like(t[:, :5]), t[:, 4:]], dim=1) for t in (x, dt, Bm, Cm)]
    mid[1][:, 4:9] = 0.0
    y, _ = fn(x, dt, A, Bm, Cm, Dv, initial_state=s0)
    y_mid, mid_state = fn(mid[0], mid[1], A, mid[2], mid[3], Dv, initial_state=s0)
    real = torch.ones(T + 5, dtype=torch.bool)
    real[4:9] = False
    torch.testing.assert_close(y_mid[:, real], y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mid_state, state, rtol=1e-12, atol=1e-12)


def test_step_equals_one_token_of_naive():
    T = 6
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(T)
    y_ref, state_ref = selective_scan_naive(x, dt, A, Bm, Cm, Dv, initial_state=s0)
    state = s0
    for t in range(T):
        y, state = selective_scan_step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], Dv, state)
        assert y.shape == (B, D) and state.shape == (B, D, N)
        torch.testing.assert_close(y, y_ref[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_ref, rtol=1e-12, atol=1e-12)
    _, chunk_state = selective_scan_chunk(x, dt, A, Bm, Cm, Dv, initial_state=s0)
    torch.testing.assert_close(state, chunk_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, y_tol, s_tol", [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-2, 1e-5)])
@pytest.mark.parametrize("fn", [selective_scan_naive, _chunk(16)], ids=["naive", "chunk"])
def test_low_precision_close_to_fp64(fn, dtype, y_tol, s_tol):
    # Activations in `dtype`, A and D in fp32 (the mixer keeps them there); compute is fp32 inside,
    # so the oracle is fp64 on the same rounded inputs and y's error is about its own rounding.
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(200, max_log_decay=10.0)
    acts = [t.to(dtype) for t in (x, dt, Bm, Cm)]
    y, state = fn(acts[0], acts[1], A.float(), acts[2], acts[3], Dv.float(), initial_state=s0.float())
    assert y.dtype == dtype and state.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    rounded = [t.double() for t in (acts[0], acts[1], A.float(), acts[2], acts[3], Dv.float(), s0.float())]
    ref_y, ref_s = selective_scan_naive(*rounded[:6], initial_state=rounded[6])
    scale = ref_y.abs().max()
    torch.testing.assert_close(y.double(), ref_y, rtol=y_tol, atol=y_tol * scale)
    torch.testing.assert_close(state.double(), ref_s, rtol=s_tol, atol=s_tol * ref_s.abs().max())


def test_chunk_ignores_autocast():
    args = [t.float() for t in _inputs(20)]
    ref_y, _ = selective_scan_chunk(*args[:6], initial_state=args[6])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = selective_scan_chunk(*args[:6], initial_state=args[6])
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref_y, rtol=0, atol=0)


def test_dispatch_modes(monkeypatch):
    monkeypatch.delenv(ss.MODE_ENV_VAR, raising=False)
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(9)
    assert resolve_selective_scan_mode("auto", x, None, None) == "chunk"  # CPU: no fused kernel
    for mode in ("naive", "chunk"):
        assert resolve_selective_scan_mode(mode, x, s0, None) == mode
    ref = selective_scan_naive(x, dt, A, Bm, Cm, Dv, initial_state=s0)
    for mode in ("auto", "naive", "chunk"):
        y, state = selective_scan(x, dt, A, Bm, Cm, Dv, initial_state=s0, mode=mode, chunk_size=4)
        torch.testing.assert_close(y, ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state, ref[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_s0", [False, True])
def test_auto_decodes_a_single_token_with_one_step(monkeypatch, use_s0):
    """Decode: one recurrence step, not a chunk padded with identity steps; a reset there zeroes the state."""
    monkeypatch.delenv(ss.MODE_ENV_VAR, raising=False)
    x, dt, A, Bm, Cm, Dv, s0 = (t[:, :1] if t.dim() == 3 and t.shape[1] == 9 else t for t in _inputs(9))
    s0 = s0 if use_s0 else None
    assert resolve_selective_scan_mode("auto", x, s0, None) == "step"
    for reset in (None, torch.tensor([[True], [False]])[: x.shape[0]]):
        ref = selective_scan_naive(x, dt, A, Bm, Cm, Dv, initial_state=s0, reset=reset)
        got = selective_scan(x, dt, A, Bm, Cm, Dv, initial_state=s0, reset=reset)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)


def test_env_var_overrides_auto_only(monkeypatch):
    x = _inputs(3)[0]
    monkeypatch.setenv(ss.MODE_ENV_VAR, "naive")
    assert resolve_selective_scan_mode("auto", x, None, None) == "naive"
    assert resolve_selective_scan_mode("chunk", x, None, None) == "chunk"
    monkeypatch.setenv(ss.MODE_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=ss.MODE_ENV_VAR):
        resolve_selective_scan_mode("auto", x, None, None)


def test_bad_mode_argument():
    with pytest.raises(ValueError, match="mode argument"):
        selective_scan(*_inputs(3)[:6], mode="parallel")


def test_cuda_request_that_cannot_be_honoured_raises(monkeypatch):
    monkeypatch.delenv(ss.MODE_ENV_VAR, raising=False)
    x, dt, A, Bm, Cm, Dv, s0 = _inputs(3)
    with pytest.raises(RuntimeError, match="not on CUDA"):
        selective_scan(x, dt, A, Bm, Cm, Dv, mode="cuda")
    with pytest.raises(RuntimeError, match="initial_state"):
        resolve_selective_scan_mode("cuda", x, s0, None)
    monkeypatch.setenv(ss.MODE_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was requested"):
        selective_scan(x, dt, A, Bm, Cm, Dv)


def test_logs_the_path_once(monkeypatch, caplog):
    monkeypatch.delenv(ss.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(ss, "_logged_paths", set())
    args = _inputs(3)[:6]
    with caplog.at_level(logging.INFO, logger="hf_llmarch"):
        selective_scan(*args)
        selective_scan(*args)
    lines = [r.getMessage() for r in caplog.records if "selective scan" in r.getMessage()]
    assert lines == ["selective scan: using the pure-torch chunk form path"]
