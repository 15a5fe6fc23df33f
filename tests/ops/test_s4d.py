import logging
import math

import pytest
import torch

import hf_llmarch.ops.s4d as s4d
from hf_llmarch.ops.s4d import (
    resolve_s4d_mode,
    s4d_chunk,
    s4d_discretize,
    s4d_fft,
    s4d_init,
    s4d_naive,
    s4d_scan,
    s4d_step,
)
from hf_llmarch.ops.s4d.fft import _causal_conv
from hf_llmarch.ops.s4d.naive import powers

B, H, M = 2, 3, 4
PARAM_NAMES = ("log_dt", "log_A_real", "A_imag", "C")


def _params(init="lin", dtype=torch.float64, dt_max=0.5, seed=0):
    # dt up to 0.5 so states decay visibly within the test lengths; D is part of the dict.
    gen = torch.Generator().manual_seed(seed)
    return {k: v.to(dtype) for k, v in s4d_init(H, M, init, dt_max=dt_max, generator=gen).items()}


def _inputs(T, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, H, generator=gen, dtype=dtype)
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    s0 = torch.randn(B, H, M, generator=gen, dtype=cplx)
    return u, s0


def _run_with_grads(fn, params, u, s0, **kwargs):
    """Output, final state and gradients of a random projection of both, w.r.t. u, D, the four
    discretised parameters and (when given) the initial state."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    u = u.clone().requires_grad_()
    s0 = None if s0 is None else s0.clone().requires_grad_()
    dA, W = s4d_discretize(*(leaves[k] for k in PARAM_NAMES))
    y, state = fn(u, dA, W, leaves["D"], initial_state=s0, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    loss = loss + (torch.view_as_real(state) * torch.randn(*state.shape, 2, generator=gen, dtype=y.dtype)).sum()
    inputs = [u, leaves["D"], *(leaves[k] for k in PARAM_NAMES)] + ([s0] if s0 is not None else [])
    return y, state, torch.autograd.grad(loss, inputs)


def _assert_forms_match(ref, got, name, tol=1e-10):
    (ref_y, ref_s, ref_g), (y, s, g) = ref, got
    torch.testing.assert_close(y, ref_y, rtol=tol, atol=tol, msg=f"{name} output")
    torch.testing.assert_close(s, ref_s, rtol=tol, atol=tol, msg=f"{name} state")
    for i, (gr, ref_gr) in enumerate(zip(g, ref_g)):
        torch.testing.assert_close(gr, ref_gr, rtol=tol, atol=tol, msg=f"{name} grad {i}")


FORMS = {
    "fft": s4d_fft,
    "chunk5": lambda *a, **kw: s4d_chunk(*a, chunk_size=5, **kw),
    "chunk16": lambda *a, **kw: s4d_chunk(*a, chunk_size=16, **kw),
}


@pytest.mark.parametrize("T", [1, 7, 33, 100])
@pytest.mark.parametrize("use_s0", [False, True])
@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_forms_agree_fp64(T, use_s0, init):
    params = _params(init)
    u, s0 = _inputs(T)
    s0 = s0 if use_s0 else None
    ref = _run_with_grads(s4d_naive, params, u, s0)
    assert ref[0].dtype == torch.float64 and ref[1].dtype == torch.complex128
    for name, fn in FORMS.items():
        got = _run_with_grads(fn, params, u, s0)
        assert got[0].shape == (B, T, H) and got[1].shape == (B, H, M), name
        _assert_forms_match(ref, got, name)


def _direct_conv(u, k):
    """y_t = sum_{j<=t} k_{t-j} u_j by an explicit Toeplitz matrix; u [B, H, T], k [H, T]."""
    T = u.shape[-1]
    i = torch.arange(T)
    toe = k[:, (i[:, None] - i[None, :]).clamp(min=0)] * (i[:, None] >= i[None, :])  # [H, T, T]
    return torch.einsum("hij,bhj->bhi", toe, u)


def test_fft_conv_is_linear_not_circular():
    # A slowly decaying kernel (small dt): its tail is large, so a length-T FFT would wrap it around.
    T = 64
    params = _params(dt_max=2e-3)
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    k = 2 * torch.einsum("hm,hml->hl", W, powers(dA, 0, T)).real  # [H, T]
    u = _inputs(T)[0].transpose(1, 2)
    direct = _direct_conv(u, k)
    torch.testing.assert_close(_causal_conv(u, k), direct, rtol=1e-12, atol=1e-12)
    circular = torch.fft.irfft(torch.fft.rfft(u, n=T) * torch.fft.rfft(k, n=T), n=T)
    # The pitfall the 2T padding avoids: the wrapped tail is as large as the signal itself.
    assert (circular - direct).norm() > 0.5 * direct.norm()
    y, _ = s4d_fft(u.transpose(1, 2), dA, W)
    torch.testing.assert_close(y.transpose(1, 2), direct, rtol=1e-12, atol=1e-12)


def _resets(T: int) -> torch.Tensor:
    """Row 0: sequences start at 0 (continuing s0), 3, 4 and T-2; row 1: at 0 (dropping s0) and T//2."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [p for p in (3, 4, T - 2) if 0 < p < T]] = True
    reset[1, [0, T // 2]] = True
    return reset


@pytest.mark.parametrize("T", [7, 33])
@pytest.mark.parametrize("fn", [s4d_naive, FORMS["chunk5"]])
def test_reset_equals_separate_sequences(T, fn):
    """Packed rows: each sequence sees only itself; the initial state reaches only the first."""
    params = _params()
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    u, s0 = _inputs(T)
    reset = _resets(T)
    y, state = fn(u, dA, W, params["D"], initial_state=s0, reset=reset)
    for row in range(B):
        starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
        init = None if reset[row, 0] else s0[row : row + 1]
        for a, e in zip(starts, starts[1:]):
            y_ref, s_ref = s4d_naive(u[row : row + 1, a:e], dA, W, params["D"], initial_state=init)
            torch.testing.assert_close(y[row : row + 1, a:e], y_ref, rtol=1e-12, atol=1e-12)
            init = None
        torch.testing.assert_close(state[row : row + 1], s_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 33, 100])
@pytest.mark.parametrize("use_s0", [False, True])
def test_chunk_with_reset_fp64(T, use_s0):
    params = _params("inv")
    u, s0 = _inputs(T)
    s0, reset = (s0 if use_s0 else None), _resets(T)
    ref = _run_with_grads(s4d_naive, params, u, s0, reset=reset)
    for c in (1, 5, 16):
        got = _run_with_grads(s4d_chunk, params, u, s0, reset=reset, chunk_size=c)
        _assert_forms_match(ref, got, f"chunk{c}")


def test_step_continues_prefill():
    params = _params()
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    u, s0 = _inputs(12)
    ref_y, ref_s = s4d_naive(u, dA, W, params["D"], initial_state=s0)
    _, state = s4d_fft(u[:, :9], dA, W, params["D"], initial_state=s0)
    for t in range(9, 12):
        y_t, state = s4d_step(u[:, t], dA, W, params["D"], state)
        assert y_t.shape == (B, H)
        torch.testing.assert_close(y_t, ref_y[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, ref_s, rtol=1e-12, atol=1e-12)


def test_step_is_one_naive_token():
    params = _params()
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    u, s0 = _inputs(1)
    ref = s4d_naive(u, dA, W, params["D"], initial_state=s0)
    y, state = s4d_step(u[:, 0], dA, W, params["D"], s0)
    torch.testing.assert_close(y, ref[0][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(state, ref[1], rtol=0, atol=0)


@pytest.mark.parametrize("use_s0", [False, True])
def test_auto_decodes_a_single_token_with_one_step(monkeypatch, use_s0):
    monkeypatch.delenv(s4d.MODE_ENV_VAR, raising=False)
    params = _params()
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    u, s0 = _inputs(1)
    s0 = s0 if use_s0 else None
    assert s4d.resolve_s4d_mode("auto", seq_len=1) == "step"
    for reset in (None, torch.tensor([[True]] + [[False]] * (B - 1))):
        ref = s4d_naive(u, dA, W, params["D"], initial_state=s0, reset=reset)
        got = s4d.s4d_scan(u, dA, W, params["D"], initial_state=s0, reset=reset)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)


def test_inits_follow_the_s4d_formulas():
    n = torch.arange(4, dtype=torch.float64)
    lin, inv, real = (s4d_init(2, 4, init) for init in ("lin", "inv", "real"))
    for p in (lin, inv):
        torch.testing.assert_close(p["log_A_real"], torch.full((2, 4), math.log(0.5)))
    torch.testing.assert_close(lin["A_imag"][1], (math.pi * n).float())
    torch.testing.assert_close(inv["A_imag"][0], torch.tensor([17.8254, 4.2441, 1.5279, 0.3638]), atol=1e-4, rtol=0)
    torch.testing.assert_close(real["log_A_real"][0], torch.log(n + 1).float())
    assert (real["A_imag"] == 0).all()
    shapes = {k: tuple(v.shape) for k, v in lin.items()}
    assert shapes == {"log_dt": (2,), "log_A_real": (2, 4), "A_imag": (2, 4), "C": (2, 4, 2), "D": (2,)}
    assert all(v.dtype == torch.float32 for v in lin.values())


def test_legs_init_is_the_normal_part_of_hippo_legs():
    N = 8
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    legs = -torch.tril(q[:, None] * q[None, :], -1) - torch.diag(torch.arange(N, dtype=torch.float64) + 1)
    p = q / math.sqrt(2)  # P_n = sqrt(n + 1/2)
    eig = torch.linalg.eigvals(legs + p[:, None] * p[None, :])
    upper = eig[eig.imag > 0]
    torch.testing.assert_close(upper.real, torch.full((N // 2,), -0.5, dtype=torch.float64))
    imag = s4d_init(1, N // 2, "legs")["A_imag"][0].double()
    torch.testing.assert_close(imag, upper.imag.sort(descending=True).values, rtol=1e-6, atol=1e-6)


def test_init_dt_range_and_bad_init():
    p = s4d_init(1000, 2, dt_min=1e-3, dt_max=1e-1)
    dt = p["log_dt"].exp()
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    assert dt.min() < 2e-3 and dt.max() > 5e-2  # log-uniform: both ends are reached
    with pytest.raises(ValueError, match="'hippo'.*lin, inv, real"):
        s4d_init(2, 2, "hippo")


def test_discretize_zoh_formula():
    params = _params("inv")
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    A = -params["log_A_real"].exp() + 1j * params["A_imag"]
    dt = params["log_dt"].exp()[:, None]
    torch.testing.assert_close(dA, torch.exp(dt * A))
    torch.testing.assert_close(W, torch.view_as_complex(params["C"]) * (torch.exp(dt * A) - 1) / A)
    assert dA.dtype == torch.complex128


def test_discretize_fp32_small_dt():
    # dt = 1e-3: exp(dt A) - 1 would lose ~4 digits to cancellation in fp32; expm1 does not.
    params = _params(dt_max=1e-3, dtype=torch.float32)
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    _, W64 = s4d_discretize(*(params[k].double() for k in PARAM_NAMES))
    assert dA.dtype == torch.complex64
    assert ((W.to(torch.complex128) - W64).abs() / W64.abs()).max() < 1e-6


@pytest.mark.parametrize("name", ["fft", "chunk16"])
def test_fp32_close_to_fp64(name):
    T = 500
    params = _params("lin", dtype=torch.float32, dt_max=0.1)
    u, s0 = _inputs(T, dtype=torch.float32)
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    y, state = FORMS[name](u, dA, W, params["D"], initial_state=s0)
    assert y.dtype == torch.float32 and state.dtype == torch.complex64
    # Oracle on the same fp32 inputs in fp64: isolates the form's own rounding.
    dA64, W64 = s4d_discretize(*(params[k].double() for k in PARAM_NAMES))
    ref_y, ref_s = s4d_naive(u.double(), dA64, W64, params["D"].double(), initial_state=s0.to(torch.complex128))
    rel = lambda a, b: ((a.to(b.dtype) - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(y, ref_y) < 1e-5, rel(y, ref_y)
    assert rel(state, ref_s) < 1e-5, rel(state, ref_s)


@pytest.mark.parametrize("mode", ["fft", "chunk", "naive"])
def test_bf16_input_keeps_dtype(mode):
    params = _params(dtype=torch.float32)
    dA, W = s4d_discretize(*(params[k] for k in PARAM_NAMES))
    u = _inputs(20, dtype=torch.float32)[0].bfloat16()
    y, state = s4d_scan(u, dA, W, params["D"], mode=mode)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.complex64
    ref_y, _ = s4d_naive(u.float(), dA, W, params["D"])
    torch.testing.assert_close(y.float(), ref_y, rtol=2e-2, atol=2e-2)


@pytest.fixture
def dispatched(monkeypatch):
    """Records which form `s4d_scan` calls, by wrapping the package-level functions."""
    monkeypatch.delenv(s4d.MODE_ENV_VAR, raising=False)
    called = []
    for name in ("s4d_fft", "s4d_chunk", "s4d_naive"):

        def wrapper(*args, _name=name, _fn=getattr(s4d, name), **kwargs):
            called.append(_name.removeprefix("s4d_"))
            return _fn(*args, **kwargs)

        monkeypatch.setattr(s4d, name, wrapper)
    return called


def _scan_args(T=6):
    params = _params()
    return (_inputs(T)[0], *s4d_discretize(*(params[k] for k in PARAM_NAMES)), params["D"])


def test_auto_mode_dispatch(dispatched):
    reset = _resets(6)
    assert resolve_s4d_mode("auto", None) == "fft"
    assert resolve_s4d_mode("auto", reset) == "chunk"
    assert resolve_s4d_mode("naive", reset) == "naive"
    s4d_scan(*_scan_args())
    s4d_scan(*_scan_args(), reset=reset)
    s4d_scan(*_scan_args(), mode="naive")
    assert dispatched == ["fft", "chunk", "naive"]


def test_env_var_overrides_auto(dispatched, monkeypatch):
    monkeypatch.setenv(s4d.MODE_ENV_VAR, "naive")
    assert resolve_s4d_mode("auto") == "naive"
    s4d_scan(*_scan_args())
    s4d_scan(*_scan_args(), mode="chunk")  # an explicit mode wins
    assert dispatched == ["naive", "chunk"]
    monkeypatch.setenv(s4d.MODE_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="'bogus'.*LLMARCH_S4D_MODE"):
        s4d_scan(*_scan_args())
    monkeypatch.setenv(s4d.MODE_ENV_VAR, "fft")
    with pytest.raises(ValueError, match="'fft'.*LLMARCH_S4D_MODE.*cannot reset"):
        s4d_scan(*_scan_args(), reset=_resets(6))


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="'fused'.*mode argument.*fft, chunk, naive"):
        s4d_scan(*_scan_args(), mode="fused")
    with pytest.raises(ValueError, match="'fft'.*mode argument.*cannot reset"):
        s4d_scan(*_scan_args(), mode="fft", reset=_resets(6))


def test_logs_path_once(monkeypatch, caplog):
    monkeypatch.delenv(s4d.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(s4d, "_logged_path", False)
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    s4d_scan(*_scan_args())
    s4d_scan(*_scan_args(), reset=_resets(6))
    msgs = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert msgs == ["s4d: using the pure-torch fft path (no fused kernel installed)"]
